"""Web-level security and robustness: sessions, cookies, caching of personal data, big bodies,
error answers and static files, as a careful operator on shared tablets expects them."""
import io
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

import config
from tests.conftest import PASSWORD
from tests.factories import validated_upload

NATIONAL_ID = "8812345670"


def _csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)


# --- sign-in and sign-out ---------------------------------------------------------------------

def test_a_csrf_token_handed_out_before_sign_in_no_longer_works_once_signed_in(app, make_user, db_session):
    """Sign-in starts a new session: whatever the old one held (its CSRF secret, planted or read
    by someone else) does not serve the signed-in user."""
    user = make_user("viewer")
    db_session.commit()
    browser = app.test_client()
    before = _csrf_of(browser.get("/login").get_data(as_text=True))
    browser.csrf = before
    assert browser.post("/login", data={"email": user.email, "password": PASSWORD}).status_code == 302
    response = browser.post("/account/password", csrf=False, headers={"X-CSRFToken": before}, data={
        "current": "wrong-password", "password": "new-password-1", "confirm": "new-password-1"})
    assert response.status_code == 400
    assert "The form had expired" in response.get_data(as_text=True)


def test_signing_in_again_after_a_button_whose_session_had_ended_lands_on_a_page_not_a_405(
        client, login, make_user, db_session):
    """A session ended elsewhere (password changed on another device): the next htmx button
    sends the user to sign in with ``next`` set to the POST-only address the button posted to."""
    from portal.accounts.models import User

    other = make_user("viewer")
    me = login("admin")
    db_session.get(User, me.id).set_password(PASSWORD)  # as a change on another device does
    db_session.commit()
    response = client.htmx("post", f"/admin/users/{other.id}/active", data={"active": "0"})
    sign_in = response.headers["HX-Redirect"]
    assert "/login" in sign_in
    again = client.post(sign_in, data={"email": me.email, "password": PASSWORD})
    assert again.status_code == 302
    landing = client.get(again.headers["Location"])
    assert landing.status_code == 200, (again.headers["Location"], landing.status_code)


# --- cookies ----------------------------------------------------------------------------------

