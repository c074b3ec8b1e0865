"""Registry pages: parse -> permission -> service -> commit -> render."""
from __future__ import annotations

from urllib.parse import urlencode

from flask import abort, flash, request, url_for
from flask_login import current_user
from sqlalchemy import select

from portal.audit.services import search_entries
from portal.errors import DomainError
from portal.extensions import db
from portal.ids import form_version, parse_id
from portal.privacy import mask
from portal.registry import bp, services
from portal.registry.exports import export_response
from portal.registry.forms import (CustomFieldForm, GroupForm, MemberForm, MemberRoleForm,
                                   MoveForm, RoleForm, individual_form)
from portal.registry.models import GROUP_KINDS, SEXES, CustomField, Group, GroupMember
from portal.registry.validation import active_custom_fields
from portal.web import (can, flash_refusal, form_refusal, htmx_redirect, int_arg, is_fragment_request,
                        render, require, scope)


@bp.app_template_filter("pii")
def pii_filter(value) -> str:
    """A national ID or phone number, masked unless the user may see it."""
    return (value or "") if can("individual.view_pii") else mask(value)


@bp.app_template_filter("mask")
def mask_filter(value) -> str:
    return mask(value)


def _args_url(endpoint: str, filters: dict, **extra) -> str:
    params = {**filters, **{k: v for k, v in extra.items() if v not in (None, "")}}
    return url_for(endpoint) + ("?" + urlencode(params) if params else "")


# --- individuals ------------------------------------------------------------------------------

@bp.route("/individuals")
@require("individual.view")
def individuals():
    filters = services.clean_filters(request.args)
    sort = request.args.get("sort", "name")
    sort = sort if sort in services.INDIVIDUAL_SORTS else "name"
    page = int_arg("page", 1, minimum=1)
    result = services.search_individuals(db.session, scope=scope(), filters=filters, sort=sort, page=page,
                                         whole_ids=not can("individual.view_pii"))
    context = dict(result=result, filters=filters, sort=sort, sexes=SEXES,
                   filter_problem=services.filter_problem(filters),
                   # One url_for per page, not two per row.
                   person_url=url_for("registry.individual", individual_id=0)[:-1],
                   group_url=url_for("registry.group", group_id=0)[:-1],
                   args_url=lambda **extra: _args_url("registry.individuals", filters,
                                                     **{"sort": sort, **extra}),
                   export_url=lambda fmt: _args_url("registry.export_individuals", filters,
                                                    sort=sort, format=fmt))
    if is_fragment_request():
        return render("registry/individuals.html", partial="registry/_individual_results.html", **context)
    return render("registry/individuals.html", partial="registry/_individual_results.html",
                  programs=services.programs_for_filter(db.session),
                  statuses=services.BENEFICIARY_STATUSES, **context)


@bp.route("/individuals/export")
@require("individual.export")
def export_individuals():
    fmt = request.args.get("format", "csv")
    if fmt not in ("csv", "xlsx"):
        abort(404)
    filters = services.clean_filters(request.args)
    fields = active_custom_fields(db.session)
    rows = services.export_rows(db.session, scope=scope(), filters=filters,
                                sort=request.args.get("sort", "name"),
                                pii=can("individual.view_pii"), custom_fields=fields)
    header = services.EXPORT_HEADER + [f.label for f in fields]
    return export_response(fmt, "individuals", header, rows)


def _individual_or_404(individual_id: int, include_deleted: bool = False):
    person = services.get_individual(db.session, individual_id, scope=scope(),
                                     include_deleted=include_deleted)
    if person is None:
        abort(404)
    return person


