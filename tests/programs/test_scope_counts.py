"""What the program pages tell a user limited to an area: nothing counted or sized from
people or households registered outside it."""
from __future__ import annotations

import re

from sqlalchemy import select

from portal.locations.services import Scope
from portal.programs import services


def _enrol(db_session, plan, people, status="potential"):
    services.enrol(db_session, plan.id, individual_ids=[p.id for p in people], status=status,
                   actor_id=None, scope=Scope(everything=True))
    db_session.commit()


def _matched(body: str) -> str:
    return re.search(r"<strong>(\d+)</strong> match", body).group(1)


def test_criteria_on_household_size_do_not_size_a_household_registered_outside_the_area(
        client, login, db_session, country, program, person):
    """An officer's person whose household is registered (and lives) in another district: the
    preview must not tell that household's size by matching it."""
    from portal.accounts.models import Role
    from portal.accounts.services import set_role_permissions
    from portal.registry.models import Group, GroupMember

    plan = program()
    inside = person("NV1", first_name="Inside")
    outsiders = [person("SV1") for _ in range(3)]
    group = Group(code="HH-SOUTH", name="South household", kind="household",
                  location_id=country["SV1"].id, primary_recipient_id=outsiders[0].id)
    db_session.add(group)
    db_session.flush()
    db_session.add(GroupMember(group_id=group.id, individual_id=outsiders[0].id,
                               group_kind="household", role="head"))
    for other in outsiders[1:] + [inside]:
        db_session.add(GroupMember(group_id=group.id, individual_id=other.id,
                                   group_kind="household", role="child"))
    role = db_session.scalar(select(Role).where(Role.name == "field_officer"))
    set_role_permissions(role, sorted(role.permissions | {"beneficiary.enrol"}))
    db_session.commit()
    login("field_officer", [country["ND"]])

    sized = [_matched(client.get(f"/programs/{plan.id}/enrol/criteria?hh_min={n}&hh_max={n}")
                      .get_data(as_text=True)) for n in (4, 5)]

    assert sized == ["0", "0"]


def test_criteria_on_household_size_still_size_a_household_of_the_area(
        client, login, db_session, country, program, person, household):
    from portal.accounts.models import Role
    from portal.accounts.services import set_role_permissions

    plan = program()
    household(3, village="NV1")
    role = db_session.scalar(select(Role).where(Role.name == "field_officer"))
    set_role_permissions(role, sorted(role.permissions | {"beneficiary.enrol"}))
    db_session.commit()
    login("field_officer", [country["ND"]])

    body = client.get(f"/programs/{plan.id}/enrol/criteria?hh_min=3&hh_max=3").get_data(as_text=True)

    assert _matched(body) == "3"


def _places_cell(listing: str, code: str) -> str:
    row = re.search(rf"{code}.*?</tr>", listing, re.S).group(0)
    return re.search(r'<td class="num">(.*?)</td>', row, re.S).group(1)


def test_program_pages_count_for_an_officer_only_the_places_taken_in_their_area(
        client, login, db_session, country, program, person):
    plan = program()
    _enrol(db_session, plan, [person("NV1"), person("SV1"), person("SV2")])
    login("field_officer", [country["ND"]])

    page = client.get(f"/programs/{plan.id}").get_data(as_text=True)
    listing = client.get("/programs/").get_data(as_text=True)

    assert "1 places taken in your locations; no maximum." in page
    assert "3 places" not in page
    assert _places_cell(listing, plan.code).startswith("1 <small")


def test_under_a_cap_an_officer_also_sees_the_places_left_in_the_program(
        client, login, db_session, country, program, person):
    plan = program(max_beneficiaries=10)
    _enrol(db_session, plan, [person("NV1"), person("SV1"), person("SV2")])
    login("field_officer", [country["ND"]])

    page = client.get(f"/programs/{plan.id}").get_data(as_text=True)

    assert "1 places taken in your locations; 7 of 10 places left in the program." in page


def test_institution_and_scheme_pages_count_for_an_officer_only_their_area(
        client, login, db_session, country, program, person):
    ministry = services.save_institution(db_session, None, code="MOG", name="Ministry of Gender")
    scheme = services.save_scheme(db_session, None, code="NSSP", name="Safety net")
    plan = program(institution_id=ministry.id, scheme_id=scheme.id)
    _enrol(db_session, plan, [person("SV1"), person("SV2")])
    login("field_officer", [country["ND"]])

    for url in (f"/programs/institutions/{ministry.id}", f"/programs/schemes/{scheme.id}"):
        cell = _places_cell(client.get(url).get_data(as_text=True), plan.code)
        assert cell.startswith("0 <small") and "in your locations" in cell, url


def test_a_user_who_sees_every_location_sees_the_national_places(
        client, login, db_session, country, program, person):
    plan = program(max_beneficiaries=10)
    _enrol(db_session, plan, [person("NV1"), person("SV1")])
    login("program_manager")

    page = client.get(f"/programs/{plan.id}").get_data(as_text=True)
    listing = client.get("/programs/").get_data(as_text=True)

    assert "2 of 10 places taken; 8 left." in page
    assert _places_cell(listing, plan.code) == "2 / 10"
