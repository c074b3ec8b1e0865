"""Locations: the tree, edits, CSV import, and the scope every query of people takes."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, false, func, or_, select, true, update
from sqlalchemy.orm import Session

from portal.errors import DomainError
from portal.locations.models import KINDS, Location
from portal.registry.validation import control_character

PARENT_KIND = {"district": "region", "ward": "district", "village": "ward"}
# How a person, household or group outside the user's scope is named: by nothing of its own.
OUTSIDE_PERSON = "Someone who lives outside your area"
OUTSIDE_HOUSEHOLD = "a household outside your area"
OUTSIDE_GROUP = "a group outside your area"


@dataclass(frozen=True)
class Scope:
    """The locations a user may see: everything, or what lies at or below some locations.

    Built once per request from the user and passed to every service that reads people,
    groups, programs or locations, so search, counts, exports and the API agree.
    """

    everything: bool = False
    paths: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def for_user(cls, user) -> "Scope":
        if user.all_locations:
            return cls(everything=True)
        return cls(paths=tuple(sorted(loc.path for loc in user.locations)))

    def location_ids(self):
        """A subquery of the ids of every visible location."""
        return select(Location.id).where(self.location_clause())

    def location_clause(self) -> ColumnElement[bool]:
        """A condition on the Location table: this location is visible."""
        if self.everything:
            return true()
        if not self.paths:
            return false()
        return or_(*[Location.path.startswith(p, autoescape=True) for p in self.paths])

    def covers(self, column) -> ColumnElement[bool]:
        """A condition on any location-id column: it points into this scope."""
        if self.everything:
            return true()
        return column.in_(self.location_ids())

    def allows(self, location: Location | None) -> bool:
        if self.everything:
            return True
        if location is None:
            return False
        return any(location.path.startswith(p) for p in self.paths)

    def within(self, other: "Scope") -> "Scope":
        """What both scopes see: of each one's roots, those that the other one covers."""
        if self.everything:
            return other
        if other.everything:
            return self
        paths = {p for p in self.paths if any(p.startswith(q) for q in other.paths)}
        paths |= {q for q in other.paths if any(q.startswith(p) for p in self.paths)}
        return Scope(paths=tuple(sorted(paths)))

    def contains(self, other: "Scope") -> bool:
        """Every location ``other`` reaches lies within this scope."""
        if self.everything:
            return True
        return not other.everything and all(
            any(path.startswith(root) for root in self.paths) for path in other.paths)

    def ancestors_visible(self, location: Location) -> bool:
        """True when the location is above a scope root (shown in the tree, not its data)."""
        return self.everything or any(p.startswith(location.path) for p in self.paths)


def _path(parent: Location | None, location_id: int) -> str:
    return f"{parent.path if parent else '/'}{location_id}/"


def _check_parent(kind: str, parent: Location | None) -> None:
    if kind not in KINDS:
        raise DomainError(f"Type must be one of {', '.join(KINDS)}.", field="kind")
    if kind == "region":
        if parent is not None:
            raise DomainError("A region has no parent.", field="parent")
        return
    if parent is None:
        raise DomainError(f"A {kind} needs a parent {PARENT_KIND[kind]}.", field="parent")
    if parent.kind != PARENT_KIND[kind]:
        raise DomainError(f"The parent of a {kind} must be a {PARENT_KIND[kind]}, "
                          f"not a {parent.kind}.", field="parent")


_CODE_MAX, _NAME_MAX = Location.code.type.length, Location.name.type.length


def _unfit(code: str, name: str) -> str | None:
    """What is wrong with a code or name longer than its column (PostgreSQL would refuse the
    whole import with a database error), or holding a control character (a people upload,
    which refuses those, could never name the place; a NUL no form can send back)."""
    if len(code) > _CODE_MAX:
        return f"the code is {len(code)} characters long; at most {_CODE_MAX} are allowed."
    if len(name) > _NAME_MAX:
        return f"the name is {len(name)} characters long; at most {_NAME_MAX} are allowed."
    for what, text in (("code", code), ("name", name)):
        if problem := control_character(text):
            return f"the {what} {problem}."
    return None


def _code_in_use(code: str, other: str) -> str:
    if other == code:
        return f"The code {code} is already used."
    return (f"The code {code} is already used as {other}: an upload typing either in any "
            "capitals could not tell the two places apart.")


