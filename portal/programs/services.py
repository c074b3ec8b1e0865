"""Programs and beneficiaries: the rules.

* A program goes draft -> active -> closed; a closed program is read-only (every write here
  checks ``_writable``). Closing graduates its active beneficiaries.
* The cap (``max_beneficiaries``) counts potential + active + suspended beneficiaries. Every
  path that adds a place (``enrol``, ``enrol_by_criteria``, activation) first locks the program
  row: ``SELECT ... FOR UPDATE`` on PostgreSQL, the database write lock on SQLite. Two managers
  enrolling at once therefore count one after the other.
* Enrolment by criteria and bulk status changes are set-based (INSERT ... SELECT, UPDATE ...
  WHERE id IN (SELECT ...)), so a hundred thousand people take seconds, not minutes.

Services never commit; they flush and raise ``DomainError`` with a message for the user.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import (JSON, Integer, String, and_, delete, exists, func, insert, literal,
                        or_, select, update)
from sqlalchemy.orm import Session, aliased, selectinload

from portal.audit.models import AuditEntry
from portal.audit.services import record, record_many
from portal.clock import now, today, years_ago
from portal.errors import ConflictError, DomainError
from portal.ids import parse_id
from portal.locations.models import Location
from portal.locations.services import OUTSIDE_PERSON, Scope
from portal.programs.models import (BENEFICIARY_STATUSES, CAPPED_STATUSES, INSTITUTION_KINDS,
                                    TRANSITIONS, Beneficiary, BeneficiaryStatusChange,
                                    Institution, Program, Scheme)
from portal.registry.models import FIELD_TYPES, CustomField, Group, GroupMember, Individual
from portal.registry.validation import control_character

CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
FIELD_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
ENROL_STATUSES = ("potential", "active")
CHUNK = 5_000


# --- institutions and schemes -----------------------------------------------------------------

def edit_mark(record) -> str:
    """A digest of what an edit form shows of ``record``. Institutions, schemes and program
    fields have no version column; the form sends back the mark it was made from, and a save
    is refused when the record no longer matches it (see ``_check_unchanged``)."""
    values = {attr.key: getattr(record, attr.key)
              for attr in sa_inspect(record).mapper.column_attrs}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_unchanged(record, expected_mark: str | None) -> None:
    """A form left open must not put back what another manager changed since it was made
    (None: the caller is no form, as with ``save_program``'s version)."""
    if record is not None and expected_mark is not None and expected_mark != edit_mark(record):
        raise ConflictError(f"{record} was changed by someone else while you were editing. Your "
                            "changes were not saved: reload to see the current version, then "
                            "edit again.")


def _check_code(session: Session, model, code: str, current_id: int | None) -> str:
    code = (code or "").strip()
    if not CODE_RE.match(code):
        raise DomainError("A code is 1 to 32 letters, digits, dots, dashes or underscores.",
                          field="code")
    clash = session.scalar(select(model.id).where(func.lower(model.code) == code.lower()))
    if clash is not None and clash != current_id:
        raise DomainError(f"The code {code} is already used.", field="code")
    return code


def save_institution(session: Session, institution: Institution | None, *, code: str, name: str,
                     kind: str = "ministry", description: str = "",
                     expected_mark: str | None = None) -> Institution:
    """Create or edit an institution; an edit checks ``expected_mark`` (``edit_mark``)."""
    _check_unchanged(institution, expected_mark)
    code = _check_code(session, Institution, code, institution.id if institution else None)
    if not (name or "").strip():
        raise DomainError("A name is required.", field="name")
    if kind not in INSTITUTION_KINDS:
        raise DomainError("Choose a kind of institution.", field="kind")
    institution = institution or Institution()
    institution.code, institution.name = code, name.strip()
    institution.kind, institution.description = kind, (description or "").strip()
    session.add(institution)
    session.flush()
    return institution


def save_scheme(session: Session, scheme: Scheme | None, *, code: str, name: str,
                description: str = "", expected_mark: str | None = None) -> Scheme:
    """Create or edit a scheme; an edit checks ``expected_mark`` (``edit_mark``)."""
    _check_unchanged(scheme, expected_mark)
    code = _check_code(session, Scheme, code, scheme.id if scheme else None)
    if not (name or "").strip():
        raise DomainError("A name is required.", field="name")
    scheme = scheme or Scheme()
    scheme.code, scheme.name, scheme.description = code, name.strip(), (description or "").strip()
    session.add(scheme)
    session.flush()
    return scheme


def list_institutions(session: Session) -> list[Institution]:
    return list(session.scalars(select(Institution).order_by(Institution.name)))


def list_schemes(session: Session) -> list[Scheme]:
    return list(session.scalars(select(Scheme).order_by(Scheme.name)))


# --- programs -------------------------------------------------------------------------------

PROGRAM_SORTS = {"name": Program.name, "code": Program.code, "date_from": Program.date_from,
                 "status": Program.status}


def list_programs(session: Session, *, text: str = "", status: str = "",
                  institution_id: int | None = None, scheme_id: int | None = None,
                  sort: str = "name") -> list[Program]:
    query = select(Program)
    if text:
        like = f"%{text.strip()}%"
        query = query.where(or_(Program.name.ilike(like), Program.code.ilike(like)))
    if status:
        query = query.where(Program.status == status)
    if institution_id:
        query = query.where(Program.institution_id == institution_id)
    if scheme_id:
        query = query.where(Program.scheme_id == scheme_id)
    return list(session.scalars(query.order_by(PROGRAM_SORTS.get(sort, Program.name), Program.id)))


def open_programs(session: Session, beneficiary_kind: str | None = None) -> list[Program]:
    """Programs that can still enrol: not closed, coverage not ended; of this kind of
    beneficiary ('individual' or 'group') when one is given."""
    query = select(Program).where(Program.status != "closed", Program.covers(today()))
    if beneficiary_kind is not None:
        query = query.where(Program.beneficiary_kind == beneficiary_kind)
    return list(session.scalars(query.order_by(Program.name).limit(200)))


def taken_places(session: Session, program_id: int) -> int:
    """Beneficiaries that hold a place under the cap (all of the program, whatever the scope)."""
    return session.scalar(select(func.count()).select_from(Beneficiary).where(
        Beneficiary.program_id == program_id, Beneficiary.status.in_(CAPPED_STATUSES))) or 0


def places_by_program(session: Session, programs: list[Program], *,
                      scope: Scope) -> dict[int, dict]:
    """What a user may see of each program's places: {"taken", "left", "area"}. Someone who
    sees every location sees the places taken nationally. Someone limited to an area sees
    only their area's count ("area" true) and, under a cap, the places left, which they need
    to enrol and which enrolment tells them anyway; without a cap nothing national."""
    ids = [p.id for p in programs]
    if not ids:
        return {}
    national = dict(session.execute(select(Beneficiary.program_id, func.count()).where(
        Beneficiary.program_id.in_(ids), Beneficiary.status.in_(CAPPED_STATUSES))
        .group_by(Beneficiary.program_id)).all())
    shown = national if scope.everything else _taken_in_scope(session, ids, scope)
    return {p.id: {"taken": shown.get(p.id, 0), "area": not scope.everything,
                   "left": None if p.max_beneficiaries is None
                   else max(p.max_beneficiaries - national.get(p.id, 0), 0)}
            for p in programs}


def _taken_in_scope(session: Session, program_ids: list[int], scope: Scope) -> dict[int, int]:
    """Places taken by people or groups of the scope's locations, by program."""
    taken: dict[int, int] = {}
    for model, column in ((Individual, Beneficiary.individual_id), (Group, Beneficiary.group_id)):
        for program_id, count in session.execute(
                select(Beneficiary.program_id, func.count()).join(model, model.id == column)
                .where(Beneficiary.program_id.in_(program_ids),
                       Beneficiary.status.in_(CAPPED_STATUSES), scope.covers(model.location_id))
                .group_by(Beneficiary.program_id)):
            taken[program_id] = taken.get(program_id, 0) + count
    return taken


def _writable(program: Program) -> None:
    if program.status == "closed":
        raise DomainError(f"{program.name} is closed: it can no longer be changed.")


def _amount(value) -> Decimal | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        amount = Decimal(str(value).strip().replace(",", ""))
    except InvalidOperation:
        raise DomainError("The amount must be a number.", field="amount") from None
    if not amount.is_finite():
        raise DomainError("The amount must be a number.", field="amount")
    if amount < 0:
        raise DomainError("The amount must be zero or more.", field="amount")
    if amount >= Decimal("1e10"):
        raise DomainError("The amount must be under 10,000,000,000.", field="amount")
    return amount.quantize(Decimal("0.01"))


def save_program(session: Session, program: Program | None, *, code: str, name: str,
                 description: str = "", beneficiary_kind: str = "individual",
                 date_from: date | None = None, date_to: date | None = None,
                 max_beneficiaries: int | None = None, institution_id: int | None = None,
                 scheme_id: int | None = None, amount=None, currency: str = "",
                 expected_version: int | None = None, actor_id: int | None = None) -> Program:
    """Create a program (as a draft) or edit one that is not closed. An edit locks the program
    first, so the places and beneficiaries it counts cannot change before the commit, and is
    refused (ConflictError) when the program was saved since ``expected_version``: a form
    left open must not put back an old maximum or coverage over another manager's change."""
    if program is not None:
        program = lock_program(session, program.id)
        _writable(program)
        if expected_version is not None and program.version != expected_version:
            raise ConflictError(f"{program.name} was changed by someone else while you were "
                                "editing. Your changes were not saved: reload to see the current "
                                "program, then edit again.")
    code = _check_code(session, Program, code, program.id if program else None)
    if not (name or "").strip():
        raise DomainError("A name is required.", field="name")
    if beneficiary_kind not in ("individual", "group"):
        raise DomainError("Choose individuals or groups.", field="beneficiary_kind")
    if date_from and date_to and date_to < date_from:
        raise DomainError("The coverage ends before it starts.", field="date_to")
    if max_beneficiaries is not None and max_beneficiaries < 0:
        raise DomainError("The maximum cannot be negative.", field="max_beneficiaries")
    currency = (currency or "").strip().upper()
    if currency and not re.fullmatch(r"[A-Z]{3}", currency):
        raise DomainError("A currency is a three-letter code such as MWK.", field="currency")
    # (An id no column could hold is looked up as none: the query would fail on it.)
    if institution_id and session.get(Institution, parse_id(institution_id) or 0) is None:
        raise DomainError("That institution does not exist.", field="institution_id")
    if scheme_id and session.get(Scheme, parse_id(scheme_id) or 0) is None:
        raise DomainError("That scheme does not exist.", field="scheme_id")
    if program is not None and program.id:
        has_any = session.scalar(select(Beneficiary.id).where(
            Beneficiary.program_id == program.id).limit(1)) is not None
        if has_any and beneficiary_kind != program.beneficiary_kind:
            raise DomainError("The kind of beneficiary cannot change once people are enrolled.",
                              field="beneficiary_kind")
        if max_beneficiaries is not None:
            taken = taken_places(session, program.id)
            if max_beneficiaries < taken:
                raise DomainError(f"{taken} beneficiaries already hold places: the maximum "
                                  f"cannot be lower.", field="max_beneficiaries")
    program = program or Program(status="draft")
    program.code, program.name = code, name.strip()
    program.description = (description or "").strip()
    program.beneficiary_kind = beneficiary_kind
    program.date_from, program.date_to = date_from, date_to
    program.max_beneficiaries = max_beneficiaries
    program.institution_id, program.scheme_id = institution_id or None, scheme_id or None
    program.amount, program.currency = _amount(amount), currency
    session.add(program)
    session.flush()
    return program


def activate_program(session: Session, program: Program) -> Program:
    """Activate a draft. Under the program lock: a second click that read the draft before the
    first committed is told it is active already, instead of failing on the stale version."""
    program = lock_program(session, program.id)
    if program.status != "draft":
        raise DomainError(f"Only a draft program can be activated; {program.name} is "
                          f"{program.status}.")
    program.status = "active"
    session.flush()
    return program


def may_close(scope: Scope) -> bool:
    """Closing graduates the active beneficiaries of every location, so only a user who sees
    every location may close a program, or see the national count it would graduate."""
    return scope.everything


def _check_may_close(scope: Scope) -> None:
    if not may_close(scope):
        raise DomainError("Closing a program graduates its beneficiaries in every location: "
                          "only a user who sees all locations can close it.")


def close_preview(session: Session, program: Program, *, scope: Scope) -> int:
    """How many active beneficiaries closing would graduate."""
    _check_may_close(scope)
    return session.scalar(select(func.count()).select_from(Beneficiary).where(
        Beneficiary.program_id == program.id, Beneficiary.status == "active")) or 0


def close_program(session: Session, program_id: int, *, scope: Scope, actor_id: int | None,
                  reason: str = "", effective_date: date | None = None) -> int:
    """Close the program and graduate every active beneficiary; returns how many."""
    _check_may_close(scope)
    program = lock_program(session, program_id)
    if program.status == "closed":
        raise DomainError(f"{program.name} is already closed.")
    active = select(Beneficiary.id).where(Beneficiary.program_id == program.id,
                                          Beneficiary.status == "active")
    reason, effective = _check_change(
        (reason or "").strip() or "Program closed", effective_date,
        session.scalar(select(func.max(Beneficiary.enrolled_at)).where(Beneficiary.id.in_(active))),
        _last_change(session, active))
    graduated = _set_status(session, program, active, to_status="graduated", reason=reason,
                            effective_date=effective, actor_id=actor_id)
    program.status = "closed"
    program.closed_at = now()
    session.flush()
    record(session, action="close", entity_type="program", entity_id=program.id,
           summary=f"Closed {program.name}; {graduated} graduated",
           changes={"graduated": graduated})
    return graduated


def primary_recipient(session: Session, beneficiary: Beneficiary, *, scope: Scope):
    """Who a household beneficiary is paid to: the person, None when nobody is named, or
    False when they live outside ``scope`` (the page then says only that)."""
    if not (beneficiary.group_id and beneficiary.group.primary_recipient_id):
        return None
    person = session.get(Individual, beneficiary.group.primary_recipient_id)
    return person if person is not None and scope.allows(person.location) else False


def lock_program(session: Session, program_id: int) -> Program:
    """Load the program holding its row lock until the transaction ends, so counts made now
    stay true until commit. SQLite has one writer at a time: taking the write lock (a no-op
    write) is the row lock; it is free when the request already began with BEGIN IMMEDIATE."""
    if session.get_bind().dialect.name == "postgresql":
        program = session.scalar(select(Program).where(Program.id == program_id)
                                 .with_for_update(of=Program)
                                 .execution_options(populate_existing=True))
    else:
        session.execute(update(Program).where(Program.id == program_id)
                        .values(status=Program.status)
                        .execution_options(synchronize_session=False))
        program = session.scalar(select(Program).where(Program.id == program_id)
                                 .execution_options(populate_existing=True))
    if program is None:
        raise DomainError("That program does not exist.")
    return program


# --- program extra fields ---------------------------------------------------------------------

def program_fields(session: Session, program_id: int, *, active_only: bool = False) -> list[CustomField]:
    query = select(CustomField).where(CustomField.program_id == program_id)
    if active_only:
        query = query.where(CustomField.active.is_(True))
    return list(session.scalars(query.order_by(CustomField.position, CustomField.id)))


def save_program_field(session: Session, program: Program, custom_field: CustomField | None, *,
                       name: str, label: str, type: str, required: bool = False,
                       pattern: str = "", choices: list[str] | None = None,
                       active: bool = True, expected_mark: str | None = None) -> CustomField:
    """Add or edit a program's extra field; an edit checks ``expected_mark`` (``edit_mark``)."""
    _writable(program)
    _check_unchanged(custom_field, expected_mark)
    name = (name or "").strip().lower()
    if not FIELD_NAME_RE.match(name):
        raise DomainError("A field name is lower-case letters, digits and underscores, "
                          "starting with a letter.", field="name")
    if not (label or "").strip():
        raise DomainError("A label is required.", field="label")
    if type not in FIELD_TYPES:
        raise DomainError("Choose a type.", field="type")
    if custom_field is not None and custom_field.type != type:
        raise DomainError("The type of a field cannot change.", field="type")
    if custom_field is not None and custom_field.name != name:
        # Beneficiaries keep their values under the name: a new name would orphan them.
        raise DomainError("The name of a field cannot change.", field="name")
    clash = session.scalar(select(CustomField.id).where(
        CustomField.program_id == program.id, CustomField.name == name))
    if clash is not None and (custom_field is None or clash != custom_field.id):
        raise DomainError(f"This program already has a field named {name}.", field="name")
    pattern = (pattern or "").strip()
    if pattern:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise DomainError(f"The pattern is not a valid regular expression ({exc}).",
                              field="pattern") from None
    choices = [c.strip() for c in (choices or []) if c and c.strip()]
    if type == "choice" and not choices:
        raise DomainError("A choice field needs its choices.", field="choices")
    if custom_field is None:
        position = session.scalar(select(func.count()).select_from(CustomField).where(
            CustomField.program_id == program.id)) or 0
        custom_field = CustomField(program_id=program.id, name=name, position=position)
    custom_field.name, custom_field.label, custom_field.type = name, label.strip(), type
    custom_field.required, custom_field.unique = bool(required), False
    custom_field.pattern = pattern or None
    custom_field.choices = choices if type == "choice" else []
    custom_field.active = bool(active)
    session.add(custom_field)
    session.flush()
    return custom_field


def clean_program_custom(session: Session, program: Program, raw: dict | None) -> dict:
    """The program's extra beneficiary values, validated; DomainError listing what is wrong."""
    from portal.registry.validation import clean_custom

    fields = program_fields(session, program.id, active_only=True)
    values, errors = clean_custom(fields, raw or {})
    if errors:
        raise DomainError(" ".join(errors.values()), field=next(iter(errors)))
    return values


# --- who may be enrolled --------------------------------------------------------------------

def _subject(program: Program):
    """(model, beneficiary column) of the program's kind of beneficiary."""
    if program.is_group:
        return Group, Beneficiary.group_id
    return Individual, Beneficiary.individual_id


def _visible_subjects(program: Program, scope: Scope):
    model, _ = _subject(program)
    return select(model.id).where(model.deleted_at.is_(None), scope.covers(model.location_id))


def _lived_in(group_id=Group.id):
    """Condition: someone not deleted is still a member of the group ``group_id`` names (a
    column, or one group's key). A household whose last member left or was deleted has
    nobody to pay."""
    member, person = aliased(GroupMember), aliased(Individual)  # (never the outer query's)
    return exists(select(member.id).join(person, person.id == member.individual_id)
                  .where(member.group_id == group_id, person.deleted_at.is_(None)))


def _payable(program: Program):
    """Condition on Beneficiary: there is still someone to pay, so it may be made active. A
    person deleted from the registry, or a household nobody lives in any more, keeps the
    record (its payment history) but is never activated again."""
    if program.is_group:
        household = aliased(Group)
        return exists(select(household.id).where(household.id == Beneficiary.group_id,
                                                 household.deleted_at.is_(None),
                                                 _lived_in(household.id)))
    person = aliased(Individual)
    return exists(select(person.id).where(person.id == Beneficiary.individual_id,
                                          person.deleted_at.is_(None)))


def _still_payable(session: Session, program: Program, beneficiary: Beneficiary) -> bool:
    """``_payable`` for one beneficiary already read, by its person's or household's key: the
    correlated form, planned on tables without statistics (a fresh database, a bulk load not
    yet analysed), scanned every beneficiary and household for each change."""
    if program.is_group:
        return session.scalar(select(Group.id).where(
            Group.id == beneficiary.group_id, Group.deleted_at.is_(None),
            _lived_in(beneficiary.group_id))) is not None
    return session.scalar(select(Individual.id).where(Individual.id == beneficiary.individual_id,
                                                      Individual.deleted_at.is_(None))) is not None


def _check_paid_period(program: Program) -> None:
    """Active beneficiaries are paid, so nobody becomes active outside the coverage: not after
    it ended, nor before it starts (potential beneficiaries can be enrolled ahead of it)."""
    if not program.covers(today()):
        raise DomainError(f"The coverage of {program.name} ended on "
                          f"{program.date_to.isoformat()}: nobody can be made active any more.")
    if program.date_from is not None and program.date_from > today():
        raise DomainError(f"The coverage of {program.name} starts on "
                          f"{program.date_from.isoformat()}: until then beneficiaries are enrolled "
                          f"as potential, and made active from that day.")


def _check_enrolment(session: Session, program: Program, status: str) -> None:
    _writable(program)
    if not program.covers(today()):
        raise DomainError(f"The coverage of {program.name} ended on "
                          f"{program.date_to.isoformat()}: nobody can be enrolled any more.")
    if status not in ENROL_STATUSES:
        raise DomainError("People are enrolled as potential or active beneficiaries.")
    if status == "active":
        _check_paid_period(program)


def _places_left(session: Session, program: Program) -> int | None:
    if program.max_beneficiaries is None:
        return None
    return max(program.max_beneficiaries - taken_places(session, program.id), 0)


def _refuse_over_cap(program: Program, wanted: int, left: int | None) -> None:
    if left is not None and wanted > left:
        places = "1 place" if left == 1 else f"{left} places"
        raise DomainError(f"{program.name} takes at most {program.max_beneficiaries} "
                          f"beneficiaries: {wanted} more cannot be enrolled, {places} left.")


def _record_enrolment(session: Session, program: Program, *, stamp, actor_id: int | None,
                      status: str, count: int, how: str, details: dict) -> None:
    """The audit entry of an enrolment, written at the instant stored as the new
    beneficiaries' ``enrolled_at``: their timeline finds who enrolled them, and how, here."""
    session.add(AuditEntry(at=stamp, actor_id=actor_id, action="enrol", entity_type="program",
                           entity_id=str(program.id),
                           summary=f"Enrolled {count} {how} as {status} in {program.name}"[:255],
                           changes={"how": how, "status": status, "count": count, **details}))


def enrol(session: Session, program_id: int, *, individual_ids=(), group_ids=(),
          status: str = "potential", actor_id: int | None, scope: Scope,
          custom: dict | None = None) -> dict:
    """Enrol people (individual programs) or groups (group programs).

    Returns {"enrolled": n, "skipped": already enrolled}. Refuses a closed program, people
    outside the caller's scope, and going over the cap (saying how many places are left).
    """
    program = lock_program(session, program_id)
    _check_enrolment(session, program, status)
    ids = sorted({int(i) for i in (group_ids if program.is_group else individual_ids)})
    other = group_ids if not program.is_group else individual_ids
    if other:
        kind = "groups" if program.is_group else "individuals"
        raise DomainError(f"{program.name} enrols {kind} only.")
    if not ids:
        return {"enrolled": 0, "skipped": 0}
    values = clean_program_custom(session, program, custom)
    model, column = _subject(program)
    visible, already = 0, set()
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        visible += session.scalar(select(func.count()).select_from(
            _visible_subjects(program, scope).where(model.id.in_(chunk)).subquery())) or 0
        already.update(session.scalars(select(column).where(
            Beneficiary.program_id == program.id, column.in_(chunk))))
    if visible != len(ids):
        missing = len(ids) - visible
        raise DomainError(f"{missing} of those {'groups' if program.is_group else 'people'} "
                          f"do not exist or lie outside your locations; nobody was enrolled.")
    if program.is_group:
        empty = session.scalar(select(func.count()).select_from(Group).where(
            Group.id.in_(ids), ~_lived_in())) or 0
        if empty:
            raise DomainError(f"{empty} of those households {'has' if empty == 1 else 'have'} "
                              f"nobody living in {'it' if empty == 1 else 'them'} any more (every "
                              f"member left or was deleted); nobody was enrolled.")
    new = [i for i in ids if i not in already]
    _refuse_over_cap(program, len(new), _places_left(session, program))
    if new:
        stamp = now()
        key = "group_id" if program.is_group else "individual_id"
        for start in range(0, len(new), CHUNK):
            session.execute(insert(Beneficiary), [
                {"program_id": program.id, key: i, "status": status, "custom": values,
                 "enrolled_at": stamp} for i in new[start:start + CHUNK]])
        _record_enrolment(session, program, stamp=stamp, actor_id=actor_id, status=status,
                          count=len(new), how="by hand", details={key + "s": new[:50]})
    session.flush()
    return {"enrolled": len(new), "skipped": len(already)}


def find_candidates(session: Session, program: Program, *, scope: Scope, text: str,
                    limit: int = 20) -> list[tuple]:
    """People (or groups) to enrol, found by id, national ID, name or code, within scope:
    [(subject, already enrolled?)]."""
    from portal.registry.validation import fold

    text = (text or "").strip()
    if not text:
        return []
    model, column = _subject(program)
    query = select(model).where(model.deleted_at.is_(None), scope.covers(model.location_id))
    if (subject_id := parse_id(text)) is not None:
        query = query.where(model.id == subject_id)
    elif program.is_group:
        query = query.where(or_(Group.code == text, Group.name.ilike(f"%{text}%")))
    else:
        key = fold(text).strip()
        query = query.where(or_(Individual.national_id == text,
                                Individual.name_key.startswith(key, autoescape=True),
                                Individual.name_key.contains(" " + key, autoescape=True)))
    found = list(session.scalars(query.order_by(model.id).limit(limit)))
    if not found:
        return []
    enrolled = set(session.scalars(select(column).where(
        Beneficiary.program_id == program.id, column.in_([s.id for s in found]))))
    return [(s, s.id in enrolled) for s in found]


# --- enrolment by criteria ------------------------------------------------------------------

CUSTOM_OPERATORS = {"=": "equals", "!=": "is not", "<": "less than", "<=": "at most",
                    ">": "more than", ">=": "at least", "contains": "contains",
                    "empty": "is empty"}


@dataclass
class Criteria:
    """Who to enrol: filters on people (for group programs: on any member) and households."""

    location_id: int | None = None
    sex: str = ""
    age_min: int | None = None
    age_max: int | None = None
    household_min: int | None = None
    household_max: int | None = None
    custom: list[tuple[str, str, str]] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.location_id or self.sex or self.age_min is not None
                    or self.age_max is not None or self.household_min is not None
                    or self.household_max is not None or self.custom)

    def describe(self) -> dict:
        return {k: v for k, v in vars(self).items() if v not in (None, "", [])}


