"""Two people saving the same person at the same moment, on separate connections."""
from datetime import date

import threading

import pytest
from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.errors import DomainError
from portal.extensions import db
from portal.locations.services import Scope
from portal.registry import services
from portal.registry.models import Group, GroupMember, Individual
from tests.conftest import _database_url

pytestmark = pytest.mark.live

RAW = {"first_name": "Chikondi", "last_name": "Banda", "sex": "F", "birth_date": "1990-01-01",
       "national_id": "MW4444444", "location": "NV1"}


def test_the_later_of_two_simultaneous_saves_is_refused_by_the_version_check(country, make_individual, db_session):
    person = make_individual("Chikondi", "Banda", location=country["NV1"], birth_date=date(1990, 1, 1),
                             national_id="MW4444444")
    db_session.commit()
    everything = Scope(everything=True)
    with Session(db.engine, expire_on_commit=False) as first, Session(db.engine, expire_on_commit=False) as second:
        mine = first.get(Individual, person.id)
        theirs = second.get(Individual, person.id)
        first.commit()
        second.commit()  # both opened version 1 and now edit it at the same time
        services.update_individual(second, theirs, {**RAW, "phone": "0882000222"}, scope=everything,
                                   expected_version=1, actor_id=None)
        second.commit()
        with pytest.raises(services.ConflictError, match="changed by someone else"):
            services.update_individual(first, mine, {**RAW, "phone": "0991000111"}, scope=everything,
                                       expected_version=1, actor_id=None)
        first.rollback()
    db_session.commit()  # end the read transaction: SQLite would keep showing its snapshot
    saved = db_session.get(Individual, person.id)
    assert saved.phone == "0882000222" and saved.version == 2


def _household(session, code, head, *members):
    group = Group(code=code, name=code, kind="household", location_id=head.location_id,
                  primary_recipient_id=head.id)
    session.add(group)
    session.flush()
    session.add(GroupMember(group_id=group.id, individual_id=head.id, group_kind="household", role="head"))
    for person in members:
        session.add(GroupMember(group_id=group.id, individual_id=person.id, group_kind="household",
                                role="child"))
    session.flush()
    return group


def test_a_member_removed_meanwhile_cannot_become_the_primary_recipient(country, make_individual, db_session):
    head, child = (make_individual(location=country["NV1"]) for _ in range(2))
    group = _household(db_session, "HH-RACE", head, child)
    db_session.commit()
    everything = Scope(everything=True)
    with Session(db.engine, expire_on_commit=False) as first, Session(db.engine, expire_on_commit=False) as second:
        # The first user's page request has read the household and the member it names...
        mine = first.get(Group, group.id)
        member = services.get_member(first, mine, next(m.id for m in mine.members if m.role == "child"),
                                     scope=everything)
        first.commit()
        # ...when a second user removes that member.
        theirs = second.get(Group, group.id)
        services.remove_member(second, theirs, member.id, scope=everything, actor_id=None)
        second.commit()
        with pytest.raises(DomainError, match="not a member"):
            services.set_primary_recipient(first, mine, member.id, scope=everything, actor_id=None)
        first.rollback()
    db_session.commit()  # end the read transaction: SQLite would keep showing its snapshot
    saved = db_session.get(Group, group.id)
    assert saved.primary_recipient_id == head.id and services.check_household(db_session, saved) == []


def _blocked_call(action):
    """Run ``action`` in a thread (it waits on a row another transaction holds): the thread,
    and a list that receives its outcome."""
    outcome = []
    app = current_app._get_current_object()

    def run():
        try:
            with app.app_context():
                outcome.append(action())
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.skipif("sqlite" in _database_url(), reason="SQLite takes its write lock at BEGIN: "
                    "two writing requests never interleave there")