@bp.route("/individuals/new", methods=["GET", "POST"])
@require("individual.edit")
def new_individual():
    fields = active_custom_fields(db.session)
    form = individual_form(fields, show_pii=True)  # nothing stored to mask yet
    blocking, similar = [], []
    if form.validate_on_submit():
        raw = form.raw()
        # "Save anyway" holds for the person the warning was about, not for edited details.
        fingerprint = "|".join(str(raw.get(k) or "").strip().lower()
                               for k in ("first_name", "last_name", "birth_date", "location"))
        try:
            person, errors, blocking, similar = services.enrol_individual(
                db.session, raw, scope=scope(), actor_id=current_user.id,
                confirm_similar=form.confirm.data == fingerprint)
        except DomainError as exc:
            db.session.rollback()
            person, errors = None, {exc.field or "national_id": exc.message}
        if person is not None:
            db.session.commit()
            flash(f"Enrolled {person.full_name}.", "success")
            return htmx_redirect(url_for("registry.individual", individual_id=person.id))
        db.session.rollback()
        form.show_errors(errors)
        if similar and not errors:
            form.confirm.data = fingerprint  # the next submit means "save anyway"
    status = 422 if (form.errors or form.form_errors or blocking or similar) else 200
    return render("registry/individual_new.html", partial="registry/_individual_form.html", form=form,
                  person=None, blocking=blocking, similar=similar, status=status)


def _detail_context(person):
    memberships = services.memberships_of(db.session, person, scope=scope())
    history, more = search_entries(db.session, entity_type="individual", entity_id=str(person.id),
                                   per_page=20) if can("audit.view") or can("individual.edit") else ([], False)
    from portal.accounts.models import User

    actor_ids = {e.actor_id for e in history if e.actor_id}
    actors = {u.id: u for u in db.session.scalars(select(User).where(User.id.in_(actor_ids)))} \
        if actor_ids else {}
    return dict(person=person, memberships=memberships,
                programs=services.programs_of(db.session, person, memberships),
                history=history, more_history=more, actors=actors,
                custom_fields=active_custom_fields(db.session), kinds=GROUP_KINDS, sexes=SEXES)


@bp.route("/individuals/<int:individual_id>")
@require("individual.view")
def individual(individual_id: int):
    person = _individual_or_404(individual_id, include_deleted=can("individual.delete"))
    return render("registry/individual.html", **_detail_context(person))


@bp.route("/individuals/<int:individual_id>/edit", methods=["GET", "POST"])
@require("individual.edit")
def edit_individual(individual_id: int):
    person = _individual_or_404(individual_id)
    fields = active_custom_fields(db.session)
    form = individual_form(fields, person=person, show_pii=can("individual.view_pii"))
    if form.validate_on_submit():
        try:
            version = form_version(form.version.data, editing=True)
            _, errors = services.update_individual(db.session, person, form.raw(), scope=scope(),
                                                   expected_version=version, actor_id=current_user.id)
        except services.ConflictError as exc:
            db.session.rollback()
            return render("errors/page.html", partial="errors/_message.html", status=409,
                          title="Changed by someone else", message=exc.message, code=409)
        if not errors:
            db.session.commit()
            flash(f"Saved {person.full_name}.", "success")
            if is_fragment_request():
                return render("registry/individual.html", partial="registry/_individual_card.html",
                              person=person, custom_fields=fields, sexes=SEXES)
            return htmx_redirect(url_for("registry.individual", individual_id=person.id))
        db.session.rollback()
        person = _individual_or_404(individual_id)
        form.show_errors(errors)
    status = 422 if form.errors or form.form_errors else 200
    return render("registry/individual_edit.html", partial="registry/_individual_edit.html",
                  form=form, person=person, status=status)


@bp.route("/individuals/<int:individual_id>/delete", methods=["POST"])
@require("individual.delete")
def delete_individual(individual_id: int):
    person = _individual_or_404(individual_id)
    try:
        services.delete_individual(db.session, person, scope=scope(), actor_id=current_user.id)
    except DomainError as exc:
        flash_refusal(exc)
        return htmx_redirect(url_for("registry.individual", individual_id=individual_id))
    db.session.commit()
    flash(f"Deleted {person.full_name}. They no longer appear in registry searches and exports "
          "(programs they were enrolled in keep them, for their payment history); you can "
          "restore them from this page.", "success")
    return htmx_redirect(url_for("registry.individual", individual_id=person.id))