def _refuse_code_in_use(session: Session, code: str, location_id: int | None = None) -> None:
    """Codes are unique whatever their capitals: uploads and forms accept a village code
    typed in any case."""
    query = select(Location.code).where(func.upper(Location.code) == code.upper())
    if location_id is not None:
        query = query.where(Location.id != location_id)
    other = session.scalar(query.limit(1))
    if other is not None:
        raise DomainError(_code_in_use(code, other), field="code")


def create_location(session: Session, *, code: str, name: str, kind: str,
                    parent: Location | None, scope: Scope) -> Location:
    code, name = code.strip(), name.strip()
    if not code or not name:
        raise DomainError("Code and name are required.")
    if unfit := _unfit(code, name):
        raise DomainError(unfit[0].upper() + unfit[1:])
    _check_parent(kind, parent)
    if parent is not None and not scope.allows(parent) or parent is None and not scope.everything:
        raise DomainError("You may only add locations inside your own area.", field="parent")
    _refuse_code_in_use(session, code)
    location = Location(code=code, name=name, kind=kind, parent=parent, path="")
    session.add(location)
    session.flush()
    location.path = _path(parent, location.id)
    return location


def update_location(session: Session, location: Location, *, code: str, name: str,
                    parent: Location | None, scope: Scope) -> Location:
    code, name = code.strip(), name.strip()
    if not code or not name:
        raise DomainError("Code and name are required.")
    if unfit := _unfit(code, name):
        raise DomainError(unfit[0].upper() + unfit[1:])
    if not scope.allows(location):
        raise DomainError("This location is outside your area.")
    _check_parent(location.kind, parent)
    if parent is not None and parent.path.startswith(location.path):
        raise DomainError("A location cannot move below itself.", field="parent")
    _refuse_code_in_use(session, code, location.id)
    location.code, location.name = code, name
    if parent is not location.parent:
        if parent is not None and not scope.allows(parent):
            raise DomainError("You may only move locations inside your own area.", field="parent")
        old_path = location.path
        location.parent = parent
        new_path = _path(parent, location.id)
        # Re-root the whole subtree in one statement.
        session.execute(
            update(Location)
            .where(Location.path.startswith(old_path, autoescape=True))
            .values(path=func.replace(Location.path, old_path, new_path))
            .execution_options(synchronize_session=False))
        session.expire_all()
    return location


def children(session: Session, parent_id: int | None, scope: Scope) -> list[Location]:
    """The visible children of a node (or the roots), with the ancestors of scope roots."""
    query = select(Location).where(Location.parent_id.is_(None) if parent_id is None
                                   else Location.parent_id == parent_id).order_by(Location.name)
    rows = session.scalars(query).all()
    return [loc for loc in rows if scope.allows(loc) or scope.ancestors_visible(loc)]


def child_counts(session: Session, ids: list[int], scope: Scope) -> dict[int, int]:
    """How many children of each node the user may open: a region above an officer's district
    counts that district, not the districts beside it."""
    if not ids:
        return {}
    if scope.everything:
        rows = session.execute(select(Location.parent_id, func.count()).where(
            Location.parent_id.in_(ids)).group_by(Location.parent_id))
        return dict(rows.all())
    counts: dict[int, int] = {}
    for parent_id, path in session.execute(select(Location.parent_id, Location.path).where(
            Location.parent_id.in_(ids))):
        if any(path.startswith(p) or p.startswith(path) for p in scope.paths):  # in or above
            counts[parent_id] = counts.get(parent_id, 0) + 1
    return counts


def search_locations(session: Session, *, scope: Scope, text: str = "", kind: str = "",
                     limit: int = 50) -> list[Location]:
    query = select(Location).where(scope.location_clause())
    if text:
        like = f"%{text.strip()}%"
        query = query.where(or_(Location.name.ilike(like), Location.code.ilike(like)))
    if kind:
        query = query.where(Location.kind == kind)
    return list(session.scalars(query.order_by(Location.kind, Location.name).limit(limit)))


def get_visible(session: Session, location_id: int, scope: Scope) -> Location | None:
    location = session.get(Location, location_id)
    if location is None or not (scope.allows(location) or scope.ancestors_visible(location)):
        return None
    return location


def breadcrumb(location: Location) -> list[Location]:
    chain = []
    node = location
    while node is not None:
        chain.append(node)
        node = node.parent
    return list(reversed(chain))


# --- CSV import ---------------------------------------------------------------------------

IMPORT_COLUMNS = ("code", "name", "type", "parent code")


