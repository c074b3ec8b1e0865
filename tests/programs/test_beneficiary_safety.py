"""Nobody paid or enrolled wrongly: beneficiaries changed by two managers at once, activation
of people or households that no longer qualify, and what each change leaves in the audit log.

The tests that race two managers use real threads, each with its own connection and
transaction; they need PostgreSQL (TEST_DATABASE_URL), whose row locks they exercise."""
from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.clock import today
from portal.errors import DomainError
from portal.extensions import db
from portal.locations.services import Scope
from portal.programs import services
from portal.programs.models import Beneficiary
from portal.programs.services import BeneficiaryFilters, Criteria

EVERY = Scope(everything=True)
on_postgresql = pytest.mark.skipif(
    not os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql"), reason="needs PostgreSQL")


def _beneficiary_id(db_session, person_id: int) -> int:
    return db_session.scalar(select(Beneficiary.id).where(Beneficiary.individual_id == person_id))


def _first_then_second(app, first, second) -> dict[str, str]:
    """``first(session)`` makes its change and holds its transaction open a moment;
    ``second(session)`` starts meanwhile, so it reads the beneficiary before first commits.
    Each outcome is "ok", "refused: <message>", or "CRASH ..." (what a page would show as 500)."""
    outcomes: dict[str, str] = {}
    changed = threading.Event()

    def run(name, work, hold):
        with app.app_context():
            session = Session(db.engine)
            try:
                work(session)
                if hold:
                    changed.set()
                    time.sleep(0.7)
                session.commit()
                outcomes[name] = "ok"
            except DomainError as exc:
                session.rollback()
                outcomes[name] = "refused: " + exc.message
            except Exception as exc:  # noqa: BLE001 - the 500 these tests guard against
                session.rollback()
                outcomes[name] = f"CRASH {type(exc).__name__}: {exc}"[:300]
            finally:
                session.close()

    def late(session):
        changed.wait(10)
        second(session)

    threads = [threading.Thread(target=run, args=("first", first, True)),
               threading.Thread(target=run, args=("second", late, False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def _remove(beneficiary_id):
    def remove(session):
        services.change_status(session, beneficiary_id, to_status="removed", reason="Not eligible",
                               actor_id=None, scope=EVERY)
    return remove


# --- two managers at once ---------------------------------------------------------------------

@pytest.mark.live
@on_postgresql
@pytest.mark.parametrize("second", ["remove it too", "activate it", "save its program fields"])
def test_a_change_to_a_beneficiary_another_manager_is_removing_at_once_is_told_it_was_removed_meanwhile(
        app, db_session, program, person, second):
    plan, someone = program(), person()
    services.save_program_field(db_session, plan, None, name="school", label="School", type="text")
    services.enrol(db_session, plan.id, individual_ids=[someone.id], actor_id=None, scope=EVERY)
    bid = _beneficiary_id(db_session, someone.id)
    db_session.commit()
    changes = {
        "remove it too": _remove(bid),
        "activate it": lambda session: services.change_status(
            session, bid, to_status="active", reason="Eligible", actor_id=None, scope=EVERY),
        "save its program fields": lambda session: services.update_beneficiary_custom(
            session, bid, {"school": "Chilumba"}, scope=EVERY, actor_id=None),
    }

    outcomes = _first_then_second(app, _remove(bid), changes[second])

    assert outcomes["first"] == "ok"
    assert outcomes["second"].startswith("refused: This beneficiary was removed"), outcomes


def test_a_second_click_on_remove_says_the_beneficiary_was_removed_instead_of_not_found(
        client, login, db_session, program, person):
    plan, someone = program(), person()
    services.enrol(db_session, plan.id, individual_ids=[someone.id], actor_id=None, scope=EVERY)
    bid = _beneficiary_id(db_session, someone.id)
    db_session.commit()
    login("program_manager")
    form = {"to_status": "removed", "reason": "Not eligible", "program_id": plan.id}

    client.post(f"/programs/beneficiaries/{bid}/status", data=form)
    again = client.post(f"/programs/beneficiaries/{bid}/status", data=form, follow_redirects=True)

    assert again.status_code == 200
    assert "no longer in the program" in again.get_data(as_text=True)


# --- who may be made active -------------------------------------------------------------------

def _enrolled(db_session, plan, people, status="potential"):
    services.enrol(db_session, plan.id, individual_ids=[p.id for p in people], status=status,
                   actor_id=None, scope=EVERY)
    return [_beneficiary_id(db_session, p.id) for p in people]


def _end_coverage_yesterday(db_session, plan):
    services.save_program(db_session, plan, code=plan.code, name=plan.name,
                          date_to=today() - timedelta(days=1))


def _activate(db_session, beneficiary_id):
    return services.change_status(db_session, beneficiary_id, to_status="active",
                                  reason="Eligible", actor_id=None, scope=EVERY)


@pytest.mark.parametrize("suspended_first", [False, True], ids=["potential", "suspended"])
def test_a_beneficiary_cannot_be_made_active_after_the_coverage_ended(
        db_session, program, person, suspended_first):
    plan = program()
    [bid] = _enrolled(db_session, plan, [person()], status="active" if suspended_first else "potential")
    if suspended_first:
        services.change_status(db_session, bid, to_status="suspended", reason="Away", actor_id=None,
                               scope=EVERY)
    _end_coverage_yesterday(db_session, plan)

    with pytest.raises(DomainError, match="ended on"):
        _activate(db_session, bid)


def test_a_bulk_activation_after_the_coverage_ended_is_refused_and_changes_nobody(
        db_session, program, person):
    plan = program()
    _enrolled(db_session, plan, [person() for _ in range(3)])
    _end_coverage_yesterday(db_session, plan)

    with pytest.raises(DomainError, match="ended on"):
        services.bulk_change_status(db_session, plan.id, scope=EVERY, filters=BeneficiaryFilters(),
                                    to_status="active", reason="Eligible", actor_id=None)
    assert services.status_counts(db_session, plan, scope=EVERY)["potential"] == 3


def test_enrolling_as_active_before_the_coverage_starts_is_refused_but_as_potential_is_not(
        db_session, program, person):
    plan = program(date_from=today() + timedelta(days=30), date_to=today() + timedelta(days=300))

    with pytest.raises(DomainError, match="starts on"):
        services.enrol(db_session, plan.id, individual_ids=[person().id], status="active",
                       actor_id=None, scope=EVERY)
    [bid] = _enrolled(db_session, plan, [person()])
    with pytest.raises(DomainError, match="starts on"):
        _activate(db_session, bid)


def test_a_person_deleted_from_the_registry_cannot_be_made_active_and_keeps_the_record(
        db_session, program, person):
    from portal.registry.services import delete_individual

    plan, someone = program(), person()
    [bid] = _enrolled(db_session, plan, [someone])
    delete_individual(db_session, someone, scope=EVERY, actor_id=None)

    with pytest.raises(DomainError, match="deleted from the registry"):
        _activate(db_session, bid)
    assert db_session.get(Beneficiary, bid).status == "potential"


def test_a_bulk_activation_leaves_out_people_deleted_from_the_registry_and_counts_them(
        db_session, program, person):
    from portal.registry.services import delete_individual

    plan = program()
    deleted, living = person(), person()
    _enrolled(db_session, plan, [deleted, living])
    delete_individual(db_session, deleted, scope=EVERY, actor_id=None)
    preview = services.bulk_status_preview(db_session, plan, scope=EVERY,
                                           filters=BeneficiaryFilters(), to_status="active")

    result = services.bulk_change_status(
        db_session, plan.id, scope=EVERY, filters=BeneficiaryFilters(), to_status="active",
        reason="Eligible", actor_id=None, expected=preview["mark"])

    assert (preview["change"], preview["not_allowed"]) == (1, 1)
    assert result == {"changed": 1, "not_allowed": 1}
    assert db_session.get(Beneficiary, _beneficiary_id(db_session, deleted.id)).status == "potential"


# --- households nobody lives in any more ------------------------------------------------------

def _emptied_household(db_session, household):
    from portal.registry.services import remove_member

    home = household(1)
    remove_member(db_session, home, home.members[0].id, scope=EVERY, actor_id=None)
    db_session.refresh(home)
    return home


def test_a_household_whose_last_member_was_removed_cannot_be_enrolled(db_session, program, household):
    plan = program(beneficiary_kind="group")
    home = _emptied_household(db_session, household)

    with pytest.raises(DomainError, match="nobody living"):
        services.enrol(db_session, plan.id, group_ids=[home.id], actor_id=None, scope=EVERY)


def test_a_household_whose_last_member_was_removed_does_not_match_criteria(
        db_session, program, household, country):
    plan = program(beneficiary_kind="group")
    _emptied_household(db_session, household)
    lived_in = household(2)

    preview = services.preview_criteria(db_session, plan, scope=EVERY,
                                        criteria=Criteria(location_id=country["NV1"].id))

    assert preview["new"] == 1 and [g.id for g in preview["sample"]] == [lived_in.id]


def test_a_household_whose_last_member_was_removed_cannot_be_made_active(
        db_session, program, household):
    from portal.registry.services import remove_member

    plan = program(beneficiary_kind="group")
    home = household(1)
    services.enrol(db_session, plan.id, group_ids=[home.id], actor_id=None, scope=EVERY)
    remove_member(db_session, home, home.members[0].id, scope=EVERY, actor_id=None)
    bid = db_session.scalar(select(Beneficiary.id).where(Beneficiary.group_id == home.id))

    with pytest.raises(DomainError, match="Nobody lives in this household"):
        _activate(db_session, bid)
    assert services.bulk_change_status(
        db_session, plan.id, scope=EVERY, filters=BeneficiaryFilters(), to_status="active",
        reason="Eligible", actor_id=None) == {"changed": 0, "not_allowed": 1}


# --- payments stopped when nobody is left to pay ------------------------------------------------

def _history(db_session, beneficiary_id):
    from portal.programs.models import BeneficiaryStatusChange

    return [(c.from_status, c.to_status, c.reason) for c in db_session.scalars(
        select(BeneficiaryStatusChange).where(BeneficiaryStatusChange.beneficiary_id == beneficiary_id)
        .order_by(BeneficiaryStatusChange.id))]


def test_an_active_beneficiary_deleted_from_the_registry_is_suspended_with_the_reason_in_the_history_and_the_log(
        db_session, program, person, make_user):
    from portal.audit.models import AuditEntry
    from portal.registry.services import delete_individual

    officer = make_user("admin")
    plan, someone, other = program(), person(), person()
    [bid, kept] = _enrolled(db_session, plan, [someone, other], status="active")
    delete_individual(db_session, someone, scope=EVERY, actor_id=officer.id)

    assert db_session.get(Beneficiary, bid).status == "suspended"
    assert db_session.get(Beneficiary, kept).status == "active"
    assert _history(db_session, bid) == [("active", "suspended", "Suspended: the person was deleted from the registry.")]
    entry = db_session.scalar(select(AuditEntry).where(AuditEntry.entity_type == "beneficiary",
                                                       AuditEntry.entity_id == str(bid),
                                                       AuditEntry.action == "status"))
    assert entry.actor_id == officer.id and entry.changes["status"] == ["active", "suspended"]


def test_an_active_household_whose_last_member_is_removed_is_suspended_and_one_with_members_left_is_not(
        db_session, program, household):
    from portal.registry.services import remove_member

    plan = program(beneficiary_kind="group")
    alone, family = household(1), household(2)
    services.enrol(db_session, plan.id, group_ids=[alone.id, family.id], status="active",
                   actor_id=None, scope=EVERY)
    child = next(m for m in family.members if m.role != "head")
    remove_member(db_session, family, child.id, scope=EVERY, actor_id=None)
    remove_member(db_session, alone, alone.members[0].id, scope=EVERY, actor_id=None)

    status = {g: db_session.scalar(select(Beneficiary.status).where(Beneficiary.group_id == g))
              for g in (alone.id, family.id)}
    assert status == {alone.id: "suspended", family.id: "active"}


def test_a_deleted_persons_potential_place_is_left_as_it_is(db_session, program, person):
    from portal.registry.services import delete_individual

    plan, someone = program(), person()
    [bid] = _enrolled(db_session, plan, [someone])
    delete_individual(db_session, someone, scope=EVERY, actor_id=None)
    assert db_session.get(Beneficiary, bid).status == "potential" and _history(db_session, bid) == []


# --- the audit log ----------------------------------------------------------------------------

def test_a_single_status_change_is_in_the_audit_log_with_its_reason_and_effective_date(
        db_session, program, person, make_user):
    from portal.audit.models import AuditEntry

    manager = make_user("program_manager")
    plan = program()
    [bid] = _enrolled(db_session, plan, [person()], status="active")

    services.change_status(db_session, bid, to_status="suspended", reason="Moved to Zambia",
                           effective_date=today(), actor_id=manager.id,
                           scope=EVERY)

    [entry] = db_session.scalars(select(AuditEntry).where(
        AuditEntry.entity_type == "beneficiary", AuditEntry.entity_id == str(bid)))
    assert entry.actor_id == manager.id and "Moved to Zambia" in entry.summary
    assert entry.changes == {"status": ["active", "suspended"], "reason": "Moved to Zambia",
                             "effective_date": today().isoformat()}