def _custom_condition(custom_field: CustomField, op: str, raw: str):
    from portal.registry.validation import _json_column, clean_custom

    element = Individual.custom[custom_field.name]
    text_value = element.as_string()
    if op == "empty":
        return or_(text_value.is_(None), text_value == "")
    if op not in CUSTOM_OPERATORS:
        raise DomainError(f"Unknown operator {op}.", field="custom")
    if op == "contains":
        return text_value.ilike(f"%{raw.strip()}%")
    probe = CustomField(name=custom_field.name, label=custom_field.label, type=custom_field.type,
                        required=True, choices=custom_field.choices, pattern=None, active=True)
    values, errors = clean_custom([probe], {custom_field.name: raw})
    if errors:
        raise DomainError(f"Filter on {errors[custom_field.name]}", field="custom")
    value = values[custom_field.name]
    column = _json_column(Individual, custom_field)
    if op == "=":
        return column == value
    if op == "!=":
        return or_(column != value, text_value.is_(None))
    if custom_field.type in ("boolean", "choice"):
        raise DomainError(f"{custom_field.label} can only be compared with = or !=.",
                          field="custom")
    return {"<": column < value, "<=": column <= value, ">": column > value,
            ">=": column >= value}[op]


def check_range(low: int | None, high: int | None, *, what: str, field: str) -> None:
    """A range given upside down (ages from 90 to 10) would match nobody without saying why.
    ``field``: the form field its "to" is typed in."""
    if low is not None and high is not None and low > high:
        raise DomainError(f"{what} to ({high}) is less than {what.lower()} from ({low}), so nobody "
                          f"could match: swap them.", field=field)


