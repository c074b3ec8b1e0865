"""Upload pages: history, new upload, column mapping, progress and summary, the error grid
with inline fixes, downloads of rows to fix and re-upload of the fixed rows, import."""
from __future__ import annotations

import uuid
from pathlib import Path

from flask import abort, current_app, flash, make_response, redirect, request, send_file, url_for
from flask_login import current_user

from portal.errors import DomainError
from portal.extensions import db
from portal.imports import bp, columns, samples, services
from portal.imports.forms import ImportForm, MappingForm, ReplaceForm, ReuploadForm, UploadForm
from portal.imports.models import DUPLICATE_POLICIES
from portal.privacy import PII_FIELDS, mask
from portal.web import (accepts_files, can, flash_refusal, form_refusal, htmx_redirect, int_arg,
                        is_fragment_request, queue_job, render, require, scope, sweep_if_running)

EXTENSIONS = (".csv", ".xlsx", ".txt", ".tsv")
# Other rows a fix changed (a household waiting on its head, a row sharing a national ID or
# looking like this one), swapped into the grid with it; a few, so the fragment stays small.
ROWS_SHOWN_AGAIN = 20


def page_args(page: int) -> str:
    """The query string of another page of the same list."""
    from urllib.parse import urlencode

    return urlencode({**request.args.to_dict(), "page": page})


@bp.app_context_processor
def _helpers():
    return {"page_args": page_args}


def _upload(upload_id: int):
    upload = services.get_upload(db.session, upload_id, scope=scope(), actor_id=current_user.id)
    if upload is None:
        abort(404)
    return upload


def _row(upload, row_number: int):
    row = services.get_row(db.session, upload, row_number)
    if row is None:
        abort(404)
    return row


def _current(upload):
    """The upload, no longer busy with a job whose worker died or that failed."""
    if upload.busy:
        sweep_if_running(upload.job_run)
    if services.reconcile(db.session, upload):
        db.session.commit()
    return upload


def _save_file(storage, folder: str) -> Path:
    base = Path(current_app.config["UPLOAD_DIR"]) / folder
    base.mkdir(parents=True, exist_ok=True)
    suffix = Path(storage.filename or "").suffix.lower()
    path = base / f"{uuid.uuid4().hex}{suffix if suffix in EXTENSIONS else ''}"
    storage.save(path)
    return path


def _program_choices():
    try:
        from portal.programs.services import open_programs
    except ImportError:  # the programs area is not installed
        return []
    return [(str(p.id), f"{p.name} ({p.code})") for p in open_programs(db.session)]


@bp.route("/")
@require("upload.view")
def index():
    page = int_arg("page", 1, minimum=1)
    uploads, has_more = services.list_uploads(db.session, scope=scope(), actor_id=current_user.id,
                                              page=page)
    return render("imports/index.html", uploads=uploads, page=page, has_more=has_more)


@bp.route("/template.<fmt>")
@require("upload.view")
def template(fmt: str):
    cols = columns.columns(db.session)
    if fmt == "csv":
        body, mime = columns.template_csv(cols), "text/csv; charset=utf-8"
    elif fmt == "xlsx":
        body = columns.template_xlsx(cols)
        mime = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    else:
        abort(404)
    response = make_response(body)
    response.headers["Content-Type"] = mime
    response.headers["Content-Disposition"] = f'attachment; filename="people-template.{fmt}"'
    return response


@bp.route("/new", methods=["GET", "POST"])
@accepts_files
@require("upload.create")
def new():
    form = UploadForm()
    form.program_id.choices = [("", "No program")] + (_program_choices() if can("beneficiary.enrol") else [])
    if form.validate_on_submit():
        path = _save_file(form.file.data, "people")
        program_id = int(form.program_id.data) if form.program_id.data else None
        if program_id is not None and not can("beneficiary.enrol"):
            form.program_id.errors.append("Your role may not enrol people into programs.")
            path.unlink(missing_ok=True)
        else:
            try:
                upload = services.receive_upload(
                    db.session, path=path, file_name=form.file.data.filename or "upload",
                    duplicate_policy=form.duplicate_policy.data,
                    day_first={"day": True, "month": False}.get(form.date_order.data),
                    program_id=program_id, enrol_status=form.enrol_status.data,
                    area_id=services.uploader_area(current_user), actor_id=current_user.id,
                    max_rows=current_app.config["UPLOAD_MAX_ROWS"])
            except DomainError as exc:
                form_refusal(form, exc, "file", field="file")
            else:
                imported_before, _earlier = services.earlier_import_of_same_file(
                    db.session, upload, scope=scope(), actor_id=current_user.id)
                if upload.status == "uploaded" and not imported_before:
                    run = services.start_validation(db.session, upload, scope=scope(),
                                                    actor_id=current_user.id)
                    queue_job(run)
                    return redirect(url_for("imports.show", upload_id=upload.id))
                db.session.commit()
                if upload.status == "mapping":
                    return redirect(url_for("imports.mapping", upload_id=upload.id))
                return redirect(url_for("imports.show", upload_id=upload.id))
    return render("imports/new.html", form=form, status=422 if form.errors else 200,
                  max_mb=current_app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024))


