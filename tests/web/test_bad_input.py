"""Bad input gets a clear message, never a server error: every route of the URL map is sent
empty forms, garbage forms and garbage query strings, as page and as htmx requests.

How it works:
- The routes come from ``app.url_map``; a test per route, so a failure names the route.
- A ``world`` of real objects (people, a household, a cooperative, a program with a beneficiary
  and extra fields, custom fields, an institution and a scheme, a validated upload and one
  waiting for its columns, a failed job, another user) fills the URL variables; group routes
  run for the household and for the cooperative, downloads in both formats.
- The fields a route reads are found two ways: the view's own reads of ``request.form``,
  ``request.args`` and ``request.files`` are recorded while it answers (so fields read only
  after others passed are found too), and the app's pages are read once for the ``<form>``s
  that post to each route (to know file inputs, and a valid choice for each select).
- A request counts as a server error when it answers 500 or more, or when the server raised
  (also while streaming a download); the exception is caught through Flask's
  ``got_request_exception`` signal, so every request of a route is tried and all are reported.
"""
from __future__ import annotations

import io
import traceback
from collections import defaultdict
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from flask import got_request_exception, url_for
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.exceptions import HTTPException

from portal import create_app
from portal.web import PUBLIC
from tests.conftest import PASSWORD

LONG = ("Chikondi Banda 42 " * 600)[:10_000]
GARBAGE = {
    "10,000 characters": LONG,
    "a formula": "=1+2",
    "minus one": "-1",
    "letters": "abc",
    "an impossible date": "2026-02-31",
    "a NUL character": "\x00",
    "a number too large for the database": "99999999999999999999",
}
HUGE = GARBAGE["a number too large for the database"]
QUERY_GARBAGE = [("page", "-1"), ("page", "abc"), ("page", HUGE), ("parent", HUGE), ("actor_id", HUGE),
                 ("institution", HUGE), ("group", "²"), ("location", "²"), ("age_min", "-10000"),
                 ("age_max", "99999"), ("sort", "nonsense"), ("q", LONG), ("ids", "abc"), ("ids", HUGE)]


# --- the routes -------------------------------------------------------------------------------

def _rules():
    app = create_app({"TESTING": True})
    return app, sorted((r for r in app.url_map.iter_rules() if r.endpoint != "static"),
                       key=lambda r: (r.rule, r.endpoint))


def _variants(rule) -> list[str]:
    """Routes of a group run for a household and a cooperative; downloads in both formats."""
    if "group_id" in rule.arguments:
        return ["household", "cooperative"]
    if "fmt" in rule.arguments:
        return ["csv", "xlsx"]
    return [""]


def _cases(method: str):
    app, rules = _rules()
    cases = []
    for rule in rules:
        if method not in rule.methods:
            continue
        for variant in _variants(rule):
            label = f"{method} {rule.rule}" + (f" ({variant})" if variant else "")
            cases.append(pytest.param(rule.endpoint, variant, id=label))
    return cases


POST_CASES = _cases("POST")
GET_CASES = _cases("GET")


# --- the world the URLs point into ----------------------------------------------------------

class World:
    """Ids of real objects, and the URL of each route with them filled in."""

    def __init__(self, admin_email: str, search: str, ids: dict, per_endpoint: dict, per_variant: dict):
        self.admin_email = admin_email
        self.search = search  # a name that finds people of the world
        self.ids = ids
        self.per_endpoint = per_endpoint
        self.per_variant = per_variant

    def url(self, endpoint: str, variant: str = "") -> str:
        from flask import current_app

        rule = next(current_app.url_map.iter_rules(endpoint))
        values = {}
        for name in rule.arguments:
            values[name] = self.per_variant.get((variant, name),
                                                self.per_endpoint.get((endpoint, name),
                                                                      self.ids.get(name, 1)))
        with current_app.test_request_context():
            return url_for(endpoint, **values)


HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"