def _person_conditions(session: Session, criteria: Criteria, person=Individual) -> list:
    check_range(criteria.age_min, criteria.age_max, what="Age", field="age_max")
    conditions = []
    if criteria.sex:
        if criteria.sex not in ("F", "M", "O"):
            raise DomainError("Sex is F, M or O.", field="sex")
        conditions.append(person.sex == criteria.sex)
    on = today()
    if criteria.age_min is not None:  # at least age_min years old: born on or before
        conditions.append(person.birth_date <= years_ago(criteria.age_min, on))
    if criteria.age_max is not None:  # at most age_max: born after (age_max + 1) years ago
        conditions.append(person.birth_date > years_ago(criteria.age_max + 1, on))
    if criteria.custom:
        from portal.registry.validation import active_custom_fields

        fields = {f.name: f for f in active_custom_fields(session)}
        for name, op, raw in criteria.custom:
            if name not in fields:
                raise DomainError(f"There is no custom field {name}.", field="custom")
            conditions.append(_custom_condition(fields[name], op, raw or ""))
    return conditions


def _living_members():
    """(group_id, size) of every group somebody lives in: members not deleted. A deleted
    person stays a member on record, but no longer lives in the household criteria size up."""
    counted = aliased(Individual)  # (never the outer query's)
    return (select(GroupMember.group_id, func.count().label("size"))
            .join(counted, counted.id == GroupMember.individual_id)
            .where(counted.deleted_at.is_(None)).group_by(GroupMember.group_id))


