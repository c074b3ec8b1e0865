"""Programs, institutions, schemes, beneficiaries: thin routes over ``services``."""
from __future__ import annotations

from datetime import date
from urllib.parse import urlencode

from flask import abort, flash, redirect, request, url_for
from flask_login import current_user
from sqlalchemy import select

from portal.errors import ConflictError, DomainError
from portal.extensions import db
from portal.ids import form_version, parse_id
from portal.locations.models import Location
from portal.programs import bp, services
from portal.programs.forms import (CloseForm, EnrolStatusForm, FieldForm, InstitutionForm,
                                   ProgramForm, SchemeForm, StatusForm)
from portal.programs.models import (BENEFICIARY_STATUSES, PROGRAM_STATUSES, Beneficiary,
                                    Institution, Program, Scheme)
from portal.programs.services import CUSTOM_OPERATORS, BeneficiaryFilters, Criteria
from portal.registry.models import SEXES, CustomField
from portal.web import (can, flash_refusal, form_refusal, htmx_redirect, int_arg, local_path, render,
                        require, scope)


@bp.context_processor
def _helpers():
    from portal.clock import today
    from portal.privacy import mask

    # A status change takes effect today or before: the date pickers offer no later day.
    return {"mask": mask, "latest_effective_date": today().isoformat()}


@bp.app_context_processor
def _enrol_choices():
    """For templates/programs/_enrol_subject.html, included by the registry pages."""

    def programs_open_for(kind: str):
        return services.open_programs(db.session, kind)

    return {"programs_open_for": programs_open_for}


def _program_or_404(program_id: int) -> Program:
    return db.get_or_404(Program, program_id)


def _location_id(code: str, errors: dict) -> int | None:
    code = (code or "").strip()
    if not code:
        return None
    location_id = db.session.scalar(select(Location.id).where(Location.code == code))
    if location_id is None:
        errors["location"] = f"No location has the code {code}."
    return location_id


def _int(args, name: str, errors: dict) -> int | None:
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        errors[name] = "Enter a whole number."
        return None
    if not 0 <= value <= 10_000:
        errors[name] = "Enter a whole number from 0 to 10,000."
        return None
    return value


def _range(low: int | None, high: int | None, errors: dict, *, what: str, field: str) -> None:
    """A range upside down is marked on its field, like any other filter to correct."""
    try:
        services.check_range(low, high, what=what, field=field)
    except DomainError as exc:
        errors[exc.field] = exc.message


def _program_custom_raw(program: Program) -> dict:
    return {f.name: request.form.get(f"pf_{f.name}", "")
            for f in services.program_fields(db.session, program.id, active_only=True)}


# --- programs -------------------------------------------------------------------------------

@bp.route("/")
@require("program.view")
def index():
    q = request.args.get("q", "").strip()
    status = request.args.get("status", "")
    status = status if status in PROGRAM_STATUSES else ""
    programs = services.list_programs(db.session, text=q, status=status,
                                      sort=request.args.get("sort", "name"))
    places = services.places_by_program(db.session, programs, scope=scope())
    return render("programs/index.html", partial="programs/_program_rows.html", programs=programs,
                  places=places, q=q, chosen=status, statuses=PROGRAM_STATUSES)


def _conflict(exc: ConflictError):
    db.session.rollback()
    return render("errors/page.html", partial="errors/_message.html", status=409,
                  title="Changed by someone else", message=exc.message, code=409)


def _seen_mark(record) -> str | None:
    """The ``edit_mark`` an edit form was made from, as sent; an edit without one cannot be
    told from a stale form, so it is refused as one (the pages always send it)."""
    mark = request.form.get("seen") or None
    if record is not None and mark is None:
        raise ConflictError("This form did not say which version of the record it was made "
                            "from, so it may be out of date. Nothing was saved: reload the page "
                            "and make the change again.")
    return mark


def _shown_mark(record) -> str:
    """The mark a re-shown form keeps: the one it was first made from, so a refusal and a
    second try cannot slip past another manager's save in between."""
    if record is None:
        return ""
    return request.form.get("seen") or services.edit_mark(record)


