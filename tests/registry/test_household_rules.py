"""Households keep one living head and payee on every path: a household emptied and filled
again, a head changed with the roles an admin left, the last member deleted, a page left open
while someone else changed the members; and household codes typed or imported in any case."""
from datetime import date

import pytest
from sqlalchemy import func, select

from portal.errors import DomainError
from portal.locations.services import Scope
from portal.registry import services
from portal.registry.models import Group, GroupMember

EVERYTHING = Scope(everything=True)


@pytest.fixture
def people(country, make_individual):
    return {
        "banda": make_individual("Chikondi", "Banda", location=country["NV1"], sex="F",
                                 birth_date=date(1990, 1, 1), national_id="MW1000001"),
        "bandawe": make_individual("Kondwani", "Bandawe", location=country["NV2"], sex="M",
                                   birth_date=date(2015, 6, 1), national_id="MW1000002"),
        "phiri": make_individual("Grace", "Phiri", location=country["SV1"], sex="F",
                                 birth_date=date(1950, 3, 3), national_id="ZM2000001"),
    }


def _emptied_household(db_session, people, make_household):
    """A household whose only member, its head, was removed (which the portal allows)."""
    group = make_household(head=people["banda"], members=[], code="HH-EMPTY")
    head = next(m for m in group.members if m.role == "head")
    services.remove_member(db_session, group, head.id, scope=EVERYTHING, actor_id=None)
    db_session.expire_all()
    assert group.members == [] and group.primary_recipient_id is None
    return group


# --- a household keeps one head and one primary recipient ----------------------------------------

def test_a_person_added_to_a_household_without_a_head_must_come_in_as_its_head(
        db_session, people, make_household):
    group = _emptied_household(db_session, people, make_household)
    with pytest.raises(DomainError, match="Household HH-EMPTY has no head: add its head first."):
        services.add_member(db_session, group, people["bandawe"].id, role="child", scope=EVERYTHING,
                            actor_id=None)


def test_a_person_moved_into_a_household_without_a_head_must_come_in_as_its_head(
        db_session, people, make_household):
    target = _emptied_household(db_session, people, make_household)
    source = make_household(head=people["phiri"], members=[people["bandawe"]], code="HH-SOURCE")
    child = next(m for m in source.members if m.role != "head")
    with pytest.raises(DomainError, match="has no head"):
        services.move_member(db_session, source, child.id, target, role="child", scope=EVERYTHING,
                             actor_id=None)


def test_the_head_who_joins_a_household_without_one_also_becomes_its_primary_recipient(
        db_session, people, make_household):
    group = _emptied_household(db_session, people, make_household)
    services.add_member(db_session, group, people["bandawe"].id, role="head", scope=EVERYTHING, actor_id=None)
    db_session.expire_all()
    assert group.primary_recipient_id == people["bandawe"].id
    assert services.check_household(db_session, group) == []


# --- changing the head with the roles an admin left active ---------------------------------------

def test_make_head_works_after_an_admin_switches_off_the_other_relative_role(
        client, login, people, make_household, db_session):
    services.save_member_role(db_session, code="other_relative", label="Other relative", active=False,
                              actor_id=None)
    group = make_household(head=people["banda"], members=[people["bandawe"]], code="HH-ROLES")
    child = next(m for m in group.members if m.role != "head")
    db_session.commit()
    login("admin")
    # The "Make head" button of the members table sends no former_role.
    response = client.htmx("post", f"/registry/groups/{group.id}/members/{child.id}/head")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    db_session.expire_all()
    assert db_session.get(GroupMember, child.id).role == "head"


def test_choosing_head_in_the_role_form_works_after_an_admin_switches_off_the_other_relative_role(
        client, login, people, make_household, db_session):
    services.save_member_role(db_session, code="other_relative", label="Other relative", active=False,
                              actor_id=None)
    group = make_household(head=people["banda"], members=[people["bandawe"]], code="HH-ROLES2")
    child = next(m for m in group.members if m.role != "head")
    db_session.commit()
    login("admin")
    response = client.htmx("post", f"/registry/groups/{group.id}/members/{child.id}/role", data={"role": "head"})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    db_session.expire_all()
    assert db_session.get(GroupMember, child.id).role == "head"


# --- deleting a person --------------------------------------------------------------------------

def test_deleting_the_only_member_of_a_household_does_not_leave_a_deleted_person_as_its_payee(
        db_session, people, make_household):
    group = make_household(head=people["banda"], members=[], code="HH-ALONE")
    with pytest.raises(DomainError, match="is the only member of household HH-ALONE, which would be led "
                                          "or paid by a deleted person: remove them from it first."):
        services.delete_individual(db_session, people["banda"], scope=EVERYTHING, actor_id=None)
    assert people["banda"].deleted_at is None
    head = next(m for m in group.members if m.role == "head")
    services.remove_member(db_session, group, head.id, scope=EVERYTHING, actor_id=None)
    services.delete_individual(db_session, people["banda"], scope=EVERYTHING, actor_id=None)
    assert people["banda"].deleted_at is not None and group.primary_recipient_id is None