@bp.route("/<int:upload_id>/mapping", methods=["GET", "POST"])
@require("upload.create")
def mapping(upload_id: int):
    upload = _upload(upload_id)
    if upload.status not in ("uploaded", "mapping"):
        flash("The columns of this upload are already mapped.", "warning")
        return redirect(url_for("imports.show", upload_id=upload.id))
    form = MappingForm()
    cols = columns.columns(db.session)
    error = None
    proposed = dict(upload.mapping or {})
    if form.validate_on_submit():
        chosen = {h: request.form.get(f"col-{i}", "") for i, h in enumerate(upload.headers) if h}
        try:
            services.set_mapping(db.session, upload, chosen, save_as=form.save_as.data or "",
                                 actor_id=current_user.id)
            run = services.start_validation(db.session, upload, scope=scope(),
                                            actor_id=current_user.id)
        except DomainError as exc:
            db.session.rollback()
            error, proposed = exc.message, chosen
        else:
            queue_job(run)
            return redirect(url_for("imports.show", upload_id=upload.id))
    shown = samples.mapping_samples(upload, proposed, show_pii=can("individual.view_pii"),
                                    max_rows=current_app.config["UPLOAD_MAX_ROWS"])
    return render("imports/mapping.html", upload=upload, form=form, cols=cols, samples=shown,
                  proposed=proposed, error=error, status=422 if error or form.errors else 200)


@bp.route("/<int:upload_id>")
@require("upload.view")
def show(upload_id: int):
    upload = _current(_upload(upload_id))
    imported_before, earlier = services.earlier_import_of_same_file(
        db.session, upload, scope=scope(), actor_id=current_user.id) \
        if upload.status == "uploaded" else (False, None)
    return render("imports/show.html", partial="imports/_status.html", upload=upload,
                  imported_before=imported_before, earlier=earlier, policies=DUPLICATE_POLICIES,
                  import_form=ImportForm())


@bp.route("/<int:upload_id>/validate", methods=["POST"])
@require("upload.create")
def validate(upload_id: int):
    upload = _upload(upload_id)
    try:
        run = services.start_validation(db.session, upload, scope=scope(), actor_id=current_user.id)
    except DomainError as exc:
        flash_refusal(exc)
    else:
        queue_job(run)
    return htmx_redirect(url_for("imports.show", upload_id=upload.id))


@bp.route("/<int:upload_id>/import", methods=["POST"])
@require("upload.create")
def start_import(upload_id: int):
    upload = _upload(upload_id)
    form = ImportForm()
    try:
        if not form.validate_on_submit():
            raise DomainError("The form had expired; try again.")
        run = services.start_import(db.session, upload, only_if_clean=form.only_if_clean.data,
                                    scope=scope(), actor_id=current_user.id,
                                    may_enrol=can("beneficiary.enrol"))
    except DomainError as exc:
        flash_refusal(exc)
    else:
        queue_job(run)
    return htmx_redirect(url_for("imports.show", upload_id=upload.id))


@bp.route("/<int:upload_id>/file")
@require("upload.view")
def original(upload_id: int):
    upload = _upload(upload_id)
    if upload.created_by_id != current_user.id and not can("individual.view_pii"):
        abort(403)  # the file holds national IDs and phones as typed, unmasked
    if not Path(upload.stored_path).exists():
        abort(404)
    return send_file(upload.stored_path, as_attachment=True, download_name=upload.file_name)


# --- the error grid ---------------------------------------------------------------------------

def _grid_columns(upload):
    mapped = set(upload.mapping.values())
    return [c for c in columns.columns(db.session) if c.name in mapped]


def _shown(value: str, name: str) -> str:
    if name in PII_FIELDS and not can("individual.view_pii"):
        return mask(value)
    return value


