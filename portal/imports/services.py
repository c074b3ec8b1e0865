"""Uploads: receiving a file, mapping its columns, validating and staging its rows, fixing
them in place, and importing them into the registry (optionally enrolling into a program).

Validation and import run in jobs (``jobs/imports.py``) that call ``validate_upload`` and
``import_upload`` here; they commit per batch through the progress callback. Everything else
is called by views, which commit once per request.
"""
from __future__ import annotations

import gc
import hashlib
import hmac
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import date, datetime
from itertools import islice
from pathlib import Path
from typing import Callable, NamedTuple

import orjson
from flask import current_app
from sqlalchemy import (ARRAY, Date, Integer, String, bindparam, and_, case, delete, func, literal_column, or_, select,
                        text, update)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from portal.audit.models import AuditEntry
from portal.audit.services import record, record_changes, record_many
from portal.background.models import JobRun
from portal.background.services import create_job, lock_row, scope_params
from portal.clock import now
from portal.errors import DomainError
from portal.ids import ID_MAX
from portal.imports import columns as cols_mod
from portal.imports.columns import parse_yes_no
from portal.imports.duplicates import (IN_FILE_ALL_PAIRS, ProbableDuplicates, crowd_keys, duplicate_warning,
                                      look_alike, twin_row, twin_warning)
from portal.imports.models import DUPLICATE_POLICIES, SavedMapping, Upload, UploadRow
from portal.imports.reader_process import ReaderProcess
from portal.imports.reading import (FileProblem, cell_problem, excel_error_in, normalise_header, open_table,
                                    read_head)
from portal.locations.models import Location
from portal.locations.services import OUTSIDE_HOUSEHOLD, Scope
from portal.privacy import PII_FIELDS, mask
from portal.registry.exports import without_guard
from portal.registry.models import Group, GroupMember, Individual, full_name
from portal.registry.validation import name_key, similar_names

BATCH = 5000
# What a row of people takes in a file, to guess its rows before it is read (the bench's
# file of 11 columns: 53 bytes a row as .xlsx, about 110 as .csv).
BYTES_PER_ROW = {"xlsx": 50, "csv": 100}
PROBLEM_STATUSES = ("error", "duplicate")
OPEN_STATUSES = ("valid", "error", "duplicate", "skipped")  # not yet imported or dropped
INDIVIDUAL_FIELDS = ("first_name", "middle_name", "last_name", "name_key", "sex", "birth_date",
                     "national_id_type", "national_id", "phone", "location_id", "custom")


# --- visibility ---------------------------------------------------------------------------

def visible_uploads(scope: Scope, actor_id: int):
    """A condition: uploads this user may see (their own, or of an area in their scope)."""
    if scope.everything:
        return Upload.id.isnot(None)
    return or_(Upload.created_by_id == actor_id, scope.covers(Upload.location_id))


def get_upload(session: Session, upload_id: int, *, scope: Scope, actor_id: int) -> Upload | None:
    return session.scalar(select(Upload).where(Upload.id == upload_id,
                                               visible_uploads(scope, actor_id)))


def list_uploads(session: Session, *, scope: Scope, actor_id: int, page: int = 1,
                 per_page: int = 25) -> tuple[list[Upload], bool]:
    rows = list(session.scalars(select(Upload).where(visible_uploads(scope, actor_id)).order_by(
        Upload.id.desc()).offset((page - 1) * per_page).limit(per_page + 1)))
    return rows[:per_page], len(rows) > per_page


def checking_scope(upload: Upload, acting: Scope) -> Scope:
    """The area an upload's rows are checked and imported in: the uploader's, narrowed to the
    acting user's, and to the upload's own area when it has one. What a check stores
    (warnings, errors, the people rows update) is read by everyone who sees the upload: the
    uploader, and the colleagues of its area. So neither a wider user's check nor an uploader
    given more places since may bring in people from outside that area."""
    uploader = upload.created_by
    scope = acting if uploader is None else Scope.for_user(uploader).within(acting)
    if upload.location_id is not None:
        area = object_session(upload).get(Location, upload.location_id)
        scope = scope.within(Scope(paths=(area.path,)))
    return scope


def uploader_area(user) -> int | None:
    """The area an upload belongs to: the uploader's single location, if they have one."""
    if user.all_locations or len(user.locations) != 1:
        return None
    return user.locations[0].id


# --- receiving a file ---------------------------------------------------------------------

def file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def receive_upload(session: Session, *, path: Path, file_name: str, duplicate_policy: str,
                   day_first: bool | None, program_id: int | None, enrol_status: str | None,
                   area_id: int | None, actor_id: int, max_rows: int) -> Upload:
    """Check a stored file and record it; a bad file is deleted and refused."""
    if duplicate_policy not in DUPLICATE_POLICIES:
        raise DomainError("Choose what to do with people already registered.")
    try:
        table = read_head(path, max_rows=max_rows)
    except (FileProblem, OSError) as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, FileProblem):
            raise
        raise FileProblem("The file could not be read.") from exc
    sha, size = file_digest(path)
    headers = [h for h in table.headers]
    available = cols_mod.columns(session)
    mapping = cols_mod.match_headers(headers, available)
    saved = session.scalar(select(SavedMapping).where(
        SavedMapping.signature == cols_mod.headers_signature(headers)))
    ready = not cols_mod.missing_required(mapping, available) and all(mapping.values())
    if saved is not None and not ready:
        chosen = cols_mod.apply_saved(mapping, saved.mapping, available)
        if chosen is not None:
            mapping = chosen
            ready = not cols_mod.missing_required(mapping, available)
    upload = Upload(file_name=file_name[:255], stored_path=str(path), sha256=sha, size=size,
                    format=table.format, status="uploaded" if ready else "mapping",
                    headers=headers, mapping=mapping, duplicate_policy=duplicate_policy,
                    day_first=day_first, program_id=program_id,
                    enrol_status=enrol_status if program_id else None, location_id=area_id,
                    created_by_id=actor_id, counts={}, message="",
                    created_at=now())  # on the clock imported_at is read from
    session.add(upload)
    session.flush()
    record(session, action="create", entity_type="upload", entity_id=upload.id,
           summary=f"Uploaded {upload.file_name} ({size:,} bytes, {upload.format})")
    return upload


def earlier_import_of_same_file(session: Session, upload: Upload, *, scope: Scope,
                                actor_id: int) -> tuple[bool, Upload | None]:
    """Whether a file with this content was imported before, and the latest such upload if
    this user may open it (one of another area is only said to exist)."""
    same = select(Upload).where(Upload.sha256 == upload.sha256, Upload.id != upload.id,
                                Upload.status == "imported").order_by(Upload.id.desc()).limit(1)
    seen = session.scalar(same.where(visible_uploads(scope, actor_id)))
    return (seen is not None or session.scalar(same) is not None), seen