def criteria_query(session: Session, program: Program, *, scope: Scope, criteria: Criteria):
    """SELECT of the ids of every living, visible person (or group) matching the criteria."""
    model, _ = _subject(program)
    query = _visible_subjects(program, scope)
    if criteria.location_id:
        place = session.get(Location, criteria.location_id)
        # A place above one's own area is fine: the scope still limits who matches.
        if place is None or not (scope.allows(place) or scope.ancestors_visible(place)):
            raise DomainError("That location does not exist or lies outside yours.",
                              field="location")
        query = query.where(model.location_id.in_(
            select(Location.id).where(Location.path.startswith(place.path, autoescape=True))))
    check_range(criteria.household_min, criteria.household_max, what="Household size", field="hh_max")
    size_wanted = criteria.household_min is not None or criteria.household_max is not None
    if program.is_group:
        # Households somebody still lives in, sized once for all of them: a size counted per
        # household, planned on tables without statistics (a fresh database, rows not yet
        # analysed), walked every member for every household.
        living = _living_members().subquery()
        query = query.join(living, living.c.group_id == Group.id)
        people = _person_conditions(session, criteria)
        if people:
            # Only members the user may see count: a household of one's area matched on a
            # member living elsewhere would let counts reveal that member's age or sex.
            query = query.where(exists(
                select(GroupMember.id).join(Individual, Individual.id == GroupMember.individual_id)
                .where(GroupMember.group_id == Group.id, Individual.deleted_at.is_(None),
                       scope.covers(Individual.location_id), *people)))
        if criteria.household_min is not None:
            query = query.where(living.c.size >= criteria.household_min)
        if criteria.household_max is not None:
            query = query.where(living.c.size <= criteria.household_max)
    else:
        query = query.where(*_person_conditions(session, criteria))
        if size_wanted:
            member = aliased(GroupMember)
            sizes = _living_members().subquery()
            # Only a household of the user's area is sized, as in group programs: matching on
            # the size of one registered elsewhere would tell the user its size.
            home = aliased(Group)
            query = (query.join(member, and_(member.individual_id == Individual.id,
                                             member.group_kind == "household"))
                     .join(home, and_(home.id == member.group_id, home.deleted_at.is_(None),
                                      scope.covers(home.location_id)))
                     .join(sizes, sizes.c.group_id == member.group_id))
            if criteria.household_min is not None:
                query = query.where(sizes.c.size >= criteria.household_min)
            if criteria.household_max is not None:
                query = query.where(sizes.c.size <= criteria.household_max)
    return query