def test_moving_a_member_while_someone_deletes_them_refuses_the_move_with_a_message_not_a_deadlock(
        country, make_individual, db_session):
    from portal.background.services import lock_row

    head, child, other_head = (make_individual(location=country["NV1"]) for _ in range(3))
    source, target = _household(db_session, "HH-FROM", head, child), _household(db_session, "HH-TO", other_head)
    db_session.commit()
    member_id = next(m.id for m in source.members if m.individual_id == child.id)
    everything = Scope(everything=True)
    with Session(db.engine) as deleting, Session(db.engine) as moving:
        person = deleting.get(Individual, child.id)
        lock_row(deleting, person)  # the delete's first lock, as it takes it
        thread, outcome = _blocked_call(lambda: services.move_member(
            moving, moving.get(Group, source.id), member_id, moving.get(Group, target.id), role="child",
            scope=everything, actor_id=None))
        thread.join(1)  # the move waits for the person
        # The delete goes on to the person's household, which a move that took the
        # households first held while it waited: each waited for the other (a 500 for one).
        services.delete_individual(deleting, person, scope=everything, actor_id=None)
        deleting.commit()
        thread.join(10)
        assert isinstance(outcome[0], DomainError) and "was deleted meanwhile" in outcome[0].message
        moving.rollback()
    db_session.expire_all()
    assert db_session.get(Individual, child.id).deleted_at is not None
    assert db_session.scalar(select(GroupMember.group_id).where(GroupMember.individual_id == child.id)) == source.id


@pytest.mark.skipif("sqlite" in _database_url(), reason="SQLite takes its write lock at BEGIN: "
                    "two writing requests never interleave there")
def test_two_households_taking_the_same_person_at_once_refuse_the_second_with_a_message(
        country, make_individual, db_session):
    first_head, second_head, person = (make_individual(location=country["NV1"]) for _ in range(3))
    one, other = _household(db_session, "HH-ONE", first_head), _household(db_session, "HH-TWO", second_head)
    db_session.commit()
    everything = Scope(everything=True)
    with Session(db.engine) as first, Session(db.engine) as second:
        services.add_member(first, first.get(Group, one.id), person.id, role="child", scope=everything,
                            actor_id=None)
        thread, outcome = _blocked_call(lambda: services.add_member(
            second, second.get(Group, other.id), person.id, role="child", scope=everything, actor_id=None))
        thread.join(1)
        first.commit()
        thread.join(10)
        assert isinstance(outcome[0], DomainError) and "already belongs to household HH-ONE" in outcome[0].message
        second.rollback()


@pytest.mark.skipif("sqlite" in _database_url(), reason="SQLite takes its write lock at BEGIN: "
                    "two writing requests never interleave there")
def test_two_users_choosing_a_new_head_at_once_leave_one_head_without_an_error(
        country, make_individual, db_session):
    head, a, b = (make_individual(location=country["NV1"]) for _ in range(3))
    group = _household(db_session, "HH-HEADS", head, a, b)
    db_session.commit()
    member_of = {m.individual_id: m.id for m in group.members}
    everything = Scope(everything=True)
    with Session(db.engine) as first, Session(db.engine) as second:
        services.set_head(first, first.get(Group, group.id), member_of[a.id], scope=everything, actor_id=None)
        thread, outcome = _blocked_call(lambda: services.set_head(
            second, second.get(Group, group.id), member_of[b.id], scope=everything, actor_id=None))
        thread.join(1)
        first.commit()
        thread.join(10)
        assert not isinstance(outcome[0], Exception), outcome
        second.commit()
    db_session.commit()
    heads = db_session.scalars(select(GroupMember.individual_id).where(
        GroupMember.group_id == group.id, GroupMember.role == "head")).all()
    assert heads == [b.id]


def test_a_person_made_head_meanwhile_is_not_deleted_as_a_mere_member(country, make_individual, db_session):
    head, child = (make_individual(location=country["NV1"]) for _ in range(2))
    group = _household(db_session, "HH-DEL", head, child)
    db_session.commit()
    everything = Scope(everything=True)
    with Session(db.engine, expire_on_commit=False) as first, Session(db.engine, expire_on_commit=False) as second:
        # The first user's request has read the person and their place in the household...
        person = first.get(Individual, child.id)
        read = services.memberships_of(first, person, scope=everything)  # noqa: F841 (held, as in a request)
        first.commit()
        # ...when a second user makes them the head.
        theirs = second.get(Group, group.id)
        services.set_head(second, theirs, next(m.id for m in theirs.members if m.individual_id == child.id),
                          scope=everything, actor_id=None)
        second.commit()
        with pytest.raises(DomainError, match="choose another head first"):
            services.delete_individual(first, person, scope=everything, actor_id=None)
        first.rollback()
    db_session.commit()
    assert db_session.get(Individual, child.id).deleted_at is None


def _in_turn(first_save, second_save):
    """``first_save`` has written and not committed when ``second_save`` writes the same
    national ID on another connection: the second waits on the unique index, and goes on once
    the first commits. Returns what the second said (its errors, or its refusal's message)."""
    with Session(db.engine) as first, Session(db.engine) as second:
        first_save(first)
        thread, outcome = _blocked_call(lambda: second_save(second))
        thread.join(1)
        assert thread.is_alive()  # waiting for the first save's national ID
        first.commit()
        thread.join(10)
        said = outcome[0]
        if not said:  # (a form with errors is not saved)
            second.commit()
    return said.message if isinstance(said, DomainError) else said