def _replaceable(upload) -> list[tuple[str, str]]:
    """The columns find-and-replace may work on: not the identifiers for a user who sees
    them masked, or the number of cells replaced would tell whether a national ID is there."""
    pii = can("individual.view_pii")
    return [(c.name, c.label) for c in _grid_columns(upload) if pii or c.name not in PII_FIELDS]


@bp.route("/<int:upload_id>/rows")
@require("upload.view")
def rows(upload_id: int):
    upload = _current(_upload(upload_id))
    page = int_arg("page", 1, minimum=1)
    items, has_more = services.problem_rows(db.session, upload, page=page)
    form = ReplaceForm()
    grid = _grid_columns(upload)
    form.field.choices = _replaceable(upload)
    return render("imports/rows.html", partial="imports/_grid.html", upload=upload, rows=items,
                  page=page, has_more=has_more, cols=grid, shown=_shown, replace_form=form,
                  reupload_form=ReuploadForm(), editable=upload.status == "validated"
                  and can("upload.create"))


@bp.app_template_filter("row_version")
def row_version_filter(row) -> str:
    return services.row_version(row)


@bp.route("/<int:upload_id>/rows/<int:row_number>")
@require("upload.view")
def row(upload_id: int, row_number: int):
    upload = _upload(upload_id)
    item = _row(upload, row_number)
    return render("imports/_row.html", upload=upload, row=item, cols=_grid_columns(upload),
                  shown=_shown, editable=upload.status == "validated" and can("upload.create"))


@bp.route("/<int:upload_id>/rows/<int:row_number>/edit", methods=["GET", "POST"])
@require("upload.create")
def edit_row(upload_id: int, row_number: int):
    upload = _upload(upload_id)
    item = _row(upload, row_number)
    grid = _grid_columns(upload)
    if request.method == "POST":
        values = {c.name: request.form.get(c.name, "") for c in grid if c.name in request.form}
        try:
            others = services.edit_row(db.session, upload, item, values, scope=scope(),
                                       seen=request.form.get("seen"))
        except DomainError as exc:
            if exc.field not in ("seen", "cell"):
                flash_refusal(exc)
                return htmx_redirect(url_for("imports.rows", upload_id=upload.id))
            # The form again, with what was typed (and why it was refused), made from the row
            # as it is now.
            db.session.rollback()
            item = _row(upload, row_number)
            # Identifiers sent masked are shown as the row masks them now: sent again as they
            # were, they would no longer match, and replace the value with dots.
            typed = {k: v for k, v in request.form.items() if not (k in PII_FIELDS and "•" in v)}
            return render("imports/row_edit.html", partial="imports/_row_form.html", upload=upload,
                          row=item, cols=grid, shown=_shown, typed=typed,
                          conflict=exc.message, seen=services.row_version(item))
        db.session.commit()
        if not is_fragment_request():
            flash(f"Row {row_number} saved and checked again.", "success")
            return redirect(url_for("imports.rows", upload_id=upload.id))
        return _checked_rows(upload, item, others)
    try:
        services.check_row_editable(upload, item)
    except DomainError as exc:
        flash_refusal(exc)
        return htmx_redirect(url_for("imports.rows", upload_id=upload.id))
    return render("imports/row_edit.html", partial="imports/_row_form.html", upload=upload,
                  row=item, cols=grid, shown=_shown, seen=services.row_version(item))


def _checked_rows(upload, row, others: set[int]):
    """The grid row a fix was made on (None: dropped, it leaves the grid), and out of band
    the other rows the fix checked again, as they are now."""
    return render("imports/_rows_checked.html", upload=upload, row=row, cols=_grid_columns(upload),
                  shown=_shown, editable=True,
                  others=services.rows_by_id(db.session, upload, others, limit=ROWS_SHOWN_AGAIN))


@bp.route("/<int:upload_id>/rows/<int:row_number>/drop", methods=["POST"])
@require("upload.create")
def drop_row(upload_id: int, row_number: int):
    upload = _upload(upload_id)
    item = _row(upload, row_number)
    try:
        others = services.drop_row(db.session, upload, item, scope=scope(), seen=request.form.get("seen"))
    except DomainError as exc:
        flash_refusal(exc)
        return htmx_redirect(url_for("imports.rows", upload_id=upload.id))
    db.session.commit()
    if is_fragment_request():
        return _checked_rows(upload, None, others)
    flash(f"Row {row_number} dropped.", "success")
    return redirect(url_for("imports.rows", upload_id=upload.id))


