from __future__ import annotations

import csv
import io
import re
from datetime import date

import pytest
from sqlalchemy import select

from portal.locations.services import Scope
from portal.programs import services
from portal.programs.models import Beneficiary, Program


def _enrol(db_session, plan, people, status="potential"):
    services.enrol(db_session, plan.id, individual_ids=[p.id for p in people], status=status,
                   actor_id=None, scope=Scope(everything=True))
    db_session.commit()


def test_a_manager_creates_a_program_and_sees_it_listed(client, login, db_session):
    login("program_manager")
    response = client.post("/programs/new", data={
        "code": "SCT", "name": "Social cash transfer", "beneficiary_kind": "group",
        "max_beneficiaries": "100", "amount": "15000", "currency": "MWK",
        "institution_id": "0", "scheme_id": "0", "date_from": "2026-01-01", "date_to": "2026-12-31"})
    assert response.status_code == 302
    program = db_session.scalar(select(Program).where(Program.code == "SCT"))
    assert program.status == "draft" and program.max_beneficiaries == 100
    assert "Social cash transfer" in client.get("/programs/").get_data(as_text=True)
    page = client.get(f"/programs/{program.id}").get_data(as_text=True)
    assert "0 of 100 places taken" in page and "2026-01-01" in page


def test_a_program_form_with_errors_answers_422(client, login, program):
    existing = program(code="DUP")
    login("program_manager")
    response = client.post("/programs/new", data={"code": existing.code, "name": "Again",
                                                  "beneficiary_kind": "individual",
                                                  "institution_id": "0", "scheme_id": "0"})
    assert response.status_code == 422
    assert "already used" in response.get_data(as_text=True)


def test_a_viewer_sees_programs_but_cannot_manage_them(client, login, program):
    plan = program()
    login("viewer")
    assert client.get(f"/programs/{plan.id}").status_code == 200
    assert client.get("/programs/new").status_code == 403
    assert client.post(f"/programs/{plan.id}/close", data={}).status_code == 403
    assert client.get(f"/programs/{plan.id}/enrol").status_code == 403


def test_closing_shows_how_many_will_graduate_then_graduates_them(client, login, db_session, program,
                                                                  person):
    plan = program()
    _enrol(db_session, plan, [person(), person()], status="active")
    login("program_manager")
    confirm = client.get(f"/programs/{plan.id}/close").get_data(as_text=True)
    assert "<strong>2</strong> active beneficiaries will be graduated" in confirm
    response = client.post(f"/programs/{plan.id}/close", data={"reason": "Funding ended"})
    assert response.status_code == 303
    db_session.expire_all()
    assert db_session.get(Program, plan.id).status == "closed"
    assert services.status_counts(db_session, plan, scope=Scope(everything=True))["graduated"] == 2
    # read-only afterwards, in the pages too
    assert client.post(f"/programs/{plan.id}/edit", data={"code": plan.code, "name": "x"}
                       ).status_code == 302


def test_a_manager_limited_to_some_locations_is_neither_offered_nor_allowed_to_close(
        client, login, db_session, program, person, country):
    plan = program()
    _enrol(db_session, plan, [person("NV1"), person("SV1")], status="active")
    login("program_manager", locations=[country["N"]])
    assert "Close program" not in client.get(f"/programs/{plan.id}").get_data(as_text=True)
    confirm = client.get(f"/programs/{plan.id}/close")
    assert confirm.status_code == 403
    assert "only a user who sees all locations" in confirm.get_data(as_text=True)
    assert "will be graduated" not in confirm.get_data(as_text=True)
    refused = client.post(f"/programs/{plan.id}/close", data={"reason": "Funding ended"})
    assert refused.status_code == 403
    db_session.expire_all()
    assert db_session.get(Program, plan.id).status == "active"
    assert services.status_counts(db_session, plan, scope=Scope(everything=True))["active"] == 2


def test_the_program_page_draws_counts_by_status_and_region(client, login, db_session, program,
                                                            person):
    plan = program(max_beneficiaries=10)
    _enrol(db_session, plan, [person("NV1"), person("SV1"), person("SV2")])
    login("viewer")
    page = client.get(f"/programs/{plan.id}").get_data(as_text=True)
    assert 'aria-label="Beneficiaries by region"' in page
    assert ">S region</text>" in page and ">N region</text>" in page
    assert "3 of 10 places taken; 7 left." in page