def decode_text(raw: bytes) -> str:
    """Files come from Excel on Windows as often as from anywhere: accept UTF-8 (with or
    without BOM) and fall back to Windows-1252."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def parse_location_csv(text: str) -> tuple[list[dict], list[str]]:
    """Read code,name,type,parent code rows; return (rows, errors) without touching the db."""
    errors: list[str] = []
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    header = next(reader, None)
    if not header:
        return [], ["The file is empty."]
    names = [h.strip().lower().replace("_", " ") for h in header]
    missing = [c for c in IMPORT_COLUMNS[:3] if c not in names]
    if missing:
        return [], [f"Line 1: missing column(s) {', '.join(missing)}; expected "
                    f"{', '.join(IMPORT_COLUMNS)}."]
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for line_no, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue
        def get(col):
            i = index.get(col)
            return values[i].strip() if i is not None and i < len(values) else ""
        rows.append({"line": line_no, "code": get("code"), "name": get("name"),
                     "kind": get("type").lower(), "parent_code": get("parent code")})
    if not rows:
        errors.append("The file has a header but no locations.")
    return rows, errors


def import_locations(session: Session, rows: list[dict], *, scope: Scope, progress=None) -> dict:
    """Create or rename locations from parsed rows, all or nothing.

    Rows may come in any order: parents are resolved from the file or the database. Returns
    counts, or raises DomainError listing every bad line so nothing is half-imported.
    """
    errors: list[str] = []
    by_code: dict[str, dict] = {}  # the file's rows by their code in capitals
    for row in rows:
        if not row["code"] or not row["name"]:
            errors.append(f"Line {row['line']}: code and name are required.")
        elif unfit := _unfit(row["code"], row["name"]):
            errors.append(f"Line {row['line']}: {unfit}")
        elif row["kind"] not in KINDS:
            errors.append(f"Line {row['line']}: type '{row['kind']}' is not one of {', '.join(KINDS)}.")
        elif row["code"].upper() in by_code:
            first = by_code[row["code"].upper()]
            errors.append(f"Line {row['line']}: code {row['code']} already appears on line "
                          f"{first['line']}" + ("." if first["code"] == row["code"] else
                                                f" as {first['code']} (codes are unique whatever their capitals)."))
        else:
            by_code[row["code"].upper()] = row
    existing = {loc.code: loc for loc in session.scalars(select(Location))}
    spelled = {code.upper(): code for code in existing}  # the registered code, by its capitals
    created = renamed = done = 0
    # Parents before children, one level at a time: a level's new locations are inserted
    # together and given their paths together (one row at a time took 2 ms a location).
    for kind in KINDS:
        fresh: list[Location] = []
        for row in (r for r in by_code.values() if r["kind"] == kind):
            parent = None
            if kind != "region":
                parent = existing.get(row["parent_code"])
                if parent is None:
                    errors.append(f"Line {row['line']}: parent code '{row['parent_code']}' is not a "
                                  f"known location.")
                    continue
            current = existing.get(row["code"])
            try:
                if current is None:
                    if row["code"].upper() in spelled:  # registered in other capitals
                        raise DomainError(_code_in_use(row["code"], spelled[row["code"].upper()]))
                    _check_parent(kind, parent)
                    if parent is not None and not scope.allows(parent) or parent is None and not scope.everything:
                        raise DomainError("You may only add locations inside your own area.")
                    location = Location(code=row["code"], name=row["name"], kind=kind,
                                        parent=parent, path="")
                    existing[row["code"]] = location
                    fresh.append(location)
                else:
                    if current.kind != kind:
                        raise DomainError(f"{row['code']} exists as a {current.kind}, not a {kind}.")
                    if current.name != row["name"] or current.parent is not parent:
                        update_location(session, current, code=row["code"], name=row["name"],
                                        parent=parent, scope=scope)
                        renamed += 1
            except DomainError as exc:
                errors.append(f"Line {row['line']}: {exc.message}")
        if errors:
            continue  # nothing is kept anyway; only the report goes on
        session.add_all(fresh)
        session.flush()
        for location in fresh:
            location.path = _path(location.parent, location.id)
        session.flush()
        created += len(fresh)
        done += len(fresh)
        if progress:
            progress(done, len(by_code))
    if errors:
        raise DomainError("\n".join(errors[:200]) + (f"\n… and {len(errors) - 200} more"
                                                    if len(errors) > 200 else ""))
    return {"created": created, "updated": renamed, "rows": len(rows)}