def _not_enrolled(program: Program, query):
    model, column = _subject(program)
    return query.where(~exists(select(Beneficiary.id).where(
        Beneficiary.program_id == program.id, column == model.id)))


def preview_criteria(session: Session, program: Program, *, scope: Scope, criteria: Criteria,
                     sample: int = 10) -> dict:
    """How many match, how many of them are new, places left, and a sample of the new ones."""
    query = criteria_query(session, program, scope=scope, criteria=criteria)
    matching = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    new_query = _not_enrolled(program, query)
    new = session.scalar(select(func.count()).select_from(new_query.subquery())) or 0
    model, _ = _subject(program)
    ids = list(session.scalars(new_query.order_by(model.id).limit(sample)))
    rows = list(session.scalars(select(model).where(model.id.in_(ids)).order_by(model.id))) if ids else []
    return {"matching": matching, "new": new, "already": matching - new, "sample": rows,
            "places_left": _places_left(session, program)}


def enrol_by_criteria(session: Session, program_id: int, *, scope: Scope, criteria: Criteria,
                      status: str = "potential", actor_id: int | None,
                      custom: dict | None = None, expected: int | None = None) -> dict:
    """Enrol everyone matching, in one INSERT ... SELECT. People already enrolled are
    skipped and counted. ``expected`` (the previewed number) guards against confirming a
    preview that no longer holds: it is refused when more would be enrolled."""
    program = lock_program(session, program_id)
    _check_enrolment(session, program, status)
    if criteria.is_empty():
        raise DomainError("Choose at least one criterion; to enrol everyone, choose the "
                          "top location.")
    values = clean_program_custom(session, program, custom)
    query = criteria_query(session, program, scope=scope, criteria=criteria)
    model, column = _subject(program)
    matching = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    left = _places_left(session, program)
    stamp = now()
    key = "group_id" if program.is_group else "individual_id"
    session.flush()
    # Insert first and count what went in: one pass over the people instead of two. Over the
    # cap (or beyond the preview) the savepoint undoes it; the program lock keeps the count true.
    with session.begin_nested():
        new = session.execute(insert(Beneficiary).from_select(
            ["program_id", key, "status", "custom", "enrolled_at"],
            _not_enrolled(program, query).with_only_columns(
                literal(program.id, Integer), model.id, literal(status, String),
                literal(values, JSON), literal(stamp), maintain_column_froms=True)
            .order_by(model.id)), execution_options={"preserve_rowcount": True}).rowcount
        if expected is not None and new > expected:
            raise DomainError(f"{new - expected} more people match than in the preview; "
                              f"check the preview again.")
        _refuse_over_cap(program, new, left)
    if new:
        _record_enrolment(session, program, stamp=stamp, actor_id=actor_id, status=status,
                          count=new, how="by criteria",
                          details={"criteria": {k: str(v) for k, v in criteria.describe().items()}})
    session.flush()
    return {"enrolled": new, "skipped": matching - new}


# --- the beneficiary list ---------------------------------------------------------------------

BENEFICIARY_SORTS = {"name": "name", "enrolled": "enrolled", "status": "status"}


@dataclass
class BeneficiaryFilters:
    status: str = ""
    text: str = ""
    location_id: int | None = None
    sex: str = ""
    age_min: int | None = None  # of the person, or of a group's primary recipient
    age_max: int | None = None

    def without_status(self) -> "BeneficiaryFilters":
        return BeneficiaryFilters(text=self.text, location_id=self.location_id, sex=self.sex,
                                  age_min=self.age_min, age_max=self.age_max)

    def on_person(self) -> bool:
        return bool(self.sex) or self.age_min is not None or self.age_max is not None