@pytest.fixture
def world(db_session, country, login, make_user, make_individual, make_household, make_group,
          tmp_path) -> World:
    from sqlalchemy import select

    from portal.accounts.models import Role
    from portal.background.services import create_job
    from portal.imports import services as imports
    from portal.locations.services import Scope
    from portal.programs import services as programs
    from portal.programs.models import Beneficiary
    from portal.registry import services as registry
    from portal.registry.models import GroupMember

    everything = Scope(everything=True)
    admin = login("admin")
    village = country["NV1"]
    person = make_individual(location=village)
    household = make_household(3, location=village)
    cooperative = make_group("cooperative", members=[person, make_individual(location=village)])
    household_member = db_session.scalar(select(GroupMember.id).where(
        GroupMember.group_id == household.id, GroupMember.role != "head").order_by(GroupMember.id))
    cooperative_member = db_session.scalar(select(GroupMember.id).where(
        GroupMember.group_id == cooperative.id).order_by(GroupMember.id))

    for name, kind, choices in (("income", "integer", []), ("registered_on", "date", []),
                                ("wealth", "choice", ["low", "high"])):
        custom = registry.save_custom_field(
            db_session, None, name=name, label=name.replace("_", " ").title(), type=kind,
            required=False, unique=False, pattern="", choices=choices, actor_id=admin.id)

    institution = programs.save_institution(db_session, None, code="BADMIN", name="Ministry")
    scheme = programs.save_scheme(db_session, None, code="BADSCH", name="Scheme")
    program = programs.save_program(db_session, None, code="BAD1", name="Bad input program",
                                    beneficiary_kind="individual", institution_id=institution.id,
                                    scheme_id=scheme.id, max_beneficiaries=100)
    for name, kind in (("grade", "integer"), ("joined_on", "date")):
        program_field = programs.save_program_field(db_session, program, None, name=name,
                                                    label=name.title(), type=kind)
    programs.activate_program(db_session, program)
    programs.enrol(db_session, program.id, individual_ids=[person.id], status="active",
                   actor_id=admin.id, scope=everything)
    beneficiary = db_session.scalar(select(Beneficiary.id).where(Beneficiary.program_id == program.id))

    def upload(text: str, name: str):
        path = tmp_path / name
        path.write_text(text)
        return imports.receive_upload(db_session, path=path, file_name=name, duplicate_policy="error",
                                      day_first=None, program_id=None, enrol_status=None, area_id=None,
                                      actor_id=admin.id, max_rows=100)

    validated = upload(HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n"
                       + "Amina,Banda,F,1990-05-17,,NV1,,,\n", "people.csv")
    imports.validate_upload(db_session, validated, scope=everything, progress=lambda *a, **k: None)
    to_map = upload("Given;Family;Gender;DOB;Village\nAmina;Banda;F;1990-05-17;NV1\n", "mapping.csv")
    assert to_map.status == "mapping"

    run = create_job(db_session, kind="location_import", entry_point="jobs.locations.import_locations",
                     params={"path": str(tmp_path / "missing.csv"), "file_name": "missing.csv",
                             "everything": True, "paths": []}, actor_id=admin.id)
    run.status, run.message = "failed", "Failed for the test"
    other_user = make_user("viewer", [country["N"]])
    viewer_role = db_session.scalar(select(Role.id).where(Role.name == "viewer"))
    db_session.commit()

    return World(
        admin.email, household.name.split()[0],
        ids={"individual_id": person.id, "group_id": household.id, "member_id": household_member,
             "program_id": program.id, "beneficiary_id": beneficiary, "location_id": country["NV2"].id,
             "upload_id": validated.id, "row_number": 2, "run_id": run.id, "user_id": other_user.id,
             "role_id": viewer_role, "org_id": institution.id, "field_id": custom.id, "fmt": "csv"},
        per_endpoint={("programs.edit_field", "field_id"): program_field.id,
                      ("programs.scheme", "org_id"): scheme.id,
                      ("programs.edit_scheme", "org_id"): scheme.id,
                      ("imports.mapping", "upload_id"): to_map.id},
        per_variant={("cooperative", "group_id"): cooperative.id,
                     ("cooperative", "member_id"): cooperative_member,
                     ("xlsx", "fmt"): "xlsx"})