def test_the_beneficiary_list_has_status_tabs_with_counts_within_the_officers_scope(
        client, login, db_session, program, person, country):
    plan = program()
    _enrol(db_session, plan, [person("NV1", first_name="Northerner"), person("SV1", first_name="Southerner")])
    _enrol(db_session, plan, [person("NV2", first_name="Active")], status="active")
    login("viewer", locations=[country["N"]])
    page = client.get(f"/programs/{plan.id}/beneficiaries").get_data(as_text=True)
    assert "Northerner" in page and "Active" in page and "Southerner" not in page
    assert 'All <span class="badge">2</span>' in page
    assert 'Potential <span class="badge">1</span>' in page
    tab = client.htmx("get", f"/programs/{plan.id}/beneficiaries?status=active").get_data(as_text=True)
    assert "Active" in tab and "Northerner" not in tab and "<html" not in tab


def test_a_beneficiary_outside_the_officers_scope_answers_404(client, login, db_session, program,
                                                             person, country):
    plan = program()
    south = person("SV1")
    _enrol(db_session, plan, [south])
    beneficiary = db_session.scalar(select(Beneficiary).where(Beneficiary.individual_id == south.id))
    login("program_manager", locations=[country["N"]])
    assert client.get(f"/programs/beneficiaries/{beneficiary.id}").status_code == 404


def test_the_export_is_masked_and_within_scope(client, login, db_session, program, person, country,
                                               make_user):
    from portal.accounts.models import Role, RolePermission

    plan = program()
    _enrol(db_session, plan, [person("NV1", national_id="NORTH-1234"), person("SV1")])
    # a role that exports without seeing identifiers
    role = db_session.scalar(select(Role).where(Role.name == "viewer"))
    role.grants.append(RolePermission(permission="individual.export"))
    db_session.commit()
    login("viewer", locations=[country["N"]])
    response = client.get(f"/programs/{plan.id}/beneficiaries/export?format=csv")
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))
    assert len(rows) == 2  # header + the northerner only
    assert rows[1][rows[0].index("National ID")] == "••••••1234"


def test_the_export_is_plain_for_a_manager_and_comes_as_xlsx_too(client, login, db_session, program,
                                                                 person):
    plan = program()
    _enrol(db_session, plan, [person(national_id="=cmd|x")])
    login("program_manager")
    text = client.get(f"/programs/{plan.id}/beneficiaries/export?format=csv").get_data(as_text=True)
    assert "'=cmd|x" in text
    xlsx = client.get(f"/programs/{plan.id}/beneficiaries/export?format=xlsx")
    assert xlsx.status_code == 200 and xlsx.get_data()[:2] == b"PK"


def test_an_export_with_a_filter_it_cannot_read_exports_nothing_and_shows_the_filters_to_correct(
        client, login, db_session, program, person):
    plan = program()
    _enrol(db_session, plan, [person(), person()])
    login("program_manager")
    response = client.get(f"/programs/{plan.id}/beneficiaries/export?format=csv&location=NOWHERE&age_min=abc")
    assert response.status_code == 302
    assert response.headers["Location"].startswith(f"/programs/{plan.id}/beneficiaries?")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Nothing was exported: correct the filters marked below first." in page
    assert "No location has the code NOWHERE." in page and "Enter a whole number." in page


def test_enrolling_a_person_from_the_program_page(client, login, db_session, program, person):
    plan = program(max_beneficiaries=1)
    mercy = person(first_name="Mercy", last_name="Tembo")
    other = person()
    login("program_manager")
    found = client.get(f"/programs/{plan.id}/enrol?q=tembo").get_data(as_text=True)
    assert "Mercy Tembo" in found
    response = client.post(f"/programs/{plan.id}/enrol", data={"individual_id": mercy.id,
                                                                "status": "active", "q": "tembo"})
    assert response.status_code == 303
    assert services.taken_places(db_session, plan.id) == 1
    refused = client.post(f"/programs/{plan.id}/enrol", data={"individual_id": other.id,
                                                               "status": "potential"})
    assert refused.status_code == 422
    assert "0 places left" in refused.get_data(as_text=True)


