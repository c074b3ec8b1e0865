"""Two or more managers enrolling at once, or one enrolling while another edits the program,
must not leave more places taken than the program's cap.

Real threads, each with its own connection and transaction, committing for real."""
from __future__ import annotations

import os
import threading
import time

import pytest
from sqlalchemy.orm import Session

from portal.errors import DomainError
from portal.extensions import db
from portal.locations.services import Scope
from portal.programs import services
from portal.programs.models import Program

pytestmark = pytest.mark.live

ON_POSTGRESQL = os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql")


def _attempt(app, outcomes: list[str], done: str, work) -> None:
    """``work(session)`` in a session and transaction of its own, committed: ``done`` is
    recorded, or the refusal's message."""
    with app.app_context():
        session = Session(db.engine)
        try:
            work(session)
            session.commit()
            outcomes.append(done)
        except DomainError as exc:
            session.rollback()
            outcomes.append(exc.message)
        finally:
            session.close()


def _race(app, program_id: int, batches: list[list[int]]) -> list[str]:
    """Each batch enrolled by its own thread, all released at the same moment."""
    barrier = threading.Barrier(len(batches))
    outcomes: list[str] = []

    def manager(ids):
        def enrol(session):
            barrier.wait()
            services.enrol(session, program_id, individual_ids=ids, actor_id=None,
                           scope=Scope(everything=True))
        _attempt(app, outcomes, "enrolled", enrol)

    threads = [threading.Thread(target=manager, args=(ids,)) for ids in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def _check_cap_holds(app, db_session, program, person):
    plan = program(max_beneficiaries=5)
    two_each = [[person().id, person().id] for _ in range(2)]
    one_each = [[person().id] for _ in range(6)]
    plan_id = plan.id
    db_session.commit()

    outcomes = _race(app, plan_id, two_each)
    assert outcomes.count("enrolled") == 2
    outcomes = _race(app, plan_id, one_each)  # 1 place left, 6 managers want it
    assert outcomes.count("enrolled") == 1
    refusals = [o for o in outcomes if o != "enrolled"]
    assert len(refusals) == 5 and all("0 places left" in o for o in refusals)
    db_session.commit()  # end the read transaction: SQLite would keep showing its snapshot
    assert services.taken_places(db_session, plan_id) == 5


@pytest.mark.skipif(not ON_POSTGRESQL, reason="needs TEST_DATABASE_URL=postgresql://... "
                                              "(the row lock is SELECT ... FOR UPDATE)")
def test_managers_enrolling_at_once_never_exceed_the_cap_on_postgresql(app, db_session, program,
                                                                       person):
    _check_cap_holds(app, db_session, program, person)


@pytest.mark.skipif(ON_POSTGRESQL, reason="the SQLite variant runs without TEST_DATABASE_URL")
def test_managers_enrolling_at_once_never_exceed_the_cap_on_sqlite(app, db_session, program, person):
    _check_cap_holds(app, db_session, program, person)


@pytest.mark.skipif(not ON_POSTGRESQL, reason="needs TEST_DATABASE_URL=postgresql://... "
                                              "(the row lock is SELECT ... FOR UPDATE)")
@pytest.mark.parametrize("edit, refusal", [({"max_beneficiaries": 2}, "3 beneficiaries already"),
                                           ({"beneficiary_kind": "group"}, "cannot change")])
def test_an_edit_made_while_a_manager_enrols_counts_the_enrolment_on_postgresql(
        app, db_session, program, person, edit, refusal):
    plan = program(max_beneficiaries=5)
    ids = [person().id for _ in range(3)]
    plan_id, code, name = plan.id, plan.code, plan.name
    db_session.commit()
    enrolled = threading.Event()
    outcomes: list[str] = []

    def enrolling_manager():
        """Enrols, then commits only once the editor has had time to count and wait."""
        with app.app_context():
            session = Session(db.engine)
            try:
                services.enrol(session, plan_id, individual_ids=ids, actor_id=None,
                               scope=Scope(everything=True))
                enrolled.set()
                time.sleep(0.5)
                session.commit()
            finally:
                session.close()

    def editing_manager():
        def edit_program(session):
            enrolled.wait(timeout=30)
            services.save_program(session, session.get(Program, plan_id), code=code, name=name,
                                  **{"max_beneficiaries": 5, **edit})
        _attempt(app, outcomes, "saved", edit_program)

    threads = [threading.Thread(target=enrolling_manager), threading.Thread(target=editing_manager)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 1 and refusal in outcomes[0]
    db_session.commit()
    saved = db_session.get(Program, plan_id)
    assert (saved.max_beneficiaries, saved.beneficiary_kind) == (5, "individual")
    assert services.taken_places(db_session, plan_id) == 3


@pytest.mark.skipif(not ON_POSTGRESQL, reason="needs TEST_DATABASE_URL=postgresql://... "
                                              "(the row lock is SELECT ... FOR UPDATE)")
def test_a_draft_activated_twice_at_once_is_activated_once_and_the_second_is_told_why(
        app, db_session, program):
    """A double click on Activate: the second request read the draft before the first committed."""
    plan = program(status="draft")
    plan_id = plan.id
    db_session.commit()
    first_updated = threading.Event()
    outcomes: list[str] = []

    def first_manager():
        with app.app_context():
            session = Session(db.engine)
            try:
                services.activate_program(session, session.get(Program, plan_id))
                session.flush()
                first_updated.set()
                time.sleep(0.5)
                session.commit()
                outcomes.append("activated")
            finally:
                first_updated.set()
                session.close()

    def second_manager():
        def activate(session):
            draft = session.get(Program, plan_id)  # read before the first one commits
            first_updated.wait(timeout=30)
            services.activate_program(session, draft)
        _attempt(app, outcomes, "activated", activate)

    threads = [threading.Thread(target=first_manager), threading.Thread(target=second_manager)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == sorted(["activated", f"Only a draft program can be activated; "
                                                    f"{plan.name} is active."])