# --- which fields a route reads ---------------------------------------------------------------

_read_keys: set[str] = set()


class RecordingMultiDict(ImmutableMultiDict):
    """request.form/args/files that note each key the view asks for."""

    def __getitem__(self, key):
        _read_keys.add(key)
        return super().__getitem__(key)

    def get(self, key, *args, **kwargs):
        _read_keys.add(key)
        return super().get(key, *args, **kwargs)

    def getlist(self, key, *args, **kwargs):
        _read_keys.add(key)
        return super().getlist(key, *args, **kwargs)

    def __contains__(self, key):
        _read_keys.add(key)
        return super().__contains__(key)


class FormReader(HTMLParser):
    """The post forms of a page: their target and fields (kind, choices, preselected value)."""

    def __init__(self, page_url: str):
        super().__init__(convert_charrefs=True)
        self.page_url = page_url
        self.forms: list[dict] = []
        self.by_id: dict[str, dict] = {}
        self.outside: list[tuple[str, dict]] = []
        self.form: dict | None = None
        self.select: dict | None = None

    def _add(self, attrs: dict, field: dict) -> None:
        owner = attrs.get("form")
        if owner:
            self.outside.append((owner, field))
        elif self.form is not None:
            self.form["fields"].append(field)

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            method = "post" if a.get("hx-post") else (a.get("method") or "get").lower()
            self.form = {"method": method, "fields": [],
                         "target": a.get("hx-post") or a.get("hx-get") or a.get("action") or self.page_url}
            self.forms.append(self.form)
            if a.get("id"):
                self.by_id[a["id"]] = self.form
        elif tag == "select" and a.get("name"):
            self.select = {"name": a["name"], "kind": "choice", "options": [], "value": None}
            self._add(a, self.select)
        elif tag == "option" and self.select is not None and "value" in a:
            self.select["options"].append(a["value"])
            if "selected" in a or self.select["value"] is None and a["value"]:
                self.select["value"] = a["value"]
        elif tag in ("input", "textarea", "button") and a.get("name"):
            kind = (a.get("type") or "text").lower() if tag == "input" else "text"
            if tag == "button" or kind in ("radio", "checkbox"):
                checked = "checked" in a or tag == "button"
                self._add(a, {"name": a["name"], "kind": "choice", "options": [a.get("value", "on")],
                              "value": a.get("value", "on") if checked else None})
            else:
                self._add(a, {"name": a["name"], "kind": "file" if kind == "file" else "text",
                              "options": [], "value": a.get("value")})

    def handle_endtag(self, tag):
        if tag == "form":
            self.form = None
        elif tag == "select":
            self.select = None

    def all_forms(self) -> list[dict]:
        for owner, field in self.outside:
            if owner in self.by_id:
                self.by_id[owner]["fields"].append(field)
        return self.forms


def _page_forms(app, client, url: str) -> dict[str, dict[str, dict]]:
    """The forms of one page: the endpoint each sends to -> field name -> field. A GET form
    counts for the POST of the same URL too: the hypermedia pages preview a change by GET
    and make it by POST, with the same fields."""
    found: dict[str, dict[str, dict]] = defaultdict(dict)
    response = client.get(url)
    if "text/html" not in response.content_type:
        return found
    reader = FormReader(url.split("?")[0])
    reader.feed(response.get_data(as_text=True))
    adapter = app.url_map.bind("localhost")
    for form in reader.all_forms():
        try:
            target, _args = adapter.match(urlsplit(form["target"]).path, method=form["method"].upper())
        except HTTPException:
            continue
        for field in form["fields"]:
            known = found[target].setdefault(field["name"], {**field, "options": []})
            known["options"] = sorted(set(known["options"]) | set(field["options"]))
            known["value"] = known["value"] or field["value"]
    return found


_pages_by_endpoint: dict[str, list[tuple[str, str, bool]]] | None = None