def test_enrolment_by_criteria_previews_and_confirms(client, login, db_session, program, person):
    plan = program()
    for _ in range(3):
        person("NV1", sex="F", birth_date=date(1950, 1, 1))
    person("NV1", sex="M")
    login("program_manager")
    preview = client.htmx("get", f"/programs/{plan.id}/enrol/criteria?location=N&sex=F&age_min=60")
    text = preview.get_data(as_text=True)
    assert "<strong>3</strong> match" in text and "Enrol 3" in text
    response = client.post(f"/programs/{plan.id}/enrol/criteria", data={
        "location": "N", "sex": "F", "age_min": "60", "status": "potential", "expected": "3"})
    assert response.status_code == 303
    assert services.taken_places(db_session, plan.id) == 3
    again = client.htmx("get", f"/programs/{plan.id}/enrol/criteria?location=N&sex=F&age_min=60")
    assert "<strong>3</strong> already enrolled" in again.get_data(as_text=True)


def test_an_unknown_location_in_the_criteria_is_an_error_not_a_crash(client, login, program):
    plan = program()
    login("program_manager")
    response = client.post(f"/programs/{plan.id}/enrol/criteria",
                           data={"location": "NOPE", "status": "potential"})
    assert response.status_code == 422
    assert "No location has the code NOPE" in response.get_data(as_text=True)


def test_criteria_with_age_from_above_age_to_are_a_form_error_and_enrol_nobody(
        client, login, db_session, program, person):
    plan = program()
    person(birth_date=date(1950, 1, 1))
    login("program_manager")
    message = "Age to (10) is less than age from (90), so nobody could match: swap them."
    preview = client.htmx("get", f"/programs/{plan.id}/enrol/criteria?age_min=90&age_max=10")
    assert message in preview.get_data(as_text=True)
    assert "match" not in preview.get_data(as_text=True).replace(message, "")
    response = client.post(f"/programs/{plan.id}/enrol/criteria",
                           data={"age_min": "90", "age_max": "10", "status": "potential"})
    assert response.status_code == 422 and message in response.get_data(as_text=True)
    assert services.taken_places(db_session, plan.id) == 0


def test_criteria_with_household_size_from_above_to_are_a_form_error(client, login, program):
    plan = program()
    login("program_manager")
    preview = client.htmx("get", f"/programs/{plan.id}/enrol/criteria?hh_min=5&hh_max=2")
    assert ("Household size to (2) is less than household size from (5), so nobody could match: "
            "swap them.") in preview.get_data(as_text=True)


def test_beneficiary_filters_with_age_from_above_age_to_say_so_live_and_on_the_page_and_export_nothing(
        client, login, db_session, program, person):
    plan = program()
    _enrol(db_session, plan, [person()])
    login("program_manager")
    said = ('<p class="error" role="alert">Age to (10) is less than age from (90), so nobody could '
            "match: swap them.</p>")
    page = client.get(f"/programs/{plan.id}/beneficiaries?age_min=90&age_max=10").get_data(as_text=True)
    assert said in page
    live = client.htmx("get", f"/programs/{plan.id}/beneficiaries?age_min=90&age_max=10")
    assert live.status_code == 200 and said in live.get_data(as_text=True)
    export = client.get(f"/programs/{plan.id}/beneficiaries/export?format=csv&age_min=90&age_max=10")
    assert export.status_code == 302


def test_a_status_change_from_the_beneficiary_page_shows_in_the_timeline(client, login, db_session,
                                                                         program, person):
    plan = program()
    someone = person()
    _enrol(db_session, plan, [someone])
    beneficiary = db_session.scalar(select(Beneficiary).where(Beneficiary.individual_id == someone.id))
    login("program_manager")
    refused = client.htmx("post", f"/programs/beneficiaries/{beneficiary.id}/status",
                          data={"to_status": "suspended", "reason": "x"})
    assert refused.status_code == 422
    assert "cannot become suspended" in refused.get_data(as_text=True)
    done = client.post(f"/programs/beneficiaries/{beneficiary.id}/status",
                       data={"to_status": "active", "reason": "Verified at home"})
    assert done.status_code == 303
    page = client.get(f"/programs/beneficiaries/{beneficiary.id}").get_data(as_text=True)
    assert "Verified at home" in page and 'id="current-status">Active' in page