# --- household codes as the import writes them ---------------------------------------------------

@pytest.fixture
def imported_household(db_session, tmp_path, country):
    """imported_household(code, role) -> the household a real upload put Juma Tembo in, by code."""
    from portal.imports import services as imports
    from tests.factories import validated_upload

    def make(code: str, role: str = "head") -> Group:
        primary = "yes" if role == "head" else "no"
        upload = validated_upload(db_session, tmp_path, f"Juma,Tembo,M,1970-02-03,,NV1,{code},{role},{primary}\n")
        imports.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                             may_enrol=True)
        imports.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None,
                              progress=lambda *a, **k: None)
        return db_session.scalar(select(Group).where(Group.code.in_([code, code.upper()])))

    return make


def test_a_household_imported_with_a_lower_case_code_is_registered_in_capitals_and_found_as_typed(
        client, login, people, make_household, imported_household, db_session):
    target = imported_household("hh-low-1")
    assert target.code == "HH-LOW-1"
    assert [g.code for g in services.search_groups(db_session, scope=EVERYTHING,
                                                   filters={"q": "hh-low-1"}).rows] == ["HH-LOW-1"]
    assert [r.last_name for r in services.search_individuals(
        db_session, scope=EVERYTHING, filters={"group": "hh-low-1"}).rows] == ["Tembo"]
    source = make_household(head=people["banda"], members=[people["bandawe"]], code="HH-A")
    member = next(m for m in source.members if m.role != "head")
    db_session.commit()
    login("admin")
    response = client.htmx("post", f"/registry/groups/{source.id}/members/{member.id}/move",
                           data={"target": "hh-low-1", "role": "child", "person": member.individual_id})
    assert response.status_code == 200, response.get_data(as_text=True)
    db_session.expire_all()
    moved = db_session.scalar(select(GroupMember).where(GroupMember.individual_id == people["bandawe"].id))
    assert moved.group_id == target.id


def test_an_imported_row_with_a_lower_case_code_joins_the_registered_household_of_that_code(
        db_session, people, make_household, imported_household):
    home = make_household(head=people["banda"], members=[], code="HH-KNOWN")
    db_session.commit()
    assert imported_household("hh-known", role="child").id == home.id
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).select_from(Group).where(
        func.upper(Group.code) == "HH-KNOWN")) == 1
    assert sorted(m.individual.last_name for m in db_session.get(Group, home.id).members) == ["Banda", "Tembo"]


# --- bad input ---------------------------------------------------------------------------------

def test_a_group_code_longer_than_its_column_once_upper_cased_is_refused(client, login, people, db_session):
    login("admin")
    code = "ß" * 40  # 40 characters as typed, 80 once upper-cased ("SS" each)
    response = client.post("/registry/groups/new", data={"code": code, "name": "Long", "kind": "cooperative",
                                                         "head": "", "location": "NV1"})
    assert response.status_code == 422
    assert not [c for c in db_session.scalars(select(Group.code)) if len(c) > 40]


# --- a page left open while someone else changed the household --------------------------------------

@pytest.mark.parametrize("action", ["recipient", "remove", "head"])
def test_a_button_for_a_member_removed_meanwhile_does_not_act_on_whoever_joined_after_them(
        client, login, people, make_household, db_session, action):
    group = make_household(head=people["banda"], members=[people["bandawe"]], code="HH-STALE")
    bandawe = next(m for m in group.members if m.individual_id == people["bandawe"].id)
    db_session.commit()
    login("admin")
    page = client.get(f"/registry/groups/{group.id}").get_data(as_text=True)
    assert f"/members/{bandawe.id}/{action}" in page  # the button the first user will press
    # Meanwhile a second user removes Kondwani Bandawe and adds Grace Phiri.
    services.remove_member(db_session, group, bandawe.id, scope=EVERYTHING, actor_id=None)
    phiri = services.add_member(db_session, group, people["phiri"].id, role="child", scope=EVERYTHING,
                                actor_id=None)
    db_session.commit()
    phiri_id = phiri.id
    # The first user's button, made for Kondwani Bandawe, is pressed.
    assert f'name="person" value="{people["bandawe"].id}"' in page
    response = client.htmx("post", f"/registry/groups/{group.id}/members/{bandawe.id}/{action}",
                           data={"person": people["bandawe"].id})
    assert "That person is no longer a member of this group" in response.get_data(as_text=True)
    db_session.expire_all()
    saved = db_session.get(Group, group.id)
    phiri = db_session.get(GroupMember, phiri_id)
    assert phiri is not None and phiri.role == "child", "Grace Phiri was changed by a button about someone else"
    assert saved.primary_recipient_id == people["banda"].id
