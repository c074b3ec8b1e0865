"""Every route declares a permission, and the app answers as a careful user expects."""
import gzip
import re

import pytest

from portal import create_app
from portal.web import AUTHENTICATED, PUBLIC

PUBLIC_ENDPOINTS = {"static", "accounts.login", "home.healthz"}


def _app_rules():
    app = create_app({"TESTING": True})
    return app, [r for r in app.url_map.iter_rules() if r.endpoint != "static"]


def test_every_route_declares_the_permission_it_needs():
    app, rules = _app_rules()
    missing = [r.rule for r in rules if not getattr(app.view_functions[r.endpoint], "permission", None)]
    assert missing == []
    public = {r.endpoint for r in rules if app.view_functions[r.endpoint].permission == PUBLIC}
    assert public <= PUBLIC_ENDPOINTS


def _get_urls():
    app, rules = _app_rules()
    urls = []
    for rule in rules:
        if "GET" not in rule.methods:
            continue
        args = {name: 1 for name in rule.arguments}
        with app.test_request_context():
            from flask import url_for

            urls.append((rule.endpoint, url_for(rule.endpoint, **args),
                         app.view_functions[rule.endpoint].permission))
    return urls


@pytest.mark.parametrize("endpoint,url,permission", _get_urls(), ids=lambda v: str(v))
def test_anonymous_visitors_are_sent_to_sign_in_from_every_private_page(client, endpoint, url, permission):
    response = client.get(url)
    if permission == PUBLIC:
        assert response.status_code in (200, 503)
    else:
        assert response.status_code == 302
        assert "/login" in response.headers["Location"]


def _write_rules():
    app, rules = _app_rules()
    out = []
    for rule in rules:
        for method in sorted(rule.methods - {"GET", "HEAD", "OPTIONS"}):
            args = {name: 1 for name in rule.arguments}
            with app.test_request_context():
                from flask import url_for

                out.append((method, url_for(rule.endpoint, **args)))
    return out


@pytest.mark.parametrize("method,url", _write_rules(), ids=lambda v: str(v))
def test_every_write_without_a_csrf_token_is_refused(client, login, method, url):
    login("admin")
    response = client.open(url, method=method, csrf=False, data={})
    assert response.status_code == 400
    assert "expired" in response.get_data(as_text=True)


def test_a_viewer_gets_403_on_every_page_whose_permission_the_role_lacks(client, login):
    viewer = login("viewer")
    refused = 0
    for endpoint, url, permission in _get_urls():
        if permission in (PUBLIC, AUTHENTICATED) or viewer.can(permission):
            continue
        response = client.get(url)
        assert response.status_code == 403, url
        refused += 1
    assert refused >= 5


def test_a_role_change_applies_from_the_users_next_request(client, login, db_session):
    """Permissions are read with the user on every request, not kept from sign-in."""
    from portal.accounts.models import RolePermission

    viewer = login("viewer")
    assert client.get("/registry/individuals").status_code == 200
    role = viewer.roles[0]
    role.grants = [g for g in role.grants if g.permission != "individual.view"]
    db_session.commit()
    assert client.get("/registry/individuals").status_code == 403
    role.grants.append(RolePermission(permission="individual.view"))
    db_session.commit()
    assert client.get("/registry/individuals").status_code == 200


def test_health_check_reports_database_and_redis(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"database": "ok", "redis": "ok", "status": "ok"}


def test_health_check_answers_503_when_redis_is_unreachable(app):
    broken = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
                         "REDIS_URL": "redis://127.0.0.1:1/0"})
    response = broken.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["redis"].startswith("error")
    assert response.json["database"] == "ok"


def test_unknown_pages_get_a_friendly_404_page_and_htmx_gets_only_the_fragment(client, login):
    login("admin")
    page = client.get("/no-such-page")
    assert page.status_code == 404
    assert "<html" in page.get_data(as_text=True) and "Not found" in page.get_data(as_text=True)
    fragment = client.htmx("get", "/no-such-page")
    assert fragment.status_code == 404
    assert "<html" not in fragment.get_data(as_text=True)
    assert "Not found" in fragment.get_data(as_text=True)


def _gzipped_size(client, url):
    response = client.get(url, headers={"Accept-Encoding": "gzip"})
    body = response.get_data()
    if response.headers.get("Content-Encoding") != "gzip":
        body = gzip.compress(body)
    return response, len(body)


def test_every_page_with_its_css_and_scripts_is_under_40_kb_gzipped(client, login):
    login("admin")
    sizes = {}
    for endpoint, url, permission in _get_urls():
        response, size = _gzipped_size(client, url)
        if response.status_code != 200 or "text/html" not in response.content_type:
            continue
        html = gzip.decompress(response.get_data()).decode() \
            if response.headers.get("Content-Encoding") == "gzip" else response.get_data(as_text=True)
        assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', html)
        sizes[url] = size + sum(_gzipped_size(client, a)[1] for a in assets)
    assert sizes, "no page was measured"
    too_big = {u: s for u, s in sizes.items() if s > 40 * 1024}
    assert too_big == {}


def test_html_and_static_files_are_served_gzipped(client, login):
    login("admin")
    page = client.get("/locations/", headers={"Accept-Encoding": "gzip"})
    assert page.headers.get("Content-Encoding") == "gzip"
    script = client.get("/static/js/htmx-2.0.11.min.js", headers={"Accept-Encoding": "gzip"})
    assert script.headers.get("Content-Encoding") == "gzip"


@pytest.mark.parametrize("where", ["query", "form"])
def test_a_nul_character_sent_anywhere_is_refused_with_a_message_and_nothing_saved(
        client, login, country, db_session, where):
    from sqlalchemy import func, select

    from portal.registry.models import Individual

    login("admin")
    person = {"first_name": "Amina\x00", "last_name": "Banda", "sex": "F", "birth_date": "1990-05-17",
              "location": country["NV1"].code, "national_id_type": "national_id"}
    if where == "query":
        response = client.get("/registry/individuals", query_string={"q": "Ban\x00da"})
    else:
        response = client.post("/registry/individuals/new", data=person)
    assert response.status_code == 400
    assert "holds a NUL character" in response.get_data(as_text=True)
    assert db_session.scalar(select(func.count()).select_from(Individual)) == 0


def test_an_id_in_any_address_too_large_for_an_id_column_is_not_found_rather_than_a_server_error(
        app, client, login):
    login("admin")
    too_large = 10**20  # past any id column: PostgreSQL's (2^31-1) and SQLite's (2^63-1)
    asked = 0
    for rule in app.url_map.iter_rules():
        if "<int:" not in rule.rule:
            continue
        url = re.sub(r"<[^>]+>", "x", re.sub(r"<int:\w+>", str(too_large), rule.rule))
        method = "GET" if "GET" in rule.methods else "POST"
        assert client.open(url, method=method).status_code == 404, url
        asked += 1
    assert asked > 40  # the routes of every part, not a few
