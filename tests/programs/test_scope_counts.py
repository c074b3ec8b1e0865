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