def _program_form(program: Program | None) -> ProgramForm:
    form = ProgramForm(obj=program)
    form.institution_id.choices = [(0, "—")] + [(i.id, i.name) for i in services.list_institutions(db.session)]
    form.scheme_id.choices = [(0, "—")] + [(s.id, s.name) for s in services.list_schemes(db.session)]
    if request.method == "GET" and program is None:
        form.institution_id.data = int_arg("institution", 0)
        form.scheme_id.data = int_arg("scheme", 0)
    return form


def _save_program(program: Program | None):
    if program is not None and program.is_closed:
        flash(f"{program.name} is closed: it can no longer be changed.", "error")
        return redirect(url_for("programs.show", program_id=program.id))
    form = _program_form(program)
    if form.validate_on_submit():
        try:
            # As sent: the form falls back to the program's own version when the field is missing.
            version = form_version(request.form.get("version"), editing=program is not None)
            saved = services.save_program(
                db.session, program, code=form.code.data, name=form.name.data,
                description=form.description.data, beneficiary_kind=form.beneficiary_kind.data,
                date_from=form.date_from.data, date_to=form.date_to.data,
                max_beneficiaries=form.max_beneficiaries.data,
                institution_id=form.institution_id.data or None,
                scheme_id=form.scheme_id.data or None, amount=form.amount.data,
                currency=form.currency.data, expected_version=version,
                actor_id=current_user.id)
        except ConflictError as exc:
            return _conflict(exc)
        except DomainError as exc:
            form_refusal(form, exc, "code")
            program = db.session.get(Program, program.id) if program else None
        else:
            db.session.commit()
            flash(f"Saved {saved}.", "success")
            return redirect(url_for("programs.show", program_id=saved.id))
    return render("programs/form.html", form=form, program=program,
                  status=422 if form.errors else 200)


@bp.route("/new", methods=["GET", "POST"])
@require("program.manage")
def new():
    return _save_program(None)


@bp.route("/<int:program_id>/edit", methods=["GET", "POST"])
@require("program.manage")
def edit(program_id: int):
    return _save_program(_program_or_404(program_id))


@bp.route("/<int:program_id>")
@require("program.view")
def show(program_id: int):
    program = _program_or_404(program_id)
    sc = scope()
    counts = services.status_counts(db.session, program, scope=sc)
    regions = services.region_counts(db.session, program, scope=sc)
    places = services.places_by_program(db.session, [program], scope=sc)[program.id]
    return render("programs/show.html", program=program, counts=counts, regions=regions,
                  places=places, statuses=BENEFICIARY_STATUSES, may_close=services.may_close(sc),
                  fields=services.program_fields(db.session, program.id))


@bp.route("/<int:program_id>/activate", methods=["POST"])
@require("program.manage")
def activate(program_id: int):
    program = _program_or_404(program_id)
    try:
        services.activate_program(db.session, program)
    except DomainError as exc:
        flash_refusal(exc)
    else:
        db.session.commit()
        flash(f"{program.name} is active.", "success")
    return htmx_redirect(url_for("programs.show", program_id=program_id))


@bp.route("/<int:program_id>/close", methods=["GET", "POST"])
@require("program.manage")
def close(program_id: int):
    program = _program_or_404(program_id)
    sc = scope()
    form = CloseForm()
    error = None
    if form.validate_on_submit():
        try:
            graduated = services.close_program(db.session, program.id, scope=sc,
                                               actor_id=current_user.id, reason=form.reason.data,
                                               effective_date=form.effective_date.data)
        except DomainError as exc:
            db.session.rollback()
            error = exc.message
        else:
            db.session.commit()
            flash(f"{program.name} is closed; {graduated} active beneficiaries graduated.", "success")
            return htmx_redirect(url_for("programs.show", program_id=program_id))
    try:
        to_graduate = services.close_preview(db.session, program, scope=sc)
    except DomainError as exc:
        return render("programs/close.html", program=program, form=form, error=exc.message,
                      to_graduate=None, status=403)
    return render("programs/close.html", program=program, form=form, error=error,
                  to_graduate=to_graduate, status=422 if error or form.errors else 200)


