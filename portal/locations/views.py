import uuid
from pathlib import Path

from flask import abort, current_app, flash, redirect, request, url_for
from flask_login import current_user
from sqlalchemy import select

from portal.background.services import create_job
from portal.errors import DomainError
from portal.extensions import db
from portal.locations import bp, services
from portal.locations.forms import LocationForm, LocationImportForm
from portal.locations.models import Location
from portal.web import accepts_files, form_refusal, int_arg, queue_job, render, require, scope


@bp.route("/")
@require("location.view")
def tree():
    parent_id = int_arg("parent", 0) or None
    parent = None
    if parent_id is not None:
        parent = services.get_visible(db.session, parent_id, scope())
        if parent is None:
            abort(404)
    q = request.args.get("q", "").strip()
    if q:
        nodes = services.search_locations(db.session, scope=scope(), text=q)
    else:
        nodes = services.children(db.session, parent_id, scope())
    counts = services.child_counts(db.session, [n.id for n in nodes], scope())
    return render("locations/tree.html", partial="locations/_nodes.html", nodes=nodes,
                  counts=counts, parent=parent, q=q,
                  crumbs=services.breadcrumb(parent) if parent else [])


def _parent_from_code(code: str):
    if not code.strip():
        return None
    parent = db.session.scalar(select(Location).where(Location.code == code.strip()))
    if parent is None:
        raise DomainError(f"No location has the code {code.strip()}.", field="parent_code")
    return parent


@bp.route("/new", methods=["GET", "POST"])
@require("location.manage")
def new():
    form = LocationForm()
    if request.method == "GET" and request.args.get("parent"):
        form.parent_code.data = request.args["parent"]
    if form.validate_on_submit():
        try:
            location = services.create_location(
                db.session, code=form.code.data, name=form.name.data, kind=form.kind.data,
                parent=_parent_from_code(form.parent_code.data), scope=scope())
        except DomainError as exc:
            form_refusal(form, exc, "code")
        else:
            db.session.commit()
            flash(f"Added {location}.", "success")
            return redirect(url_for("locations.tree", parent=location.parent_id or ""))
    return render("locations/form.html", form=form, location=None, status=422 if form.errors else 200)


@bp.route("/<int:location_id>/edit", methods=["GET", "POST"])
@require("location.manage")
def edit(location_id: int):
    location = db.get_or_404(Location, location_id)
    if not scope().allows(location):
        abort(404)
    form = LocationForm(obj=location if request.method == "GET" else None)  # a POST is what was sent
    form.kind.render_kw = {"disabled": True}
    if request.method == "GET":
        form.parent_code.data = location.parent.code if location.parent else ""
    form.kind.data = location.kind
    if form.validate_on_submit():
        try:
            services.update_location(db.session, location, code=form.code.data, name=form.name.data,
                                     parent=_parent_from_code(form.parent_code.data), scope=scope())
        except DomainError as exc:
            db.session.rollback()
            location = db.session.get(Location, location_id)
            getattr(form, exc.field if exc.field in form else "code").errors.append(exc.message)
        else:
            db.session.commit()
            flash(f"Saved {location}.", "success")
            return redirect(url_for("locations.tree", parent=location.parent_id or ""))
    return render("locations/form.html", form=form, location=location, status=422 if form.errors else 200)


@bp.route("/import", methods=["GET", "POST"])
@accepts_files
@require("location.manage")
def import_csv():
    form = LocationImportForm()
    if form.validate_on_submit():
        folder = Path(current_app.config["UPLOAD_DIR"]) / "locations"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uuid.uuid4().hex}.csv"
        form.file.data.save(path)
        sc = scope()
        try:
            run = create_job(db.session, kind="location_import", entry_point="jobs.locations.import_locations",
                             params={"path": str(path), "file_name": form.file.data.filename,
                                     "everything": sc.everything, "paths": list(sc.paths)},
                             actor_id=current_user.id, lock_key="location_import")
        except DomainError as exc:
            form.file.errors.append(exc.message)
        else:
            queue_job(run)
            return redirect(url_for("background.show", run_id=run.id))
    return render("locations/import.html", form=form, status=422 if form.errors else 200)