@bp.route("/individuals/<int:individual_id>/restore", methods=["POST"])
@require("individual.delete")
def restore_individual(individual_id: int):
    person = _individual_or_404(individual_id, include_deleted=True)
    try:
        services.restore_individual(db.session, person, show_pii=can("individual.view_pii"),
                                    actor_id=current_user.id)
    except DomainError as exc:
        flash_refusal(exc)
    else:
        db.session.commit()
        flash(f"Restored {person.full_name}.", "success")
    return htmx_redirect(url_for("registry.individual", individual_id=individual_id))


# --- custom fields and member roles -----------------------------------------------------------

def _save_custom_field(form, custom_field):
    return services.save_custom_field(
        db.session, custom_field, name=form.name.data, label=form.label.data, type=form.type.data,
        required=form.required.data, unique=form.unique.data, pattern=(form.pattern.data or "").strip(),
        choices=(form.choices.data or "").splitlines(), active=form.active.data,
        position=form.position.data or 0, actor_id=current_user.id)


@bp.route("/custom-fields", methods=["GET", "POST"])
@require("customfield.manage")
def custom_fields():
    form = CustomFieldForm()
    if form.validate_on_submit():
        try:
            field = _save_custom_field(form, None)
        except DomainError as exc:
            form_refusal(form, exc, "name")
        else:
            db.session.commit()
            flash(f"Added the field {field.label}.", "success")
            return htmx_redirect(url_for("registry.custom_fields"))
    fields = list(db.session.scalars(select(CustomField).where(CustomField.program_id.is_(None))
                                     .order_by(CustomField.position, CustomField.id)))
    return render("registry/custom_fields.html", form=form, fields=fields, editing=None,
                  status=422 if form.errors else 200)


@bp.route("/custom-fields/<int:field_id>", methods=["GET", "POST"])
@require("customfield.manage")
def edit_custom_field(field_id: int):
    field = db.session.get(CustomField, field_id)
    if field is None or field.program_id is not None:
        abort(404)
    form = CustomFieldForm(obj=field if request.method == "GET" else None)  # a POST is what was sent
    if request.method == "GET":
        form.choices.data = "\n".join(str(c) for c in field.choices or [])
    form.name.data, form.type.data = field.name, field.type
    form.name.render_kw = form.type.render_kw = {"disabled": True}
    if form.validate_on_submit():
        try:
            _save_custom_field(form, field)
        except DomainError as exc:
            form_refusal(form, exc, "label")
        else:
            db.session.commit()
            flash(f"Saved the field {field.label}.", "success")
            return htmx_redirect(url_for("registry.custom_fields"))
    return render("registry/custom_field_edit.html", form=form, field=field,
                  status=422 if form.errors else 200)


@bp.route("/member-roles", methods=["GET", "POST"])
@require("customfield.manage")
def member_roles():
    form = MemberRoleForm()
    if form.validate_on_submit():
        try:
            role = services.save_member_role(db.session, code=form.code.data, label=form.label.data,
                                             active=form.active.data, actor_id=current_user.id)
        except DomainError as exc:
            form_refusal(form, exc, "code", field="code")
        else:
            db.session.commit()
            flash(f"Saved the role {role.label}.", "success")
            return htmx_redirect(url_for("registry.member_roles"))
    from portal.registry.models import MemberRole

    roles = list(db.session.scalars(select(MemberRole).order_by(MemberRole.position)))
    return render("registry/member_roles.html", form=form, roles=roles,
                  defaults=services.member_roles(db.session) if not roles else [],
                  status=422 if form.errors else 200)


# --- groups -----------------------------------------------------------------------------------