# --- extra beneficiary fields -----------------------------------------------------------------

@bp.route("/<int:program_id>/fields")
@require("program.manage")
def fields(program_id: int):
    program = _program_or_404(program_id)
    return render("programs/fields.html", program=program,
                  fields=services.program_fields(db.session, program.id))


def _save_field(program: Program, custom_field: CustomField | None):
    form = FieldForm(obj=custom_field)
    if request.method == "GET" and custom_field is not None:
        form.choices.data = ", ".join(str(c) for c in custom_field.choices or [])
    if form.validate_on_submit():
        try:
            services.save_program_field(
                db.session, program, custom_field, name=form.name.data, label=form.label.data,
                type=form.type.data, required=form.required.data, pattern=form.pattern.data,
                choices=(form.choices.data or "").split(","), active=form.active.data,
                expected_mark=_seen_mark(custom_field))
        except ConflictError as exc:
            return _conflict(exc)
        except DomainError as exc:
            form_refusal(form, exc, "name")
        else:
            db.session.commit()
            flash("Field saved.", "success")
            return redirect(url_for("programs.fields", program_id=program.id))
    return render("programs/field_form.html", form=form, program=program, field=custom_field,
                  seen=_shown_mark(custom_field),
                  status=422 if form.errors else 200)


@bp.route("/<int:program_id>/fields/new", methods=["GET", "POST"])
@require("program.manage")
def new_field(program_id: int):
    return _save_field(_program_or_404(program_id), None)


@bp.route("/<int:program_id>/fields/<int:field_id>", methods=["GET", "POST"])
@require("program.manage")
def edit_field(program_id: int, field_id: int):
    program = _program_or_404(program_id)
    custom_field = db.get_or_404(CustomField, field_id)
    if custom_field.program_id != program.id:
        abort(404)
    return _save_field(program, custom_field)


# --- beneficiaries ----------------------------------------------------------------------------

def _beneficiary_filters(args) -> tuple[BeneficiaryFilters, dict]:
    errors: dict = {}
    status = args.get("status", "")
    sex = args.get("sex", "")
    filters = BeneficiaryFilters(status=status if status in BENEFICIARY_STATUSES else "",
                                 text=args.get("q", "").strip()[:100],
                                 location_id=_location_id(args.get("location", ""), errors),
                                 sex=sex if sex in SEXES else "",
                                 age_min=_int(args, "age_min", errors),
                                 age_max=_int(args, "age_max", errors))
    _range(filters.age_min, filters.age_max, errors, what="Age", field="age_max")
    return filters, errors


def _filter_args(args, **overrides) -> dict:
    keep = {k: args.get(k, "") for k in ("status", "q", "location", "sex", "age_min", "age_max",
                                         "sort")}
    keep.update(overrides)
    return {k: v for k, v in keep.items() if v not in ("", None)}


@bp.route("/<int:program_id>/beneficiaries")
@require("program.view")
def beneficiaries(program_id: int):
    program = _program_or_404(program_id)
    filters, errors = _beneficiary_filters(request.args)
    page = int_arg("page", 1, minimum=1)
    sort = request.args.get("sort", "name")
    sort = sort if sort in services.BENEFICIARY_SORTS else "name"
    sc = scope()
    rows, has_more = services.search_beneficiaries(db.session, program, scope=sc, filters=filters,
                                                   sort=sort, page=page)
    counts = services.status_counts(db.session, program, scope=sc, filters=filters)
    args = _filter_args(request.args)
    return render("programs/beneficiaries.html", partial="programs/_beneficiary_rows.html",
                  program=program, rows=rows, has_more=has_more, page=page, counts=counts,
                  filters=filters, errors=errors, args=args, sort=sort,
                  statuses=BENEFICIARY_STATUSES, sexes=SEXES, urlencode=urlencode,
                  show_pii=can("individual.view_pii"), in_area=sc.allows)