@bp.route("/<int:upload_id>/rows/<int:row_number>/confirm", methods=["POST"])
@require("upload.create")
def confirm_row(upload_id: int, row_number: int):
    upload = _upload(upload_id)
    item = _row(upload, row_number)
    try:
        others = services.confirm_row(db.session, upload, item, scope=scope(),
                                      seen=request.form.get("seen"))
    except DomainError as exc:
        flash_refusal(exc)
        return htmx_redirect(url_for("imports.rows", upload_id=upload.id))
    db.session.commit()
    if is_fragment_request():
        return _checked_rows(upload, item, others)
    return redirect(url_for("imports.rows", upload_id=upload.id))


@bp.route("/<int:upload_id>/replace", methods=["POST"])
@require("upload.create")
def replace(upload_id: int):
    upload = _upload(upload_id)
    form = ReplaceForm()
    form.field.choices = _replaceable(upload)
    if not form.validate_on_submit():
        flash("Choose a column of this file.", "error")
        return htmx_redirect(url_for("imports.rows", upload_id=upload.id))
    fix = {"kind": "replace", "field": form.field.data, "find": form.find.data or "",
           "replace": form.replace.data or "", "whole_cell": form.match.data != "part"}
    try:
        if services.fixes_in_background(db.session, upload):
            return _fix_in_background(upload, fix)
        changed = services.replace_in_column(db.session, upload, field=fix["field"], find=fix["find"],
                                             replace=fix["replace"], scope=scope(),
                                             whole_cell=fix["whole_cell"])
    except DomainError as exc:
        flash_refusal(exc)
    else:
        db.session.commit()
        flash(services.replaced_message(changed), "success" if changed else "warning")
    return htmx_redirect(url_for("imports.rows", upload_id=upload.id))


def _fix_in_background(upload, fix: dict):
    """Queue a fix too large for the page to wait for and show its progress."""
    run = services.start_fix(db.session, upload, fix, scope=scope(), actor_id=current_user.id)
    if queue_job(run):
        flash("This fix checks many rows again, so it is made in the background; the rows can be "
              "edited again when it ends.", "success")
    return htmx_redirect(url_for("imports.show", upload_id=upload.id))


@bp.route("/<int:upload_id>/problems.<fmt>")
@require("upload.view")
def problems(upload_id: int, fmt: str):
    from portal.registry.exports import export_response

    upload = _upload(upload_id)
    if fmt not in ("csv", "xlsx"):
        abort(404)
    grid = _grid_columns(upload)
    pii = can("individual.view_pii")

    def body():
        for number, raw, errors, version in services.problem_rows_for_download(db.session, upload):
            values = [raw.get(c.name, "") for c in grid]
            if not pii:
                values = [mask(v) if c.name in PII_FIELDS else v
                          for c, v in zip(grid, values)]
            yield [number, *values, errors, version]

    return export_response(fmt, f"upload-{upload.id}-rows-to-fix",
                           ["Row", *[c.label for c in grid], "Errors", services.VERSION_HEADER], body())


@bp.route("/<int:upload_id>/reupload", methods=["POST"])
@accepts_files
@require("upload.create")
def reupload(upload_id: int):
    upload = _upload(upload_id)
    form = ReuploadForm()
    if not form.validate_on_submit():
        flash("Choose the file of fixed rows.", "error")
        return redirect(url_for("imports.rows", upload_id=upload.id))
    path = _save_file(form.file.data, "fixes")
    try:
        if services.fixes_in_background(db.session, upload, fixes_file=path):
            return _fix_in_background(upload, {"kind": "file", "path": str(path)})
        result = services.apply_corrections(db.session, upload, path, scope=scope())
    except DomainError as exc:
        db.session.rollback()
        path.unlink(missing_ok=True)
        flash(exc.message, "error")
    else:
        db.session.commit()
        flash(services.corrections_message(result), "success")
    return redirect(url_for("imports.rows", upload_id=upload.id))


@bp.route("/<int:upload_id>/people")
@require("upload.view")
def people(upload_id: int):
    upload = _upload(upload_id)
    page = int_arg("page", 1, minimum=1)
    items, has_more = services.imported_rows(db.session, upload, scope=scope(), page=page)
    return render("imports/people.html", upload=upload, rows=items, page=page, has_more=has_more,
                  person_url=_person_url())


def _person_url():
    """A link to a person's page, when the registry has one."""
    if "registry.individual" not in current_app.view_functions:
        return None
    rule = next(current_app.url_map.iter_rules("registry.individual"))
    if len(rule.arguments) != 1:
        return None
    name = next(iter(rule.arguments))
    return lambda pid: url_for("registry.individual", **{name: pid})
