"""What every job entry point shares: an app, the durable row, progress and failure.

``run(run_id, work)`` marks the row running, gives ``work`` a ``Progress`` that records
done/total and a heartbeat (committing the job's session, so call it between batches),
and records success or failure on the row. A failure is re-raised so RQ keeps it too.

Each run is one attempt of its row. When a slow worker's heartbeat went silent, the sweep
queues the row again and another worker starts the next attempt; the slow one finds out at
its next commit, which it then rolls back, so two workers never both write the same job.
"""
from __future__ import annotations

import logging
import os
import traceback
from typing import Callable

from sqlalchemy import func, update

from portal.audit.services import set_actor
from portal.background.models import JobRun
from portal.clock import now
from portal.errors import DomainError
from portal.extensions import db

log = logging.getLogger("portal.jobs")
_app = None
_app_pid = None


def app():
    """The app for this process, created on first use (never at import time)."""
    global _app, _app_pid
    if _app is None:
        from portal import create_app, extensions

        extensions.sqlite_immediate_everywhere = True
        _app = create_app()
    if _app_pid != os.getpid():
        # A forked work-horse must not share the parent's database connections.
        with _app.app_context():
            db.engine.dispose(close=False)
        _app_pid = os.getpid()
    return _app


class Superseded(BaseException):
    """Another attempt took this job over (or it was given up on) while this one ran. Not an
    Exception: a job's own ``except Exception`` would record it as the job's failure and undo
    what the attempt now running has done."""


def _commit_if_still_mine(session, run_id: int, attempt: int) -> None:
    """Commit the job's work, unless its row now belongs to another attempt (or was given up
    on). The check is itself a write of the row, which PostgreSQL locks until the commit
    (SQLite's job holds the write lock), so no attempt can take the row over in between."""
    mine = session.execute(update(JobRun).where(
        JobRun.id == run_id, JobRun.attempts == attempt, JobRun.status == "running")
        .values(heartbeat_at=now()).execution_options(synchronize_session=False)).rowcount
    if not mine:
        session.rollback()
        raise Superseded(f"job {run_id}: attempt {attempt} was superseded")
    session.commit()


class Progress:
    """Records done/total and a heartbeat, committing the job's work with them; ``commit``
    alone is for work that ends otherwise (a job's clean-up after its failure)."""

    def __init__(self, session, run: JobRun, attempt: int):
        self.session = session
        self.run = run
        self.run_id = run.id  # read without the job's session, by work shared out to threads
        self.attempt = attempt

    def __call__(self, done: int, total: int | None = None, message: str | None = None) -> None:
        self.run.done = done
        if total is not None:
            self.run.total = total
        if message is not None:
            self.run.message = message
        self.commit()

    def commit(self, session=None) -> None:
        """Commit the job's session, or ``session`` when the work shares out to others."""
        _commit_if_still_mine(self.session if session is None else session, self.run_id,
                              self.attempt)


def run(run_id: int, work: Callable[[object, JobRun, Progress], dict | None]) -> dict | None:
    with app().app_context():
        session = db.session
        job = session.get(JobRun, run_id)
        if job is None:
            log.warning("job row %s does not exist; nothing to do", run_id)
            return None
        set_actor(session, job.created_by_id)
        # The attempt is claimed in one statement: two workers given the same job get two
        # numbers, and the later one owns the row.
        attempt = session.execute(update(JobRun).where(
            JobRun.id == run_id, JobRun.status != "succeeded").values(
            status="running", attempts=JobRun.attempts + 1, heartbeat_at=now(),
            started_at=func.coalesce(JobRun.started_at, now()), message="Started")
            .returning(JobRun.attempts).execution_options(synchronize_session=False)).scalar()
        session.commit()
        job = session.get(JobRun, run_id, populate_existing=True)
        if attempt is None:
            return job.result  # a duplicate delivery: already done
        try:
            result = work(session, job, Progress(session, job, attempt)) or {}
            _commit_if_still_mine(session, run_id, attempt)
        except Superseded:
            log.warning("job %s: attempt %s stopped, another attempt has taken over", run_id, attempt)
            return None
        except DomainError as exc:
            session.rollback()
            _finish(session, run_id, attempt, "failed", exc.message)
            raise
        except Exception as exc:
            session.rollback()
            log.error("job %s failed:\n%s", run_id, traceback.format_exc())
            _finish(session, run_id, attempt, "failed", f"Unexpected error: {failure_text(exc)}")
            raise
        job.result = result
        job.status = "succeeded"
        job.done = max(job.done, job.total)
        job.finished_at = job.heartbeat_at = now()
        if not job.message or job.message == "Started":
            job.message = "Done"
        session.commit()
        return result


def failure_text(exc: BaseException) -> str:
    """What users read of a job's failure: a rule's message, or a stopped reading process's,
    as it is; of anything else only its kind. An exception's own text can hold people's data
    that its readers may not see (a database error quotes its statement's values, national
    IDs among them), and everyone who sees the job or its upload reads the message; the
    worker's log has the whole error."""
    from portal.imports.reader_process import ReaderStopped

    if isinstance(exc, DomainError):
        return exc.message
    if isinstance(exc, ReaderStopped):
        return str(exc)
    return f"{type(exc).__name__} (the worker's log has the details)"


def _finish(session, run_id: int, attempt: int, status: str, message: str) -> None:
    job = session.get(JobRun, run_id)
    if job is None or job.attempts != attempt:  # gone, or another attempt's now
        return
    job.status, job.message = status, message[:5000]
    job.finished_at = job.heartbeat_at = now()
    session.commit()