@bp.route("/<int:program_id>/beneficiaries/export")
@require("individual.export")
def export(program_id: int):
    from portal.registry.exports import export_response

    program = _program_or_404(program_id)
    if not can("program.view"):
        abort(403)
    filters, errors = _beneficiary_filters(request.args)
    fmt = request.args.get("format", "csv")
    if fmt not in ("csv", "xlsx"):
        abort(404)
    if errors:  # a filter left out would export more people than the user asked for
        flash("Nothing was exported: correct the filters marked below first.", "error")
        return redirect(url_for("programs.beneficiaries", program_id=program.id, **_filter_args(request.args)))
    header, rows = services.export_rows(db.session, program, scope=scope(), filters=filters,
                                        show_pii=can("individual.view_pii"))
    return export_response(fmt, f"{program.code}-beneficiaries", header, rows)


def _beneficiary_or_404(beneficiary_id: int) -> Beneficiary:
    beneficiary = services.get_beneficiary(db.session, beneficiary_id, scope=scope())
    if beneficiary is None:
        abort(404)
    return beneficiary


def _status_form(beneficiary: Beneficiary) -> StatusForm:
    form = StatusForm()
    form.to_status.choices = [(s, "Removed (delete the record)" if s == "removed" else s.title())
                              for s in services.allowed_targets(beneficiary.status)]
    return form


def _beneficiary_page(beneficiary: Beneficiary, form: StatusForm, status: int = 200,
                      partial: bool = True):
    recipient = services.primary_recipient(db.session, beneficiary, scope=scope())
    return render("programs/beneficiary.html",
                  partial="programs/_status_panel.html" if partial else None,
                  beneficiary=beneficiary, program=beneficiary.program, form=form,
                  recipient=recipient,
                  timeline=services.timeline(db.session, beneficiary),
                  fields=services.program_fields(db.session, beneficiary.program_id),
                  show_pii=can("individual.view_pii"), status=status)


@bp.route("/beneficiaries/<int:beneficiary_id>")
@require("program.view")
def beneficiary(beneficiary_id: int):
    record = _beneficiary_or_404(beneficiary_id)
    return _beneficiary_page(record, _status_form(record))


def _removed_meanwhile():
    """A post about a beneficiary that is gone (a second click on Remove, or another manager
    removed it): say so and go back to the program's list, rather than 'not found'."""
    flash("That beneficiary is no longer in the program: it was removed, perhaps meanwhile by "
          "someone else (or lies outside your locations). Nothing was changed.", "error")
    program_id = parse_id(request.form.get("program_id"))
    return htmx_redirect(url_for("programs.beneficiaries", program_id=program_id) if program_id
                         else url_for("programs.index"))


@bp.route("/beneficiaries/<int:beneficiary_id>/status", methods=["POST"])
@require("beneficiary.status")
def change_status(beneficiary_id: int):
    record = services.get_beneficiary(db.session, beneficiary_id, scope=scope())
    if record is None:
        return _removed_meanwhile()
    program_id = record.program_id
    form = _status_form(record)
    if form.validate_on_submit():
        try:
            changed = services.change_status(
                db.session, record.id, to_status=form.to_status.data, reason=form.reason.data,
                effective_date=form.effective_date.data, actor_id=current_user.id, scope=scope())
        except DomainError as exc:
            form_refusal(form, exc, "to_status")
            record = services.get_beneficiary(db.session, beneficiary_id, scope=scope())
            if record is None:
                return _removed_meanwhile()
        else:
            db.session.commit()
            if changed is None:
                flash("The potential beneficiary was removed from the program.", "success")
                return htmx_redirect(url_for("programs.beneficiaries", program_id=program_id))
            flash(f"Status changed to {changed.status}.", "success")
            return htmx_redirect(url_for("programs.beneficiary", beneficiary_id=beneficiary_id))
    return _beneficiary_page(record, form, status=422)