def _page_url(world, page: tuple[str, str, bool]) -> str:
    endpoint, variant, searched = page
    return world.url(endpoint, variant) + (f"?q={world.search}" if searched else "")


def _fields(app, client, world, endpoint: str) -> dict[str, dict]:
    """The fields of the forms that send to ``endpoint``, read from the pages that hold them.
    Which pages those are is found once, by reading every page of the world (also after a
    search, which shows the forms of the results); their values are read again in each test,
    so the ids in them are this test's ids."""
    global _pages_by_endpoint
    if _pages_by_endpoint is None:
        pages: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
        for param in GET_CASES:
            for searched in (False, True):
                page = (*param.values, searched)
                for target in _page_forms(app, client, _page_url(world, page)):
                    pages[target].append(page)
        _pages_by_endpoint = dict(pages)
    fields: dict[str, dict] = {}
    for page in _pages_by_endpoint.get(endpoint, []):
        for name, field in _page_forms(app, client, _page_url(world, page)).get(endpoint, {}).items():
            known = fields.setdefault(name, field)
            known["options"] = sorted(set(known["options"]) | set(field["options"]))
            known["value"] = known["value"] or field["value"]
    return fields


# --- sending and judging requests -------------------------------------------------------------

class Probe:
    """Sends requests as one signed-in user and keeps every server error with its cause."""

    def __init__(self, app, client, world, signed_in: bool):
        self.app, self.client, self.world, self.signed_in = app, client, world, signed_in
        self.errors: dict[str, list[str]] = {}
        self.raised: list[BaseException] = []
        self.sent: set = set()

    def _note(self, sender, exception, **extra):
        self.raised.append(exception)

    def __enter__(self):
        got_request_exception.connect(self._note, self.app)
        return self

    def __exit__(self, *exc):
        got_request_exception.disconnect(self._note, self.app)

    def send(self, method: str, url: str, label: str, *, htmx=False, data=None, query=None):
        """Send one request (unless the very same was sent already) and judge its answer."""
        same = (method, url, htmx, _signature(data), _signature(query))
        if same in self.sent:
            return None
        self.sent.add(same)
        self.raised.clear()
        headers = {"HX-Request": "true"} if htmx else {}
        request = f"{'htmx ' if htmx else ''}{method} {url}{' ' + label if label else ''}"
        try:
            response = self.client.open(url, method=method, headers=headers, data=data,
                                        query_string=query)
            response.get_data()  # a streamed download fails only while it is read
        except Exception as exc:  # a server error the handler never saw (streaming)
            self._error(request, exc, "raised while streaming the answer")
            self._recover()
            return None
        if response.status_code >= 500:
            cause = self.raised[-1] if self.raised else None
            self._error(request, cause, f"answered {response.status_code}")
        if self.signed_in and "/login" in (response.headers.get("Location", "")
                                           + response.headers.get("HX-Redirect", "")):
            self._sign_in()  # sign-out and password changes end the session: sign in again
        return response

    def _error(self, request: str, exc: BaseException | None, how: str) -> None:
        if exc is None:
            cause = "no exception was raised"
        else:
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if "/portal/" in f.filename or "/templates/" in f.filename]
            where = ours[-1] if ours else (frames[-1] if frames else None)
            text = traceback.format_exception_only(type(exc), exc)[0].strip().splitlines()[0]
            cause = text[:300] + (f"  [at {where.filename.split('/main/')[-1]}:{where.lineno} "
                                  f"in {where.name}]" if where else "")
        self.errors.setdefault(cause, []).append(f"{request[:160]} {how}")

    def _recover(self) -> None:
        from portal.extensions import db

        db.session.rollback()

    def _sign_in(self) -> None:
        reads = set(_read_keys)  # what the sign-in page reads is not the route's reading
        self.client.post("/login", data={"email": self.world.admin_email, "password": PASSWORD})
        _read_keys.clear()
        _read_keys.update(reads)

    def report(self) -> str:
        lines = []
        for cause, requests in self.errors.items():
            lines.append(f"{cause}\n    first by: {requests[0]}\n    {len(requests)} request(s) in all")
        return "\n".join(lines)