def test_every_status_change_form_offers_no_date_after_today_and_a_later_one_is_refused(
        client, login, db_session, program, person):
    from portal.clock import today

    plan = program()
    someone = person()
    _enrol(db_session, plan, [someone], status="active")
    beneficiary = db_session.scalar(select(Beneficiary).where(Beneficiary.individual_id == someone.id))
    login("program_manager")
    latest = f'max="{today().isoformat()}"'
    pages = [client.get(f"/programs/beneficiaries/{beneficiary.id}"),
             client.htmx("get", f"/programs/{plan.id}/beneficiaries/status?to_status=suspended"),
             client.get(f"/programs/{plan.id}/close")]
    for page in pages:
        inputs = re.findall(r'<input[^>]*name="effective_date"[^>]*>', page.get_data(as_text=True))
        assert inputs and all(latest in tag for tag in inputs), inputs
    refused = client.htmx("post", f"/programs/beneficiaries/{beneficiary.id}/status",
                          data={"to_status": "suspended", "reason": "x", "effective_date": "2999-01-01"})
    assert refused.status_code == 422 and "cannot be after today" in refused.get_data(as_text=True)


def test_a_field_officer_cannot_change_statuses(client, login, db_session, program, person):
    plan = program()
    someone = person()
    _enrol(db_session, plan, [someone])
    beneficiary = db_session.scalar(select(Beneficiary).where(Beneficiary.individual_id == someone.id))
    login("field_officer")
    assert client.post(f"/programs/beneficiaries/{beneficiary.id}/status",
                       data={"to_status": "active", "reason": "x"}).status_code == 403


def test_bulk_status_change_previews_then_applies(client, login, db_session, program, person):
    plan = program()
    _enrol(db_session, plan, [person(), person()])
    _enrol(db_session, plan, [person()], status="active")
    login("program_manager")
    preview = client.htmx("get", f"/programs/{plan.id}/beneficiaries/status?to_status=active")
    assert "<strong>2</strong> will change to active" in preview.get_data(as_text=True)
    assert "<strong>1</strong> is not allowed" in preview.get_data(as_text=True)
    response = client.post(f"/programs/{plan.id}/beneficiaries/status",
                           data={"to_status": "active", "reason": "Verified"})
    assert response.status_code == 303
    assert services.status_counts(db_session, plan, scope=Scope(everything=True))["active"] == 3


@pytest.mark.parametrize("meanwhile", ["one more enrolled", "one enrolled and another removed"])
def test_a_bulk_status_change_confirmed_after_the_selection_changed_changes_nobody_and_previews_again(
        client, login, db_session, program, person, meanwhile):
    plan = program()
    _enrol(db_session, plan, [person(), person()])
    login("program_manager")
    preview = client.htmx("get", f"/programs/{plan.id}/beneficiaries/status?to_status=removed")
    expected = re.search(r'name="expected" value="([^"]+)"', preview.get_data(as_text=True)).group(1)
    # Someone else, before the confirm:
    _enrol(db_session, plan, [person()])
    if meanwhile == "one enrolled and another removed":  # as many as in the preview, not the same
        first = db_session.scalar(select(Beneficiary.id).where(Beneficiary.program_id == plan.id)
                                  .order_by(Beneficiary.id).limit(1))
        services.change_status(db_session, first, to_status="removed", reason="Moved away", actor_id=None,
                               scope=Scope(everything=True))
        db_session.commit()
    response = client.htmx("post", f"/programs/{plan.id}/beneficiaries/status",
                           data={"to_status": "removed", "reason": "Duplicates", "expected": expected})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "The selection changed since the preview" in html and "nothing was changed" in html
    still = 3 if meanwhile == "one more enrolled" else 2
    assert f"<strong>{still}</strong> will change to removed" in html
    assert services.status_counts(db_session, plan, scope=Scope(everything=True))["potential"] == still