@bp.route("/beneficiaries/<int:beneficiary_id>/fields", methods=["POST"])
@require("beneficiary.enrol")
def beneficiary_fields(beneficiary_id: int):
    record = services.get_beneficiary(db.session, beneficiary_id, scope=scope())
    if record is None:
        return _removed_meanwhile()
    try:
        services.update_beneficiary_custom(db.session, record.id, _program_custom_raw(record.program),
                                           scope=scope(), actor_id=current_user.id)
    except DomainError as exc:
        flash_refusal(exc)
        record = services.get_beneficiary(db.session, beneficiary_id, scope=scope())
        if record is None:
            return _removed_meanwhile()
        return _beneficiary_page(record, _status_form(record), status=422, partial=False)
    db.session.commit()
    flash("Saved the program fields.", "success")
    return htmx_redirect(url_for("programs.beneficiary", beneficiary_id=beneficiary_id))


@bp.route("/<int:program_id>/beneficiaries/status", methods=["GET", "POST"])
@require("beneficiary.status")
def bulk_status(program_id: int):
    program = _program_or_404(program_id)
    source = request.form if request.method == "POST" else request.args
    filters, errors = _beneficiary_filters(source)
    to_status = source.get("to_status", "")
    targets = sorted({t for ts in services.TRANSITIONS.values() for t in ts})
    preview, error, error_field = None, None, None  # (the field the error is about, if one)
    sc = scope()
    if to_status in targets and not errors:
        if request.method == "POST":
            try:
                effective = _effective_date(source.get("effective_date"))
                result = services.bulk_change_status(
                    db.session, program.id, scope=sc, filters=filters, to_status=to_status,
                    reason=source.get("reason", ""), effective_date=effective,
                    actor_id=current_user.id, expected=source.get("expected"))
            except DomainError as exc:
                db.session.rollback()
                error = exc.message
                error_field = exc.field if exc.field in ("reason", "effective_date") else None
            else:
                db.session.commit()
                flash(f"{result['changed']} beneficiaries changed to {to_status}; "
                      f"{result['not_allowed']} were not allowed to and are unchanged.", "success")
                return htmx_redirect(url_for("programs.beneficiaries", program_id=program.id,
                                             **_filter_args(source, status="")))
        preview = services.bulk_status_preview(db.session, program, scope=sc, filters=filters,
                                               to_status=to_status)
    elif request.method == "POST":
        error = "Choose a status to change to."
    return render("programs/bulk_status.html", partial="programs/_bulk_preview.html",
                  program=program, filters=filters, errors=errors, to_status=to_status,
                  targets=targets, preview=preview, error=error, error_field=error_field,
                  args=_filter_args(source), reason=source.get("reason", ""),
                  effective_date=source.get("effective_date", ""), statuses=BENEFICIARY_STATUSES,
                  sexes=SEXES, status=422 if error else 200)


def _effective_date(typed: str | None) -> date | None:
    try:
        return date.fromisoformat(typed) if typed else None
    except ValueError:
        raise DomainError("Enter the effective date as YYYY-MM-DD.", field="effective_date") from None


# --- enrolment --------------------------------------------------------------------------------

@bp.route("/<int:program_id>/enrol", methods=["GET", "POST"])
@require("beneficiary.enrol")
def enrol(program_id: int):
    """Find people (or groups) and enrol them; the registry pages post here too, with
    individual_id or group_id and next."""
    program = _program_or_404(program_id)
    form = EnrolStatusForm()
    error = None
    if request.method == "POST" and form.validate_on_submit():
        ids = [n for v in request.form.getlist("individual_id" if not program.is_group else "group_id")
               if (n := parse_id(v)) is not None]
        try:
            result = services.enrol(
                db.session, program.id, status=form.status.data, actor_id=current_user.id,
                scope=scope(), custom=_program_custom_raw(program),
                **({"group_ids": ids} if program.is_group else {"individual_ids": ids}))
        except DomainError as exc:
            db.session.rollback()
            error = exc.message
        else:
            db.session.commit()
            flash(f"Enrolled {result['enrolled']}; {result['skipped']} already enrolled.",
                  "success")
            return htmx_redirect(local_path(request.form.get("next", ""))
                                 or url_for("programs.enrol", program_id=program.id,
                                            q=request.form.get("q", "")))
    elif request.method == "POST":
        error = "The form had a problem; choose how to enrol and try again."
    q = request.values.get("q", "")
    return render("programs/enrol.html", partial="programs/_enrol_results.html", program=program,
                  form=form, q=q, found=services.find_candidates(db.session, program, scope=scope(), text=q), error=error,
                  fields=services.program_fields(db.session, program.id, active_only=True),
                  show_pii=can("individual.view_pii"), status=422 if error else 200)