def _refuse_if_same_file_imported_since(session: Session, upload: Upload) -> None:
    """Refuses when another upload of the same content was imported (or is importing) since
    this one arrived: the warning on arrival could not tell, and each copy's search for
    look-alikes ran before the other's people existed. (One imported before it arrived was
    warned about.)

    On PostgreSQL the check waits while another transaction checks the same content, until
    it commits: two copies started at the same instant would each find the other idle."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": int(upload.sha256[:15], 16)})  # (SQLite's writers queue anyway)
    some_imported = select(UploadRow.id).where(UploadRow.upload_id == Upload.id,
                                               UploadRow.status == "imported").exists()
    twin = session.scalar(select(Upload.id).where(
        Upload.sha256 == upload.sha256, Upload.id != upload.id,
        or_(Upload.status == "importing",
            and_(Upload.status == "imported", Upload.imported_at >= upload.created_at),
            and_(Upload.status != "imported", some_imported)))  # a copy's import that stopped
        .order_by(Upload.id).limit(1))
    if twin is not None:
        raise DomainError(f"The same file was imported as upload #{twin} after this one was "
                          "uploaded: importing it again would register its people twice.")


def set_mapping(session: Session, upload: Upload, mapping: dict[str, str], *,
                save_as: str = "", actor_id: int) -> None:
    if upload.status not in ("uploaded", "mapping"):
        raise DomainError("The columns can only be mapped before validation.")
    available = cols_mod.columns(session)
    names = {c.name for c in available}
    clean = {h: (mapping.get(h) or "") for h in upload.headers if h}
    if any(v and v not in names for v in clean.values()):
        raise DomainError("Choose a field from the list for each column.")
    used = [v for v in clean.values() if v]
    twice = sorted({v for v in used if used.count(v) > 1})
    if twice:
        labels = {c.name: c.label for c in available}
        raise DomainError("Each field may come from one column only: "
                          + ", ".join(labels[t] for t in twice) + " chosen twice.")
    missing = cols_mod.missing_required(clean, available)
    if missing:
        raise DomainError("Choose a column for every required field: "
                          + ", ".join(c.label for c in missing) + ".")
    upload.mapping = clean
    upload.status = "uploaded"
    record(session, action="map", entity_type="upload", entity_id=upload.id,
           summary="Columns mapped" + (f", saved as '{save_as.strip()[:80]}'" if save_as.strip() else ""),
           changes={"mapping": clean})
    if save_as.strip():
        signature = cols_mod.headers_signature(upload.headers)
        saved = session.scalar(select(SavedMapping).where(SavedMapping.signature == signature))
        if saved is None:
            saved = SavedMapping(signature=signature, created_by_id=actor_id)
            session.add(saved)
        saved.name, saved.mapping = save_as.strip()[:80], clean


def _claimed(session: Session, upload: Upload) -> None:
    """The upload read again and locked until the commit, before a job is started on it: two
    requests at once (a double click, two tabs) would otherwise both see it idle and both
    queue a job (PostgreSQL; SQLite's requests write one at a time)."""
    lock_row(session, upload)


def start_validation(session: Session, upload: Upload, *, scope: Scope, actor_id: int) -> JobRun:
    _claimed(session, upload)
    if upload.status not in ("uploaded", "failed"):
        # A validated upload keeps the fixes made to its rows; it is not read again.
        raise DomainError(f"This upload is {upload.status}; it cannot be validated now.")
    if upload.status == "failed" and not upload.mapping:
        raise DomainError("This file could not be read; upload a corrected file instead.")
    scope = checking_scope(upload, scope)
    run = create_job(session, kind="upload_validate", entry_point="jobs.imports.validate_upload",
                     params={"upload_id": upload.id, **scope_params(scope)}, actor_id=actor_id,
                     lock_key=f"upload:{upload.id}")
    upload.status, upload.job_run_id, upload.message = "validating", run.id, ""
    return run


def start_import(session: Session, upload: Upload, *, only_if_clean: bool, scope: Scope,
                 actor_id: int, may_enrol: bool) -> JobRun:
    """Queue the import; ``may_enrol``: the acting user may enrol beneficiaries, which an
    upload that enrols its people into a program needs (the job enrols as that user)."""
    _claimed(session, upload)
    if upload.status not in ("validated",):
        raise DomainError(f"This upload is {upload.status}; only a validated upload can be imported.")
    _refuse_if_same_file_imported_since(session, upload)
    counts = summary_counts(session, upload)  # households new or known, before import
    problems = counts["errors"] + counts["duplicates"]
    if only_if_clean and problems:
        raise DomainError(f"{problems} row(s) still need fixing; fix or drop them first, or "
                          "import the valid rows only.")
    if not counts["valid"] and not counts["imported"]:
        # (With rows imported, an import that stopped before their households or their
        # enrolment goes on from there.)
        raise DomainError("There are no valid rows to import.")
    if upload.program_id and not may_enrol:
        raise DomainError("This upload enrols the people it imports into a program: only someone "
                          "who may enrol beneficiaries can import it.")
    upload.counts = counts
    scope = checking_scope(upload, scope)
    run = create_job(session, kind="upload_import", entry_point="jobs.imports.import_upload",
                     params={"upload_id": upload.id, "only_if_clean": only_if_clean,
                             **scope_params(scope)}, actor_id=actor_id, lock_key=f"upload:{upload.id}")
    upload.status, upload.job_run_id, upload.message = "importing", run.id, ""
    return run


def reconcile(session: Session, upload: Upload) -> bool:
    """An upload whose job failed or was given up on stops looking busy. True if changed;
    audited as the system's (no actor), whoever's page noticed it."""
    run = upload.job_run
    if not upload.busy or run is None or run.status != "failed":
        return False
    busy = upload.status
    if busy == "fixing":  # given up on: its worker died every time
        end_failed_fix(session, upload, f"The fix stopped before it was done: {run.message}")
        forget_fixes_file(run.params.get("fix", {}))
    else:
        if busy == "validating":
            upload.status = "failed"
        else:
            stopped_import(session, upload)
        upload.message = run.message[:2000]
    record_many(session, action="job_failed", entity_type="upload", actor_id=None, entries=[
        (upload.id, f"Job #{run.id} failed: upload {upload.status}", {"status": [busy, upload.status]})])
    return True


def stopped_import(session: Session, upload: Upload) -> None:
    """An import that stopped partway: what it imported stays imported, and importing again
    resumes. The counts say how far it got (they were the ones from its start)."""
    upload.status = "validated"
    upload.counts = summary_counts(session, upload, households=False)


# --- checking rows ------------------------------------------------------------------------

def _jsonable(values: dict) -> dict:
    """Cleaned values for a JSON column: the birth date as ISO text (custom values are
    already JSON-ready)."""
    born = values.get("birth_date")
    if isinstance(born, date):
        values["birth_date"] = born.isoformat()
    return values


class RowChecker:
    """Checks rows of one upload: registry rules, household columns, the national ID against
    the file and the registry, and probable duplicates."""

    def __init__(self, session: Session, upload: Upload, scope: Scope):
        from portal.registry import validation

        self.validation = validation
        self.session = session
        self.upload = upload
        self.scope = scope
        self.custom_fields = cols_mod.custom_fields(session)
        self.unique_fields = [f for f in self.custom_fields if f.active and f.unique]
        self.rules = validation.PersonRules(session, custom_fields=self.custom_fields,
                                            scope=scope, day_first=upload.day_first)
        self.roles = cols_mod.member_roles(session)
        self.role_set = {r.lower(): r for r in self.roles}
        self._areas: dict[int, str] | None = None
        self._areas_known: dict[int, str] = {}  # location id -> area, as areas_of read them
        self._searched: dict[str, str | None] = {}  # identity_key -> warning (search_registry)

    def clean_many(self, raws: list[dict]) -> list[tuple[dict, dict]]:
        """Cleaned values (JSON-ready) and errors of each raw row: the registry's rules for
        the person, and the household columns."""
        people = self.rules.clean_many(raws)
        roles, role_set = self.roles, self.role_set
        answers: dict[str, bool | None] = {}  # yes/no texts repeat: each is read once
        results = []
        for raw, (cleaned, errors) in zip(raws, people):
            code = (raw.get("household_code") or "").strip().upper()  # as the registry writes codes
            role = (raw.get("role") or "").strip()
            said = raw.get("primary_recipient") or ""
            primary = answers[said] if said in answers else answers.setdefault(said, parse_yes_no(said))
            if code:
                if len(code) > 40:
                    errors["household_code"] = "A household code has at most 40 characters."
                if not role:
                    errors["role"] = f"Give this member's role: one of {', '.join(roles)}."
                elif role.lower() not in role_set:
                    errors["role"] = f"Unknown role '{role}'; use one of {', '.join(roles)}."
            elif role:
                errors["household_code"] = "A role needs the household code it belongs to."
            if primary is None:
                errors["primary_recipient"] = "Write yes or no."
            elif primary and not code:
                errors["household_code"] = "A primary recipient needs a household code."
            cleaned["household_code"] = code or None
            cleaned["role"] = role_set.get(role.lower()) if role else None
            cleaned["primary_recipient"] = bool(primary)
            results.append((_jsonable(cleaned), errors))
        return results

    def check_unique_custom(self, rows: list[dict], seen: dict) -> None:
        """Unique custom fields: a value another living person has is an error (unless it is
        the person this row updates), and so is a value an earlier row of the file has
        (``seen``: (field, value) -> first row number, filled as ``rows`` go by in order)."""
        for field in self.unique_fields:
            name = field.name
            having = [r for r in rows if name not in r["errors"]
                      and r["cleaned"].get("custom", {}).get(name) is not None]
            values = sorted({r["cleaned"]["custom"][name] for r in having}, key=str)
            owners: dict = {}
            column = self.validation._json_column(Individual, field)
            for start in range(0, len(values), 1000):
                for value, pid in self.session.execute(
                        select(column, Individual.id).where(
                            column.in_(values[start:start + 1000]), Individual.deleted_at.is_(None))):
                    owners.setdefault(value, set()).add(pid)
            for row in having:
                value = row["cleaned"]["custom"][name]
                if owners.get(value, set()) - {row.get("individual_id")}:
                    row["errors"][name] = f"{field.label} {value} is already used by someone else."
                    continue
                first = seen.setdefault((name, value), row["row_number"])
                if first != row["row_number"]:
                    row["errors"][name] = f"{field.label} {value} is also on row {first}."

    def registered(self, national_ids) -> dict[str, tuple[int, str, str, int]]:
        """national ID -> (person id, full name, location path, version) of living registered
        people."""
        ids = sorted(n for n in set(national_ids) if n)
        found: dict[str, tuple[int, str, str, int]] = {}
        if not ids:
            return found
        for nid, pid, first, last, path, version in self.session.execute(
                select(Individual.national_id, Individual.id, Individual.first_name,
                       Individual.last_name, Location.path, Individual.version)
                .join(Location, Location.id == Individual.location_id)
                .where(_one_of(self.session, Individual.national_id, ids, String),
                       Individual.deleted_at.is_(None))):
            found[nid] = (pid, f"{first} {last}", path, version)
        return found

    def in_scope(self, path: str) -> bool:
        return self.scope.everything or any(path.startswith(p) for p in self.scope.paths)

    def probable_duplicate(self, cleaned: dict) -> str | None:
        """The warning of a row already looked up by ``search_registry``."""
        if not cleaned.get("birth_date") or not cleaned.get("location_id") or not (
                cleaned.get("first_name") or cleaned.get("last_name")):
            return None
        return self._searched[identity_key(cleaned)]

    def search_registry(self, rows: list[dict]) -> None:
        """Look up the registered look-alikes of these cleaned rows for ``probable_duplicate``,
        by validation's rule (``ProbableDuplicates``): a living person born the same day in
        the same district with a similar name; the first the uploader sees is named, by id.
        Everyone born on the rows' days in their districts is read in one statement: a fix
        checks hundreds of rows together, and a search a row was a third of its time."""
        wanted = {identity_key(c): c for c in rows
                  if c.get("birth_date") and c.get("location_id") and (c.get("first_name") or c.get("last_name"))}
        areas = self.areas_of({c["location_id"] for c in wanted.values()})
        born: dict[str, list] = {}
        if areas:
            days = sorted({date.fromisoformat(c["birth_date"]) for c in wanted.values()})
            # (Core rows, not the ORM's: thousands come back, and only their districts'.)
            for person in self.session.connection().execute(
                    select(Individual.id, Individual.first_name, Individual.last_name,
                           Individual.birth_date, Location.path)
                    .join(Location, Location.id == Individual.location_id)
                    .where(_one_of(self.session, Individual.birth_date, days, Date),
                           Individual.deleted_at.is_(None),
                           or_(*(Location.path.startswith(a, autoescape=True) for a in set(areas.values()))))
                    .order_by(Individual.id)):
                born.setdefault(person.birth_date.isoformat(), []).append(person)
        for key, cleaned in wanted.items():
            self._searched[key] = self.look_alike_warning(
                cleaned, areas.get(cleaned["location_id"]), born.get(cleaned["birth_date"], ()))

    def look_alike_warning(self, cleaned: dict, area: str | None, born_that_day) -> str | None:
        """The probable-duplicate warning of a cleaned row among registered people born the
        same day (rows with id, names, birth_date and their location's path): those in the
        row's ``area`` with a similar name; the first the uploader sees is named."""
        first, last = cleaned.get("first_name") or "", cleaned.get("last_name") or ""
        similar = [p for p in born_that_day if area and p.path.startswith(area)
                   and similar_names(first, last, p.first_name, p.last_name)]
        if not similar:
            return None
        person = next((p for p in similar if self.in_scope(p.path)), similar[0])
        return duplicate_warning(person.id, f"{person.first_name} {person.last_name}",
                                 person.birth_date.isoformat(), len(similar) - 1,
                                 outside=not self.in_scope(person.path))

    def locations_in_scope(self) -> set[int] | None:
        """The ids of the locations the uploader sees (None: all of them)."""
        if self.scope.everything:
            return None
        return set(self.session.scalars(self.scope.location_ids()))

    def areas_of(self, location_ids: set) -> dict[int, str]:
        """``areas`` for these locations only: a fix compares a few rows, and reading every
        location of the country for them cost more than the comparison. Each location is
        read once for the checker's life (the registry search and the file's look-alikes
        ask for the same villages)."""
        known, area_path = self._areas_known, self.validation.area_path
        ids = sorted(i for i in location_ids if type(i) is int and i not in known)
        if ids:
            known.update({lid: area_path(Location(path=path)) for lid, path in self.session.execute(
                select(Location.id, Location.path).where(_one_of(self.session, Location.id, ids)))})
        return {lid: known[lid] for lid in location_ids if lid in known}

    def areas(self) -> dict[int, str]:
        """location id -> the area ("same district") its people are compared within."""
        if self._areas is None:
            area_path = self.validation.area_path
            self._areas = {lid: area_path(Location(path=path)) for lid, path in
                           self.session.execute(select(Location.id, Location.path))}
        return self._areas

    def registry_action(self, national_id: str, registered: dict) -> tuple[str, int | None, str | None]:
        """What a row with this (well-formed, first in the file) national ID does, given the
        registered people found for its batch: (action, the registered person's id, error)."""
        if national_id not in registered:
            return "new", None, None
        pid, name, path, _version = registered[national_id]
        policy = self.upload.duplicate_policy
        if not self.in_scope(path):
            return "new", None, f"Already registered to person #{pid}, who lives outside your area."
        if policy in ("update", "skip"):
            return policy, pid, None
        return "new", None, (f"Already registered to #{pid} {name}. This upload refuses people "
                             "already registered.")

    def settle(self, row: dict, registered: dict) -> None:
        """Decide a checked row's action, status and probable-duplicate warning from the
        registry. ``row`` has row_number, cleaned, errors (the file's other rows checked),
        and may have not_duplicate, and checked_as with warning_before (see recheck_rows)."""
        cleaned, errors = row["cleaned"], row["errors"]
        nid = cleaned.get("national_id")
        row["action"], row["individual_id"], row["warning"] = "new", None, None
        if nid and "national_id" not in errors:
            row["action"], row["individual_id"], error = self.registry_action(nid, registered)
            if error:
                errors["national_id"] = error
        cleaned.pop("person_version", None)
        if row["action"] == "update":
            cleaned["person_version"] = registered[nid][3]  # (see _update_people)
        if not errors and row["action"] == "new":
            key = identity_key(cleaned)
            if row.get("checked_as") == key:  # names, birth date and village as last checked
                row["warning"] = row["warning_before"]
            elif row.get("not_duplicate") != key:
                row["warning"] = self.probable_duplicate(cleaned)
                row["searched"] = True  # (the file's rows are searched after the registry)
        row["status"] = row_status(errors, row["action"], row["warning"])


def identity_key(cleaned: dict) -> str:
    """What the probable-duplicate search looks at (names, birth date, village), short: a
    confirmation that a row is no duplicate holds while these stay as they were."""
    return _digest([cleaned.get(k) for k in ("first_name", "middle_name", "last_name", "birth_date",
                                              "location_id")])


def _digest(value) -> str:
    """A short fingerprint of a JSON-able value, to tell later whether it changed."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _one_of(session: Session, column, values: list, item_type=Integer):
    """The condition "column is one of these values" for a long list, as one statement
    parameter: PostgreSQL takes an array, SQLite a JSON array (an IN list of a thousand
    values costs more to plan and bind than to run: national IDs were looked up in 0.5 s
    instead of 0.2 s). The list is unnested, so each value is looked up in the column's
    index: given ``= ANY(array)`` of 5,000 national IDs PostgreSQL scanned the whole
    registry instead (160 ms, against 21 ms)."""
    if session.get_bind().dialect.name == "postgresql":
        listed = select(func.unnest(bindparam("values", values, type_=ARRAY(item_type))))
    else:
        listed = select(literal_column("value")).select_from(
            func.json_each(bindparam("values", orjson.dumps(values).decode())))
    return column.in_(listed.scalar_subquery())


def row_status(errors: dict, action: str | None, warning: str | None) -> str:
    if errors:
        return "error"
    if action == "skip":
        return "skipped"
    if warning:
        return "duplicate"
    return "valid"


def _batched(iterable, size):
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk


@contextmanager
def _no_cycle_collection():
    """Python's cycle collector off while 100,000 rows pass through: each batch allocates
    hundreds of thousands of objects, which set off full collections over everything alive
    (1-1.5 s of an upload), and rows leave no reference cycles to collect."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@_no_cycle_collection()
def validate_upload(session: Session, upload: Upload, *, scope: Scope, progress) -> dict:
    """Read the file, check and stage every row (replacing earlier ones), check households.

    Commits between batches via ``progress``; a bad file raises FileProblem with the staged
    rows removed again. A large file is read and checked by the registry's rules in a
    forked process while this one stages the batches it has already checked."""
    started = time.monotonic()
    session.execute(delete(UploadRow).where(UploadRow.upload_id == upload.id))
    # Whoever is registered after this is looked at again by the import (see
    # _look_alikes_registered_since_validation).
    upload.registry_checked_through = session.scalar(select(func.max(Individual.id))) or 0
    upload.registry_checked_since = _oldest_open_write(session)
    checker = RowChecker(session, upload, scope)
    areas = checker.areas()
    checked = _read_and_check(upload, checker)
    size = os.path.getsize(upload.stored_path)
    if size >= current_app.config["UPLOAD_READER_PROCESS_BYTES"]:
        checker.rules.load_locations()  # the child process cannot read them
        checked = ReaderProcess(checked)  # forked here, before the thread below starts
    seen: dict = {}  # (unique custom field, value) -> the first row number that has it
    done = 0
    upload_id = upload.id
    expected = size // BYTES_PER_ROW.get(upload.format, BYTES_PER_ROW["csv"])
    # However validation ends, a reading process stops with it. The search for probable
    # duplicates starts now, while the file is being loaded.
    with closing(checked), ProbableDuplicates(session.get_bind(), areas, expected_rows=expected,
                                              visible=checker.locations_in_scope()) as duplicates:
        rows = iter(checked)
        total = next(rows) or 0
        progress(0, total, "Reading and checking rows")
        for batch in rows:
            records, candidates = _settled(checker, upload_id, batch, seen)
            _stage(session, records)
            duplicates.add(candidates)
            done += len(batch)
            progress(done, max(total, done), f"Checked {done:,} rows")
        if done == 0:
            raise FileProblem("The file has column names but no rows of people.")
        progress(done, done, "Looking for people already registered under another name")
        _analyze_staged_rows(session)  # (while the search's last part runs on its connection)
        warnings = duplicates.warnings()
    _flag_probable_duplicates(session, upload_id, warnings)
    check_households(session, upload, scope)
    upload.counts = summary_counts(session, upload)
    upload.status = "validated"
    upload.validate_seconds = round(time.monotonic() - started, 2)
    return upload.counts


class CheckedRow(NamedTuple):
    """A row as the reading side hands it over: checked by every rule that needs nothing but
    the file, its JSON encoded, and only the values the job still needs, so that little
    crosses from the reading process. It crosses as a plain tuple in this order: a
    NamedTuple takes four times as long to pickle (0.3 s more for 100,000 rows)."""
    row_number: int
    raw: str  # the cells by field, JSON
    cleaned: str  # the cleaned values, JSON
    errors: dict
    national_id: str | None
    household_code: str | None
    role: str | None
    primary: bool
    birth_date: str | None
    candidate: tuple | None  # what the probable-duplicate search needs of a new person
    custom: dict | None  # cleaned custom values, when a custom field must be unique


def _read_and_check(upload: Upload, checker: RowChecker):
    """The upload's file read and checked by the rules that need nothing but the file: first
    the number of rows (None when the format does not tell), then each batch's rows (tuples
    of CheckedRow's fields), a national ID found on an earlier row already marked. Needs no
    database once the checker's locations are loaded, so it can run in another process."""
    table = open_table(upload.stored_path, max_rows=_max_rows())
    mapping = upload.mapping or {}
    index = {h: i for i, h in enumerate(table.headers) if h}
    lost = [h for h, name in mapping.items() if name and h not in index]
    if lost:
        table.rows.close()
        raise FileProblem(f"The column '{lost[0]}' was not found when the whole file was read. "
                          "Save the file again from Excel and upload it anew.")
    fields = [(index[h], name) for h, name in mapping.items() if name]
    try:
        _refuse_excel_errors(table, fields)
    except FileProblem:
        table.rows.close()
        raise
    areas = checker.areas()
    unique = bool(checker.unique_fields)
    seen: dict[str, int] = {}  # national ID -> the first row number that has it
    yield table.total
    for chunk in _batched(table.rows, BATCH):
        raws = [{name: cells[i] for i, name in fields} for _number, cells in chunk]  # padded rows
        batch = []
        for (number, _cells), raw, (cleaned, errors) in zip(chunk, raws, checker.clean_many(raws)):
            nid, area = cleaned["national_id"], areas.get(cleaned["location_id"])
            if nid and "national_id" not in errors:
                first = seen.setdefault(nid, number)
                if first != number:
                    errors["national_id"] = f"This national ID is also on row {first}."
            born = cleaned["birth_date"]
            batch.append((
                number, _json(raw), _json(cleaned), errors, _fitting(nid), _fitting(cleaned["household_code"]),
                cleaned["role"], cleaned["primary_recipient"], born,
                (number, born, area, cleaned["first_name"], cleaned["last_name"], bool(nid)) if area else None,
                cleaned["custom"] if unique else None))
        yield batch


def _refuse_excel_errors(table, fields: list[tuple[int, str]], *columns: int) -> None:
    """A workbook whose read columns (the fields', and ``columns``) have cells showing an
    Excel error is refused: calamine reads them as empty, and a lookup that found nothing
    would import as a person without an ID, or a fix would blank a cell."""
    refusal = excel_error_in(table, {i for i, _name in fields} | set(columns), table.headers)
    if refusal:
        raise FileProblem(refusal)


_CODE_LENGTH = UploadRow.national_id.type.length  # household_code's too


def _fitting(code: str | None) -> str | None:
    """A national ID or household code as its staged column holds it: one too long for the
    column (an error on its row already) stays only in the row's text, or PostgreSQL would
    refuse the whole file."""
    return code if code is None or len(code) <= _CODE_LENGTH else None


def _settled(checker: RowChecker, upload_id: int, batch: list[tuple],
             seen: dict) -> tuple[list[tuple], list[tuple]]:
    """A batch's rows decided against the registry: the records ``_stage`` takes, and the
    valid new people the probable-duplicate search looks for (their warnings come later)."""
    batch = list(map(CheckedRow._make, batch))
    registered = checker.registered(row.national_id for row in batch)
    decided = []  # (row, action, the registered person's id)
    for row in batch:
        action, pid = "new", None
        if row.national_id and "national_id" not in row.errors:
            action, pid, error = checker.registry_action(row.national_id, registered)
            if error:
                row.errors["national_id"] = error
        decided.append((row, action, pid))
    if checker.unique_fields:
        checker.check_unique_custom([
            {"row_number": row.row_number, "cleaned": {"custom": row.custom},
             "errors": row.errors, "individual_id": pid} for row, _action, pid in decided], seen)
    records, candidates = [], []
    for row, action, pid in decided:
        errors = row.errors
        cleaned = row.cleaned
        if action == "update":  # the version checked, which the import expects to find (JSON text here)
            cleaned = _json({**orjson.loads(cleaned), "person_version": registered[row.national_id][3]})
        records.append((upload_id, row.row_number, row.raw, cleaned,
                        _json(errors) if errors else "{}", None, row_status(errors, action, None),
                        action, row.national_id, row.household_code, row.role, row.primary,
                        row.birth_date, pid))
        if not errors and action == "new" and row.candidate:
            candidates.append(row.candidate)
    return records, candidates


def _flag_probable_duplicates(session: Session, upload_id: int, warnings: dict[int, str]) -> None:
    if not warnings:
        return
    session.execute(text(
        "UPDATE upload_row SET status = 'duplicate', warning = :warning, twin_row = :twin "
        "WHERE upload_id = :upload AND row_number = :number AND status = 'valid'"),
        [{"upload": upload_id, "number": n, "warning": w, "twin": twin_row(w)} for n, w in warnings.items()])


def _analyze_staged_rows(session: Session) -> None:
    """PostgreSQL plans the joins on staged rows from table statistics, which do not count
    rows just copied in until autovacuum comes round; planned as an empty table, a join
    of 20,000 households with 100,000 rows becomes a nested loop that runs for minutes."""
    if session.get_bind().dialect.name == "postgresql":
        # A sample of 9,000 rows, not 30,000, is plenty for the joins' plans: 0.06 s, not 0.25.
        session.execute(text("SET LOCAL default_statistics_target = 30"))
        session.execute(text("ANALYZE upload_row"))


def _max_rows() -> int:
    return current_app.config["UPLOAD_MAX_ROWS"]


def check_households(session: Session, upload: Upload, scope: Scope,
                     codes: set[str] | None = None) -> set[int]:
    """One head and at most one primary recipient per household, across the file and the
    registry; a person already in another household cannot join this one, and nobody joins
    a registered household outside ``scope``. Sets or clears each affected row's "household"
    error, for the households with these codes, or (None) for those of freshly staged rows
    that may break a rule. Returns the ids of the rows whose error changed."""
    if codes is None:
        codes = _households_to_check(session, upload)
    codes = sorted(c for c in codes if c)
    changed: set[int] = set()
    for start in range(0, len(codes), 1000):
        changed |= _check_households(session, upload, scope, set(codes[start:start + 1000]))
    return changed


def _households_to_check(session: Session, upload: Upload) -> set[str]:
    """The households whose rows may break a rule: one database pass counts each
    household's heads, primary recipients and registered people; only households already
    registered, or with a count out of line, need looking at row by row."""
    heads = func.sum(case((UploadRow.role == "head", 1), else_=0))
    primaries = func.sum(case((UploadRow.primary.is_(True), 1), else_=0))
    leads_held = func.sum(case((and_(or_(UploadRow.role == "head", UploadRow.primary.is_(True)),
                                     UploadRow.status != "valid"), 1), else_=0))
    codes = set(session.scalars(
        select(UploadRow.household_code)
        .where(UploadRow.upload_id == upload.id, UploadRow.status.in_(OPEN_STATUSES),
               UploadRow.household_code.isnot(None)).group_by(UploadRow.household_code)
        .having(or_(heads != 1, primaries > 1, leads_held > 0,
                    func.count(UploadRow.individual_id) > 0))))
    codes.update(session.scalars(select(Group.code).join(
        UploadRow, (UploadRow.household_code == Group.code) & (UploadRow.upload_id == upload.id)).distinct()))
    return codes


def _check_households(session: Session, upload: Upload, scope: Scope, codes: set[str]) -> set[int]:
    query = select(UploadRow.id, UploadRow.row_number, UploadRow.household_code, UploadRow.role,
                   UploadRow.primary, UploadRow.errors, UploadRow.status, UploadRow.action,
                   UploadRow.warning, UploadRow.individual_id, UploadRow.national_id).where(
        UploadRow.upload_id == upload.id, UploadRow.status.in_(OPEN_STATUSES),
        UploadRow.household_code.in_(codes))
    households: dict[str, list] = {}
    for row in session.execute(query.order_by(UploadRow.row_number)):
        households.setdefault(row.household_code, []).append(row)
    if not households:
        return set()
    # code -> (group id, kind, its head's person id or None, in the upload's area, the head's
    # national ID or None)
    existing: dict[str, tuple[int, str, int | None, bool, str | None]] = {}
    names = list(households)
    # (Looked up for each group, in the one-head index: a join would read every head first.)
    head = (select(GroupMember.individual_id).where(GroupMember.group_id == Group.id,
                                                     GroupMember.role == "head")
            .limit(1).correlate(Group).scalar_subquery())
    head_nid = (select(Individual.national_id).join(GroupMember, GroupMember.individual_id == Individual.id)
                .where(GroupMember.group_id == Group.id, GroupMember.role == "head")
                .limit(1).correlate(Group).scalar_subquery())
    for start in range(0, len(names), 1000):
        chunk = names[start:start + 1000]
        for gid, code, kind, head_id, visible, head_national_id in session.execute(
                select(Group.id, Group.code, Group.kind, head, scope.covers(Group.location_id), head_nid)
                .where(Group.code.in_(chunk), Group.deleted_at.is_(None))):
            existing[code] = (gid, kind, head_id, bool(visible), head_national_id)
    # person -> (group id, code, in the upload's area) of their household
    members: dict[int, tuple[int, str, bool]] = {}
    people = [r.individual_id for rows in households.values() for r in rows if r.individual_id]
    for start in range(0, len(people), 1000):
        for pid, gid, code, visible in session.execute(
                select(GroupMember.individual_id, GroupMember.group_id, Group.code,
                       scope.covers(Group.location_id))
                .join(Group, Group.id == GroupMember.group_id)
                .where(GroupMember.individual_id.in_(people[start:start + 1000]),
                       GroupMember.group_kind == "household")):
            members[pid] = (gid, code, bool(visible))
    changes = []
    for code, rows in households.items():
        problems: dict[int, list[str]] = {}
        group = existing.get(code)
        if group and not group[3]:  # its kind, head and members are not the uploader's to know
            for r in rows:
                problems[r.id] = [f"The code {code} belongs to a group outside your area; use another code."]
        else:
            _check_household(code, group, rows, members, problems)
        for r in rows:
            errors = dict(r.errors or {})
            message = " ".join(problems.get(r.id, ())) or None
            if errors.get("household") == message:
                continue
            if message:
                errors["household"] = message
            else:
                errors.pop("household", None)
            changes.append({"id": r.id, "errors": errors,
                            "status": row_status(errors, r.action, r.warning)})
    for chunk in _batched(changes, BATCH):
        session.execute(update(UploadRow), chunk)
    return {change["id"] for change in changes}


def _check_household(code: str, group: tuple | None, rows: list, members: dict,
                     problems: dict[int, list[str]]) -> None:
    """The rules for one household's rows (``group``: the registered one, if any); each
    broken rule adds its message to ``problems`` under the row's id."""

    def flag(r, message: str) -> None:
        problems.setdefault(r.id, []).append(message)

    heads = [r for r in rows if r.role == "head"]
    primaries = [r for r in rows if r.primary]
    if group and group[1] != "household":
        for r in rows:
            flag(r, f"{code} is the code of a {group[1]}, not of a household.")
    if group and group[2]:
        # Its registered head uploaded again is no second head: known by the person the row
        # updates, by national ID (also when the upload refuses people already registered:
        # the row's own error says so), or, without either, as the look-alike its row's
        # probable-duplicate warning names (to confirm or drop there).
        other_heads = [r for r in heads if r.individual_id != group[2]
                       and not (r.national_id and r.national_id == group[4])
                       and look_alike(r.warning) != group[2]]
        for r in other_heads:
            flag(r, f"Household {code} already has a head in the registry.")
        # A file whose household has a head of its own describes another family under the
        # same code (two files that both took the template's example code, say): its
        # other members would join the registered family without their head.
        for r in rows:
            if other_heads and r not in other_heads:
                flag(r, f"Household {code} in the registry has another head than row "
                        f"{other_heads[0].row_number}: this may be another family. Fix the "
                        "household code, or that row's role.")
    elif not heads:
        where = " in the registry" if group else ""
        for r in rows:
            flag(r, f"Household {code}{where} has no head: give one member the role head.")
    else:
        for r in heads[1:]:
            flag(r, f"Household {code} has more than one head (rows {heads[0].row_number} "
                    f"and {r.row_number}).")
    for r in primaries[1:]:
        flag(r, f"Household {code} has more than one primary recipient (rows "
                f"{primaries[0].row_number} and {r.row_number}).")
    for r in rows:
        membership = members.get(r.individual_id) if r.individual_id else None
        if membership and membership[1] != code:
            household = f"household {membership[1]}" if membership[2] else OUTSIDE_HOUSEHOLD
            flag(r, f"This person is already in {household}; move them in the registry first.")
    # A new household is made from the rows imported: without its head's or payee's row it
    # would be led by, and paid to, whoever came first (a child, say).
    held = [r for r in heads[:1] + primaries[:1] if _held_back(r) or r.id in problems]
    if held and heads and not group:
        why = ("is someone already registered, whom this upload skips (upload these rows with "
               "'update' to add them)" if held[0].action == "skip" else "is not ready to import")
        for r in rows:
            if r not in held:
                flag(r, f"Household {code} is imported with its head and primary recipient: "
                        f"row {held[0].row_number} {why}.")


def _held_back(r) -> bool:
    """A staged row that will not be imported as it stands, for a reason of its own (not a
    household rule): an error, a probable duplicate to confirm, a registered person skipped."""
    return bool(set(r.errors or {}) - {"household"}) or bool(r.warning) or r.action == "skip"


def status_counts(session: Session, upload_id: int) -> dict[str, int]:
    return dict(session.execute(select(UploadRow.status, func.count()).where(
        UploadRow.upload_id == upload_id).group_by(UploadRow.status)).all())


def summary_counts(session: Session, upload: Upload, *, households: bool = True,
                   imported: bool = False) -> dict:
    """The upload's counts by status and action, and (``households``) of its households new
    and registered; ``imported`` adds the people its rows created and updated."""
    # One pass over the upload's rows for all: no index holds their status (migration 0013).
    by_status: dict[str, int] = {}
    by_action: dict[str | None, int] = {}
    imported_by_action: dict[str | None, int] = {}
    for status, action, count in session.execute(
            select(UploadRow.status, UploadRow.action, func.count())
            .where(UploadRow.upload_id == upload.id).group_by(UploadRow.status, UploadRow.action)):
        by_status[status] = by_status.get(status, 0) + count
        if status in ("valid", "imported"):
            by_action[action] = by_action.get(action, 0) + count
        if status == "imported":
            imported_by_action[action] = count
    counts = {
        "rows": sum(by_status.values()),
        "valid": by_status.get("valid", 0),
        "errors": by_status.get("error", 0),
        "duplicates": by_status.get("duplicate", 0),
        "skipped": by_status.get("skipped", 0),
        "dropped": by_status.get("dropped", 0),
        "imported": by_status.get("imported", 0),
        "new_people": by_action.get("new", 0),
        "updates": by_action.get("update", 0),
    }
    if imported:
        counts["people_created"] = imported_by_action.get("new", 0)
        counts["people_updated"] = imported_by_action.get("update", 0)
    previous = upload.counts or {}
    if households:
        # One pass: each code once (grouped, which PostgreSQL hashes; its count(DISTINCT)
        # sorts), and whether the registry has it.
        named = select(UploadRow.household_code).where(
            UploadRow.upload_id == upload.id, UploadRow.household_code.isnot(None),
            UploadRow.status.in_(("valid", "imported"))).group_by(UploadRow.household_code).subquery()
        codes, known = session.execute(select(func.count(), func.count(Group.id)).select_from(named).outerjoin(
            Group, (Group.code == named.c.household_code) & Group.deleted_at.is_(None))).one()
        counts["new_households"] = codes - known
        counts["updated_households"] = known
    else:
        for key in ("new_households", "updated_households", "members_added", "enrolled",
                    "already_enrolled"):
            if key in previous:
                counts[key] = previous[key]
    return counts


# --- fixing rows in place -----------------------------------------------------------------

def problem_rows(session: Session, upload: Upload, *, page: int = 1, per_page: int = 50) -> tuple[list[UploadRow], bool]:
    query = select(UploadRow).where(UploadRow.upload_id == upload.id,
                                    UploadRow.status.in_(PROBLEM_STATUSES))
    rows = list(session.scalars(query.order_by(UploadRow.row_number)
                                .offset((page - 1) * per_page).limit(per_page + 1)))
    return rows[:per_page], len(rows) > per_page


def get_row(session: Session, upload: Upload, row_number: int) -> UploadRow | None:
    return session.scalar(select(UploadRow).where(UploadRow.upload_id == upload.id,
                                                  UploadRow.row_number == row_number))


def rows_by_id(session: Session, upload: Upload, ids: set[int], *, limit: int) -> list[UploadRow]:
    """At most ``limit`` of these rows of the upload, in row order: the other rows a fix
    checked again, for the grid to show as they are now."""
    if not ids:
        return []
    return list(session.scalars(select(UploadRow).where(
        UploadRow.upload_id == upload.id, UploadRow.id.in_(sorted(ids)[:limit])).order_by(UploadRow.row_number)))


def _editable(upload: Upload, *, by_job: bool = False) -> None:
    """Rows are fixed between validation and import; a fix job's own upload is "fixing"."""
    if upload.status == "fixing" and not by_job:
        raise DomainError("A large fix is being made in this upload; its rows can be edited "
                          "again when it ends.")
    if upload.status != ("fixing" if by_job else "validated"):
        raise DomainError(f"This upload is {upload.status}; rows can be fixed only after "
                          "validation and before the import.")


def check_row_editable(upload: Upload, row: UploadRow, doing: str = "edited") -> None:
    """Raises DomainError saying why this row cannot be edited (or dropped) now; asked
    before an edit form opens too: a grid left open may offer Edit on a row imported or
    dropped since."""
    _editable(upload)
    if row.status not in OPEN_STATUSES:
        raise DomainError(f"Row {row.row_number} is {row.status}; it cannot be {doing}.")


def recheck_rows(session: Session, upload: Upload, rows: list[UploadRow], *, scope: Scope,
                 gone: list[UploadRow] = ()) -> set[int]:
    """Check edited rows again, against the rest of the file and the registry. The other
    rows that have (or had) one of their national IDs or unique custom values are checked
    with them: of the rows sharing a value the first keeps it, each later one is an error,
    and a row left alone by a fix or a drop loses its "also on row" error. A row flagged as
    looking like one of these rows, or like a row ``gone`` (dropped), is searched again.
    Returns the ids of the rows checked, these and the others whose check may have changed."""
    scope = checking_scope(upload, scope)
    checker = RowChecker(session, upload, scope)
    results = checker.clean_many([dict(row.raw) for row in rows])
    partners = rows
    while partners:  # and the rows those share other values with, until none is new
        partners = _rows_sharing_values(session, upload, checker, rows, [c for c, _ in results],
                                        newest=partners)
        rows = rows + partners
        results += checker.clean_many([dict(row.raw) for row in partners])
    followers = _flagged_as_like(session, upload, [*rows, *gone], known=[row.id for row in rows])
    rows = rows + followers
    results += checker.clean_many([dict(row.raw) for row in followers])
    search_again = {row.id for row in followers}
    codes: set[str] = set()
    checked = []
    for row, (cleaned, errors) in sorted(zip(rows, results), key=lambda pair: pair[0].row_number):
        codes.add(row.household_code or "")
        # A row checked for look-alikes before (new, no error of its own) keeps what that
        # check found while its names, birth date and village stay (the search would find
        # the same), unless the row it was found to look like changed or went.
        searched = (row.cleaned and row.action == "new" and not set(row.errors or {}) - {"household"}
                    and row.id not in search_again)
        checked.append({"row": row, "row_number": row.row_number, "cleaned": cleaned,
                        "errors": errors, "not_duplicate": row.not_duplicate,
                        "checked_as": identity_key(row.cleaned) if searched else None,
                        "warning_before": row.warning})
    registered = checker.registered(c["cleaned"].get("national_id") for c in checked)
    checker.search_registry([item["cleaned"] for item in checked if not item["errors"]])
    first_with: dict[str, int] = {}  # national ID -> the first row that has it
    for item in checked:
        nid = item["cleaned"].get("national_id")
        if nid and "national_id" not in item["errors"]:
            first = first_with.setdefault(nid, item["row_number"])
            if first != item["row_number"]:
                item["errors"]["national_id"] = f"This national ID is also on row {first}."
        checker.settle(item, registered)
    if checker.unique_fields:
        checker.check_unique_custom(checked, {})
    _look_alikes_in_file(session, upload, checker, checked)
    for item in checked:
        row = item["row"]
        item["status"] = row_status(item["errors"], item["action"], item["warning"])
        row.cleaned, row.errors = item["cleaned"], item["errors"]
        row.status, row.action, row.warning = item["status"], item["action"], item["warning"]
        row.twin_row = twin_row(item["warning"])
        row.individual_id = item["individual_id"]
        row.national_id = _fitting(item["cleaned"].get("national_id"))
        row.household_code = _fitting(item["cleaned"].get("household_code"))
        row.role = item["cleaned"].get("role")
        row.primary = bool(item["cleaned"].get("primary_recipient"))
        born = item["cleaned"].get("birth_date")
        row.birth_date = date.fromisoformat(born) if born else None
        codes.add(row.household_code or "")
    session.flush()
    changed = check_households(session, upload, scope, codes)
    session.flush()
    # What the household check changed in the database, read back in one statement (a
    # refresh a row took a third of a large fix's time).
    session.scalars(select(UploadRow).where(_one_of(session, UploadRow.id, [row.id for row in rows]))
                    .execution_options(populate_existing=True)).all()
    upload.counts = summary_counts(session, upload, households=False)
    return changed | {row.id for row in rows}


def _flagged_as_like(session: Session, upload: Upload, rows: list[UploadRow], *,
                     known: list[int]) -> list[UploadRow]:
    """The upload's other open rows whose warning says they look like one of ``rows``."""
    numbers, known = sorted({row.row_number for row in rows}), set(known)
    if not numbers:
        return []
    return [row for row in session.scalars(select(UploadRow).where(
        UploadRow.upload_id == upload.id, UploadRow.status.in_(OPEN_STATUSES),
        _one_of(session, UploadRow.twin_row, numbers))) if row.id not in known]


# A fix searching for look-alikes in a crowded day of its area (a file that gives everyone
# 1 January) asks for the rows it may look like, unless many rows are searched at once.
MANY_IN_A_CROWD = 10


def _look_alikes_in_file(session: Session, upload: Upload, checker: RowChecker, checked: list[dict]) -> None:
    """Rows just searched in the registry without a find are compared with the file's other
    new people too, as validation compares every row: born the same day in the same area,
    with a similar name, and not told apart by a national ID on each. Where 50 or more such
    people share the day and area, as validation does: each earlier one while they are
    fewer than 50, else only those with the same surname and first letters of the first
    name (or the two swapped). When both rows of a pair are searched now the later one is
    flagged, as validation does; a row searched now that looks like a later row left as it
    is gets flagged itself. A row is not flagged for looking like a row already flagged for
    looking like it."""
    looking = [item for item in checked
               if item.get("searched") and not item["warning"] and not item["errors"]]
    if not looking:
        return
    searching = {item["row_number"] for item in looking}
    rechecked = {item["row"].id for item in checked}
    days = sorted({date.fromisoformat(item["cleaned"]["birth_date"]) for item in looking})
    cleaned = UploadRow.cleaned
    village = cleaned["location_id"].as_integer()
    new_people = (UploadRow.upload_id == upload.id, UploadRow.status.in_(("valid", "duplicate", "error")),
                  UploadRow.action == "new")
    # How many error-free new people each day and village has (fewer than validation compared,
    # never more: a day taken for crowded wrongly would hide look-alikes).
    crowds: dict[tuple, int] = {}
    counted = session.execute(select(UploadRow.birth_date, village, func.count()).where(
        UploadRow.upload_id == upload.id, UploadRow.status.in_(("valid", "duplicate")),
        UploadRow.action == "new", _one_of(session, UploadRow.birth_date, days, Date))
        .group_by(UploadRow.birth_date, village)).all()
    places = checker.areas_of({place for _day, place, _n in counted}
                              | {item["cleaned"].get("location_id") for item in looking})
    for day, place, people in counted:
        key = (day.isoformat(), places.get(place))
        crowds[key] = crowds.get(key, 0) + people
    crowded = [item for item in looking if crowds.get(
        (item["cleaned"]["birth_date"], places.get(item["cleaned"].get("location_id"))), 0) >= IN_FILE_ALL_PAIRS]
    if len(crowded) > MANY_IN_A_CROWD:
        crowded = []  # reading their days whole costs less than asking for each
    # Only what the comparison needs, taken out of the rows' JSON by the database.
    fields = select(UploadRow.id, UploadRow.row_number, UploadRow.twin_row, UploadRow.errors,
                    cleaned["first_name"].as_string(), cleaned["last_name"].as_string(),
                    cleaned["national_id"].as_string(), village, UploadRow.birth_date).where(*new_people)
    asked_for = {item["row_number"] for item in crowded}
    whole = sorted({date.fromisoformat(item["cleaned"]["birth_date"]) for item in looking
                    if item["row_number"] not in asked_for})
    found = list(session.execute(fields.where(_one_of(session, UploadRow.birth_date, whole, Date)))) if whole else []
    folded_names = cleaned["name_key"].as_string()  # "surname first middle", folded
    for item in crowded:
        values = item["cleaned"]
        same_day = fields.where(UploadRow.birth_date == date.fromisoformat(values["birth_date"]))
        found += session.execute(same_day.where(or_(*(folded_names.startswith(" ".join(key), autoescape=True)
                                                      for key in crowd_keys(values.get("first_name"),
                                                                            values.get("last_name"))))))
        # ... and the earliest of the day in its area, which validation compares with each row
        # while they are few
        area = places.get(values.get("location_id")) or ""
        found += session.execute(same_day.where(
            UploadRow.row_number < item["row_number"],
            village.in_(select(Location.id).where(Location.path.startswith(area, autoescape=True))))
            .order_by(UploadRow.row_number).limit(IN_FILE_ALL_PAIRS))
    # (row number, cleaned values, the row's check in this pass or None, the row it looks like)
    others = {number: (number, {"first_name": first, "last_name": last, "national_id": nid,
                                "location_id": village, "birth_date": born.isoformat()}, None, twin)
              for row_id, number, twin, errors, first, last, nid, village, born in found
              if row_id not in rechecked and not set(errors or {}) - {"household"}}
    others.update({item["row_number"]: (item["row_number"], item["cleaned"], item, None) for item in checked
                   if item["action"] == "new" and not item["errors"]})
    areas = checker.areas_of({other[1].get("location_id") for other in others.values()} | places.keys())
    born_alike: dict[tuple, list] = {}  # (birth date, area) -> its rows, in row order
    named: dict[tuple, list] = {}  # ... and by (birth date, area, *crowd key)
    for number in sorted(others):
        other = others[number]
        values = other[1]
        day = (values.get("birth_date"), areas.get(values.get("location_id")))
        born_alike.setdefault(day, []).append(other)
        named.setdefault((*day, *crowd_keys(values.get("first_name"), values.get("last_name"))[0]), []).append(other)
    for item in looking:
        values = item["cleaned"]
        day = (values["birth_date"], areas.get(values.get("location_id")))
        same_day = born_alike.get(day, []) if day[1] else []
        if len(same_day) >= IN_FILE_ALL_PAIRS:  # a crowd, compared as validation compares it
            earlier = [other for other in same_day if other[0] < item["row_number"]]
            own, swapped = crowd_keys(values.get("first_name"), values.get("last_name"))
            same_day = sorted({other[0]: other for other in (
                (earlier if len(earlier) < IN_FILE_ALL_PAIRS else [])
                + named.get((*day, *own), []) + named.get((*day, *swapped), []))}.values(),
                key=lambda other: other[0])
        for number, other, other_item, twin in same_day:
            if number == item["row_number"] or (values.get("national_id") and other.get("national_id")):
                continue
            if number > item["row_number"] and number in searching:
                continue
            if (twin_row(other_item["warning"]) if other_item else twin) == item["row_number"]:
                continue
            if similar_names(values.get("first_name") or "", values.get("last_name") or "",
                             other.get("first_name") or "", other.get("last_name") or ""):
                item["warning"] = twin_warning(number, f"{other.get('first_name')} {other.get('last_name')}",
                                               values["birth_date"])
                break


def _rows_sharing_values(session: Session, upload: Upload, checker: RowChecker,
                         rows: list[UploadRow], cleaned: list[dict], *,
                         newest: list[UploadRow] | None = None) -> list[UploadRow]:
    """The upload's other open rows with a national ID or unique custom value that ``newest``
    of these rows (all of them by default) have now (``cleaned``, in ``rows``' order) or had
    before. One statement per kind of value, so that each uses its own index."""
    newest_ids = {row.id for row in (rows if newest is None else newest)}
    pairs = [(row, now) for row, now in zip(rows, cleaned) if row.id in newest_ids]
    known = [row.id for row in rows]
    found: dict[int, UploadRow] = {}

    def look(condition) -> None:
        for row in session.scalars(select(UploadRow).where(
                UploadRow.upload_id == upload.id, UploadRow.status.in_(OPEN_STATUSES),
                UploadRow.id.notin_(known), condition)):
            found[row.id] = row

    ids = {row.national_id for row, _ in pairs} | {now.get("national_id") for _, now in pairs}
    ids.discard(None)
    if ids:
        look(UploadRow.national_id.in_(sorted(ids)))
    for field in checker.unique_fields:
        values = {(now.get("custom") or {}).get(field.name) for _, now in pairs}
        values |= {((row.cleaned or {}).get("custom") or {}).get(field.name) for row, _ in pairs}
        values.discard(None)
        if values:
            staged = checker.validation.typed_json(UploadRow.cleaned[("custom", field.name)], field)
            look(staged.in_(sorted(values, key=str)))
    return list(found.values())


def _unmasked(raw: dict, values: dict) -> dict:
    """``values`` without the identifiers sent back as a page or a download showed them
    masked: those keep the row's value (a real national ID or phone holds no '•')."""
    return {k: v for k, v in values.items()
            if not (k in PII_FIELDS and v and v.strip() == mask(raw.get(k)))}


def row_version(row: UploadRow) -> str:
    """What a form or a row's buttons carry of the row they showed (its cells and its
    probable-duplicate warning), to tell a stale save, drop or confirmation."""
    return _sealed([row.raw, row.warning])


def cells_version(raw: dict) -> str:
    """What the download of rows to fix carries of each row's cells, to tell when the file
    comes back which rows were edited since. Only the cells: a fix of other rows may change
    this row's warning meanwhile. The "v" keeps a spreadsheet from reading it as a number."""
    return "v" + _sealed(raw)


def _sealed(value) -> str:
    """A short fingerprint keyed with the app's secret. The rows' versions go to people who
    see national IDs masked: a plain hash of the cells would let them try the hidden digits
    one by one until it matched."""
    return hmac.new(current_app.config["SECRET_KEY"].encode(),
                    orjson.dumps(value, option=orjson.OPT_SORT_KEYS), hashlib.sha256).hexdigest()[:16]


def _unchanged_since_seen(row: UploadRow, seen: str | None, doing: str) -> None:
    if seen is not None and seen != row_version(row):
        raise DomainError(f"Row {row.row_number} changed after the page showed it (in another tab "
                          f"or by someone else), so it was not {doing}: look at it again.")


def _cell_changes(before: dict, after: dict) -> dict:
    """{field: [before, after]} for the cells that differ, as the audit log keeps them."""
    return {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}


def edit_row(session: Session, upload: Upload, row: UploadRow, values: dict[str, str], *,
             scope: Scope, seen: str | None = None) -> set[int]:
    """Set cells of a row and check it again. ``seen``: the ``row_version`` the form was
    made from; a row changed since (another tab, another user) is refused with
    ``field="seen"``, so that one save does not silently undo the other. Returns the ids
    of the other rows checked again with it, whose grid rows may need showing anew."""
    # The row as last committed, locked until the commit: two saves of one row at the same
    # moment then compare with each other's version, not both with the page's (PostgreSQL;
    # SQLite's writers queue anyway). So in drop_row and confirm_row.
    lock_row(session, row)
    check_row_editable(upload, row)
    if seen is not None and seen != row_version(row):
        raise DomainError(f"Row {row.row_number} was changed after you opened it (in another tab or by "
                          "someone else). Your values are still here: check them and save again.",
                          field="seen")
    raw = dict(row.raw)
    for key, value in _unmasked(row.raw, values).items():
        if key in raw or key in upload.mapping.values():
            raw[key] = (value or "").strip()
            problem = cell_problem(raw[key])
            if problem:
                column = next((h for h, f in upload.mapping.items() if f == key), key)
                raise DomainError(f"Row {row.row_number}, column {column} {problem}. "
                                  "Correct it and save again.", field="cell")
    changes = _cell_changes(row.raw, raw)
    row.raw = raw
    others = recheck_rows(session, upload, [row], scope=scope) - {row.id}
    if changes:
        record(session, action="edit_row", entity_type="upload", entity_id=upload.id,
               summary=f"Row {row.row_number} edited", changes=changes)
    return others


def drop_row(session: Session, upload: Upload, row: UploadRow, *, scope: Scope,
             seen: str | None = None) -> set[int]:
    """Leave a row out of the import, unless it changed since the ``row_version`` the user
    saw; returns the ids of the other rows checked again."""
    lock_row(session, row)
    check_row_editable(upload, row, "dropped")
    _unchanged_since_seen(row, seen, "dropped")
    row.status = "dropped"
    session.flush()
    record(session, action="drop_row", entity_type="upload", entity_id=upload.id,
           summary=f"Row {row.row_number} dropped")
    scope = checking_scope(upload, scope)
    partners = _rows_sharing_values(session, upload, RowChecker(session, upload, scope), [row],
                                    [row.cleaned or {}])
    others: set[int] = set()
    # A later row's "also on row" error, or a "same person as row" warning, may go with this row.
    if partners or _flagged_as_like(session, upload, [row], known=[row.id]):
        others = recheck_rows(session, upload, partners, scope=scope, gone=[row])
    others |= check_households(session, upload, scope, {row.household_code or ""})
    upload.counts = summary_counts(session, upload, households=False)
    return others - {row.id}


def confirm_row(session: Session, upload: Upload, row: UploadRow, *, scope: Scope,
                seen: str | None = None) -> set[int]:
    """The user says a probable duplicate is a different person (the one of the warning they
    saw: ``seen`` is its ``row_version``); returns the ids of the other rows of its
    household checked again."""
    lock_row(session, row)
    _editable(upload)
    if row.status != "duplicate":
        raise DomainError(f"Row {row.row_number} is not a probable duplicate.")
    _unchanged_since_seen(row, seen, "confirmed")
    record(session, action="confirm", entity_type="upload", entity_id=upload.id,
           summary=f"Row {row.row_number} is not a duplicate", changes={"warning": row.warning})
    row.warning = row.twin_row = None
    row.not_duplicate = identity_key(row.cleaned or {})
    row.status = row_status(row.errors or {}, row.action, None)
    session.flush()
    others: set[int] = set()
    if row.household_code:  # its household may have waited on this row
        others = check_households(session, upload, checking_scope(upload, scope), {row.household_code})
        session.refresh(row)
    upload.counts = summary_counts(session, upload, households=False)
    return others - {row.id}


def _replacement(upload: Upload, *, field: str, find: str, replace: str, whole_cell: bool):
    """The function giving a cell's new value (None: the cell stays), once the request is
    known to make sense for this upload."""
    if field not in set(upload.mapping.values()) - {""}:
        raise DomainError("Choose a column of this file.")
    if not whole_cell and not find.strip():
        raise DomainError("Write the text to find within the cells.")
    problem = cell_problem(replace)
    if problem:
        raise DomainError(f"The replacement text {problem}.")
    target = find.strip().lower()
    part = re.compile(re.escape(find.strip()), re.IGNORECASE)

    def replaced(value: str) -> str | None:
        if whole_cell:
            return replace.strip() if value.strip().lower() == target else None
        new = part.sub(lambda _match: replace.strip(), value)
        return new if new != value else None

    return replaced


FIX_CHUNK = 500  # rows checked again together, and in a job committed together


def replace_in_column(session: Session, upload: Upload, *, field: str, find: str, replace: str,
                      scope: Scope, whole_cell: bool = True, resume: dict | None = None,
                      checkpoint=None) -> int:
    """In the rows not yet imported, replace every cell of a column equal to ``find``
    (ignoring case and surrounding spaces; empty finds empty cells), or with ``whole_cell``
    False every occurrence of ``find`` within the cells (ignoring case). The changed rows
    are checked again. Returns rows changed.

    A job passes ``checkpoint(state)``, which commits: every row up to
    ``state["after"]`` (a row id) is then done, so a job run again after its worker died
    goes on from ``resume`` (that state) and never replaces within a cell twice."""
    _editable(upload, by_job=checkpoint is not None)
    replaced = _replacement(upload, field=field, find=find, replace=replace, whole_cell=whole_cell)
    state = {"after": 0, "changed": 0, "read": 0, **(resume or {})}
    while True:
        rows = list(session.scalars(select(UploadRow).where(
            UploadRow.upload_id == upload.id, UploadRow.status.in_(OPEN_STATUSES),
            UploadRow.id > state["after"]).order_by(UploadRow.id).limit(BATCH)))
        if not rows:
            break
        read_before = state["read"]
        position = {row.id: i for i, row in enumerate(rows, start=1)}
        changes = [(row, value) for row in rows
                   if (value := replaced(row.raw.get(field) or "")) is not None]
        for chunk in _batched(changes, FIX_CHUNK):
            # A row's new text is set only with its chunk: what a checkpoint commits is done.
            entries = []
            for row, value in chunk:
                entries.append((upload.id, f"Row {row.row_number}: find and replace",
                                {field: [row.raw.get(field), value]}))
                row.raw = {**row.raw, field: value}
            recheck_rows(session, upload, [row for row, _value in chunk], scope=scope)
            record_many(session, action="replace", entity_type="upload", entries=entries,
                        actor_id=session.info.get("actor_id"))
            last = chunk[-1][0].id
            state.update(after=last, changed=state["changed"] + len(chunk),
                         read=read_before + position[last])
            if checkpoint:
                checkpoint(dict(state))
        state.update(after=rows[-1].id, read=read_before + len(rows))
        if checkpoint:
            checkpoint(dict(state))
    return state["changed"]


def replaced_message(changed: int) -> str:
    """What a find-and-replace tells: a search that matched nothing is no success."""
    if not changed:
        return "No cell of that column matched, so nothing was replaced."
    return f"{changed:,} cell(s) replaced and their rows checked again."


def fixes_in_background(session: Session, upload: Upload, *, fixes_file: Path | None = None) -> bool:
    """Whether a fix is too large to make while the page waits (each changed row is checked
    again, about a millisecond a row): a find-and-replace in an upload with more rows open
    than ``UPLOAD_FIX_INLINE_ROWS``, or a file of fixes with more rows than that, is made by
    a job instead, with a progress bar."""
    limit = current_app.config["UPLOAD_FIX_INLINE_ROWS"]
    if fixes_file is not None:
        table = open_table(fixes_file, max_rows=_max_rows())
        try:
            return sum(1 for _row in islice(table.rows, limit + 1)) > limit
        finally:
            table.rows.close()
    return session.scalar(select(func.count()).select_from(
        select(UploadRow.id).where(UploadRow.upload_id == upload.id,
                                   UploadRow.status.in_(OPEN_STATUSES)).limit(limit + 1).subquery())) > limit


def start_fix(session: Session, upload: Upload, fix: dict, *, scope: Scope, actor_id: int) -> JobRun:
    """Queue a large fix: ``{"kind": "replace", "field", "find", "replace", "whole_cell"}`` or
    ``{"kind": "file", "path"}`` (a file of fixes saved where the workers read uploads). The
    upload is "fixing" until it ends: its rows cannot be edited or imported meanwhile."""
    _claimed(session, upload)
    _editable(upload)
    if fix["kind"] == "replace":
        _replacement(upload, field=fix["field"], find=fix["find"], replace=fix["replace"],
                     whole_cell=fix["whole_cell"])
    else:
        fix = {**fix, "rows": _fixes_file_checked(session, upload, Path(fix["path"]))}
    run = create_job(session, kind="upload_fix", entry_point="jobs.imports.fix_upload",
                     params={"upload_id": upload.id, "fix": fix,
                             **scope_params(checking_scope(upload, scope))},
                     actor_id=actor_id, lock_key=f"upload:{upload.id}")
    upload.status, upload.job_run_id, upload.message = "fixing", run.id, ""
    return run


def fix_upload(session: Session, upload: Upload, fix: dict, *, scope: Scope, run: JobRun,
               progress) -> dict:
    """The job's side of ``start_fix``: make the fix in chunks, each committed (``progress``
    commits) with where it got to, ``{"resume": ...}`` in ``run.result``, from which a job
    run again after its worker died goes on; then give the upload back to its grid with a
    message. The caller commits that and records the result returned."""
    resume = dict((run.result or {}).get("resume") or {})

    def checkpoint(state: dict) -> None:
        run.result = {"resume": state}
        progress(state["read"], None, f"Checked {state['read']:,} rows")

    if fix["kind"] == "replace":
        counts = status_counts(session, upload.id)
        progress(resume.get("read", 0), sum(counts.get(s, 0) for s in OPEN_STATUSES), "Replacing")
        changed = replace_in_column(session, upload, field=fix["field"], find=fix["find"],
                                    replace=fix["replace"], whole_cell=fix["whole_cell"],
                                    scope=scope, resume=resume, checkpoint=checkpoint)
        result = {"changed": changed}
        message = replaced_message(changed)
    else:
        progress(resume.get("read", 0), fix["rows"], "Reading the file of fixes")
        result = apply_corrections(session, upload, Path(fix["path"]), scope=scope, resume=resume,
                                   checkpoint=checkpoint)
        message = corrections_message(result)
    upload.counts = summary_counts(session, upload)
    upload.status, upload.message = "validated", message
    return result


def unfinished_fix(run: JobRun) -> bool:
    """Whether this fix job stopped before it was done (its result is still where it got to)."""
    return "resume" in (run.result or {})


def end_failed_fix(session: Session, upload: Upload, message: str) -> None:
    """A fix job that failed: the rows it had fixed stay fixed, and the upload can be fixed
    and imported again. (Its file of fixes goes with ``forget_fixes_file`` once this is
    committed: an attempt that was taken over meanwhile must not take the file from the
    attempt now running.)"""
    upload.status, upload.message = "validated", message[:2000]
    upload.counts = summary_counts(session, upload)


def forget_fixes_file(fix: dict) -> None:
    """A file of fixes is kept only while its job may still read it."""
    if fix.get("kind") == "file":
        Path(fix["path"]).unlink(missing_ok=True)


def problem_rows_for_download(session: Session, upload: Upload):
    """Yield (row number, raw, errors text, row version) of the rows that still need fixing;
    the version tells, when the file comes back, which rows were changed in the meantime."""
    last = 0
    while True:
        rows = session.execute(select(UploadRow.row_number, UploadRow.raw, UploadRow.errors,
                                      UploadRow.warning).where(
            UploadRow.upload_id == upload.id, UploadRow.status.in_(PROBLEM_STATUSES),
            UploadRow.row_number > last).order_by(UploadRow.row_number).limit(BATCH)).all()
        if not rows:
            return
        for number, raw, errors, warning in rows:
            text = "; ".join(f"{k}: {v}" for k, v in (errors or {}).items())
            yield number, raw, text or (warning or ""), cells_version(raw)
        last = rows[-1][0]


def _fixes_file_checked(session: Session, upload: Upload, path: Path) -> int:
    """The whole file read once before a job changes anything: a file it cannot read, or
    without its Row column or any of the upload's fields, leaves every row as it was (the
    job commits as it goes). Returns its rows."""
    table = open_table(path, max_rows=_max_rows())
    try:
        row_col = _row_column(table.headers)
        fields, _not_read = _fixes_columns(session, upload, table.headers)
        _refuse_excel_errors(table, fields, row_col)
        return sum(1 for _row in table.rows)
    finally:
        table.rows.close()


def _fixes_columns(session: Session, upload: Upload, headers: list[str]) -> tuple[list, list[str]]:
    """A file of fixes' columns that hold the upload's fields, (index, field) each, and the
    names of the others, which are not read. The upload's own headers (mapped by hand, say
    "Sexe") are read as at first: a file of fixes made from the original file is as good as
    the download. A column the original file had and the upload left out does not hide the
    download's column of the same name (an ignored "Role" beside a "Relation" mapped to the
    role), and a field a column of the original gives is not read twice. A file with none
    of the upload's fields is refused."""
    automatic = cols_mod.match_headers(headers, cols_mod.columns(session))
    by_key = {normalise_header(h): name for h, name in (upload.mapping or {}).items() if name}
    own = {h: by_key.get(normalise_header(h), "") for h in automatic}
    taken = set(own.values())
    mapping = {h: own[h] or ("" if automatic[h] in taken else automatic[h]) for h in automatic}
    wanted = set(upload.mapping.values()) - {""}
    index = {h: i for i, h in enumerate(headers)}
    fields = [(index[h], name) for h, name in mapping.items() if name in wanted]
    if not fields:
        raise FileProblem("None of the file's columns is a field of this upload: upload the rows "
                          "to fix as they were downloaded, with their column names.")
    bookkeeping = {"row", "row number", "errors", VERSION_HEADER.lower()}
    return fields, [h for h in headers if h and mapping.get(h) not in wanted
                    and h.strip().lower() not in bookkeeping]


VERSION_HEADER = "Row version"  # the download's last column: see problem_rows_for_download


def corrections_message(result: dict) -> str:
    notes = []
    if result.get("changed"):
        rows = ", ".join(map(str, result["changed_rows"])) + (" and more" if result["changed"] > 20 else "")
        notes.append(f"{result['changed']:,} row(s) changed since the file was downloaded were left "
                     f"as they are (rows {rows}): download the rows to fix again")
    if result.get("unknown"):
        notes.append(f"{result['unknown']:,} row(s) did not match a row to fix")
    if result.get("unchanged"):
        notes.append(f"{result['unchanged']:,} row(s) were as they are already")
    if result.get("not_read"):
        notes.append("not read, as no field of this upload: the column(s) " + ", ".join(result["not_read"]))
    return f"{result['updated']:,} row(s) updated and checked again" + "".join(f"; {n}" for n in notes) + "."


def _row_column(headers: list[str]) -> int:
    found = next((i for i, h in enumerate(headers) if (h or "").strip().lower() in ("row", "row number")), None)
    if found is None:
        raise FileProblem("The file has no 'Row' column: upload the file of rows to fix as it "
                          "was downloaded, with its Row column unchanged.")
    return found


def apply_corrections(session: Session, upload: Upload, path: Path, *, scope: Scope,
                      resume: dict | None = None, checkpoint=None) -> dict:
    """Read a file of corrected rows (as downloaded, with its 'Row' column) into this upload,
    matched by row number; the rows are checked again. Identifiers left as the download
    masked them keep their values, and the download's formula guards are taken off.

    A job passes ``checkpoint(state)``, which commits: the file's first ``state["read"]``
    rows are then done, and a job run again goes on from ``resume`` (that state)."""
    _editable(upload, by_job=checkpoint is not None)
    table = open_table(path, max_rows=_max_rows())
    try:
        row_col = _row_column(table.headers)
        fields, not_read = _fixes_columns(session, upload, table.headers)
        _refuse_excel_errors(table, fields, row_col)
    except FileProblem:
        table.rows.close()
        raise
    # A file downloaded before a row was edited in the grid must not put its old cells back
    # (a file without the column, made by hand, is matched by row number alone).
    version_col = next((i for i, h in enumerate(table.headers)
                        if (h or "").strip().lower() == VERSION_HEADER.lower()), None)
    state = {"read": 0, "updated": 0, "unchanged": 0, "unknown": 0, "changed": 0, "changed_rows": [],
             **(resume or {})}
    for chunk in _batched(islice(table.rows, state["read"], None), FIX_CHUNK):
        numbers = {}
        for _line, cells in chunk:
            try:  # (a spreadsheet may give the row as 2.0; a row 2.5 is no row)
                value = float(cells[row_col])
                number = int(value) if value.is_integer() else 0
            except (ValueError, IndexError, OverflowError):
                number = 0
            if 1 < number <= ID_MAX:  # what the row_number column holds
                numbers[number] = [without_guard(cell) for cell in cells]
            else:
                state["unknown"] += 1
        rows = list(session.scalars(select(UploadRow).where(
            UploadRow.upload_id == upload.id, UploadRow.row_number.in_(list(numbers)),
            UploadRow.status.in_(OPEN_STATUSES))))
        state["unknown"] += len(numbers) - len(rows)
        if version_col is not None:
            stale = [r for r in rows if (numbers[r.row_number][version_col:version_col + 1] or [""])[0]
                     != cells_version(r.raw)]
            state["changed"] += len(stale)
            state["changed_rows"] = (state["changed_rows"] + [r.row_number for r in stale])[:20]
            rows = [r for r in rows if r not in stale]
        entries: list[tuple] = []  # the audit log's, a row each: the cells before and after
        for row in rows:
            cells = numbers[row.row_number]
            raw = {**row.raw, **_unmasked(row.raw, {name: cells[i] if i < len(cells) else ""
                                                    for i, name in fields})}
            entries.append((upload.id, f"Row {row.row_number}: fixed in a file uploaded back",
                            _cell_changes(row.raw, raw)))
            row.raw = raw
        if rows:
            recheck_rows(session, upload, rows, scope=scope)
        fixed = [entry for entry in entries if entry[2]]
        record_many(session, action="fixes", entity_type="upload", actor_id=session.info.get("actor_id"),
                    entries=fixed)
        state["updated"] += len(fixed)
        state["unchanged"] += len(rows) - len(fixed)
        state["read"] += len(chunk)
        if checkpoint:
            checkpoint(dict(state))
    if checkpoint is None:  # (a job's file stays until its last commit: see forget_fixes_file)
        path.unlink(missing_ok=True)
    return {**{key: state[key] for key in ("updated", "unchanged", "unknown", "changed", "changed_rows")},
            "not_read": not_read}


# --- importing ------------------------------------------------------------------------------

def _individual_values(cleaned: dict) -> dict:
    values = {k: cleaned.get(k) for k in INDIVIDUAL_FIELDS if k in cleaned}
    if values.get("birth_date"):
        values["birth_date"] = date.fromisoformat(values["birth_date"])
    values.setdefault("custom", {})
    if values.get("custom") is None:
        values["custom"] = {}
    return values


def import_upload(session: Session, upload: Upload, *, scope: Scope, actor_id: int | None,
                  progress, commit_part: Callable[[Session], None] | None = None,
                  only_if_clean: bool = False) -> dict:
    """Create or update the people of every valid row, then their households, then enrol
    them. Idempotent per row: a row becomes ``imported`` in the transaction that creates its
    person, so running this again (or after a crash) continues where it stopped.

    Before the first person is created, the rows' households are checked again against the
    registry, which may have changed since validation; rows that now break a household rule
    are held back as errors (or, ``only_if_clean``, nothing is imported).

    With ``commit_part`` (which commits another session's share of the work, as the job's
    progress commits its own), PostgreSQL creates a large batch's people on several
    connections at once (``UPLOAD_IMPORT_CONNECTIONS``)."""
    started = time.monotonic()
    total, done = session.execute(select(func.count(), func.count().filter(UploadRow.status == "imported")).where(
        UploadRow.upload_id == upload.id, UploadRow.status.in_(("valid", "imported")))).one()
    resumed = bool(done)
    if not done:
        _refuse_if_same_file_imported_since(session, upload)  # (also when run again, or at once)
        # People first: a head's row held back holds back their new household's other rows.
        stale = _people_changed_since_validation(session, upload, scope)
        look_alikes = _look_alikes_registered_since_validation(session, upload, scope)
        changed = len(stale) + _households_changed_since_validation(session, upload, scope,
                                                                    also={**stale, **look_alikes})
        if changed:
            _tell(upload, f"{changed} row(s) were held back: their person or household changed in the "
                          "registry since validation. Fix them and import again.")
        if look_alikes:
            _tell(upload, f"{len(look_alikes)} row(s) look like people registered since validation: "
                          "confirm or fix them, and import again.")
        held = changed + len(look_alikes)
        total -= held
        if held and only_if_clean:
            # The rows' new errors are kept (committed here), so the grid shows what to fix.
            progress(done, total, "Registry changed since validation")
            raise DomainError(f"{held} row(s) need fixing again: the registry changed since "
                              "validation. Nothing was imported.")
    progress(done, total, "Importing people")
    # Each batch updates pages all over the registry's indexes; fewer, larger batches
    # write each page fewer times.
    batch_size = current_app.config["UPLOAD_IMPORT_BATCH"]
    while True:
        session.flush()
        runs = _next_batch(session, upload.id, batch_size)
        if not runs:
            break
        new, updating = runs.get("new", []), runs.get("update", [])
        parts = _parts(session, sum(run.rows for run in new), commit_part)
        people: list[int] = []  # the people this batch created or updated (and audits)
        if parts > 1:
            _import_new_rows_at_once(session, upload, _joined(new, parts), commit_part)
        elif new:
            people = _import_new_rows(session, upload.id, _joined(new, 1)[0])
        marks: list[dict] = []
        for chunk in _batched(_row_ids(session, upload.id, "update", updating), BATCH):
            for mark in _update_people(session, _with_cleaned(session, chunk), scope):
                marks.append(mark)
                if mark["status"] == "imported":
                    people.append(mark["individual_id"])
        _mark_rows(session, marks)
        if parts <= 1:
            _record_rows(session, upload.id, _joined(new + updating, 1)[0], people)
        elif people:  # the shares recorded the people they created
            _record_rows(session, upload.id, _joined(updating, 1)[0], people)
        in_batch = sum(run.rows for run in new + updating)
        done += in_batch
        progress(done, total, f"Imported {done:,} of {total:,} people")
        if in_batch < batch_size:  # the last batch: no valid row was left after it
            break
    members = import_households(session, upload, scope, commit_part=commit_part)
    if resumed:  # an attempt before this one may have added some
        members = _members_added(session, upload.id)
    progress(done, total, f"Households done: {members:,} members added")
    enrolled = enrol_imported(session, upload, scope=scope, actor_id=actor_id,
                              progress=lambda message: progress(done, total, message))
    # People created and updated counted from the rows, so that an import resumed after a
    # failure counts what the attempt before it created too.
    counts = summary_counts(session, upload, households=False, imported=True)
    counts["members_added"] = members
    if enrolled is not None:
        counts["enrolled"] = enrolled.get("enrolled", 0)
        counts["already_enrolled"] = enrolled.get("skipped", 0)
    upload.counts = counts
    upload.status = "imported"
    upload.imported_at = now()
    upload.import_seconds = round((upload.import_seconds or 0) + time.monotonic() - started, 2)
    return counts


def _parts(session: Session, rows: int, commit_part) -> int:
    """How many connections create a batch's new people: one, except on PostgreSQL when the
    caller can commit each share's work (``commit_part``)."""
    if commit_part is None or session.get_bind().dialect.name != "postgresql":
        return 1
    config = current_app.config
    return max(1, min(config["UPLOAD_IMPORT_CONNECTIONS"], rows // max(1, config["UPLOAD_IMPORT_PART_ROWS"])))


class _Run(NamedTuple):
    """A batch's valid rows between two ids (those of one action, or of several joined):
    the first and last id and row number, and how many rows there are."""
    first_id: int
    last_id: int
    first_row: int
    last_row: int
    rows: int


def _next_batch(session: Session, upload_id: int, size: int) -> dict[str, list[_Run]]:
    """The next ``size`` valid rows (by id) by action, each action's rows cut into as many
    runs of about equal length as the import may use connections, counted in the database:
    reading 100,000 row ids into Python took 0.2-0.35 s before a share could start."""
    pieces = max(1, current_app.config["UPLOAD_IMPORT_CONNECTIONS"])
    runs: dict[str, list[_Run]] = {}
    for action, *run in session.execute(text(
            "SELECT action, min(id), max(id), min(row_number), max(row_number), count(*) FROM "
            "(SELECT id, row_number, action, ntile(:pieces) OVER (PARTITION BY action ORDER BY id) AS piece "
            "FROM (SELECT id, row_number, action FROM upload_row WHERE upload_id = :upload "
            "AND status = 'valid' ORDER BY id LIMIT :size) AS batch) AS cut "
            "GROUP BY action, piece ORDER BY action, piece"),
            {"upload": upload_id, "size": size, "pieces": pieces}):
        runs.setdefault(action, []).append(_Run(*run))
    return runs


def _joined(runs: list[_Run], parts: int) -> list[_Run]:
    """``runs`` joined, in their order, into ``parts`` runs (fewer when there are fewer)."""
    count = len(runs)
    groups = [runs[i * count // parts:(i + 1) * count // parts] for i in range(parts)]
    return [_Run(min(r.first_id for r in g), max(r.last_id for r in g), min(r.first_row for r in g),
                 max(r.last_row for r in g), sum(r.rows for r in g)) for g in groups if g]


def _row_ids(session: Session, upload_id: int, action: str, runs: list[_Run]) -> list[int]:
    """The ids of the valid rows taking ``action`` within these runs, in order."""
    if not runs:
        return []
    return list(session.scalars(select(UploadRow.id).where(
        UploadRow.upload_id == upload_id, UploadRow.status == "valid", UploadRow.action == action,
        UploadRow.id.between(runs[0].first_id, runs[-1].last_id)).order_by(UploadRow.id)))


def _import_new_rows(session: Session, upload_id: int, run: _Run) -> list[int]:
    """Create the people of the valid new rows of ``run`` and mark the rows; returns the
    people created."""
    people = _insert_new_people(session, upload_id, run)
    if people is not None:
        return people
    # Someone registered one of these national IDs meanwhile: row by row, a few thousand
    # rows read in Python at a time.
    marks = []
    for chunk in _batched(_row_ids(session, upload_id, "new", [run]), BATCH):
        marks += _insert_people(session, _with_cleaned(session, chunk))
    _mark_rows(session, marks)
    return [m["individual_id"] for m in marks if m["status"] == "imported"]


def _import_new_rows_at_once(session: Session, upload: Upload, runs: list[_Run],
                             commit_part: Callable[[Session], None]) -> None:
    """Create the people of these runs of valid new rows, each run at once on a connection
    and in a transaction of its own with its audit entry, committed by ``commit_part``.

    A PostgreSQL backend works on one core: 100,000 people took 8.7 s on one connection and
    4.6 s on two. Each share commits alone, which the import allows (a row is imported in the
    transaction that creates its person); a share that fails leaves its rows valid for the
    next run. (Households are shared out by code afterwards: ``import_households``.)"""
    app = current_app._get_current_object()
    engine = session.get_bind()
    actor = session.info.get("actor_id")
    upload_id = upload.id  # the threads touch none of the job session's objects

    def share(run: _Run) -> None:
        with app.app_context(), Session(engine, expire_on_commit=False) as own:
            own.info["actor_id"] = actor
            _record_rows(own, upload_id, run, _import_new_rows(own, upload_id, run))
            commit_part(own)

    with ThreadPoolExecutor(len(runs)) as pool:
        list(pool.map(share, runs))  # (raises what a share raised, once all have ended)


def _mark_rows(session: Session, marks: list[dict]) -> None:
    """Rows imported with their person, or in error with their ``errors``."""
    mark_imported(session, [m for m in marks if "errors" not in m])
    failed = [m for m in marks if "errors" in m]
    if failed:
        session.execute(update(UploadRow), failed)


def _record_rows(session: Session, upload_id: int, run: _Run, people: list[int]) -> None:
    record(session, action="import", entity_type="upload", entity_id=upload_id,
           summary=f"Rows {run.first_row}-{run.last_row}: {len(people)} people imported",
           changes={"individual_ids": people})


_CHANGED_SINCE_CHECK = ("This person was changed in the registry after this row was checked; "
                        "check the upload again to compare, then import.")
_DELETED_SINCE_CHECK = "The person to update was deleted meanwhile."
_MOVED_SINCE_CHECK = "The person to update moved outside your area meanwhile."


def _stale_update(deleted: bool, in_area: bool, seen: int | None, version: int | None) -> str | None:
    """Why an update row may not write to its person any more (None: it may): deleted, moved
    out of the area, or changed since the row was checked (``seen``, the version read then)."""
    if deleted:
        return _DELETED_SINCE_CHECK
    if not in_area:
        return _MOVED_SINCE_CHECK
    if seen is not None and seen != version:
        return _CHANGED_SINCE_CHECK
    return None


def _people_changed_since_validation(session: Session, upload: Upload, scope: Scope) -> dict[int, str | None]:
    """Turn into errors the valid update rows whose person was deleted, moved out of ``scope``
    or otherwise changed in the registry since the row was checked (the version the check
    read is in the row): the file would write over what someone saved, unseen. Before anyone
    is created, so that a head's row held back holds back their new household (see
    ``_households_changed_since_validation``). Returns the rows' ids and household codes."""
    seen = UploadRow.cleaned["person_version"].as_integer()
    rows = session.execute(
        select(UploadRow.id, UploadRow.errors, UploadRow.household_code, seen.label("seen"),
               Individual.version, Individual.deleted_at, Individual.id.label("person"),
               scope.covers(Individual.location_id).label("in_area"))
        .join(Individual, Individual.id == UploadRow.individual_id, isouter=True)
        .where(UploadRow.upload_id == upload.id, UploadRow.status == "valid", UploadRow.action == "update")).all()
    held = {}
    for row in rows:
        message = _stale_update(row.person is None or row.deleted_at is not None, row.in_area,
                                row.seen, row.version)
        if message:
            held[row.id] = (row, message)
    if held:
        session.execute(update(UploadRow), [
            {"id": row_id, "status": "error", "errors": {**(row.errors or {}), "national_id": message}}
            for row_id, (row, message) in held.items()])
    return {row_id: row.household_code for row_id, (row, _message) in held.items()}


def _oldest_open_write(session: Session) -> datetime | None:
    """When the oldest other transaction that has written and not yet committed began
    (PostgreSQL), in the form a person's ``created_at`` takes (the start of the transaction
    that created them; both in UTC, see ``extensions``). A person it registered has an id
    below the highest one this transaction sees. None when there is none, and on SQLite,
    where the job's transaction holds the write lock, so every write before it has committed.
    (PostgreSQL shows a session's start to its own database role: the portal's web and
    worker connect as one, the one ``DATABASE_URL`` names.)"""
    if session.get_bind().dialect.name != "postgresql":
        return None
    return session.scalar(text(
        "SELECT CAST(min(xact_start) AS timestamp) FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
        "AND pid <> pg_backend_pid() AND datname = current_database()"))


def _look_alikes_registered_since_validation(session: Session, upload: Upload,
                                             scope: Scope) -> dict[int, str | None]:
    """Hold back as probable duplicates the valid new rows that look like someone registered
    since validation searched the registry (a similar name, born the same day in the same
    district): two versions of one file, both validated before either was imported, would
    otherwise register everyone without a national ID twice. Only the people added since are
    read, by id, so an import with nobody registered meanwhile pays one look at the index;
    when a transaction was writing as validation began, those created since it began too
    (one pass over the registry). A row the user confirmed is no duplicate stays as
    confirmed. Returns the rows' ids and household codes."""
    since = upload.registry_checked_through
    if since is None:  # (validated before the portal kept this)
        return {}
    registered_since = Individual.id > since
    if upload.registry_checked_since is not None:
        registered_since = registered_since | (Individual.created_at >= upload.registry_checked_since)
    recent = session.execute(
        select(Individual.id, Individual.first_name, Individual.last_name, Individual.birth_date,
               Individual.location_id, Location.path)
        .join(Location, Location.id == Individual.location_id)
        .where(registered_since, Individual.deleted_at.is_(None)).order_by(Individual.id)).all()
    if not recent:
        return {}
    born: dict[date, list] = {}
    for person in recent:
        born.setdefault(person.birth_date, []).append(person)
    rows = session.execute(select(UploadRow.id, UploadRow.cleaned, UploadRow.household_code,
                                  UploadRow.not_duplicate)
                           .where(UploadRow.upload_id == upload.id, UploadRow.status == "valid",
                                  UploadRow.action == "new",
                                  _one_of(session, UploadRow.birth_date, sorted(born), Date))).all()
    checker = RowChecker(session, upload, scope)
    areas = checker.areas_of({row.cleaned.get("location_id") for row in rows})
    held: dict[int, tuple] = {}
    for row in rows:
        if row.not_duplicate == identity_key(row.cleaned):
            continue
        warning = checker.look_alike_warning(row.cleaned, areas.get(row.cleaned.get("location_id")),
                                             born.get(date.fromisoformat(row.cleaned["birth_date"]), ()))
        if warning:
            held[row.id] = (row, warning)
    if held:
        session.execute(update(UploadRow), [{"id": row_id, "status": "duplicate", "warning": warning}
                                            for row_id, (_row, warning) in held.items()])
    return {row_id: row.household_code for row_id, (row, _warning) in held.items()}


def _households_changed_since_validation(session: Session, upload: Upload, scope: Scope,
                                         also: dict[int, str | None]) -> int:
    """Check again the households the registry may have changed since validation (those
    registered now, those of registered people, and those of the rows ``also`` just held
    back: id -> household code) and return how many valid rows that turned into errors: a
    head registered meanwhile, a person moved into another household, a code now a
    cooperative's would otherwise stop the import after its people exist, and a new
    household whose head's row was held back would be led by whoever came first."""
    valid = (UploadRow.upload_id == upload.id) & (UploadRow.status == "valid")
    codes = set(session.scalars(select(Group.code).join(
        UploadRow, valid & (UploadRow.household_code == Group.code)).distinct()))
    codes.update(session.scalars(select(UploadRow.household_code).where(
        valid, UploadRow.individual_id.isnot(None), UploadRow.household_code.isnot(None)).distinct()))
    codes.update(code for code in also.values() if code)
    if not codes:
        return 0
    ready = set(session.scalars(select(UploadRow.id).where(
        valid, _one_of(session, UploadRow.household_code, sorted(codes), String))))
    changed = check_households(session, upload, scope, codes) & ready
    return session.scalar(select(func.count()).where(
        _one_of(session, UploadRow.id, sorted(changed)), UploadRow.status == "error")) if changed else 0


def _tell(upload: Upload, message: str) -> None:
    """Add to what the upload's page says of its import, which several steps may have to say."""
    upload.message = " ".join(filter(None, [upload.message, message]))[:2000]


_STAGED_COLUMNS = ("upload_id", "row_number", "raw", "cleaned", "errors", "warning", "status",
                   "action", "national_id", "household_code", "role", "primary", "birth_date",
                   "individual_id")


def _stage(session: Session, records: list[tuple]) -> None:
    """Insert staged rows (tuples in ``_STAGED_COLUMNS`` order, JSON already encoded, the
    birth date as ISO text) on the session's connection and transaction: SQLite's
    executemany runs in C, PostgreSQL gets one COPY stream instead of a statement a row."""
    if not records:
        return
    columns = ", ".join(f'"{c}"' for c in _STAGED_COLUMNS)
    cursor = session.connection().connection.driver_connection.cursor()
    if session.get_bind().dialect.name != "postgresql":
        cursor.executemany(f"INSERT INTO upload_row ({columns}) VALUES "
                           f"({', '.join('?' * len(_STAGED_COLUMNS))})", records)
        return
    with cursor.copy(f"COPY upload_row ({columns}) FROM STDIN") as copy:
        for values in records:
            copy.write_row(values)


def _json(value) -> str | None:
    """A JSON column's text, as SQLAlchemy would store it (None stays NULL); orjson is 15
    times faster than the json module, which counts over 100,000 rows."""
    return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def mark_imported(session: Session, marks: list[dict]) -> None:
    """Set rows imported with their person's id: {"id", "status", "individual_id"} each."""
    if not marks:
        return
    if session.get_bind().dialect.name != "postgresql":
        # One executemany in C (the ORM's bulk update by key spent 75 us a row in Python).
        session.connection().exec_driver_sql(
            "UPDATE upload_row SET status = 'imported', individual_id = ? WHERE id = ?",
            [(m["individual_id"], m["id"]) for m in marks])
        return
    session.execute(text(
        "UPDATE upload_row SET status = 'imported', individual_id = marks.person_id "
        "FROM unnest(CAST(:rows AS integer[]), CAST(:people AS integer[])) AS marks(row_id, person_id) "
        "WHERE upload_row.id = marks.row_id"),
        {"rows": [m["id"] for m in marks], "people": [m["individual_id"] for m in marks]})


def allocate_ids(session: Session, table, count: int) -> list[int]:
    """``count`` fresh primary keys for ``table``, so a bulk insert needs no RETURNING.

    PostgreSQL draws them from the table's sequence; SQLite takes the ones after the largest,
    which is safe because a job's transaction holds the write lock (BEGIN IMMEDIATE)."""
    if count <= 0:
        return []
    if session.get_bind().dialect.name == "postgresql":
        return list(session.scalars(
            select(func.nextval(func.pg_get_serial_sequence(table.name, "id")))
            .select_from(func.generate_series(1, count))))
    highest = session.scalar(select(func.max(table.c.id))) or 0
    return list(range(highest + 1, highest + 1 + count))


def _integrity_errors() -> tuple:
    """SQLAlchemy's, and psycopg's own when COPY is used on its connection."""
    try:
        import psycopg
    except ImportError:
        return (IntegrityError,)
    return (IntegrityError, psycopg.IntegrityError)


_PERSON_COLUMNS = ("first_name", "middle_name", "last_name", "name_key", "sex",
                   "national_id_type", "phone")


def _insert_new_people(session: Session, upload_id: int, run: _Run) -> list[int] | None:
    """Create the people of the valid new rows of ``run``, and mark those rows imported, in
    the database itself (no row passes through Python). Returns the people's ids, or None
    when a national ID was registered meanwhile (nothing is changed then)."""
    rows = ("upload_row.upload_id = :upload AND upload_row.status = 'valid' AND "
            "upload_row.action = 'new' AND upload_row.id BETWEEN :first AND :last")
    columns = ", ".join(_PERSON_COLUMNS)
    params = {"upload": upload_id, "first": run.first_id, "last": run.last_id}
    try:
        with session.begin_nested():
            if session.get_bind().dialect.name == "postgresql":
                # Each row's JSON is parsed once (json_to_record), and the sequence is named
                # once: pg_get_serial_sequence() in the row would be looked up for every row.
                params["sequence"] = session.scalar(
                    text("SELECT pg_get_serial_sequence('individual', 'id')"))
                fields = ", ".join(f"{c} text" for c in _PERSON_COLUMNS)
                return list(session.scalars(text(
                    "WITH batch AS MATERIALIZED (SELECT upload_row.id AS row_id, "
                    "nextval(CAST(:sequence AS regclass)) AS person_id, upload_row.birth_date, "
                    "upload_row.national_id, c.* FROM upload_row, "
                    f"json_to_record(upload_row.cleaned) AS c({fields}, location_id integer, "
                    f"custom json) WHERE {rows} ORDER BY upload_row.id), "
                    f"people AS (INSERT INTO individual (id, {columns}, birth_date, national_id, "
                    f"location_id, custom, version) SELECT person_id, {columns}, birth_date, "
                    "national_id, location_id, COALESCE(custom, CAST('{}' AS json)), 1 FROM batch) "
                    "UPDATE upload_row SET status = 'imported', individual_id = batch.person_id "
                    "FROM batch WHERE upload_row.id = batch.row_id RETURNING batch.person_id"),
                    params))
            # SQLite: the job holds the write lock (BEGIN IMMEDIATE), so the ids after the
            # largest are free; a row's person id follows from the row's id (and RETURNING
            # them cost 0.2 s for 100,000 rows).
            base = (session.scalar(select(func.max(Individual.id))) or 0) + 1 - run.first_id
            params["base"] = base
            row_ids = _row_ids(session, upload_id, "new", [run])
            values = ", ".join(f"json_extract(cleaned, '$.{c}')" for c in _PERSON_COLUMNS)
            session.execute(text(
                f"INSERT INTO individual (id, {columns}, birth_date, national_id, location_id, "
                f"custom, version) SELECT id + :base, {values}, birth_date, national_id, "
                "json_extract(cleaned, '$.location_id'), "
                f"COALESCE(json_extract(cleaned, '$.custom'), '{{}}'), 1 FROM upload_row WHERE {rows} "
                # Village then name: consecutive rows land on the same pages of the indexes,
                # which SQLite's small page cache needs (PostgreSQL's larger one does not,
                # and sorting on its JSON text costs it more than it saves).
                "ORDER BY json_extract(cleaned, '$.location_id'), json_extract(cleaned, '$.name_key')"),
                params)
            session.execute(text(
                f"UPDATE upload_row SET status = 'imported', individual_id = id + :base WHERE {rows}"),
                params)
            return [row_id + base for row_id in row_ids]
    except _integrity_errors():
        return None


def _with_cleaned(session: Session, row_ids: list[int]) -> list:
    """The staged rows with these ids and their cleaned values, in id order, and the ID type
    as the file had it (cleaning fills a blank one in, which an update must not write)."""
    return session.execute(select(UploadRow.id, UploadRow.cleaned, UploadRow.individual_id,
                                  UploadRow.raw["national_id_type"].as_string().label("id_type_given"))
                           .where(_one_of(session, UploadRow.id, row_ids))
                           .order_by(UploadRow.id)).all()


def _insert_people(session: Session, rows) -> list[dict]:
    """Row by row, for a batch in which someone registered one of its national IDs after
    validation: that row becomes an error, the others are imported."""
    table = Individual.__table__
    marks = []
    for row, pid in zip(rows, allocate_ids(session, table, len(rows))):
        value = {**_individual_values(row.cleaned), "id": pid, "version": 1}
        try:
            with session.begin_nested():
                session.execute(table.insert(), [value])
            marks.append({"id": row.id, "status": "imported", "individual_id": pid})
        except _integrity_errors():
            marks.append({"id": row.id, "status": "error", "individual_id": None, "errors": {
                "national_id": "This national ID was registered for someone else meanwhile."}})
    return marks


_UPDATED_COLUMNS = tuple(c for c in INDIVIDUAL_FIELDS if c != "custom")


def _update_people(session: Session, rows, scope: Scope) -> list[dict]:
    """Update registered people from staged rows: what a row gives (a blank cell keeps the
    registered value; custom fields merge) replaces what differs.

    Set-based: the people are read as plain rows, each set of changed fields is one
    executemany, and the audit entries are written together, as the flush hook would
    write them. The ORM took 0.45 ms a person (45 s for 100,000). The people are locked
    as they are read (SQLite: the job holds the write lock), and each update still checks
    the version it read. Someone who moved out of ``scope`` since validation is left as is."""
    if not rows:
        return []
    table = Individual.__table__
    query = select(table.c.id, table.c.version, table.c.deleted_at, table.c.custom,
                   scope.covers(table.c.location_id).label("in_area"),
                   *(table.c[c] for c in _UPDATED_COLUMNS)).where(
        _one_of(session, table.c.id, sorted({r.individual_id for r in rows})))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    registered = {p.id: p._asdict() for p in session.execute(query)}
    marks, changed, by_fields = [], [], {}
    for row in rows:
        person = registered.get(row.individual_id)
        # (_people_changed_since_validation held these back a moment ago; in between, a
        # change made at that very moment still ends here.)
        message = (_DELETED_SINCE_CHECK if person is None else _stale_update(
            person["deleted_at"] is not None, person["in_area"], row.cleaned.get("person_version"),
            person["version"]))
        if message:
            marks.append({"id": row.id, "status": "error", "individual_id": None,
                          "errors": {"national_id": message}})
            continue
        marks.append({"id": row.id, "status": "imported", "individual_id": person["id"]})
        values = _individual_values(row.cleaned)
        if not (row.id_type_given or "").strip():
            values.pop("national_id_type", None)  # a blank ID type keeps the registered one
        values.pop("name_key", None)  # made from the names the person ends with, below
        custom = {**(person["custom"] or {}), **(values.pop("custom", {}) or {})}
        changes = {key: (person[key], value) for key, value in values.items()
                   if value is not None and value != "" and person[key] != value}
        names = [changes[k][1] if k in changes else person[k] for k in ("first_name", "middle_name", "last_name")]
        key = name_key(*names)
        if key != person["name_key"]:
            changes["name_key"] = (person["name_key"], key)
        if custom != (person["custom"] or {}):
            changes["custom"] = (person["custom"], custom)
        if not changes:
            continue
        new_values = {key: value for key, (_before, value) in changes.items()}
        after = {**person, **new_values}
        by_fields.setdefault(tuple(sorted(changes)), []).append(
            {"person": person["id"], "read": person["version"], **new_values})
        changed.append((person["id"], full_name(after["first_name"], after["middle_name"],
                                                after["last_name"]),
                        {k: v for k, v in changes.items() if k not in Individual.__audit_exclude__}))
    for fields, updates in by_fields.items():
        result = session.execute(
            update(table).where(table.c.id == bindparam("person"), table.c.version == bindparam("read"))
            .values(version=table.c.version + 1, updated_at=func.now(),
                    **{field: bindparam(field) for field in fields}), updates)
        if result.rowcount != len(updates):
            raise DomainError("Someone changed these people while they were imported; import again.")
    record_changes(session, entity_type="individual", changed=changed)
    for person in list(session.identity_map.values()):  # what this session holds is stale now
        if isinstance(person, Individual) and person.id in registered:
            session.expire(person)
    return marks


def import_households(session: Session, upload: Upload, scope: Scope, *,
                      commit_part: Callable[[Session], None] | None = None) -> int:
    """Create the households named by imported rows and add their members, in the database
    itself; what exists already (from an earlier run) is left as it is, so a resumed import
    adds nothing twice. A household registered outside ``scope`` after validation gets no
    members and no payee from here (the upload's message names it). Returns the members added.

    With ``commit_part``, PostgreSQL shares a large upload's households out by code among
    connections (``UPLOAD_IMPORT_CONNECTIONS``), each share committed with its audit entries,
    as the people's shares are: 100,000 members took 2.5-3.5 s on one connection and 1.6 s
    on two."""
    outside = [] if scope.everything else sorted(session.scalars(select(Group.code).where(
        Group.code.in_(select(UploadRow.household_code).where(
            UploadRow.upload_id == upload.id, UploadRow.status == "imported")),
        ~scope.covers(Group.location_id))))
    if outside:
        _tell(upload, "Not added to households registered outside your area meanwhile: "
                      + ", ".join(outside))
    params = {"upload": upload.id, "outside": outside}
    # One pass over the rows (three took 0.2 s for 100,000 on PostgreSQL): each household
    # code, whether a row names its primary recipient, how many people could join it, and
    # the group registered with that code, if any.
    before: dict[int, int | None] = {}  # registered group -> its payee, where a row names one
    known: dict[int, str] = {}  # registered households (who joins them is audited one by one)
    could_join = 0
    for code, names_payee, people, gid, kind, payee in session.execute(_household_sql(
            "SELECT r.household_code, r.names_payee, r.people, g.id, g.kind, g.primary_recipient_id "
            'FROM (SELECT household_code, max(CASE WHEN "primary" THEN 1 ELSE 0 END) AS names_payee, '
            f"count(individual_id) AS people FROM upload_row WHERE {_IMPORTED_WITH_HOUSEHOLD} "
            'GROUP BY household_code) r LEFT JOIN "group" g ON g.code = r.household_code'), params):
        could_join += people
        if gid is not None and names_payee:
            before[gid] = payee
        if gid is not None and kind == "household":
            known[gid] = code
    parts = _parts(session, could_join, commit_part)
    if parts > 1:
        joined = _add_households_at_once(session, params, known, parts, commit_part)
    else:
        joined = _add_households(session, params, known)
    if before:  # (an upload of new households only has none, and skips two passes over its rows)
        # After the members: a payee left out of the household (a second head registered
        # meanwhile, say) is not made its payee. A household whose payee stays (one an earlier
        # attempt created) keeps its version, or an edit open on it would be refused for nothing.
        payee = ("SELECT min(p.individual_id) FROM upload_row p JOIN group_member m ON "
                 'm.individual_id = p.individual_id AND m.group_id = "group".id WHERE p.upload_id = :upload '
                 'AND p.status = \'imported\' AND p."primary" AND p.household_code = "group".code')
        session.execute(text(
            f'UPDATE "group" SET version = version + 1, primary_recipient_id = ({payee}) '
            f"WHERE id IN :changing AND ({payee}) IS NOT NULL "
            f"AND (primary_recipient_id IS NULL OR primary_recipient_id <> ({payee}))").bindparams(
                bindparam("changing", expanding=True, type_=Integer)), {**params, "changing": list(before)})
        record_changes(session, entity_type="group", changed=[
            (gid, name, {"primary_recipient_id": (before[gid], payee)})
            for gid, name, payee in session.execute(select(
                Group.id, Group.name, Group.primary_recipient_id).where(Group.id.in_(before)))
            if before[gid] != payee])
    # Rows left out are looked for only when fewer joined than could (in one run of a new
    # upload all do): the look is a join over every row, 0.2-0.4 s for 100,000.
    left_out = [] if joined == could_join else list(session.scalars(_household_sql(
        'SELECT r.row_number FROM upload_row r JOIN "group" g ON g.code = r.household_code '
        "WHERE r.upload_id = :upload AND r.status = 'imported' AND r.household_code IS NOT NULL "
        "AND r.household_code NOT IN :outside AND r.individual_id IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM group_member m WHERE m.group_id = g.id AND m.individual_id = r.individual_id) "
        "ORDER BY r.row_number LIMIT 21"), params))
    if left_out:
        rows = ", ".join(map(str, left_out[:20])) + (" and more" if len(left_out) > 20 else "")
        _tell(upload, f"Imported but not added to their household, which changed in the registry "
                      f"during the import: rows {rows}.")
    return joined


_IMPORTED_WITH_HOUSEHOLD = ("upload_id = :upload AND status = 'imported' AND household_code IS NOT NULL "
                            "AND household_code NOT IN :outside")


def _household_sql(statement: str):
    return text(statement).bindparams(bindparam("outside", expanding=True, type_=String))


def _add_households(session: Session, params: dict, known: dict[int, str], *,
                    share: str = "") -> int:
    """Create the new households of the upload's imported rows and add the rows' people to
    them (``share``: only the households that condition on ``household_code`` picks), with
    the audit entries; returns the members added."""
    if session.get_bind().dialect.name == "postgresql":
        last_name, location = "r.cleaned->>'last_name'", "CAST(r.cleaned->>'location_id' AS integer)"
    else:
        last_name, location = "json_extract(r.cleaned, '$.last_name')", "json_extract(r.cleaned, '$.location_id')"
    # New households: named after the head (or the first member), paid to the primary
    # recipient (or the head).
    created = list(session.scalars(_household_sql(
        'INSERT INTO "group" (code, kind, name, location_id, primary_recipient_id, version) '
        f"SELECT h.household_code, 'household', substr(coalesce({last_name}, h.household_code) "
        f"|| ' household', 1, 120), {location}, coalesce(p.individual_id, r.individual_id), 1 "
        "FROM (SELECT household_code, coalesce(min(CASE WHEN role = 'head' THEN row_number END), "
        'min(row_number)) AS lead, min(CASE WHEN "primary" THEN row_number END) AS payee '
        f"FROM upload_row WHERE {_IMPORTED_WITH_HOUSEHOLD}{share} GROUP BY household_code) h "
        "JOIN upload_row r ON r.upload_id = :upload AND r.row_number = h.lead "
        "LEFT JOIN upload_row p ON p.upload_id = :upload AND p.row_number = h.payee "
        'WHERE NOT EXISTS (SELECT 1 FROM "group" g WHERE g.code = h.household_code) '
        "ORDER BY h.household_code RETURNING id"), params))
    # A person already in a household (this one, from an earlier run, or another one since
    # validation), a second head, or a code that became a cooperative's is left out rather
    # than failing the import for good; the upload's message names the rows.
    result = session.execute(_household_sql(
        "INSERT INTO group_member (group_id, individual_id, group_kind, role) "
        "SELECT g.id, r.individual_id, 'household', coalesce(r.role, 'member') "
        'FROM upload_row r JOIN "group" g ON g.code = r.household_code '
        "WHERE r.upload_id = :upload AND r.status = 'imported' AND r.household_code IS NOT NULL "
        f"AND r.household_code NOT IN :outside{share.replace('household_code', 'r.household_code')} "
        "AND r.individual_id IS NOT NULL AND g.kind = 'household' AND NOT EXISTS (SELECT 1 FROM "
        "group_member m WHERE m.individual_id = r.individual_id AND m.group_kind = 'household') "
        "AND NOT (r.role = 'head' AND EXISTS (SELECT 1 FROM group_member h WHERE h.group_id = g.id "
        "AND h.role = 'head' AND h.group_kind = 'household')) ORDER BY r.row_number"
        + (" RETURNING id, group_id, individual_id, role" if known else "")), params)
    if known:
        added = result.all()
        joined = len(added)
        record_many(session, action="create", entity_type="groupmember",
                    actor_id=session.info.get("actor_id"), entries=[
                        (m.id, f"Joined household {known[m.group_id]} from upload #{params['upload']}",
                         {"group_id": [None, m.group_id], "individual_id": [None, m.individual_id],
                          "group_kind": [None, "household"], "role": [None, m.role]})
                        for m in added if m.group_id in known])
    else:
        joined = result.rowcount
    if created or joined:
        record(session, action="import", entity_type="upload", entity_id=params["upload"],
               summary=f"{len(created)} households created, {joined} members added",
               changes={"group_ids": created, "members_added": joined})
    return joined


def _members_added(session: Session, upload_id: int) -> int:
    """The members the upload's import attempts added, from their audit entries: the shares
    of an attempt that failed may have committed some of them. (Upload ids are never reused:
    uploads are kept for their history.)"""
    return sum((changes or {}).get("members_added", 0) for changes in session.scalars(
        select(AuditEntry.changes).where(
            AuditEntry.entity_type == "upload", AuditEntry.entity_id == str(upload_id),
            AuditEntry.action == "import", AuditEntry.summary.like("% households created, %"))))


def _add_households_at_once(session: Session, params: dict, known: dict[int, str], parts: int,
                            commit_part: Callable[[Session], None]) -> int:
    """``_add_households`` in ``parts`` shares by household code at once, each on a
    connection and in a transaction of its own, committed by ``commit_part``. A household's
    rows all fall in one share, so no two shares add to the same household; a share that
    fails leaves its households for the next run, which adds nothing twice."""
    app = current_app._get_current_object()
    engine = session.get_bind()
    actor = session.info.get("actor_id")

    def share(number: int) -> int:
        with app.app_context(), Session(engine, expire_on_commit=False) as own:
            own.info["actor_id"] = actor
            joined = _add_households(own, {**params, "parts": parts, "share": number}, known,
                                     share=" AND (hashtext(household_code) & 1023) % :parts = :share")
            commit_part(own)
            return joined

    with ThreadPoolExecutor(parts) as pool:
        return sum(pool.map(share, range(parts)))  # (raises what a share raised, once all have ended)


def enrol_imported(session: Session, upload: Upload, *, scope: Scope, actor_id: int | None,
                   progress) -> dict | None:
    if not upload.program_id:
        return None
    from portal.programs.models import Program
    from portal.programs.services import enrol

    program = session.get(Program, upload.program_id)
    if program is None:
        upload.message = "The program chosen for enrolment no longer exists; nobody was enrolled."
        return None
    total = {"enrolled": 0, "skipped": 0}
    if program.beneficiary_kind == "group":
        # (A household registered outside the area meanwhile was left alone, and said so.)
        query = select(Group.id).where(Group.code.in_(
            select(UploadRow.household_code).where(UploadRow.upload_id == upload.id,
                                                   UploadRow.status == "imported")),
            Group.kind == "household", Group.deleted_at.is_(None),
            scope.covers(Group.location_id)).order_by(Group.id)
    else:
        query = select(UploadRow.individual_id).where(
            UploadRow.upload_id == upload.id, UploadRow.status == "imported").order_by(UploadRow.id)
    ids = list(session.scalars(query))
    try:
        for start in range(0, len(ids), BATCH):
            chunk = ids[start:start + BATCH]
            kwargs = {"group_ids": chunk} if program.beneficiary_kind == "group" else {"individual_ids": chunk}
            result = enrol(session, program.id, status=upload.enrol_status or "potential",
                           actor_id=actor_id, scope=scope, **kwargs)
            total["enrolled"] += result.get("enrolled", 0)
            total["skipped"] += result.get("skipped", 0)
            progress(f"Enrolled {total['enrolled']:,} into {program.name}")
    except DomainError as exc:
        upload.message = (f"The people were imported, but enrolment into {program.name} stopped: "
                          f"{exc.message}")[:2000]
    return total


def delete_stored_file(upload: Upload) -> None:
    try:
        os.unlink(upload.stored_path)
    except OSError:
        pass


def clear_rows(session: Session, upload: Upload) -> None:
    session.execute(delete(UploadRow).where(UploadRow.upload_id == upload.id))
    upload.counts = {}


def imported_rows(session: Session, upload: Upload, *, scope: Scope, page: int = 1,
                  per_page: int = 50):
    """The rows that reached the registry, with their people; ``in_area`` is false for
    someone who has since moved out of the user's area (shown without their details)."""
    rows = session.execute(
        select(UploadRow.row_number, UploadRow.status, UploadRow.action, UploadRow.household_code,
               Individual, scope.covers(Individual.location_id).label("in_area"))
        .join(Individual, Individual.id == UploadRow.individual_id)
        .where(UploadRow.upload_id == upload.id, UploadRow.status.in_(("imported", "skipped")))
        .order_by(UploadRow.row_number).offset((page - 1) * per_page).limit(per_page + 1)).all()
    return rows[:per_page], len(rows) > per_page
