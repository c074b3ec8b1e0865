"""Validating and importing an upload in the background (see portal/imports/services.py)."""
from __future__ import annotations

from jobs import runtime
from portal.background.services import scope_from_params
from portal.errors import DomainError
from portal.imports import services
from portal.imports.models import Upload
from portal.imports.reading import FileProblem


def validate_upload(run_id: int):
    return runtime.run(run_id, _validate)


def import_upload(run_id: int):
    return runtime.run(run_id, _import)


def fix_upload(run_id: int):
    return runtime.run(run_id, _fix)


def prepare_session(session, *, cache_mb: int = 128, wal_checkpoints: bool = False) -> None:
    """Batches commit through progress; objects read once (locations, the upload) stay
    loaded instead of being read again after every commit. On SQLite the connection gets a
    larger page cache than its 2 MB: an import of 100,000 people dirties nearly every page
    of the registry's indexes, and with 256 MB they stay in memory until the commit writes
    each once, instead of being spilled and written again (an import 0.5-1 s faster);
    validation gains nothing from more than 128 MB, so its memory stays lower. A job that
    commits for minutes (a large fix) keeps SQLite's automatic checkpoints
    (``wal_checkpoints``), or the write-ahead log would grow for as long as it runs."""
    from sqlalchemy import text

    real = session.registry() if hasattr(session, "registry") else session
    real.expire_on_commit = False
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text(f"PRAGMA cache_size=-{int(cache_mb) * 1024}"))
        session.execute(text(f"PRAGMA wal_autocheckpoint={1000 if wal_checkpoints else 0}"))


def _upload(session, job) -> Upload:
    upload = session.get(Upload, job.params["upload_id"])
    if upload is None:
        raise DomainError("The upload was deleted.")
    return upload


def _validate(session, job, progress):
    upload = _upload(session, job)
    if upload.status == "validated" and upload.job_run_id == job.id:
        return upload.counts  # finished already; this is a repeated delivery
    if upload.job_run_id != job.id:
        raise DomainError("This upload has had another job since; check its rows again from its page.")
    upload.status = "validating"
    prepare_session(session)
    scope = scope_from_params(job.params)
    try:
        return services.validate_upload(session, upload, scope=scope, progress=progress)
    except Exception as exc:
        # Nothing staged survives a failed read; the file itself is kept for the history.
        session.rollback()
        upload = session.get(Upload, job.params["upload_id"])
        services.clear_rows(session, upload)
        upload.status = "failed"
        upload.message = (exc.message if isinstance(exc, FileProblem) else
                          f"Validation stopped: {runtime.failure_text(exc)}")[:2000]
        progress.commit()  # not if another attempt has taken over: its rows stay
        raise


def _import(session, job, progress):
    upload = _upload(session, job)
    if upload.status == "imported":
        return upload.counts
    if upload.job_run_id != job.id:
        raise DomainError("This upload has had another job since; import it again from its page.")
    upload.status = "importing"
    prepare_session(session, cache_mb=256)
    scope = scope_from_params(job.params)
    try:
        return services.import_upload(session, upload, scope=scope, actor_id=job.created_by_id,
                                      progress=progress, commit_part=progress.commit,
                                      only_if_clean=job.params.get("only_if_clean", False))
    except Exception as exc:
        session.rollback()
        upload = session.get(Upload, job.params["upload_id"])
        services.stopped_import(session, upload)
        upload.message = f"The import stopped: {runtime.failure_text(exc)}"[:2000]
        progress.commit()  # not if another attempt has taken over
        raise


def _fix(session, job, progress):
    upload = _upload(session, job)
    fix = job.params["fix"]
    if upload.job_run_id != job.id:
        raise DomainError("This upload has had another job since; make the fix again "
                          "from its rows to fix.")
    if upload.status != "fixing":
        if not services.unfinished_fix(job):  # finished already; this is a repeated delivery
            services.forget_fixes_file(fix)
            return job.result
        # Started again after it failed: a replace goes on from where it stopped.
        if fix["kind"] != "replace" or upload.status != "validated":
            raise DomainError("This fix stopped before it was done, and its file of fixes "
                              "is not kept: upload the file of fixes again.")
        upload.status, upload.message = "fixing", ""
    prepare_session(session, wal_checkpoints=True)
    try:
        result = services.fix_upload(session, upload, fix, scope=scope_from_params(job.params),
                                     run=job, progress=progress)
        job.result = result
        progress.commit()
    except Exception as exc:
        # What was fixed and committed stays fixed; the rows can be fixed again by hand.
        session.rollback()
        upload = session.get(Upload, job.params["upload_id"])
        services.end_failed_fix(session, upload, f"The fix stopped: {runtime.failure_text(exc)}")
        progress.commit()  # not if another attempt has taken over (nor is the file taken then)
        services.forget_fixes_file(fix)
        raise
    services.forget_fixes_file(fix)  # only now: a worker killed before the commit reads it again
    return result
