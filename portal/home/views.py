from flask import current_app, jsonify
from sqlalchemy import text

from portal.background.services import redis_connection
from portal.extensions import db
from portal.home import bp
from portal.web import AUTHENTICATED, PUBLIC, render, require


@bp.route("/")
@require(AUTHENTICATED)
def index():
    return render("home/index.html")


@bp.route("/healthz")
@require(PUBLIC)
def healthz():
    """For load balancers: 200 when the database and Redis answer, 503 otherwise."""
    state = {}
    try:
        db.session.execute(text("SELECT 1"))
        state["database"] = "ok"
    except Exception as exc:  # any failure means unhealthy, whatever the driver raised
        db.session.rollback()
        state["database"] = f"error: {type(exc).__name__}"
    try:
        redis_connection(current_app.config).ping()
        state["redis"] = "ok"
    except Exception as exc:
        state["redis"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in state.values())
    state["status"] = "ok" if healthy else "unavailable"
    return jsonify(state), 200 if healthy else 503