def beneficiary_query(session: Session, program: Program, *, scope: Scope,
                      filters: BeneficiaryFilters, subject: bool = True):
    """SELECT Beneficiary joined to its person or group, within scope and filters.

    ``subject=False`` leaves the join out when nothing needs it (whole-country scope, no
    filter on the person): counts then read the (program_id, status) index alone."""
    model, column = _subject(program)
    needs_subject = subject or not scope.everything or bool(
        filters.location_id or (filters.text or "").strip() or filters.on_person())
    query = select(Beneficiary).where(Beneficiary.program_id == program.id)
    placed = []  # conditions on the person's or group's village: the scope, the place asked for
    if needs_subject:
        query = query.join(model, model.id == column)
        if not scope.everything:
            placed.append(scope.covers(model.location_id))
    if filters.status:
        if filters.status not in BENEFICIARY_STATUSES:
            raise DomainError("Unknown status.", field="status")
        query = query.where(Beneficiary.status == filters.status)
    if filters.location_id:
        place = session.get(Location, filters.location_id)
        if place is not None:
            placed.append(model.location_id.in_(
                select(Location.id).where(Location.path.startswith(place.path, autoescape=True))))
    if placed and session.get_bind().dialect.name == "sqlite":
        # SQLite cannot weigh a location subquery whose LIKE pattern is a parameter, and
        # walked every beneficiary of a 100,000-beneficiary program (216-476 ms for a district
        # officer, 260-320 ms for a village). Asked for the beneficiaries among the people
        # of those places, it starts from them (43-84 ms, 7-9 ms). PostgreSQL plans the join
        # as well or better.
        query = query.where(column.in_(select(model.id).where(*placed)))
    else:
        query = query.where(*placed)
    text_filter = (filters.text or "").strip()
    if program.is_group:
        if text_filter:
            like = f"%{text_filter}%"
            query = query.where(or_(Group.name.ilike(like), Group.code.ilike(like)))
        if filters.on_person():
            # Only a payee the user may see is filtered on: one living elsewhere is not named
            # to them, and counts that change with the age asked for would tell their age.
            query = query.join(Individual, and_(Individual.id == Group.primary_recipient_id,
                                                scope.covers(Individual.location_id)))
    else:
        if text_filter:
            from portal.registry.validation import fold

            key = fold(text_filter).strip()
            query = query.where(or_(Individual.name_key.startswith(key, autoescape=True),
                                    Individual.name_key.contains(" " + key, autoescape=True),
                                    Individual.national_id == text_filter))
    if filters.sex:
        query = query.where(Individual.sex == filters.sex)
    on = today()
    if filters.age_min is not None:
        query = query.where(Individual.birth_date <= years_ago(filters.age_min, on))
    if filters.age_max is not None:
        query = query.where(Individual.birth_date > years_ago(filters.age_max + 1, on))
    return query


def search_beneficiaries(session: Session, program: Program, *, scope: Scope,
                         filters: BeneficiaryFilters, sort: str = "name", page: int = 1,
                         per_page: int = 50):
    """A page of beneficiaries (with their person or group loaded) and whether more follow."""
    model, _ = _subject(program)
    query = beneficiary_query(session, program, scope=scope, filters=filters)
    order = {"name": (model.name_key if not program.is_group else model.name),
             "enrolled": Beneficiary.enrolled_at.desc(),
             "status": Beneficiary.status}.get(sort, Beneficiary.id)
    query = query.add_columns(model).order_by(order, Beneficiary.id)
    if program.is_group:
        query = query.options(selectinload(Group.primary_recipient))
    rows = session.execute(query.offset((max(page, 1) - 1) * per_page).limit(per_page + 1)).all()
    return [(b, subject) for b, subject in rows[:per_page]], len(rows) > per_page


def status_counts(session: Session, program: Program, *, scope: Scope,
                  filters: BeneficiaryFilters | None = None) -> dict[str, int]:
    """Beneficiaries by status (within scope, and the filters other than status)."""
    query = beneficiary_query(session, program, scope=scope, subject=False,
                              filters=(filters or BeneficiaryFilters()).without_status())
    sub = query.with_only_columns(Beneficiary.status).subquery()
    rows = dict(session.execute(select(sub.c.status, func.count()).group_by(sub.c.status)).all())
    return {status: rows.get(status, 0) for status in BENEFICIARY_STATUSES}


def region_counts(session: Session, program: Program, *, scope: Scope) -> list[tuple[str, int]]:
    """Beneficiaries (not graduated) by region, largest first, within scope."""
    model, column = _subject(program)
    by_place = (select(model.location_id.label("lid"), func.count().label("n"))
                .select_from(Beneficiary).join(model, model.id == column)
                .where(Beneficiary.program_id == program.id,
                       Beneficiary.status.in_(CAPPED_STATUSES), scope.covers(model.location_id))
                .group_by(model.location_id).subquery())
    rows = session.execute(select(Location.path, by_place.c.n)
                           .join(by_place, by_place.c.lid == Location.id)).all()
    totals: dict[int, int] = {}
    for path, n in rows:
        region_id = int(path.strip("/").split("/")[0])
        totals[region_id] = totals.get(region_id, 0) + n
    names = dict(session.execute(select(Location.id, Location.name)
                                 .where(Location.id.in_(list(totals)))).all()) if totals else {}
    return sorted(((names.get(rid, "?"), n) for rid, n in totals.items()),
                  key=lambda item: (-item[1], item[0]))


def _lock_beneficiary(session: Session, beneficiary_id: int, *,
                      scope: Scope) -> tuple[Program, Beneficiary]:
    """The beneficiary and its program, locked in the order every write here takes them
    (the program row, then the beneficiary's) and read again under the locks: another manager
    may have removed it, or changed its status, since this request first read it."""
    beneficiary = get_beneficiary(session, beneficiary_id, scope=scope)
    if beneficiary is None:
        raise DomainError("That beneficiary does not exist or lies outside your locations.")
    program = lock_program(session, beneficiary.program_id)
    beneficiary = session.scalar(select(Beneficiary).where(Beneficiary.id == beneficiary_id)
                                 .with_for_update(of=Beneficiary)
                                 .execution_options(populate_existing=True))
    if beneficiary is None:
        raise DomainError("This beneficiary was removed from the program meanwhile, by someone "
                          "else; nothing was changed.")
    return program, beneficiary


def get_beneficiary(session: Session, beneficiary_id: int, *, scope: Scope) -> Beneficiary | None:
    """The beneficiary, or None when it does not exist or lies outside the scope."""
    beneficiary = session.get(Beneficiary, beneficiary_id)
    if beneficiary is None:
        return None
    subject = beneficiary.group if beneficiary.group_id else beneficiary.individual
    if subject is None or not scope.allows(subject.location):
        return None
    return beneficiary


def export_rows(session: Session, program: Program, *, scope: Scope, filters: BeneficiaryFilters,
                show_pii: bool):
    """Header and a generator of rows for the export, masked unless ``show_pii``. Plain
    columns, streamed in batches: no ORM objects for a hundred thousand rows."""
    from portal.privacy import mask

    def shown(value):
        return (value or "") if show_pii else mask(value)

    model, _ = _subject(program)
    base = beneficiary_query(session, program, scope=scope, filters=filters)
    if program.is_group:
        recipient = aliased(Individual)
        query = (base.with_only_columns(
            Beneficiary.id, Beneficiary.status, Beneficiary.enrolled_at, Group.code, Group.name,
            Location.code, recipient.first_name, recipient.last_name, recipient.national_id,
            recipient.phone, scope.covers(recipient.location_id))
            .join(Location, Location.id == Group.location_id)
            .outerjoin(recipient, recipient.id == Group.primary_recipient_id))
        header = ["Beneficiary id", "Status", "Enrolled", "Group code", "Group name", "Location",
                  "Primary recipient", "Recipient national ID", "Recipient phone"]

        def row(r):
            if r[6] and not r[10]:  # paid to someone who lives outside the user's area
                return [r[0], r[1], r[2].date().isoformat(), r[3], r[4], r[5], OUTSIDE_PERSON, "", ""]
            name = f"{r[6]} {r[7]}" if r[6] else ""
            return [r[0], r[1], r[2].date().isoformat(), r[3], r[4], r[5], name, shown(r[8]),
                    shown(r[9])]
    else:
        query = (base.with_only_columns(
            Beneficiary.id, Beneficiary.status, Beneficiary.enrolled_at, Individual.id,
            Individual.first_name, Individual.last_name, Individual.sex, Individual.birth_date,
            Individual.national_id, Individual.phone, Location.code)
            .join(Location, Location.id == Individual.location_id))
        header = ["Beneficiary id", "Status", "Enrolled", "Individual id", "First name",
                  "Last name", "Sex", "Birth date", "National ID", "Phone", "Location"]

        def row(r):
            return [r[0], r[1], r[2].date().isoformat(), r[3], r[4], r[5], r[6],
                    r[7].isoformat(), shown(r[8]), shown(r[9]), r[10]]

    def rows():
        result = session.execute(query.order_by(Beneficiary.id).execution_options(yield_per=5000))
        for r in result:
            yield row(r)

    return header, rows()