def test_the_production_configuration_sends_the_session_cookie_over_https_only(monkeypatch):
    monkeypatch.setenv("PORTAL_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "a-production-secret")
    monkeypatch.delenv("SESSION_COOKIE_SECURE", raising=False)
    settings = config.load()
    assert settings["SESSION_COOKIE_SECURE"] is True


# --- caching of personal data -----------------------------------------------------------------

@pytest.fixture
def person(make_individual, country, db_session):
    found = make_individual("Amina", "Banda", location=country["NV1"], national_id=NATIONAL_ID)
    db_session.commit()
    return found


@pytest.mark.parametrize("htmx", [False, True], ids=["page", "htmx fragment"])
def test_a_persons_page_showing_their_national_id_is_never_stored_by_the_browser(
        client, login, person, htmx):
    login("admin")
    url = f"/registry/individuals/{person.id}"
    response = client.htmx("get", url) if htmx else client.get(url)
    assert response.status_code == 200
    assert NATIONAL_ID in response.get_data(as_text=True)
    assert "no-store" in response.headers.get("Cache-Control", ""), response.headers.get("Cache-Control")


def test_a_search_showing_national_ids_is_never_stored_by_the_browser(client, login, person):
    login("admin")
    response = client.get("/registry/individuals", query_string={"q": "Banda"})
    assert NATIONAL_ID in response.get_data(as_text=True)
    assert "no-store" in response.headers.get("Cache-Control", ""), response.headers.get("Cache-Control")


def test_the_original_file_of_an_upload_with_national_ids_is_downloaded_with_no_store(
        client, login, country, db_session, tmp_path):
    user = login("admin")
    upload = validated_upload(db_session, tmp_path, f"Amina,Banda,F,1990-05-17,{NATIONAL_ID},NV1,,,\n",
                              uploader=user)
    db_session.commit()
    response = client.get(f"/imports/{upload.id}/file")
    assert response.status_code == 200 and NATIONAL_ID.encode() in response.get_data()
    assert "no-store" in response.headers.get("Cache-Control", ""), response.headers.get("Cache-Control")


# --- big bodies -------------------------------------------------------------------------------

def test_a_sign_in_form_of_megabytes_is_refused_with_413_before_it_is_parsed(client):
    """Only file uploads need the 50 MB limit: 45 MB of empty fields posted to /login would
    keep a worker busy for half a minute."""
    body = b"a=&" * (2 * 1024 * 1024 // 3)
    response = client.post("/login", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 413
    assert "far larger than any form" in response.get_data(as_text=True)


# --- error answers ----------------------------------------------------------------------------

def test_a_405_answer_names_the_methods_the_address_accepts(client, login):
    login("viewer")
    response = client.get("/logout")
    assert response.status_code == 405
    # HTTP requires an Allow header on 405; the custom error page drops Werkzeug's.
    assert "POST" in response.headers.get("Allow", "")


# --- static files -----------------------------------------------------------------------------

def _assets(client) -> list[str]:
    return re.findall(r'(?:href|src)="(/static/[^"?]+(?:\?[^"]*)?)"', client.get("/").get_data(as_text=True))


def test_the_scripts_and_styles_a_page_links_carry_a_version_in_their_address(client, login):
    """Without one, a long cache would keep old CSS and JS after a release; with one it can be."""
    login("viewer")
    unversioned = [url for url in _assets(client)
                   if not re.search(r"(\?v=\w+|[.-][0-9a-f]{8,}\.\w+$|-\d+\.\d+\.\d+)", url)]
    assert unversioned == []


def test_static_files_with_a_version_in_their_name_are_cached_for_a_long_time(client, login):
    login("viewer")
    response = client.get("/static/js/htmx-2.0.11.min.js")
    assert response.status_code == 200
    cache = response.headers.get("Cache-Control", "")
    max_age = re.search(r"max-age=(\d+)", cache)
    assert max_age and int(max_age.group(1)) >= 30 * 24 * 3600, cache


def test_a_static_file_fetched_by_a_signed_in_user_sets_no_cookie(client, login):
    """No asset renews the session cookie or varies by it, so a shared cache may keep it."""
    login("viewer")
    response = client.get("/static/css/portal.css")
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    assert "Cookie" not in response.headers.get("Vary", "")


def test_a_plain_form_sent_after_the_session_ended_signs_in_and_returns_to_the_page_it_came_from(
        app, client, make_user, db_session):
    me = make_user("admin")
    db_session.commit()
    response = client.post("/account/password", headers={"Referer": "http://localhost/admin/users?q=ab"},
                           data={"current": "x"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/admin/users?q%3Dab"
    again = client.post(response.headers["Location"], data={"email": me.email, "password": PASSWORD})
    assert again.headers["Location"] == "/admin/users?q=ab"


def test_a_form_sent_from_another_site_while_signed_out_signs_in_to_the_home_page(client, make_user, db_session):
    make_user("admin")
    db_session.commit()
    response = client.post("/account/password", headers={"Referer": "https://elsewhere.example/x"},
                           data={"current": "x"})
    assert response.headers["Location"] == "/login"


def _signed_in(app, user):
    """A browser of its own, signed in through the form."""
    browser = app.test_client()
    assert browser.post("/login", data={"email": user.email, "password": PASSWORD}).status_code == 302
    assert browser.get("/").status_code == 200
    return browser


def test_a_session_cookie_copied_before_sign_out_signs_nobody_in_after_it(app, make_user, db_session):
    user = make_user("viewer")
    db_session.commit()
    browser = _signed_in(app, user)
    copied = browser.get_cookie("session").value
    browser.post("/logout")
    browser.set_cookie("session", copied)
    assert browser.get("/").status_code == 302


def test_signing_out_in_one_browser_leaves_the_users_other_sessions_signed_in(app, make_user, db_session):
    user = make_user("viewer")
    db_session.commit()
    tablet, desk = _signed_in(app, user), _signed_in(app, user)
    tablet.post("/logout")
    assert tablet.get("/").status_code == 302
    assert desk.get("/").status_code == 200


def test_a_sign_in_ends_after_its_last_day_however_busy(app, make_user, db_session):
    from portal.accounts.models import SignIn
    from portal.accounts.services import SIGN_IN_DAYS
    from portal.clock import now

    user = make_user("viewer")
    db_session.commit()
    browser = _signed_in(app, user)
    for sign_in in db_session.scalars(select(SignIn).where(SignIn.user_id == user.id)):
        sign_in.started_at = now() - timedelta(days=SIGN_IN_DAYS, minutes=1)
    db_session.commit()
    assert browser.get("/").status_code == 302


def test_signing_in_after_an_htmx_cancel_button_whose_session_had_ended_lands_on_a_page_not_a_bare_table_row(
        client, login, country, db_session, tmp_path):
    """An htmx GET (the grid's Cancel button fetches one ``<tr>``) returns after sign-in to the
    page it came from, not to the address it fetched, which is no page."""
    from portal.accounts.models import User

    me = login("admin")
    upload = validated_upload(db_session, tmp_path, "Amina,Banda,X,1990-05-17,,NV1,,,\n", uploader=me)
    db_session.get(User, me.id).set_password(PASSWORD)  # the session ends, as a change on another device does
    db_session.commit()
    page = f"http://localhost/imports/{upload.id}/rows"
    response = client.htmx("get", f"/imports/{upload.id}/rows/2", headers={"HX-Current-URL": page})
    sign_in = response.headers["HX-Redirect"]
    again = client.post(sign_in, data={"email": me.email, "password": PASSWORD})
    assert again.status_code == 302
    landing = client.get(again.headers["Location"])
    body = landing.get_data(as_text=True)
    assert landing.status_code == 200
    assert "<html" in body.lower(), (again.headers["Location"], body[:200])


def test_a_sign_in_form_of_megabytes_sent_as_multipart_is_refused_with_413_too(client):
    """Only the views that take a file take a body up to the upload limit, whatever a body
    calls itself."""
    response = client.post("/login", content_type="multipart/form-data", data={
        "email": "nobody@example.org", "password": "x",
        "padding": (io.BytesIO(b"a" * (3 * 1024 * 1024)), "padding.bin")})
    assert response.status_code == 413, response.status_code
