"""HTTP helpers shared by every domain: rendering page-or-fragment, permissions, errors."""
from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache, wraps
from typing import Callable
from urllib.parse import urlsplit

from flask import (Flask, Request, abort, current_app, flash, make_response, redirect, render_template,
                   request, url_for)
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import IntegrityError, OperationalError

from portal.extensions import db, htmx
from portal.ids import ID_MAX
from portal.locations.services import OUTSIDE_PERSON, Scope

PUBLIC = "public"  # the marker for the few routes anyone may reach (sign-in, health, static)
AUTHENTICATED = "authenticated"  # any signed-in user (own account, sign-out)


# label, endpoint, permission, what it is for; an area appears once its blueprint exists.
MENU = (
    ("Programs", "programs.index", "program.view", "programs.", "Benefit plans, caps and beneficiaries"),
    ("Individuals", "registry.individuals", "individual.view", "registry.individual",
     "Search, enrol and edit people"),
    ("Groups", "registry.groups", "group.view", "registry.group", "Households and cooperatives"),
    ("Import data", "imports.index", "upload.view", "imports.", "Bulk uploads, their history and fixes"),
    ("Conditional cash transfer", "cct.index", "program.view", "cct.", "Projects, timesheets and payroll"),
    ("Locations", "locations.tree", "location.view", "locations.", "Regions, districts, wards and villages"),
    ("Jobs", "background.index", "job.view", "background.", "Background work and its progress"),
    ("Admin", "accounts.users", "user.manage", "accounts.", "Users, roles and the audit log"),
    ("Audit log", "audit.index", "audit.view", "audit.", "Who changed what, and when"),
)


def menu_items() -> list[dict]:
    items = []
    for label, endpoint, permission, prefix, about in MENU:
        if endpoint in current_app.view_functions and can(permission):
            if label == "Audit log" and can("user.manage"):
                continue  # admins reach it from the Admin pages
            items.append({"label": label, "url": url_for(endpoint), "about": about, "prefix": prefix})
    return items


def is_fragment_request() -> bool:
    """A real htmx request wants a fragment; a boosted link or a history restore wants the page."""
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


def render(template: str, partial: str | None = None, status: int = 200, **context):
    """One URL serves the page and its fragment (Hypermedia Systems style)."""
    fragment = bool(partial) and is_fragment_request()
    body = render_template(partial if fragment else template, **context)
    if fragment:
        # Flash messages travel out of band with the fragment.
        body += render_template("_flash.html", oob=True)
    response = make_response(body, status)
    response.headers.add("Vary", "HX-Request")
    return response


def require(permission: str) -> Callable:
    """Declare the permission a view needs; the URL-map test fails on a view without one."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if permission != PUBLIC:
                if not current_user.is_authenticated:
                    return current_app.login_manager.unauthorized()
                if permission != AUTHENTICATED and not current_user.can(permission):
                    abort(403)
            return view(*args, **kwargs)

        wrapped.permission = permission
        return wrapped

    return decorate


def scope() -> Scope:
    """The signed-in user's location scope (their locations are already loaded)."""
    return Scope.for_user(current_user)


def queue_job(run) -> bool:
    """Commit the job row, then hand it to RQ: a worker must find the row it is given.

    When the queue cannot be reached the row is marked failed, so that nothing waits for it
    for ever (an upload busy with it shows the failure and can be started again), and the
    user is told. Returns whether the job was queued."""
    from redis.exceptions import RedisError

    from portal.background.services import enqueue, job_queue, redis_connection
    from portal.clock import now

    db.session.commit()
    try:
        enqueue(job_queue(redis_connection(current_app.config)), run)
    except RedisError:
        current_app.logger.exception("job %s could not be queued", run.id)
        db.session.rollback()
        run.status, run.finished_at = "failed", now()
        run.message = "The job queue could not be reached, so this job was not started; start it again."
        db.session.commit()
        flash("The background queue could not be reached just now, so nothing was started; "
              "try again in a minute.", "error")
        return False
    db.session.commit()
    return True


def sweep_if_running(run) -> None:
    """A poll of a running job is also the moment to notice a worker that died under it."""
    from portal.background.services import job_queue, redis_connection, sweep_stale_jobs

    if run is None or run.status != "running":
        return
    queue = job_queue(redis_connection(current_app.config))
    if sweep_stale_jobs(db.session, queue, stale_after=current_app.config["JOB_STALE_SECONDS"]):
        db.session.commit()