def update_beneficiary_custom(session: Session, beneficiary_id: int, raw: dict, *, scope: Scope,
                              actor_id: int | None) -> Beneficiary:
    """Set the program's extra field values of one beneficiary (validated, audited)."""
    program, beneficiary = _lock_beneficiary(session, beneficiary_id, scope=scope)
    _writable(program)
    values = clean_program_custom(session, beneficiary.program, raw)
    # Fields the form did not show (inactive ones) keep their values, as in the registry.
    active = {f.name for f in program_fields(session, beneficiary.program_id, active_only=True)}
    beneficiary.custom = {**{k: v for k, v in (beneficiary.custom or {}).items()
                             if k not in active}, **values}
    session.flush()
    return beneficiary


# --- status changes ---------------------------------------------------------------------------

def allowed_targets(status: str) -> tuple[str, ...]:
    return TRANSITIONS.get(status, ())


def _check_transition(from_status: str, to_status: str) -> None:
    if to_status not in allowed_targets(from_status):
        allowed = ", ".join(allowed_targets(from_status)) or "nothing"
        raise DomainError(f"A {from_status} beneficiary cannot become {to_status}; "
                          f"allowed: {allowed}.", field="to_status")


def _check_change(reason: str, effective_date: date | None, last_enrolled_at: datetime | None,
                  last_change: date | None = None) -> tuple[str, date]:
    """The reason and effective date of a change, one beneficiary's or many: it cannot take
    effect before the (latest) enrolment or earlier status change it follows, or the
    timeline would run backwards, nor after today, as the status changes now."""
    reason = (reason or "").strip()
    if not reason:
        raise DomainError("Give the reason for the change.", field="reason")
    if len(reason) > 500:
        raise DomainError("Keep the reason under 500 characters.", field="reason")
    if problem := control_character(reason):
        raise DomainError(f"The reason {problem}, pasted with the text; type it again.", field="reason")
    effective = effective_date or today()
    if effective > today():
        raise DomainError("The change takes effect now, so its date cannot be after today; "
                          "record it on the day it happens.", field="effective_date")
    if last_enrolled_at is not None and effective < last_enrolled_at.date():
        raise DomainError(f"The change cannot take effect before the enrolment "
                          f"({last_enrolled_at.date().isoformat()}).", field="effective_date")
    if last_change is not None and effective < last_change:
        raise DomainError(f"The change cannot take effect before the status change it follows "
                          f"({last_change.isoformat()}).", field="effective_date")
    return reason, effective


def _last_change(session: Session, beneficiary_ids) -> date | None:
    """The latest effective date among these beneficiaries' status changes (a query of ids)."""
    return session.scalar(select(func.max(BeneficiaryStatusChange.effective_date))
                          .where(BeneficiaryStatusChange.beneficiary_id.in_(beneficiary_ids)))


def _record_removals(session: Session, program: Program, removed, *, reason: str,
                     effective_date: date, actor_id: int | None) -> None:
    """One entry per removed beneficiary naming the person or group and the status it had:
    the record is deleted, so the audit log is all that says who was removed."""
    record_many(session, action="remove", entity_type="beneficiary", actor_id=actor_id, entries=[
        (beneficiary_id, f"Removed from {program.name}: {reason}",
         {"program_id": program.id, "individual_id": individual_id, "group_id": group_id,
          "status": status, "reason": reason, "effective_date": effective_date.isoformat()})
        for beneficiary_id, individual_id, group_id, status in removed])


def change_status(session: Session, beneficiary_id: int, *, to_status: str, reason: str,
                  effective_date: date | None = None, actor_id: int | None,
                  scope: Scope) -> Beneficiary | None:
    """Move one beneficiary along an allowed transition; "removed" deletes a potential one
    (returns None). Activation re-checks, under the locks, the cap, the coverage and that
    someone is left to pay. The audit entry says why and from when, as a bulk change's does."""
    program, beneficiary = _lock_beneficiary(session, beneficiary_id, scope=scope)
    _writable(program)
    _check_transition(beneficiary.status, to_status)
    reason, effective = _check_change(reason, effective_date, beneficiary.enrolled_at,
                                      _last_change(session, [beneficiary.id]))
    one = select(Beneficiary.id).where(Beneficiary.id == beneficiary.id)
    if to_status == "active":
        _check_paid_period(program)
        if not _still_payable(session, program, beneficiary):
            raise DomainError("Nobody lives in this household any more (every member left or was "
                              "deleted): it cannot be made active." if program.is_group else
                              "This person was deleted from the registry: they cannot be made "
                              "active. The record stays for its history.")
        if program.max_beneficiaries is not None:
            taken = taken_places(session, program.id)
            if taken > program.max_beneficiaries:
                raise DomainError(f"{program.name} is over its maximum of "
                                  f"{program.max_beneficiaries} ({taken} hold places): 0 places left.")
    from_status = beneficiary.status
    _set_status(session, program, one, to_status=to_status, reason=reason,
                effective_date=effective, actor_id=actor_id)
    if to_status == "removed":
        return None
    record(session, action="status", entity_type="beneficiary", entity_id=beneficiary_id,
           summary=f"{from_status} -> {to_status} in {program.name}: {reason}",
           changes={"status": [from_status, to_status], "reason": reason,
                    "effective_date": effective.isoformat()}, actor_id=actor_id)
    session.flush()
    return session.get(Beneficiary, beneficiary_id)


def _set_status(session: Session, program: Program, ids_query, *, to_status: str,
                reason: str, effective_date: date, actor_id: int | None) -> int:
    """Record the change for every beneficiary selected by ``ids_query`` and apply it."""
    ids = ids_query.subquery()
    count = session.scalar(select(func.count()).select_from(ids)) or 0
    if not count:
        return 0
    stamp = now()
    if to_status == "removed":
        # A bulk DELETE skips the flush hook: name the removed here, as a single removal does.
        removed = session.execute(select(Beneficiary.id, Beneficiary.individual_id,
                                         Beneficiary.group_id, Beneficiary.status)
                                  .where(Beneficiary.id.in_(select(ids.c.id)))).all()
        _record_removals(session, program, removed, reason=reason,
                         effective_date=effective_date, actor_id=actor_id)
        session.execute(delete(Beneficiary).where(Beneficiary.id.in_(select(ids.c.id)))
                        .execution_options(synchronize_session=False))
        return count
    session.execute(insert(BeneficiaryStatusChange).from_select(
        ["beneficiary_id", "from_status", "to_status", "reason", "effective_date", "actor_id", "at"],
        select(Beneficiary.id, Beneficiary.status, literal(to_status, String),
               literal(reason, String), literal(effective_date), literal(actor_id, Integer),
               literal(stamp)).where(Beneficiary.id.in_(select(ids.c.id)))))
    session.execute(update(Beneficiary).where(Beneficiary.id.in_(select(ids.c.id)))
                    .values(status=to_status).execution_options(synchronize_session=False))
    session.expire_all()
    return count