def test_a_group_program_shows_the_households_primary_recipient(client, login, db_session, program,
                                                                household):
    plan = program(beneficiary_kind="group")
    home = household(3)
    services.enrol(db_session, plan.id, group_ids=[home.id], actor_id=None, scope=Scope(everything=True))
    db_session.commit()
    beneficiary = db_session.scalar(select(Beneficiary).where(Beneficiary.group_id == home.id))
    login("viewer")
    page = client.get(f"/programs/beneficiaries/{beneficiary.id}").get_data(as_text=True)
    assert home.primary_recipient.full_name in page
    assert home.primary_recipient.full_name in client.get(
        f"/programs/{plan.id}/beneficiaries").get_data(as_text=True)
    client.post("/logout")
    login("program_manager")
    exported = client.get(f"/programs/{plan.id}/beneficiaries/export?format=csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(exported.lstrip("\ufeff"))))
    assert rows[1][rows[0].index("Group code")] == home.code
    assert rows[1][rows[0].index("Primary recipient")] == home.primary_recipient.full_name
    assert rows[1][rows[0].index("Recipient national ID")] == home.primary_recipient.national_id


def test_a_group_beneficiarys_page_counts_the_households_living_members(client, login, db_session, program,
                                                                           household):
    from portal.registry import services as registry

    plan = program(beneficiary_kind="group")
    home = household(3)
    services.enrol(db_session, plan.id, group_ids=[home.id], actor_id=None, scope=Scope(everything=True))
    child = next(m.individual for m in home.members if m.role != "head")
    registry.delete_individual(db_session, child, scope=Scope(everything=True), actor_id=None)
    db_session.commit()
    beneficiary = db_session.scalar(select(Beneficiary).where(Beneficiary.group_id == home.id))
    login("viewer")
    page = client.get(f"/programs/beneficiaries/{beneficiary.id}").get_data(as_text=True)
    assert "<dt>Members</dt><dd>2</dd>" in page


def test_a_payee_who_lives_outside_the_officers_area_is_not_named_on_page_list_or_export(
        client, login, db_session, program, household, person, country):
    plan = program(beneficiary_kind="group")
    payee = person("SV1")  # a relative in the south is paid for a northern household
    home = household(3, "NV1", head=payee)
    services.enrol(db_session, plan.id, group_ids=[home.id], actor_id=None, scope=Scope(everything=True))
    db_session.commit()
    beneficiary = db_session.scalar(select(Beneficiary).where(Beneficiary.group_id == home.id))
    login("field_officer", [country["N"]])
    page = client.get(f"/programs/beneficiaries/{beneficiary.id}").get_data(as_text=True)
    listed = client.get(f"/programs/{plan.id}/beneficiaries").get_data(as_text=True)
    for body in (page, listed):
        assert payee.full_name not in body and "Someone who lives outside your area" in body
    client.post("/logout")
    login("program_manager", [country["N"]])
    exported = client.get(f"/programs/{plan.id}/beneficiaries/export?format=csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(exported.lstrip("\ufeff"))))
    assert rows[1][rows[0].index("Primary recipient")] == "Someone who lives outside your area"
    assert rows[1][rows[0].index("Recipient national ID")] == ""
    assert payee.national_id not in exported

def test_institution_and_scheme_pages_list_their_programs(client, login, db_session, program):
    login("program_manager")
    assert client.post("/programs/institutions/new", data={
        "code": "MOF", "name": "Ministry of Finance", "kind": "ministry"}).status_code == 302
    assert client.post("/programs/schemes/new", data={"code": "NS", "name": "National scheme"}
                       ).status_code == 302
    ministry = services.list_institutions(db_session)[0]
    scheme = services.list_schemes(db_session)[0]
    program(name="Linked program", institution_id=ministry.id, scheme_id=scheme.id)
    db_session.commit()
    assert "Linked program" in client.get(f"/programs/institutions/{ministry.id}").get_data(as_text=True)
    assert "Linked program" in client.get(f"/programs/schemes/{scheme.id}").get_data(as_text=True)


def test_program_fields_are_asked_at_enrolment(client, login, db_session, program, person):
    plan = program()
    login("program_manager")
    assert client.post(f"/programs/{plan.id}/fields/new", data={
        "name": "school", "label": "School", "type": "text", "required": "y", "active": "y"}
    ).status_code == 302
    someone = person()
    db_session.commit()
    refused = client.post(f"/programs/{plan.id}/enrol", data={"individual_id": someone.id,
                                                               "status": "potential"})
    assert refused.status_code == 422 and "School is required" in refused.get_data(as_text=True)
    client.post(f"/programs/{plan.id}/enrol", data={"individual_id": someone.id,
                                                     "status": "potential", "pf_school": "Chilumba"})
    assert db_session.scalar(select(Beneficiary.custom).where(
        Beneficiary.individual_id == someone.id)) == {"school": "Chilumba"}


def test_a_beneficiarys_program_fields_are_edited_and_validated(client, login, db_session, program,
                                                                person):
    plan = program()
    services.save_program_field(db_session, plan, None, name="grade", label="Grade", type="integer")
    someone = person()
    _enrol(db_session, plan, [someone])
    beneficiary = db_session.scalar(select(Beneficiary).where(Beneficiary.individual_id == someone.id))
    login("program_manager")
    page = client.get(f"/programs/beneficiaries/{beneficiary.id}").get_data(as_text=True)
    assert 'name="pf_grade"' in page
    refused = client.post(f"/programs/beneficiaries/{beneficiary.id}/fields", data={"pf_grade": "two"})
    assert refused.status_code == 422 and "Grade must be a whole number" in refused.get_data(as_text=True)
    saved = client.post(f"/programs/beneficiaries/{beneficiary.id}/fields", data={"pf_grade": "7"})
    assert saved.status_code == 303
    db_session.expire_all()
    assert db_session.get(Beneficiary, beneficiary.id).custom == {"grade": 7}
    assert 'value="7"' in client.get(f"/programs/beneficiaries/{beneficiary.id}").get_data(as_text=True)


def test_the_household_beneficiary_list_takes_the_same_queries_for_3_or_30_rows(
        client, login, db_session, program, household, count_queries):
    plan = program(beneficiary_kind="group")
    login("viewer")

    def queries_for(n):
        homes = [household(2) for _ in range(n)]
        services.enrol(db_session, plan.id, group_ids=[h.id for h in homes], actor_id=None,
                       scope=Scope(everything=True))
        db_session.commit()
        with count_queries() as counted:
            assert client.get(f"/programs/{plan.id}/beneficiaries").status_code == 200
        return counted()

    assert queries_for(3) == queries_for(27)


def test_a_person_is_enrolled_from_their_registry_page_form(client, login, db_session, program, person,
                                                            app):
    from flask import render_template_string

    plan = program(name="Pension")
    program(name="Households", beneficiary_kind="group")
    program(name="Over", status="closed")
    someone = person()
    db_session.commit()
    login("program_manager")
    client.get("/programs/")  # a request context with the signed-in user for the fragment
    with app.test_request_context("/registry/individuals/1"):
        from flask_login import login_user

        from portal.accounts.models import User

        login_user(db_session.scalars(select(User)).all()[-1])
        html = render_template_string(
            '{% with subject_kind="individual", subject_id=7, back="/registry/individuals/7" %}'
            '{% include "programs/_enrol_subject.html" %}{% endwith %}')
    assert "Pension" in html and "Households" not in html and "Over" not in html
    response = client.post("/programs/enrol", data={"program_id": plan.id, "individual_id": someone.id,
                                                    "next": "/registry/individuals/7"})
    assert response.status_code == 303 and response.headers["Location"] == "/registry/individuals/7"
    assert services.taken_places(db_session, plan.id) == 1
    again = client.post("/programs/enrol", data={"program_id": plan.id, "individual_id": someone.id,
                                                 "next": "//evil.example/"})
    assert again.headers["Location"] == f"/programs/{plan.id}"


@pytest.mark.parametrize("target", ["/\\evil.example", "/\\/evil.example", "/\t/evil.example",
                                    "https://evil.example/"])
@pytest.mark.parametrize("page", ["registry", "program"])
def test_after_enrolling_the_portal_goes_back_only_to_a_path_on_this_site(
        client, login, db_session, program, person, page, target):
    plan = program()
    someone = person()
    login("program_manager")
    url, fallback = (("/programs/enrol", f"/programs/{plan.id}") if page == "registry"
                     else (f"/programs/{plan.id}/enrol", f"/programs/{plan.id}/enrol?q="))
    response = client.post(url, data={"program_id": plan.id, "individual_id": someone.id,
                                      "status": "potential", "next": target})
    assert response.status_code == 303 and response.headers["Location"] == fallback
    assert services.taken_places(db_session, plan.id) == 1


def test_custom_field_criteria_come_from_the_form(client, login, db_session, program, person):
    from portal.registry.models import CustomField

    db_session.add(CustomField(name="roof", label="Roof", type="choice", choices=["iron", "thatch"]))
    db_session.flush()
    person(custom={"roof": "thatch"})
    person(custom={"roof": "iron"})
    person(custom={})
    plan = program()
    login("program_manager")
    page = client.get(f"/programs/{plan.id}/enrol/criteria").get_data(as_text=True)
    assert '<option value="roof"' in page
    preview = client.htmx("get", f"/programs/{plan.id}/enrol/criteria?cf1=roof&op1=%3D&v1=thatch")
    assert "<strong>1</strong> match" in preview.get_data(as_text=True)
    empty = client.htmx("get", f"/programs/{plan.id}/enrol/criteria?cf1=roof&op1=empty")
    assert "<strong>1</strong> match" in empty.get_data(as_text=True)
    wrong = client.htmx("get", f"/programs/{plan.id}/enrol/criteria?cf1=roof&op1=%3C&v1=iron")
    assert "can only be compared with = or !=" in wrong.get_data(as_text=True)


def test_a_draft_is_activated_and_a_closed_program_refuses_enrolment_with_a_reason(
        client, login, db_session, program, person):
    draft = program(status="draft")
    closed = program(status="closed")
    someone = person()
    db_session.commit()
    login("program_manager")
    assert client.post(f"/programs/{draft.id}/activate").status_code == 303
    db_session.expire_all()
    assert db_session.get(Program, draft.id).status == "active"
    page = client.get(f"/programs/{closed.id}").get_data(as_text=True)
    assert "Enrol by criteria" not in page and "Close program" not in page
    refused = client.post(f"/programs/{closed.id}/enrol", data={"individual_id": someone.id,
                                                                 "status": "potential"})
    assert refused.status_code == 422 and "is closed" in refused.get_data(as_text=True)


def test_a_manager_enrols_a_person_from_the_persons_registry_page_and_follows_the_link_back(
        client, login, db_session, program, person):
    plan = program(name="Old age pension")
    someone = person()
    login("program_manager")
    page = client.get(f"/registry/individuals/{someone.id}").get_data(as_text=True)
    assert "Enrol in" in page and "Old age pension" in page
    response = client.post("/programs/enrol", data={"program_id": plan.id, "individual_id": someone.id,
                                                    "next": f"/registry/individuals/{someone.id}"})
    assert response.status_code == 303
    beneficiary = db_session.scalar(select(Beneficiary).where(Beneficiary.individual_id == someone.id))
    page = client.get(f"/registry/individuals/{someone.id}").get_data(as_text=True)
    assert f'href="/programs/beneficiaries/{beneficiary.id}"' in page


def test_a_viewer_sees_a_persons_programs_without_an_enrol_form(client, login, db_session, program, person):
    plan = program(name="Old age pension")
    someone = person()
    services.enrol(db_session, plan.id, individual_ids=[someone.id], actor_id=None, scope=Scope(everything=True))
    db_session.commit()
    login("viewer")
    page = client.get(f"/registry/individuals/{someone.id}").get_data(as_text=True)
    assert "Old age pension" in page and "Enrol in" not in page


BIG = 99_999_999_999  # more than an integer column holds


@pytest.mark.parametrize("method, url", [
    ("GET", "/programs/{big}"), ("GET", "/programs/{big}/beneficiaries"),
    ("GET", "/programs/{big}/edit"), ("GET", "/programs/beneficiaries/{big}"),
    ("POST", "/programs/beneficiaries/{big}/status"), ("POST", "/programs/beneficiaries/{big}/fields"),
    ("GET", "/programs/{plan}/fields/{big}"), ("GET", "/programs/institutions/{big}"),
    ("GET", "/programs/institutions/{big}/edit"), ("GET", "/programs/schemes/{big}"),
    ("GET", "/programs/schemes/{big}/edit")])
def test_an_id_too_large_for_the_database_answers_404_not_a_crash(client, login, program, method,
                                                                 url):
    plan = program()
    login("admin")
    response = client.open(url.format(big=BIG, plan=plan.id), method=method,
                           data={"to_status": "active", "reason": "x"})
    assert response.status_code == 404


def test_a_program_form_left_open_while_another_manager_saved_is_refused_and_changes_nothing(
        client, login, db_session, program):
    plan = program(max_beneficiaries=500)
    login("program_manager")
    form = client.get(f"/programs/{plan.id}/edit").get_data(as_text=True)
    version = re.search(r'name="version" type="hidden" value="(\d+)"', form).group(1)
    services.save_program(db_session, plan, code=plan.code, name=plan.name, max_beneficiaries=100,
                          expected_version=int(version), actor_id=None)  # another manager, first
    db_session.commit()
    stale = client.post(f"/programs/{plan.id}/edit", data={
        "code": plan.code, "name": plan.name, "beneficiary_kind": "individual",
        "max_beneficiaries": "500", "version": version})
    assert stale.status_code == 409
    assert "was changed by someone else while you were editing" in stale.get_data(as_text=True)
    db_session.expire_all()
    assert db_session.get(Program, plan.id).max_beneficiaries == 100


def test_a_program_edit_sent_without_the_version_it_was_made_from_is_refused_as_stale(
        client, login, db_session, program):
    plan = program(max_beneficiaries=500)
    login("program_manager")
    response = client.post(f"/programs/{plan.id}/edit", data={
        "code": plan.code, "name": plan.name, "beneficiary_kind": "individual", "max_beneficiaries": "10"})
    assert response.status_code == 409 and "reload the page" in response.get_data(as_text=True)
    db_session.expire_all()
    assert db_session.get(Program, plan.id).max_beneficiaries == 500


def test_a_bulk_status_change_whose_reason_holds_a_control_character_changes_nobody_and_says_why(
        client, login, db_session, program, person):
    plan = program()
    _enrol(db_session, plan, [person(), person()])
    login("program_manager")
    response = client.post(f"/programs/{plan.id}/beneficiaries/status",
                           data={"to_status": "active", "reason": "Veri\x01fied"})
    assert response.status_code == 422
    assert "invisible control character (U+0001)" in response.get_data(as_text=True)
    assert services.status_counts(db_session, plan, scope=Scope(everything=True))["potential"] == 2


@pytest.mark.parametrize("sent, field, message", [
    ({"reason": ""}, "reason", "Give the reason for the change."),
    ({"reason": "Verified", "effective_date": "2026-02-30"}, "effective_date",
     "Enter the effective date as YYYY-MM-DD."),
])
def test_a_bulk_status_change_refused_for_its_reason_or_date_says_so_beside_that_field_and_keeps_what_was_typed(
        client, login, db_session, program, person, sent, field, message):
    plan = program()
    _enrol(db_session, plan, [person(), person()])
    login("program_manager")
    response = client.htmx("post", f"/programs/{plan.id}/beneficiaries/status",
                           data={"to_status": "active", **sent})
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    label = re.search(rf'<label>[^<]*<input[^>]*name="{field}".*?</label>', html, re.S).group(0)
    assert 'aria-invalid="true"' in label and message in label
    assert html.count(message) == 1  # beside its field, not also above the form
    for name, value in sent.items():
        assert f'name="{name}" value="{value}"' in html
    assert services.status_counts(db_session, plan, scope=Scope(everything=True))["potential"] == 2


def test_an_institution_form_left_open_while_another_manager_saved_is_refused_with_409(
        client, login, db_session):
    from portal.programs.models import Institution

    ministry = services.save_institution(db_session, None, code="MOG", name="Ministry of Gender")
    db_session.commit()
    login("program_manager")
    opened = client.get(f"/programs/institutions/{ministry.id}/edit").get_data(as_text=True)
    seen = re.search(r'name="seen" value="([^"]+)"', opened).group(1)
    services.save_institution(db_session, ministry, code="MOG", name="Ministry of Gender",
                              description="Runs the SCTP since 2006")
    db_session.commit()

    stale = client.post(f"/programs/institutions/{ministry.id}/edit", data={
        "code": "MOG", "name": "Ministry of Gender and Welfare", "kind": "ministry",
        "description": "", "seen": seen})

    db_session.expire_all()
    assert stale.status_code == 409
    assert db_session.get(Institution, ministry.id).description == "Runs the SCTP since 2006"


def test_an_institution_form_sent_as_it_was_made_is_saved(client, login, db_session):
    from portal.programs.models import Institution

    ministry = services.save_institution(db_session, None, code="MOG", name="Ministry of Gender")
    db_session.commit()
    login("program_manager")
    opened = client.get(f"/programs/institutions/{ministry.id}/edit").get_data(as_text=True)
    seen = re.search(r'name="seen" value="([^"]+)"', opened).group(1)

    client.post(f"/programs/institutions/{ministry.id}/edit", data={
        "code": "MOG", "name": "Ministry of Gender and Welfare", "kind": "ministry",
        "description": "", "seen": seen})

    db_session.expire_all()
    assert db_session.get(Institution, ministry.id).name == "Ministry of Gender and Welfare"


def test_a_program_field_form_that_does_not_say_what_it_was_made_from_is_refused(
        client, login, db_session, program):
    from portal.registry.models import CustomField

    plan = program()
    field = services.save_program_field(db_session, plan, None, name="school", label="School",
                                        type="choice", choices=["A", "B"])
    db_session.commit()
    login("program_manager")
    services.save_program_field(db_session, plan, field, name="school", label="School",
                                type="choice", choices=["A", "B", "C"])
    db_session.commit()

    stale = client.post(f"/programs/{plan.id}/fields/{field.id}", data={
        "name": "school", "label": "School attended", "type": "choice", "choices": "A, B",
        "active": "y"})

    db_session.expire_all()
    assert stale.status_code == 409
    assert db_session.get(CustomField, field.id).choices == ["A", "B", "C"]