def can(permission: str) -> bool:
    return current_user.is_authenticated and current_user.can(permission)


def int_arg(name: str, default: int = 0, minimum: int | None = None) -> int:
    """A whole-number query argument; one that is no number, or too large for a database
    integer (a page or an id), is the default."""
    try:
        value = int(request.args.get(name, default))
    except (TypeError, ValueError):
        value = default
    if abs(value) > ID_MAX:
        value = default
    return max(value, minimum) if minimum is not None else value


def htmx_redirect(location: str):
    """Redirect that works for both a plain form post and an htmx request."""
    if htmx:
        response = make_response("", 204)
        response.headers["HX-Redirect"] = location
        return response
    response = make_response("", 303)
    response.headers["Location"] = location
    return response


_MESSAGES = {
    400: ("Bad request", "The request could not be understood. Reload the page and try again."),
    403: ("Not allowed", "Your role does not allow this, or it lies outside your locations."),
    404: ("Not found", "There is nothing here, or it lies outside your locations."),
    405: ("Not allowed", "This address does not accept that kind of request."),
    409: ("Saved by someone else", "Someone saved the same thing at the same moment."),
    413: ("File too large", "The file is larger than the portal accepts."),
    500: ("Something went wrong", "The error was logged. Nothing you entered was half-saved; "
                                  "try again, and tell an administrator if it happens again."),
}


def _error_page(status: int, message: str | None = None):
    if status >= 500:
        db.session.rollback()
    title, default = _MESSAGES.get(status, ("Error", "An error occurred."))
    return render("errors/page.html", partial="errors/_message.html", status=status,
                  title=title, message=message or default, code=status)


def _error_answer(exc, status: int):
    if status == 413 and request.mimetype != "multipart/form-data":
        return _error_page(413, "What was sent is far larger than any form of the portal; nothing was saved.")
    response = _error_page(status)
    if getattr(exc, "valid_methods", None):  # HTTP requires it on a 405
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def register_error_handlers(app) -> None:
    for status in _MESSAGES:
        app.register_error_handler(status, lambda exc, s=status: _error_answer(exc, s))

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return _error_page(400, "The form had expired or was sent from elsewhere. "
                                "Reload the page and send it again; nothing was saved.")

    @app.errorhandler(IntegrityError)
    def saved_at_the_same_moment(exc):
        """Two users saving the same code, name or enrolment at the same moment: the check
        before saving passed for both, and the database's unique index refused the second."""
        db.session.rollback()
        current_app.logger.warning("refused by the database: %s", exc.orig)
        return _error_page(409, "Someone else saved the same code, name or record at the same "
                                "moment, so yours was refused and nothing of it was saved. Go "
                                "back, reload the page to see theirs, and try again.")

    @app.errorhandler(OperationalError)
    def busy_database(exc):
        """Another save or a job held the rows this request needed (a deadlock, or longer than
        the lock timeout): nothing was saved, and trying again is the answer."""
        db.session.rollback()
        if not _database_busy(exc):
            current_app.logger.error("database error", exc_info=exc)
            return _error_page(500)
        current_app.logger.warning("database busy: %s", exc.orig)
        return _error_page(409, "Someone else, or a job running in the background, was saving "
                                "the same records at that moment, so nothing of yours was saved. "
                                "Try again in a moment.")


# PostgreSQL's deadlock, serialization failure and lock timeout: the other transaction won.
_BUSY_STATES = {"40P01", "40001", "55P03"}


def _database_busy(exc: OperationalError) -> bool:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) in _BUSY_STATES or "database is locked" in str(orig)


def register_hooks(app) -> None:
    from portal.audit.services import set_actor

    @app.before_request
    def refuse_nul_characters():
        """No form or search needs a NUL character and PostgreSQL cannot store one: a request
        carrying one is refused with a message before any view half-handles it."""
        for values in (request.args, request.form):
            if any("\x00" in key or "\x00" in value for key, value in values.items(multi=True)):
                return _error_page(400, "What was sent holds a NUL character, which cannot be "
                                        "stored. Remove it and send again; nothing was saved.")
        return None

    @app.before_request
    def name_the_actor():
        if request.endpoint != "static" and current_user.is_authenticated:
            set_actor(db.session, current_user.id)

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; frame-ancestors 'none'")
        # Pages and files of a signed-in user may hold national IDs: a shared tablet's browser
        # keeps none of them on disk (htmx's own history is in tab-scoped sessionStorage).
        if request.endpoint != "static" and current_user.is_authenticated:
            response.headers["Cache-Control"] = "no-store"
        # An htmx request whose session expired must reload the whole page onto sign-in.
        if htmx and response.status_code == 302 and "/login" in response.headers.get("Location", ""):
            response.status_code = 204
            response.headers["HX-Redirect"] = response.headers.pop("Location")
        return response

    @app.context_processor
    def template_helpers():
        return {"can": can, "menu_items": menu_items, "outside_area": OUTSIDE_PERSON}