def suspend_unpayable(session: Session, *, individual_id: int | None = None, group_ids=(),
                      actor_id: int | None) -> int:
    """Suspend the active beneficiaries nobody can be paid for any more: this person, just
    deleted from the registry, or these groups once no living member is left. Each gets the
    change and its reason in its history and an audit entry, so no payroll pays them and a
    manager sees why; the place stays taken until a manager graduates or removes them (a
    restored person is made active again by hand). Returns how many were suspended."""
    changes = []
    if individual_id is not None:
        reason = "Suspended: the person was deleted from the registry."
        changes.append((reason, Beneficiary.individual_id == individual_id))
    if group_ids:
        reason = "Suspended: nobody is left in the household (every member left or was deleted)."
        changes.append((reason, and_(Beneficiary.group_id.in_(list(group_ids)),
                                     ~_lived_in(Beneficiary.group_id))))
    suspended = 0
    for reason, condition in changes:
        found = session.execute(select(Beneficiary.id, Program.id, Program.name)
                                .join(Program, Program.id == Beneficiary.program_id)
                                .where(condition, Beneficiary.status == "active",
                                       Program.status != "closed")
                                .order_by(Beneficiary.id).with_for_update(of=Beneficiary)).all()
        if not found:
            continue
        ids = [beneficiary_id for beneficiary_id, _program, _name in found]
        stamp = now()
        session.execute(insert(BeneficiaryStatusChange), [
            {"beneficiary_id": i, "from_status": "active", "to_status": "suspended", "reason": reason,
             "effective_date": today(), "actor_id": actor_id, "at": stamp} for i in ids])
        session.execute(update(Beneficiary).where(Beneficiary.id.in_(ids)).values(status="suspended")
                        .execution_options(synchronize_session=False))
        record_many(session, action="status", entity_type="beneficiary", actor_id=actor_id, entries=[
            (beneficiary_id, f"active -> suspended in {name}: {reason}",
             {"status": ["active", "suspended"], "program_id": program_id, "reason": reason,
              "effective_date": today().isoformat()})
            for beneficiary_id, program_id, name in found])
        suspended += len(found)
    if suspended:
        session.expire_all()
    return suspended


def bulk_status_preview(session: Session, program: Program, *, scope: Scope,
                        filters: BeneficiaryFilters, to_status: str) -> dict:
    """Of the filtered selection, how many would change and how many may not; ``mark`` tells
    who would change (their number and the sum of their ids), so that a confirm can tell
    that the people are still those the preview showed."""
    query = beneficiary_query(session, program, scope=scope, filters=filters, subject=False)
    total = session.scalar(select(func.count()).select_from(
        query.with_only_columns(Beneficiary.id).subquery())) or 0
    sub = _changing(program, query, to_status).subquery()
    change, ids = session.execute(select(func.count(), func.sum(sub.c.id))).one()
    return {"change": change, "not_allowed": total - change, "total": total,
            "mark": f"{change}-{ids or 0}"}


def _changing(program: Program, query, to_status: str):
    """The ids, of a selection of beneficiaries, that ``to_status`` applies to: allowed from
    their status and, for an activation, with someone left to pay."""
    sources = [s for s, targets in TRANSITIONS.items() if to_status in targets]
    query = query.with_only_columns(Beneficiary.id).where(Beneficiary.status.in_(sources))
    return query.where(_payable(program)) if to_status == "active" else query


def bulk_change_status(session: Session, program_id: int, *, scope: Scope,
                       filters: BeneficiaryFilters, to_status: str, reason: str,
                       effective_date: date | None = None, actor_id: int | None,
                       expected: str | None = None) -> dict:
    """Apply one status change to every beneficiary of the filtered selection for whom it is
    allowed; the others are left as they are and counted. ``expected`` (the preview's
    ``mark``) guards against changing people who entered the selection since the preview
    (enrolled, or changed status), whom the user never saw."""
    program = lock_program(session, program_id)
    _writable(program)
    if to_status not in {t for targets in TRANSITIONS.values() for t in targets}:
        raise DomainError("Choose a status to change to.", field="to_status")
    preview = bulk_status_preview(session, program, scope=scope, filters=filters,
                                  to_status=to_status)
    if expected is not None and preview["mark"] != expected:
        raise DomainError("The selection changed since the preview (enrolments or status changes "
                          "meanwhile); nothing was changed. Check the new preview and confirm again.")
    query = _changing(program, beneficiary_query(session, program, scope=scope, filters=filters,
                                                 subject=False), to_status)
    last_enrolled_at = session.scalar(select(func.max(Beneficiary.enrolled_at))
                                      .where(Beneficiary.id.in_(query)))
    reason, effective = _check_change(reason, effective_date, last_enrolled_at, _last_change(session, query))
    if to_status == "active":
        _check_paid_period(program)
    if to_status == "active" and program.max_beneficiaries is not None:
        taken = taken_places(session, program.id)
        if taken > program.max_beneficiaries:
            raise DomainError(f"{program.name} is over its maximum of "
                              f"{program.max_beneficiaries}: 0 places left.")
    changed = _set_status(session, program, query, to_status=to_status, reason=reason,
                          effective_date=effective, actor_id=actor_id)
    record(session, action="status", entity_type="program", entity_id=program.id,
           summary=f"{changed} beneficiaries of {program.name} -> {to_status}: {reason}"[:255],
           changes={"to_status": to_status, "changed": changed,
                    "not_allowed": preview["not_allowed"], "reason": reason})
    session.flush()
    return {"changed": changed, "not_allowed": preview["not_allowed"]}


@dataclass
class Enrolment:
    """The first step of a timeline, read from the beneficiary and its enrolment audit entry."""

    from_status: None
    to_status: str
    reason: str
    effective_date: date
    actor: object
    at: object


def timeline(session: Session, beneficiary: Beneficiary) -> list:
    """The enrolment, then every status change, oldest first."""
    from portal.accounts.models import User

    changes = list(session.scalars(select(BeneficiaryStatusChange).where(
        BeneficiaryStatusChange.beneficiary_id == beneficiary.id)
        .order_by(BeneficiaryStatusChange.id)))
    entry = session.scalar(select(AuditEntry).where(
        AuditEntry.entity_type == "program", AuditEntry.entity_id == str(beneficiary.program_id),
        AuditEntry.action == "enrol", AuditEntry.at == beneficiary.enrolled_at).limit(1))
    actor = session.get(User, entry.actor_id) if entry and entry.actor_id else None
    how = (entry.changes or {}).get("how", "") if entry else ""
    first = Enrolment(from_status=None,
                      to_status=changes[0].from_status if changes else beneficiary.status,
                      reason=f"Enrolled {how}".strip(), effective_date=beneficiary.enrolled_at.date(),
                      actor=actor, at=beneficiary.enrolled_at)
    return [first, *changes]


def programs_of_subject(session: Session, *, individual_id: int | None = None,
                        group_id: int | None = None) -> list[tuple[Beneficiary, Program]]:
    """The programs a person or group is enrolled in (for their registry page)."""
    column, value = ((Beneficiary.individual_id, individual_id) if individual_id
                     else (Beneficiary.group_id, group_id))
    return [tuple(r) for r in session.execute(
        select(Beneficiary, Program).join(Program, Program.id == Beneficiary.program_id)
        .where(column == value).order_by(Program.name)).all()]
