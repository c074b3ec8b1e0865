"""One attempt of a job at a time: a slow worker whose row another attempt took over (the
sweep queued it again) stops at its next commit and leaves nothing of its own behind."""
import os

import pytest
from sqlalchemy import func, select, update

from jobs import runtime
from portal.background.models import JobRun
from portal.background.services import create_job
from portal.extensions import db
from portal.locations.models import Location
from portal.locations.services import Scope, create_location

pytestmark = pytest.mark.live


@pytest.fixture
def job_app(app, monkeypatch):
    """The jobs' runtime in this process, on the test database."""
    monkeypatch.setattr(runtime, "_app", app)
    monkeypatch.setattr(runtime, "_app_pid", os.getpid())
    return app


def _job(db_session) -> int:
    run = create_job(db_session, kind="location_import", entry_point="jobs.locations.import_locations",
                     lock_key="location_import")
    db_session.commit()
    return run.id


def _taken_over(run_id: int, *, status: str, attempts: int) -> None:
    """What the sweep and a second worker do, on connections of their own."""
    with db.engine.begin() as other:
        other.execute(update(JobRun).where(JobRun.id == run_id).values(status=status, attempts=attempts))


def _add_region(session, code: str) -> None:
    create_location(session, code=code, name=code, kind="region", parent=None, scope=Scope(everything=True))


@pytest.mark.parametrize("status,attempts", [("running", 2), ("queued", 1), ("failed", 1)],
                         ids=["another worker runs it", "queued again", "given up on"])
def test_an_attempt_whose_job_was_taken_over_stops_at_its_next_commit_and_keeps_nothing(
        job_app, db_session, status, attempts):
    run_id = _job(db_session)

    def work(session, job, progress):
        _add_region(session, "R-FIRST")
        progress(1, 3, "first batch")
        _taken_over(run_id, status=status, attempts=attempts)
        _add_region(session, "R-SECOND")
        progress(2, 3, "second batch")
        _add_region(session, "R-THIRD")
        return {"done": 3}

    assert runtime.run(run_id, work) is None
    db.session.remove()
    codes = set(db.session.scalars(select(Location.code)))
    assert codes == {"R-FIRST"}
    job = db.session.get(JobRun, run_id)
    assert (job.status, job.attempts, job.done, job.message) == (status, attempts, 1, "first batch")


def test_an_attempt_left_alone_commits_every_batch_and_succeeds(job_app, db_session):
    run_id = _job(db_session)

    def work(session, job, progress):
        for n in range(3):
            _add_region(session, f"R-{n}")
            progress(n + 1, 3, f"batch {n + 1}")
        return {"done": 3}

    assert runtime.run(run_id, work) == {"done": 3}
    db.session.remove()
    assert db.session.scalar(select(func.count()).select_from(Location)) == 3
    job = db.session.get(JobRun, run_id)
    assert (job.status, job.attempts, job.done) == ("succeeded", 1, 3)


def test_the_failure_clean_up_of_an_attempt_taken_over_is_not_committed_and_fails_nothing(
        job_app, db_session):
    run_id = _job(db_session)

    def work(session, job, progress):
        _taken_over(run_id, status="running", attempts=2)
        try:
            raise ValueError("a row the attempt now running has staged")
        except ValueError:  # as the upload jobs clean up after a failure
            session.rollback()
            _add_region(session, "R-CLEANUP")
            progress.commit()
            raise

    assert runtime.run(run_id, work) is None
    db.session.remove()
    assert db.session.scalar(select(func.count()).select_from(Location)) == 0
    job = db.session.get(JobRun, run_id)
    assert (job.status, job.attempts) == ("running", 2)


def test_a_job_that_fails_on_a_database_error_tells_its_kind_but_not_the_values_the_statement_held(
        job_app, db_session):
    """A database error's text quotes its statement's values (a national ID, say), and
    everyone who sees the job reads its message."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    run_id = _job(db_session)

    def work(session, job, progress):
        session.execute(text("INSERT INTO location (code, name, kind, path) VALUES (:code, NULL, 'region', '/x/')"),
                        {"code": "NID-4417-SECRET"})

    with pytest.raises(IntegrityError):
        runtime.run(run_id, work)
    db.session.remove()
    job = db.session.get(JobRun, run_id)
    assert job.status == "failed"
    assert "IntegrityError" in job.message and "NID-4417-SECRET" not in job.message


def test_a_job_refused_by_a_rule_shows_the_rules_message_as_it_is(job_app, db_session):
    from portal.errors import DomainError

    run_id = _job(db_session)

    def work(session, job, progress):
        raise DomainError("The file has column names but no rows of people.")

    with pytest.raises(DomainError):
        runtime.run(run_id, work)
    db.session.remove()
    assert db.session.get(JobRun, run_id).message == "The file has column names but no rows of people."