def test_a_national_id_given_to_two_people_at_the_same_moment_refuses_the_second_with_a_message(
        country, make_individual, db_session):
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite's writing requests hold the whole database: they cannot overlap")
    one, other = (make_individual(location=country["NV1"], birth_date=date(1990, 1, 1)) for _ in range(2))
    db_session.commit()
    everything = Scope(everything=True)

    def edit(person_id):
        def save(session):
            person = session.get(Individual, person_id)
            return services.update_individual(session, person, {**RAW, "first_name": person.first_name,
                                                                 "last_name": person.last_name},
                                              scope=everything, expected_version=None, actor_id=None)[1]
        return save

    assert _in_turn(edit(one.id), edit(other.id)) == {
        "national_id": "National ID MW4444444 is already registered."}
    db_session.expire_all()
    assert [p.id for p in db_session.scalars(select(Individual).where(
        Individual.national_id == "MW4444444"))] == [one.id]


def test_two_deleted_people_with_one_national_id_restored_at_the_same_moment_refuse_the_second(
        country, make_individual, db_session):
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite's writing requests hold the whole database: they cannot overlap")
    twins = [make_individual(location=country["NV1"]) for _ in range(2)]
    for person in twins:
        person.deleted_at = date(2026, 1, 1)
        db_session.flush()
        person.national_id = "MW5555555"  # deleted people may share an ID; one may live
    db_session.commit()

    def restore(person_id):
        return lambda session: services.restore_individual(
            session, session.get(Individual, person_id), show_pii=False, actor_id=None)

    assert _in_turn(restore(twins[0].id), restore(twins[1].id)) == (
        "Another living person now has national ID •••••5555; change one of them before restoring.")
    db_session.expire_all()
    assert [p.id for p in db_session.scalars(select(Individual).where(
        Individual.national_id == "MW5555555", Individual.deleted_at.is_(None)))] == [twins[0].id]


@pytest.mark.skipif("sqlite" in _database_url(), reason="SQLite takes its write lock at BEGIN: "
                    "two writing requests never interleave there")
def test_a_person_being_deleted_does_not_become_the_head_of_a_new_household(
        country, make_individual, db_session):
    person = make_individual(location=country["NV1"])
    db_session.commit()
    everything = Scope(everything=True)
    with Session(db.engine) as first, Session(db.engine) as second:
        services.delete_individual(first, first.get(Individual, person.id), scope=everything, actor_id=None)
        thread, outcome = _blocked_call(lambda: services.create_group(
            second, code="HH-GHOST", name="Ghost", kind="household", location_id=None,
            head_id=person.id, scope=everything, actor_id=None))
        thread.join(1)
        assert thread.is_alive()  # waiting for the delete
        first.commit()
        thread.join(10)
        assert isinstance(outcome[0], DomainError) and "was deleted meanwhile" in outcome[0].message
        second.rollback()
    assert db_session.scalar(select(GroupMember.id).where(GroupMember.individual_id == person.id)) is None


@pytest.mark.skipif("sqlite" in _database_url(), reason="SQLite takes its write lock at BEGIN: "
                    "two writing requests never interleave there")
def test_a_person_made_head_of_a_new_household_meanwhile_is_not_deleted(
        country, make_individual, db_session):
    person, child = (make_individual(location=country["NV1"]) for _ in range(2))
    db_session.commit()
    everything = Scope(everything=True)
    with Session(db.engine) as first, Session(db.engine) as second:
        home = services.create_group(first, code="HH-NEWHEAD", name="New", kind="household",
                                     location_id=None, head_id=person.id, scope=everything, actor_id=None)
        services.add_member(first, home, child.id, role="child", scope=everything, actor_id=None)
        thread, outcome = _blocked_call(lambda: services.delete_individual(
            second, second.get(Individual, person.id), scope=everything, actor_id=None))
        thread.join(1)
        assert thread.is_alive()  # waiting for the new household
        first.commit()
        thread.join(10)
        assert isinstance(outcome[0], DomainError), outcome
        assert "heads household HH-NEWHEAD: choose another head first" in outcome[0].message
        second.rollback()
    db_session.expire_all()
    assert db_session.get(Individual, person.id).deleted_at is None
