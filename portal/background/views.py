from flask import abort, url_for
from flask_login import current_user

from portal.background import bp
from portal.background.models import JobRun
from portal.background.services import jobs_limited_to, may_retry, recent_jobs, retry_job, visible_job
from portal.errors import DomainError
from portal.extensions import db
from portal.web import (can, flash_refusal, htmx_redirect, queue_job, render, require, scope,
                        sweep_if_running)


def _jobs_of() -> int | None:
    return jobs_limited_to(current_user.id, manages_users=can("user.manage"), scope=scope())


def _visible_run(run_id: int) -> JobRun:
    run = visible_job(db.session, run_id, actor_id=_jobs_of())
    if run is None:
        abort(404)
    return run


@bp.route("/")
@require("job.view")
def index():
    runs = recent_jobs(db.session, actor_id=_jobs_of())
    return render("background/index.html", runs=runs)


@bp.route("/<int:run_id>")
@require("job.view")
def show(run_id: int):
    run = _visible_run(run_id)
    sweep_if_running(run)
    return render("background/show.html", partial="background/_job_progress.html", run=run,
                  may_retry=may_retry(run, permissions=current_user.permissions))


@bp.route("/<int:run_id>/retry", methods=["POST"])
@require("job.view")
def retry(run_id: int):
    run = _visible_run(run_id)
    try:
        retry_job(db.session, run, actor_id=current_user.id, permissions=current_user.permissions,
                  scope=scope())
    except DomainError as exc:
        flash_refusal(exc)
    else:
        queue_job(run)
    return htmx_redirect(url_for("background.show", run_id=run_id))