@bp.route("/groups")
@require("group.view")
def groups():
    filters = {k: request.args.get(k, "").strip() for k in ("q", "kind", "location")
               if request.args.get(k, "").strip()}
    sort = request.args.get("sort", "name")
    sort = sort if sort in services.GROUP_SORTS else "name"
    page = int_arg("page", 1, minimum=1)
    result = services.search_groups(db.session, scope=scope(), filters=filters, sort=sort, page=page)
    return render("registry/groups.html", partial="registry/_group_results.html", result=result,
                  filters=filters, sort=sort, kinds=GROUP_KINDS,
                  args_url=lambda **extra: _args_url("registry.groups", filters, **{"sort": sort, **extra}))


@bp.route("/groups/new", methods=["GET", "POST"])
@require("group.edit")
def new_group():
    form = GroupForm()
    if request.method == "GET" and request.args.get("head"):
        form.head.data = request.args["head"]
    if form.validate_on_submit():
        try:
            head_id = None
            if (form.head.data or "").strip():
                head_id = services.find_person(db.session, form.head.data, scope=scope()).id
            location_id = None
            if (form.location.data or "").strip():
                location = services.find_location(db.session, form.location.data)
                if location is None:
                    raise DomainError(f"No location has the code {form.location.data}.", field="location")
                location_id = location.id
            group = services.create_group(db.session, code=form.code.data, name=form.name.data,
                                          kind=form.kind.data, location_id=location_id, head_id=head_id,
                                          scope=scope(), actor_id=current_user.id)
        except DomainError as exc:
            form_refusal(form, exc, "code", field={"individual": "head"}.get(exc.field))
        else:
            db.session.commit()
            flash(f"Created {group}.", "success")
            return htmx_redirect(url_for("registry.group", group_id=group.id))
    return render("registry/group_new.html", form=form, status=422 if form.errors else 200)


def _group_or_404(group_id: int) -> Group:
    group = services.get_group(db.session, group_id, scope=scope())
    if group is None:
        abort(404)
    return group


def _members_context(group, error=None, editing=None, member_form=None, moving=None, move_form=None):
    """The members fragment's values. A refused add or move comes back with what was typed
    (``member_form``; ``move_form`` for the member ``moving``), to correct rather than type again."""
    roles = services.member_roles(db.session)
    if member_form is None:
        member_form = MemberForm(formdata=None)
        member_form.role.data = "member" if group.kind != "household" else "child"
    return dict(group=group, members=services.group_members(db.session, group, scope=scope()),
                roles=roles, role_labels=dict(roles), member_form=member_form, error=error, editing=editing,
                moving=moving, move_form=move_form, problems=services.check_household(db.session, group))


@bp.route("/groups/<int:group_id>")
@require("group.view")
def group(group_id: int):
    group = _group_or_404(group_id)
    return render("registry/group.html", partial="registry/_members.html", kinds=GROUP_KINDS,
                  **_members_context(group))


def _members_response(group, *, error=None, status=200, **kwargs):
    if error:
        flash(error, "error")
    return render("registry/group.html", partial="registry/_members.html", status=status,
                  kinds=GROUP_KINDS, **_members_context(group, error=error, **kwargs))


def _member_change(group, action, success: str, member_id: int | None = None, **typed):
    """Run one membership change; 422 with the reason when a rule refuses it, and what was
    ``typed`` (``_members_context``'s forms) shown again. ``member_id``: the membership a
    button of the page names, refused unless it still holds the person the page showed
    (SQLite gives a removed member's id to the next one added)."""
    try:
        if member_id is not None:
            _still_the_member_shown(group, member_id)
        action()
    except DomainError as exc:
        db.session.rollback()
        return _members_response(_group_or_404(group.id), error=exc.message, status=422, **typed)
    db.session.commit()
    flash(success, "success")
    if not is_fragment_request():
        return htmx_redirect(url_for("registry.group", group_id=group.id))
    return _members_response(group)


def _still_the_member_shown(group, member_id: int) -> None:
    sent = request.form.get("person")
    if sent is None:  # (a page from before the buttons named their person)
        return
    member = db.session.get(GroupMember, member_id)
    if member is None or member.group_id != group.id or member.individual_id != parse_id(sent):
        raise DomainError("That person is no longer a member of this group (the page was out of "
                          "date), so nothing was changed: look at the members again.")