@bp.route("/enrol", methods=["POST"])
@require("beneficiary.enrol")
def enrol_subject():
    """Enrol one person or group chosen on their own page (the registry), then go back."""
    program = db.session.get(Program, parse_id(request.form.get("program_id")) or 0)
    target = local_path(request.form.get("next", "")) or (
        url_for("programs.show", program_id=program.id) if program else url_for("programs.index"))
    if program is None:
        flash("Choose a program.", "error")
        return htmx_redirect(target)
    kind = "group_ids" if program.is_group else "individual_ids"
    subject = parse_id(request.form.get("group_id" if program.is_group else "individual_id"))
    try:
        result = services.enrol(db.session, program.id, status=request.form.get("status", "potential"),
                                actor_id=current_user.id, scope=scope(),
                                **{kind: [subject] if subject else []})
    except DomainError as exc:
        db.session.rollback()
        flash(f"Not enrolled in {program.name}: {exc.message}", "error")
    else:
        db.session.commit()
        if result["enrolled"]:
            flash(f"Enrolled in {program.name}.", "success")
        elif result["skipped"]:
            flash(f"Already enrolled in {program.name}.", "info")
        else:
            flash(f"{program.name} enrols {'groups' if program.is_group else 'individuals'}; "
                  f"nobody was enrolled.", "error")
    return htmx_redirect(target)


def _criteria(source) -> tuple[Criteria, dict]:
    errors: dict = {}
    sex = source.get("sex", "")
    if sex and sex not in SEXES:
        errors["sex"] = "Choose a sex."
    custom = []
    for n in (1, 2, 3):
        name = (source.get(f"cf{n}") or "").strip()
        if not name:
            continue
        op = source.get(f"op{n}", "=")
        if op not in CUSTOM_OPERATORS:
            errors[f"cf{n}"] = "Choose an operator."
            continue
        custom.append((name, op, source.get(f"v{n}", "")))
    criteria = Criteria(location_id=_location_id(source.get("location", ""), errors),
                        sex=sex if sex in SEXES else "",
                        age_min=_int(source, "age_min", errors), age_max=_int(source, "age_max", errors),
                        household_min=_int(source, "hh_min", errors),
                        household_max=_int(source, "hh_max", errors), custom=custom)
    _range(criteria.age_min, criteria.age_max, errors, what="Age", field="age_max")
    _range(criteria.household_min, criteria.household_max, errors, what="Household size", field="hh_max")
    return criteria, errors


CRITERIA_KEYS = ("location", "sex", "age_min", "age_max", "hh_min", "hh_max",
                 "cf1", "op1", "v1", "cf2", "op2", "v2", "cf3", "op3", "v3")