def _signature(values) -> tuple:
    items = values.items() if isinstance(values, dict) else (values or [])
    return tuple(sorted((k, v if isinstance(v, str) else ("file", v[0].getvalue(), v[1]))
                        for k, v in items))


def _value(field: dict | None, garbage: str):
    if field is not None and field["kind"] == "file":
        return (io.BytesIO(garbage.encode()), f"{garbage[:200]}.csv")
    return garbage


def _form(names, fields: dict, garbage: str | None, *, keep_choices: bool, token: str) -> dict:
    """Every field holds ``garbage``; with ``keep_choices`` selects and checkboxes keep a valid
    choice, so the garbage in the free fields gets past the choices to the rules behind them."""
    data = {"csrf_token": token}
    for name in sorted(names):
        field = fields.get(name)
        if keep_choices and field is not None and field["kind"] == "choice":
            if field["value"] is not None:
                data[name] = field["value"]
        elif garbage is not None:
            data[name] = _value(field, garbage)
    return data


# --- the tests --------------------------------------------------------------------------------

@pytest.fixture
def probe(app, client, world, monkeypatch):
    """Server errors answer 500 as in production, and the keys a view reads are recorded."""
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)
    monkeypatch.setattr(app.request_class, "parameter_storage_class", RecordingMultiDict)
    _read_keys.clear()

    def make(signed_in: bool = True):
        return Probe(app, client if signed_in else app.test_client(), world, signed_in)

    return make


@pytest.mark.parametrize("endpoint,variant", POST_CASES)
def test_no_post_route_answers_bad_input_with_a_server_error(app, client, world, probe, endpoint, variant):
    public = app.view_functions[endpoint].permission == PUBLIC
    fields = _fields(app, client, world, endpoint)
    _read_keys.clear()  # reading the pages for their forms is not this route's reading
    url = world.url(endpoint, variant)
    with probe(signed_in=not public) as p:
        p.client.get("/login")  # a fresh request first: the token is read with nobody's user in ``g``
        token = p.client.token()
        for htmx in (False, True):
            p.send("POST", url, "with an empty form", htmx=htmx, data={"csrf_token": token})
        # Fields read only once others pass are found by sending what was read, until no new one.
        names: set[str] = set()
        for _round in range(4):
            known = names | set(fields)
            names = (known | _read_keys) - {"csrf_token"}
            if _round and names == known:
                break
            p.send("POST", url, "finding fields", data=_form(names, fields, "abc", keep_choices=True,
                                                             token=token))
        for what, garbage in GARBAGE.items():
            for htmx in (False, True):
                for keep_choices in (False, True):
                    label = (f"with {what} in every free field and valid choices" if keep_choices
                             else f"with {what} in every field")
                    p.send("POST", url, label, htmx=htmx,
                           data=_form(names, fields, garbage, keep_choices=keep_choices, token=token))
    assert not p.errors, f"server errors on POST {url}:\n{p.report()}"


@pytest.mark.parametrize("endpoint,variant", GET_CASES)
def test_no_page_answers_a_garbage_query_string_with_a_server_error(app, world, probe, endpoint, variant):
    public = app.view_functions[endpoint].permission == PUBLIC
    url = world.url(endpoint, variant)
    with probe(signed_in=not public) as p:
        for name, garbage in QUERY_GARBAGE:
            p.send("GET", url, f"with {name}={garbage[:12]}{'...' if len(garbage) > 12 else ''}",
                   query={name: garbage})
        for htmx in (False, True):
            p.send("GET", url, "with every garbage parameter", htmx=htmx, query=QUERY_GARBAGE)
        names = set(_read_keys) - {"csrf_token"}
        for what, garbage in GARBAGE.items() if names else ():
            p.send("GET", url, f"with {what} in every parameter it reads ({', '.join(sorted(names))})",
                   query={name: garbage for name in names})
    assert not p.errors, f"server errors on GET {url}:\n{p.report()}"