@bp.route("/groups/<int:group_id>/members", methods=["POST"])
@require("group.edit")
def add_member(group_id: int):
    group = _group_or_404(group_id)
    form = MemberForm()
    form.role.choices = services.member_roles(db.session)
    if not form.validate_on_submit():
        return _members_response(group, error="Give the person's ID or national ID and a role.", status=422,
                                 member_form=form)

    def action():
        person = services.find_person(db.session, form.person.data, scope=scope())
        services.add_member(db.session, group, person.id, role=form.role.data, scope=scope(),
                            actor_id=current_user.id)
    return _member_change(group, action, "Member added.", member_form=form)


@bp.route("/groups/<int:group_id>/members/<int:member_id>/role", methods=["GET", "POST"])
@require("group.edit")
def member_role(group_id: int, member_id: int):
    group = _group_or_404(group_id)
    member = services.get_member(db.session, group, member_id, scope=scope())
    if member is None:
        abort(404)
    if request.method == "GET":  # (the role select shows the member's role)
        return render("registry/group.html", partial="registry/_members.html", kinds=GROUP_KINDS,
                      **_members_context(group, editing=member.id))
    form = RoleForm()
    form.role.choices = services.member_roles(db.session)
    if not form.validate_on_submit():
        return _members_response(group, error="Choose a role.", status=422)
    return _member_change(group, lambda: services.change_role(db.session, group, member_id, form.role.data,
                                                              scope=scope(), actor_id=current_user.id), "Role changed.",
                          member_id)


@bp.route("/groups/<int:group_id>/members/<int:member_id>/head", methods=["POST"])
@require("group.edit")
def make_head(group_id: int, member_id: int):
    group = _group_or_404(group_id)
    former = request.form.get("former_role") or None
    return _member_change(group, lambda: services.set_head(db.session, group, member_id, scope=scope(),
                                                           former_head_role=former,
                                                           actor_id=current_user.id), "Head changed.", member_id)


@bp.route("/groups/<int:group_id>/members/<int:member_id>/recipient", methods=["POST"])
@require("group.edit")
def make_recipient(group_id: int, member_id: int):
    group = _group_or_404(group_id)
    return _member_change(group, lambda: services.set_primary_recipient(db.session, group, member_id,
                                                                        scope=scope(), actor_id=current_user.id),
                          "Primary recipient changed.", member_id)


@bp.route("/groups/<int:group_id>/members/<int:member_id>/remove", methods=["POST"])
@require("group.edit")
def remove_member(group_id: int, member_id: int):
    group = _group_or_404(group_id)
    return _member_change(group, lambda: services.remove_member(db.session, group, member_id,
                                                                scope=scope(), actor_id=current_user.id), "Member removed.",
                          member_id)


@bp.route("/groups/<int:group_id>/members/<int:member_id>/move", methods=["POST"])
@require("group.edit")
def move_member(group_id: int, member_id: int):
    group = _group_or_404(group_id)
    if services.get_member(db.session, group, member_id, scope=scope()) is None:
        abort(404)
    form = MoveForm()
    form.role.choices = services.member_roles(db.session)
    if not form.validate_on_submit():
        return _members_response(group, error="Give the code of the household and a role.", status=422,
                                 moving=member_id, move_form=form)

    def action():
        target = db.session.scalar(select(Group).where(Group.code == form.target.data.strip().upper(),
                                                       Group.deleted_at.is_(None)))
        if target is None or not scope().allows(target.location):
            raise DomainError(f"No household {form.target.data} in your locations.")
        services.move_member(db.session, group, member_id, target, role=form.role.data, scope=scope(),
                             actor_id=current_user.id)
    return _member_change(group, action, f"Moved to {form.target.data.strip().upper()}.", member_id,
                          moving=member_id, move_form=form)