def sign_in_first():
    """Send a signed-out request to sign in, and back afterwards. A POST's own address only
    takes POSTs, and an htmx request's answers with a fragment, so after one of those the
    user comes back to the page it was sent from instead."""
    if request.method in ("GET", "HEAD") and not htmx:
        back = request.path + (f"?{request.query_string.decode()}" if request.query_string else "")
    else:  # (an htmx request's own address is a fragment, not a page)
        sent_from = urlsplit(htmx.current_url or request.referrer or "")
        same_site = sent_from.netloc == request.host
        back = sent_from.path + (f"?{sent_from.query}" if sent_from.query else "") if same_site else ""
    flash(current_app.login_manager.login_message, "message")
    back = local_path(back)
    return redirect(url_for("accounts.login", next=back) if back else url_for("accounts.login"))


# Names that carry their version already (htmx-2.0.11.min.js): cached as they are.
_VERSIONED_NAME = re.compile(r"-\d+\.\d+\.\d+")
_ONE_YEAR = 365 * 24 * 3600


class PortalFlask(Flask):
    def get_send_file_max_age(self, filename):
        """A static file whose address names its version is cached for a year: on a slow link a
        page then costs only its HTML. Any other file is revalidated each time."""
        if request.endpoint == "static" and (request.args.get("v") or _VERSIONED_NAME.search(filename or "")):
            return _ONE_YEAR
        return super().get_send_file_max_age(filename)


def accepts_files(view):
    """Mark a view whose form carries a file: only such a view takes a body up to the upload
    limit (``PortalRequest``)."""
    view.accepts_files = True
    return view


class PortalRequest(Request):
    @property
    def max_content_length(self):
        """Only the views that take a file (``accepts_files``) need the upload limit; any other
        body is refused with 413 past ``MAX_FORM_BYTES`` before it is parsed, whatever it calls
        itself, so no one can keep a worker busy."""
        limit = super().max_content_length
        if not current_app:
            return limit
        if getattr(current_app.view_functions.get(self.endpoint or ""), "accepts_files", False):
            return limit
        return min(limit or current_app.config["MAX_FORM_BYTES"], current_app.config["MAX_FORM_BYTES"])


PortalFlask.request_class = PortalRequest


class PortalSessionInterface(SecureCookieSessionInterface):
    def save_session(self, app, session, response):
        """A static file neither renews the session nor varies by it, so any cache may keep it."""
        if request.endpoint != "static":
            super().save_session(app, session, response)


def static_version(endpoint: str, values: dict) -> None:
    """``url_for('static', ...)`` adds ``?v=`` and a hash of the file, so a long cache never
    keeps an old script or style after a release."""
    if endpoint != "static" or "v" in values or not values.get("filename"):
        return
    path = os.path.join(current_app.static_folder, values["filename"])
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return
    values["v"] = _file_hash(path, stamp)


@lru_cache(maxsize=256)
def _file_hash(path: str, stamp: int) -> str:
    """The file's hash, read once for each version of it (``stamp``: its modification time)."""
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:10]


def form_refusal(form, exc, default: str, field: str | None = None) -> None:
    """A service refused a form: undo what the request had started and show why on the
    field it names (or ``field``), else on ``default``."""
    db.session.rollback()
    name = field or exc.field
    target = form[name if name and name in form else default]
    target.errors = list(target.errors) + [exc.message]  # a tuple until the form is validated


def flash_refusal(exc) -> None:
    """A service refused (DomainError): undo what the request had started and say why."""
    db.session.rollback()
    flash(exc.message, "error")


def local_path(target: str) -> str | None:
    """``target`` when it is a path on this site, else None. Browsers read ``//host`` and
    ``/\\host`` as another site, and drop tabs and newlines before doing so."""
    if not target.startswith("/") or target[1:2] in ("/", "\\") or not target.isprintable():
        return None
    return target


def next_url(default_endpoint: str) -> str:
    """Where to go after signing in: the page asked for, if it is on this site."""
    return local_path(request.args.get("next", "")) or url_for(default_endpoint)
