from flask import abort, current_app, flash
from flask_login import current_user

from portal.background.models import JobRun
from portal.background.services import (enqueue, job_queue, recent_jobs, redis_connection,
                                        sweep_stale_jobs)
from portal.background import bp
from portal.extensions import db
from portal.web import can, htmx_redirect, render, require
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
    if run.status == "running":
        # A poll is also the moment to notice a worker that died under this job.
        queue = job_queue(redis_connection(current_app.config))
        swept = sweep_stale_jobs(db.session, queue, stale_after=current_app.config["JOB_STALE_SECONDS"])
        if swept:
            db.session.commit()
    return render("background/show.html", partial="background/_job_progress.html", run=run)


@bp.route("/<int:run_id>/retry", methods=["POST"])
@require("job.view")
def retry(run_id: int):
    run = _visible_run(run_id)
    if run.status != "failed":
        flash("Only a failed job can be started again.", "error")
    else:
        run.status, run.message, run.finished_at = "queued", "Queued again", None
        db.session.commit()
        enqueue(job_queue(redis_connection(current_app.config)), run)
        db.session.commit()
    return htmx_redirect(url_for("background.show", run_id=run.id))