@bp.route("/<int:program_id>/enrol/criteria", methods=["GET", "POST"])
@require("beneficiary.enrol")
def enrol_criteria(program_id: int):
    program = _program_or_404(program_id)
    source = request.form if request.method == "POST" else request.args
    criteria, errors = _criteria(source)
    form = EnrolStatusForm()
    preview, error = None, None
    sc = scope()
    asked = any(source.get(k) for k in CRITERIA_KEYS)
    if request.method == "POST" and form.validate_on_submit() and not errors:
        try:
            expected = parse_id(source.get("expected", ""))
            result = services.enrol_by_criteria(
                db.session, program.id, scope=sc, criteria=criteria, status=form.status.data,
                actor_id=current_user.id, custom=_program_custom_raw(program), expected=expected)
        except DomainError as exc:
            db.session.rollback()
            error = exc.message
        else:
            db.session.commit()
            flash(f"Enrolled {result['enrolled']} by criteria; {result['skipped']} were already "
                  f"enrolled and were skipped.", "success")
            return htmx_redirect(url_for("programs.beneficiaries", program_id=program.id))
    if asked and not errors:
        try:
            preview = services.preview_criteria(db.session, program, scope=sc, criteria=criteria)
        except DomainError as exc:
            errors[exc.field or "location"] = exc.message
    from portal.registry.validation import active_custom_fields

    return render("programs/criteria.html", partial="programs/_criteria_preview.html",
                  program=program, form=form, values={k: source.get(k, "") for k in CRITERIA_KEYS},
                  errors=errors, error=error, preview=preview, sexes=SEXES,
                  operators=CUSTOM_OPERATORS, custom_fields=active_custom_fields(db.session),
                  fields=services.program_fields(db.session, program.id, active_only=True),
                  status=422 if (error or (request.method == "POST" and errors)) else 200)


# --- institutions and schemes -------------------------------------------------------------------

ORGS = {
    "institution": {"model": Institution, "form": InstitutionForm, "plural": "Institutions",
                    "save": services.save_institution, "list": services.list_institutions},
    "scheme": {"model": Scheme, "form": SchemeForm, "plural": "Schemes",
               "save": services.save_scheme, "list": services.list_schemes},
}


def _org_list(kind: str):
    return render("programs/orgs.html", kind=kind, plural=ORGS[kind]["plural"],
                  orgs=ORGS[kind]["list"](db.session))


def _org_page(kind: str, org_id: int):
    org = db.get_or_404(ORGS[kind]["model"], org_id)
    programs = services.list_programs(db.session, **{f"{kind}_id": org.id})
    return render("programs/org.html", kind=kind, plural=ORGS[kind]["plural"], org=org,
                  programs=programs,
                  places=services.places_by_program(db.session, programs, scope=scope()))


def _org_form(kind: str, org_id: int | None):
    spec = ORGS[kind]
    org = db.get_or_404(spec["model"], org_id) if org_id else None
    form = spec["form"](obj=org)
    if form.validate_on_submit():
        values = {k: v for k, v in form.data.items() if k != "csrf_token"}
        try:
            saved = spec["save"](db.session, org, **values, expected_mark=_seen_mark(org))
        except ConflictError as exc:
            return _conflict(exc)
        except DomainError as exc:
            form_refusal(form, exc, "code")
        else:
            db.session.commit()
            flash(f"Saved {saved}.", "success")
            return redirect(url_for(f"programs.{kind}", org_id=saved.id))
    return render("programs/org_form.html", kind=kind, plural=spec["plural"], org=org, form=form,
                  seen=_shown_mark(org),
                  status=422 if form.errors else 200)


@bp.route("/institutions")
@require("program.view")
def institutions():
    return _org_list("institution")


@bp.route("/institutions/<int:org_id>")
@require("program.view")
def institution(org_id: int):
    return _org_page("institution", org_id)


@bp.route("/institutions/new", methods=["GET", "POST"])
@require("program.manage")
def new_institution():
    return _org_form("institution", None)


@bp.route("/institutions/<int:org_id>/edit", methods=["GET", "POST"])
@require("program.manage")
def edit_institution(org_id: int):
    return _org_form("institution", org_id)


@bp.route("/schemes")
@require("program.view")
def schemes():
    return _org_list("scheme")


@bp.route("/schemes/<int:org_id>")
@require("program.view")
def scheme(org_id: int):
    return _org_page("scheme", org_id)


@bp.route("/schemes/new", methods=["GET", "POST"])
@require("program.manage")
def new_scheme():
    return _org_form("scheme", None)


@bp.route("/schemes/<int:org_id>/edit", methods=["GET", "POST"])
@require("program.manage")
def edit_scheme(org_id: int):
    return _org_form("scheme", org_id)
