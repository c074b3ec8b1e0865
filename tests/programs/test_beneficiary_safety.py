"""Nobody paid or enrolled wrongly: beneficiaries changed by two managers at once, activation
of people or households that no longer qualify, and what each change leaves in the audit log.

The tests that race two managers use real threads, each with its own connection and
transaction; they need PostgreSQL (TEST_DATABASE_URL), whose row locks they exercise."""
from __future__ import annotations

import os
import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.errors import DomainError
from portal.extensions import db
from portal.locations.services import Scope
from portal.programs import services
from portal.programs.models import Beneficiary

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
def test_a_second_remove_of_the_same_beneficiary_at_once_is_told_it_was_removed_meanwhile(
        app, db_session, program, person):
    plan, someone = program(), person()
    services.enrol(db_session, plan.id, individual_ids=[someone.id], actor_id=None, scope=EVERY)
    bid = _beneficiary_id(db_session, someone.id)
    db_session.commit()

    outcomes = _first_then_second(app, _remove(bid), _remove(bid))

    assert outcomes["first"] == "ok"
    assert outcomes["second"].startswith("refused: This beneficiary was removed"), outcomes


@pytest.mark.live
@on_postgresql
def test_activating_a_beneficiary_another_manager_is_removing_is_refused_with_a_message(
        app, db_session, program, person):
    plan, someone = program(), person()
    services.enrol(db_session, plan.id, individual_ids=[someone.id], actor_id=None, scope=EVERY)
    bid = _beneficiary_id(db_session, someone.id)
    db_session.commit()

    def activate(session):
        services.change_status(session, bid, to_status="active", reason="Eligible",
                               actor_id=None, scope=EVERY)

    outcomes = _first_then_second(app, _remove(bid), activate)

    assert outcomes["second"].startswith("refused: This beneficiary was removed"), outcomes


@pytest.mark.live
@on_postgresql
def test_saving_the_program_fields_of_a_beneficiary_removed_meanwhile_is_refused_with_a_message(
        app, db_session, program, person):
    plan, someone = program(), person()
    services.save_program_field(db_session, plan, None, name="school", label="School", type="text")
    services.enrol(db_session, plan.id, individual_ids=[someone.id], actor_id=None, scope=EVERY)
    bid = _beneficiary_id(db_session, someone.id)
    db_session.commit()

    def save_fields(session):
        services.update_beneficiary_custom(session, bid, {"school": "Chilumba"}, scope=EVERY,
                                           actor_id=None)

    outcomes = _first_then_second(app, _remove(bid), save_fields)

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
