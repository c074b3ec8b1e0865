from flask import abort, flash
from flask_login import current_user

from portal.background.models import JobRun
from portal.background.services import recent_jobs
from portal.background import bp
from portal.extensions import db
from portal.web import can, htmx_redirect, queue_job, render, require, sweep_if_running
from flask import url_for


def _visible_run(run_id: int) -> JobRun:
    run = db.get_or_404(JobRun, run_id)
    if run.created_by_id != current_user.id and not can("user.manage"):
        abort(404)
    return run


@bp.route("/")
@require("job.view")
def index():
    runs = recent_jobs(db.session, actor_id=None if can("user.manage") else current_user.id)
    return render("background/index.html", runs=runs)


@bp.route("/<int:run_id>")
@require("job.view")
def show(run_id: int):
    run = _visible_run(run_id)
    sweep_if_running(run)
    return render("background/show.html", partial="background/_job_progress.html", run=run)


@bp.route("/<int:run_id>/retry", methods=["POST"])
@require("job.view")
def retry(run_id: int):
    run = _visible_run(run_id)
    if run.status != "failed":
        flash("Only a failed job can be started again.", "error")
    else:
        run.status, run.message, run.finished_at = "queued", "Queued again", None
        queue_job(run)
    return htmx_redirect(url_for("background.show", run_id=run.id))
