"""Registry rules and queries: search that stays fast at a million people, enrolment with
duplicate checks, versioned edits, soft delete, households and their invariants.

Every function takes the caller's location ``scope`` where it reads people or groups, and
``actor_id`` where it writes; none commits.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import NamedTuple

from sqlalchemy import (ARRAY, Integer, and_, any_, bindparam, case, cast, false, func, literal, or_,
                        select, tuple_, union)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, contains_eager, lazyload
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.orm.exc import StaleDataError

from portal.background.services import lock_row
from portal.clock import now, today, years_ago
from portal.errors import ConflictError, DomainError
from portal.ids import ID_MAX, parse_id
from portal.locations.models import Location
from portal.locations.services import OUTSIDE_GROUP, OUTSIDE_HOUSEHOLD, Scope
from portal.privacy import mask
from portal.registry.models import (DEFAULT_MEMBER_ROLES, GROUP_KINDS, SEXES, CustomField,
                                    Group, GroupMember, Individual, MemberRole)
from portal.registry.validation import active_custom_fields, clean_individual, find_duplicates, fold

try:  # the programs domain is optional for the registry
    from portal.programs.models import Beneficiary, Program
except ImportError:  # pragma: no cover
    Beneficiary = Program = None


def _stop_payments(session: Session, *, individual_id: int | None = None, group_ids=(),
                   actor_id: int | None) -> None:
    """Active beneficiaries of a person just deleted, or of groups left with nobody living
    in them, are suspended (see programs.services.suspend_unpayable): nobody pays them."""
    if Beneficiary is None:  # pragma: no cover
        return
    from portal.programs.services import suspend_unpayable

    suspend_unpayable(session, individual_id=individual_id, group_ids=group_ids, actor_id=actor_id)

COUNT_CAP = 1000
PER_PAGE = 25
BENEFICIARY_STATUSES = ("potential", "active", "suspended", "graduated")


# --- search -----------------------------------------------------------------------------------

INDIVIDUAL_SORTS = {
    "name": ("name_key", False), "-name": ("name_key", True),
    "birth_date": ("birth_date", False), "-birth_date": ("birth_date", True),
    "newest": ("id", True), "oldest": ("id", False),
}
FILTER_KEYS = ("q", "location", "sex", "age_min", "age_max", "born_from", "born_to", "group",
               "household", "program", "status")


@dataclass
class SearchResult:
    rows: list
    count: int
    capped: bool
    page: int
    per_page: int
    has_more: bool
    households: dict = field(default_factory=dict)

    @property
    def count_label(self) -> str:
        return f"{self.count:,}+" if self.capped else f"{self.count:,}"


def _upper_bound(prefix: str) -> str | None:
    """The smallest string after every string that starts with ``prefix``; None when there
    is none (the prefix is only the last Unicode character, which has no successor)."""
    prefix = prefix.rstrip(chr(sys.maxunicode))
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None


def _prefix(column, prefix: str, dialect: str):
    """An index-friendly ``column LIKE 'prefix%'``: a range on a binary ("C") ordering, which
    both SQLite (BINARY) and PostgreSQL (a COLLATE "C" index) answer from a B-tree."""
    if dialect == "postgresql":
        column = column.collate("C")
    upper = _upper_bound(prefix)
    return column >= prefix if upper is None else and_(column >= prefix, column < upper)


def _name_column(dialect: str):
    return Individual.name_key.collate("C") if dialect == "postgresql" else Individual.name_key


def find_location(session: Session, value) -> Location | None:
    """A location given by code or id (filters take either)."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    location = session.scalar(select(Location).where(Location.code == text))
    if location is None and (location_id := parse_id(text)) is not None:
        location = session.get(Location, location_id)
    return location


def _int(value) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if abs(number) <= ID_MAX else None


def _date(value) -> date | None:
    try:
        return date.fromisoformat(str(value).strip())
    except (TypeError, ValueError):
        return None


def clean_filters(raw) -> dict:
    """The known filters from request args (or any mapping), stripped, unknown keys dropped."""
    return {k: str(raw.get(k, "")).strip() for k in FILTER_KEYS if str(raw.get(k, "") or "").strip()}


def _unindexed(column):
    """SQLite: ``+column`` is the same value, but the planner will not use an index for it."""
    return UnaryExpression(column.expression, operator=operators.custom_op("+"), type_=column.type)


def _is_id_search(q: str) -> bool:
    compact = q.replace(" ", "").upper()
    return any(c.isdigit() for c in q) and bool(re.fullmatch(r"[A-Z0-9/-]+", compact))


def _birth_range(filters: dict) -> tuple[date | None, date | None, bool]:
    """Age and birth-date filters as one range (lowest, highest birth date, possible?)."""
    lows, highs = [], []
    age_min, age_max = _int(filters.get("age_min")), _int(filters.get("age_max"))
    if age_min is not None:
        highs.append(years_ago(age_min, today()))
    if age_max is not None:  # aged at most N: born after the day N+1 years ago
        lows.append(years_ago(age_max + 1, today()) + timedelta(days=1))
    born_from, born_to = _date(filters.get("born_from")), _date(filters.get("born_to"))
    if born_from:
        lows.append(born_from)
    if born_to:
        highs.append(born_to)
    low, high = (max(lows) if lows else None), (min(highs) if highs else None)
    return low, high, not (low and high and low > high)


def filter_problem(filters: dict) -> str | None:
    """Why a search matches nobody whatever the registry holds: its age and birth-date
    filters leave no birth date (ages from 90 to 10, or aged under 10 and born before 1990),
    which the page says instead of an unexplained "no one matches"."""
    if _birth_range(filters)[2]:
        return None
    return ("No one can match: these ages and birth dates leave no birth date possible. "
            "Check their from and to.")


def visible_location_ids(session: Session, *, scope, filters: dict):
    """The ids of the locations a search may return people from: the user's scope and the
    location filter (a code or id, at any level, with everything below it) together, in one
    statement. None: anywhere. A list, or on PostgreSQL for the user's own area an array
    subquery that the search statement computes once.

    Resolved to a short list of ids (locations are few), so the planners estimate how many
    people that is from their statistics instead of guessing at a subquery."""
    code = str(filters.get("location") or "").strip()
    if scope.everything and not code:
        return None
    query = _visible_locations_query(scope, code)
    if not code and session.get_bind().dialect.name == "postgresql":
        # A user's own area: one array computed once inside the search statement itself
        # (no extra round trip). A location filter, often a single village, is resolved
        # first so that the planner knows how few people live there.
        return select(func.array_agg(Location.id)).where(query.whereclause).scalar_subquery()
    return list(session.scalars(query.order_by(Location.id)))


def _visible_locations_query(scope, code: str):
    query = select(Location.id).where(scope.location_clause())
    if code:
        location_id = parse_id(code)
        named = Location.code == code if location_id is None else or_(Location.code == code,
                                                                      Location.id == location_id)
        root = select(Location.path).where(named).order_by(Location.code != code).limit(1)
        # Paths hold only digits and slashes: nothing to escape in the LIKE pattern.
        query = query.where(Location.path.like(root.scalar_subquery() + "%"))
    return query


def individual_filters(session: Session, *, scope, filters: dict,
                       indexable: set[str] | None = None, location_ids: list[int] | None | bool = False,
                       whole_ids: bool = False) -> list:
    """The WHERE conditions for a search: living people in scope matching the filters; a
    national ID searched for matches from its start, or only whole with ``whole_ids``.

    ``location_ids`` is ``visible_location_ids(...)`` when the caller has it already.
    ``indexable`` (SQLite only, which has no statistics on value ranges) names the columns
    whose indexes the planner may use; the others are wrapped (``+column``) so that, say,
    a page ordered by name walks the name index and stops after one page instead of
    collecting a large filtered set and sorting it."""
    dialect = session.get_bind().dialect.name
    steering = indexable is not None and dialect == "sqlite"

    def col(column):
        return _unindexed(column) if steering and column.key not in indexable else column

    if location_ids is False:
        location_ids = visible_location_ids(session, scope=scope, filters=filters)
    location_id = col(Individual.location_id)
    conditions = [Individual.deleted_at.is_(None)]
    if isinstance(location_ids, list):
        conditions.append(location_id.in_(location_ids) if location_ids else false())
    elif location_ids is not None:  # PostgreSQL: an array subquery
        conditions.append(location_id == any_(cast(location_ids, ARRAY(Integer))))
    q = filters.get("q", "")
    if q:
        compact = q.replace(" ", "").upper()
        if _is_id_search(q) and whole_ids:
            # Someone who sees IDs masked could otherwise read one a digit at a time.
            conditions.append(col(Individual.national_id) == compact)
        elif _is_id_search(q):
            # The live-ID unique index has the database's collation: a plain range uses it.
            conditions.append(_prefix(col(Individual.national_id), compact, "any"))
        else:
            key = fold(q.replace(",", " "))
            if key:
                conditions.append(_prefix(col(Individual.name_key), key, dialect))
    if filters.get("sex") in SEXES:
        conditions.append(col(Individual.sex) == filters["sex"])
    birth_date = col(Individual.birth_date)
    low, high, possible = _birth_range(filters)
    if not possible:
        conditions.append(false())
    if low:
        conditions.append(birth_date >= low)
    if high:
        conditions.append(birth_date <= high)
    person_id = col(Individual.id)
    group = filters.get("group")
    if group:
        group_id = parse_id(group)
        # Only groups the user sees: a code guessed from elsewhere would tell which of their
        # own people belong to a group outside their area.
        group_ids = select(Group.id).where(Group.code == group.upper() if group_id is None
                                           else or_(Group.code == group, Group.id == group_id),
                                           scope.covers(Group.location_id))
        conditions.append(person_id.in_(
            select(GroupMember.individual_id).where(GroupMember.group_id.in_(group_ids))))
    household = filters.get("household")
    membership = select(literal(1)).where(GroupMember.individual_id == Individual.id,
                                          GroupMember.group_kind == "household")
    if household == "yes":
        # OFFSET 0 keeps PostgreSQL from turning this into a semi-join that hashes every
        # membership; probed per person it stops as soon as a page (or the count cap) is full.
        conditions.append(membership.offset(0).exists())
    elif household == "no":
        conditions.append(~membership.exists())
    program_id, status = _int(filters.get("program")), filters.get("status")
    if Beneficiary is not None and (program_id or status in BENEFICIARY_STATUSES):
        direct = select(Beneficiary.individual_id).where(Beneficiary.individual_id.is_not(None))
        via_group = (select(GroupMember.individual_id)
                     .join(Beneficiary, Beneficiary.group_id == GroupMember.group_id))
        if program_id:
            direct = direct.where(Beneficiary.program_id == program_id)
            via_group = via_group.where(Beneficiary.program_id == program_id)
        if status in BENEFICIARY_STATUSES:
            direct = direct.where(Beneficiary.status == status)
            via_group = via_group.where(Beneficiary.status == status)
        conditions.append(person_id.in_(union(direct, via_group)))
    return conditions


def _sort_column(sort: str, filters: dict) -> tuple[str, bool]:
    """(column, descending); a national ID search lists by ID unless asked otherwise."""
    if sort in ("name", "", None) and _is_id_search(filters.get("q", "")):
        return "national_id", False
    return INDIVIDUAL_SORTS.get(sort, INDIVIDUAL_SORTS["name"])


def _order_columns(sort: str, dialect: str, filters: dict | None = None) -> tuple[list, bool]:
    """The ORDER BY columns, ending with the id, and whether they run descending."""
    column_name, descending = _sort_column(sort, filters or {})
    column = _name_column(dialect) if column_name == "name_key" else getattr(Individual, column_name)
    # Ties follow the column order of the index that serves the sort (migration 0005), so
    # a page of 1,000 "Banda Chikondi"s is read straight from the index, not sorted.
    ties = {"name_key": [Individual.location_id, Individual.birth_date, Individual.sex],
            "birth_date": [Individual.sex, Individual.location_id]}.get(column_name, [])
    return [column, *ties] + ([Individual.id] if column_name != "id" else []), descending


def _order(sort: str, dialect: str, filters: dict | None = None):
    columns, descending = _order_columns(sort, dialect, filters)
    return [c.desc() if descending else c.asc() for c in columns]


def _capped_count_query(conditions: list, cap: int):
    inner = select(Individual.id).where(*conditions).limit(cap + 1).subquery()
    return select(func.count()).select_from(inner)


def capped_count(session: Session, conditions: list, cap: int | None = None) -> tuple[int, bool]:
    """How many match, counting at most ``cap`` + 1 rows: cheap at any size."""
    cap = cap or COUNT_CAP
    n = session.scalar(_capped_count_query(conditions, cap))
    return (cap, True) if n > cap else (n, False)


def _indexable_for_count(filters: dict) -> set[str] | None:
    """SQLite: a name prefix narrows best, so searches by name leave age and sex unindexed."""
    q = filters.get("q", "")
    if q and not _is_id_search(q):
        return {"name_key", "location_id", "id"}
    return None


def search_individuals(session: Session, *, scope, filters: dict, sort: str = "name",
                       page: int = 1, per_page: int = PER_PAGE, with_count: bool = True,
                       count_cap: int | None = None, whole_ids: bool = False) -> SearchResult:
    """One page of living people in scope, as light rows: the ``PAGE_COLUMNS`` with
    ``village``, ``household_id`` and ``household_code``. One statement on PostgreSQL, three
    on SQLite, whatever the page size.

    On SQLite the capped count comes first and chooses the plan: up to the cap, the few
    matches are collected by the most selective index and sorted; beyond it, the page is
    read in sort order from that column's index, stopping after one page."""
    dialect = session.get_bind().dialect.name
    cap = count_cap or COUNT_CAP
    places = visible_location_ids(session, scope=scope, filters=filters)
    indexable = _indexable_for_count(filters)
    conditions = individual_filters(session, scope=scope, filters=filters, indexable=indexable,
                                    location_ids=places, whole_ids=whole_ids)
    # SQLite: the capped count comes first and chooses the plan. PostgreSQL plans well by
    # itself: the count rides along with the page (a one-off subquery, same round trip).
    count, capped = capped_count(session, conditions, cap) if dialect != "postgresql" else (None, False)
    if capped and dialect == "sqlite":
        sort_column = _sort_column(sort, filters)[0]
        conditions = individual_filters(session, scope=scope, filters=filters, indexable={sort_column},
                                        location_ids=places, whole_ids=whole_ids)
    page = max(page, 1)
    if count == 0:
        return SearchResult(rows=[], count=0, capped=False, page=page, per_page=per_page, has_more=False)
    query = (select(*PAGE_COLUMNS).where(*conditions).order_by(*_order(sort, dialect, filters))
             .offset((page - 1) * per_page).limit(per_page + 1))
    page_extras = _page_extras(scope)
    if dialect == "postgresql":
        # Village, household and count come with the page: PostgreSQL evaluates the
        # village and household subqueries only for the rows it returns.
        found = session.execute(query.add_columns(
            *page_extras, _capped_count_query(conditions, cap).scalar_subquery().label("total"))).all()
    else:
        # SQLite computes a subquery in the SELECT list for every row it sorts, so the
        # page's village and household are looked up by id afterwards.
        found = session.execute(query).all()
        if found:
            by_id = select(Individual.id, *page_extras).where(
                Individual.id.in_(bindparam("ids", expanding=True)))
            extras = {r.id: r for r in session.execute(by_id, {"ids": [r.id for r in found]})}
            found = [PageRow(*r, *extras[r.id][1:]) for r in found]
    rows = found[:per_page]
    has_more = len(found) > per_page
    if count is None:  # PostgreSQL: the count came with the page
        if found:
            count, capped = (cap, True) if found[0].total > cap else (found[0].total, False)
        elif page == 1:
            count, capped = 0, False
        else:  # past the last page
            count, capped = capped_count(session, conditions, cap)
    if capped and (page - 1) * per_page + len(rows) > count:
        count = (page - 1) * per_page + len(rows)
    if not with_count:
        count, capped = 0, False
    return SearchResult(rows=rows, count=count, capped=capped, page=page, per_page=per_page,
                        has_more=has_more)


# A row of the search page: plain columns, not ORM objects, as a search runs on every
# keystroke and its page shows only these. The extras are built once, here: only the
# page's own part of the statement is built per search.
PAGE_COLUMNS = (Individual.id, Individual.first_name, Individual.middle_name, Individual.last_name,
                Individual.sex, Individual.birth_date, Individual.national_id, Individual.phone)
# A person is in at most one household (a unique index): its id comes from the membership
# alone, its code from the group by that id. Cheaper to plan and run than two joins.
_household_id = (select(GroupMember.group_id)
                 .where(GroupMember.individual_id == Individual.id, GroupMember.group_kind == "household")
                 .correlate(Individual).limit(1).scalar_subquery())
_village = (select(Location.name).where(Location.id == Individual.location_id)
            .scalar_subquery().label("village"))


def _household_code(scope):
    """The code of the person's household; None when it lies outside ``scope``, as a
    person may live in the user's area and belong to a household registered elsewhere."""
    code = select(Group.code).where(Group.id == _household_id)
    if not scope.everything:
        code = code.where(Group.location_id.in_(scope.location_ids().correlate(None)))
    return code.scalar_subquery()


_PAGE_EXTRAS = (_village, _household_id.label("household_id"),
                _household_code(Scope(everything=True)).label("household_code"))


def _page_extras(scope) -> tuple:
    """The village and household columns of a page: built once for a national user."""
    if scope.everything:
        return _PAGE_EXTRAS
    return _village, _household_id.label("household_id"), _household_code(scope).label("household_code")


class PageRow(NamedTuple):
    id: int
    first_name: str
    middle_name: str | None
    last_name: str
    sex: str
    birth_date: date
    national_id: str | None
    phone: str | None
    village: str
    household_id: int | None
    household_code: str | None  # None with a household_id: a household outside the user's area


EXPORT_HEADER = ["ID", "First name", "Middle name", "Last name", "Sex", "Date of birth",
                 "ID type", "National ID", "Phone", "Village code", "Village", "Household"]
EXPORT_LIMIT = 200_000


def export_rows(session: Session, *, scope, filters: dict, sort: str = "name", pii: bool,
                custom_fields: list[CustomField] = (), batch: int = 2000):
    """The rows of the current result for a download, masked unless ``pii`` (and then a
    national ID searched for must be whole); streamed in keyset batches so memory stays flat."""
    dialect = session.get_bind().dialect.name
    places = visible_location_ids(session, scope=scope, filters=filters)
    conditions = individual_filters(session, scope=scope, filters=filters, location_ids=places,
                                    whole_ids=not pii)
    if dialect == "sqlite" and capped_count(session, conditions)[1]:
        # Many rows: read them in sort order from the index rather than sort them per batch.
        conditions = individual_filters(session, scope=scope, filters=filters, location_ids=places,
                                        indexable={_sort_column(sort, filters)[0]}, whole_ids=not pii)
    show = (lambda v: v or "") if pii else mask
    household = func.coalesce(_household_code(scope), case((_household_id.is_not(None), OUTSIDE_HOUSEHOLD)))
    custom_names = [f.name for f in custom_fields]
    order_columns, descending = _order_columns(sort, dialect, filters)
    keys = [c.label(f"k{i}") for i, c in enumerate(order_columns)]
    sent, after = 0, None
    while sent < EXPORT_LIMIT:
        query = (select(Individual.id, Individual.first_name, Individual.middle_name, Individual.last_name,
                        Individual.sex, Individual.birth_date, Individual.national_id_type,
                        Individual.national_id, Individual.phone, Location.code, Location.name,
                        household, Individual.custom, *keys)
                 .join(Location, Location.id == Individual.location_id)
                 .where(*conditions).order_by(*_order(sort, dialect, filters)).limit(batch))
        if after is not None:  # keyset: continue after the last row sent, at any depth
            position = tuple_(*order_columns)
            query = query.where(position < tuple_(*after) if descending else position > tuple_(*after))
        rows = session.execute(query).all()
        if not rows:
            return
        for r in rows:
            custom = r.custom or {}
            yield [r.id, r.first_name, r.middle_name, r.last_name, SEXES.get(r.sex, r.sex),
                   r.birth_date, r.national_id_type, show(r.national_id), show(r.phone), r.code,
                   r.name, r[11]] + [custom.get(n) for n in custom_names]
        sent += len(rows)
        after = [getattr(rows[-1], f"k{i}") for i in range(len(keys))]
        if len(rows) < batch:
            return


# --- one person -------------------------------------------------------------------------------

def get_individual(session: Session, individual_id: int, *, scope, include_deleted: bool = False
                   ) -> Individual | None:
    """The person if they exist and lie in scope (else None: the view answers 404)."""
    person = session.get(Individual, individual_id)
    if person is None or not scope.allows(person.location):
        return None
    if person.deleted_at is not None and not include_deleted:
        return None
    return person


def create_individual(session: Session, values: dict, *, actor_id: int | None) -> Individual:
    """Insert a person from values already cleaned by ``clean_individual``."""
    person = Individual(**values)
    session.add(person)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:  # the unique index on live national IDs, under a race
        # (The database's own message: the statement in str(exc) names national_id always.)
        if "national_id" in str(exc.orig).lower():
            raise DomainError(f"National ID {values.get('national_id')} is already registered.",
                              field="national_id") from None
        raise
    return person


def enrol_individual(session: Session, raw: dict, *, scope, actor_id: int | None,
                     confirm_similar: bool = False) -> tuple[Individual | None, dict, list, list]:
    """The manual enrolment: validate, look for duplicates, save.

    Returns (person or None, errors, blocking duplicates, similar people), each of those
    people None when they live outside the user's area (the user learns only that someone
    there matches). Nothing is saved when there are errors or blocking duplicates, or
    similar people the user has not confirmed."""
    fields = active_custom_fields(session)
    values, errors = clean_individual(session, raw, custom_fields=fields, scope=scope)
    if errors:
        return None, errors, [], []
    blocking, similar = (
        [p if scope.allows(p.location) else None for p in people] for people in find_duplicates(
            session, national_id=values["national_id"], first_name=values["first_name"],
            last_name=values["last_name"], birth_date=values["birth_date"],
            location_id=values["location_id"]))
    if blocking:
        errors["national_id"] = f"National ID {values['national_id']} is already registered."
        return None, errors, blocking, similar
    if similar and not confirm_similar:
        return None, {}, [], similar
    return create_individual(session, values, actor_id=actor_id), {}, [], similar


def update_individual(session: Session, person: Individual, raw: dict, *, scope,
                      expected_version: int | None, actor_id: int | None) -> tuple[Individual, dict]:
    """Save an edit unless someone else saved the person since ``expected_version``.

    Returns (person, errors); raises ConflictError on a stale version."""
    if expected_version is not None and person.version != expected_version:
        raise ConflictError(
            f"{person.full_name} was changed by someone else while you were editing "
            f"(version {expected_version}, now {person.version}). Your changes were not saved: "
            f"reload to see the current data, then edit again.")
    fields = active_custom_fields(session)
    values, errors = clean_individual(session, raw, custom_fields=fields, scope=scope,
                                      exclude_id=person.id)
    if not errors and values["national_id"]:
        blocking, _ = find_duplicates(session, national_id=values["national_id"], first_name="",
                                      last_name="", birth_date=None, location_id=None,
                                      exclude_id=person.id)
        if blocking:
            errors["national_id"] = f"National ID {values['national_id']} is already registered."
    if errors:
        return person, errors
    # Custom fields the form did not show (inactive ones) keep their values; one it showed
    # and was cleared is removed.
    shown = {f.name for f in fields}
    values["custom"] = {**{k: v for k, v in (person.custom or {}).items() if k not in shown},
                        **values["custom"]}
    name = person.full_name
    try:
        with session.begin_nested():  # (which flushes what was pending before it)
            for key, value in values.items():
                if getattr(person, key) != value:
                    setattr(person, key, value)
            session.flush()
    except StaleDataError:
        raise ConflictError(f"{name} was changed by someone else at the same moment. "
                            "Your changes were not saved: reload and edit again.") from None
    except IntegrityError:  # the unique index on live national IDs: given to someone meanwhile
        return person, {"national_id": f"National ID {values['national_id']} is already registered."}
    return person, {}


def delete_individual(session: Session, person: Individual, *, scope, actor_id: int | None) -> None:
    """Hide a person (history kept). A household's head or payee goes only after someone else
    has taken that place, so no household is left without one."""
    # The person, then their groups (as adding a member takes them): no one makes them
    # head or payee, or adds them to a group, meanwhile; their roles are read after the locks.
    lock_row(session, person)
    if person.deleted_at is not None:
        raise DomainError(f"{person.full_name} is already deleted.")
    _lock_group_ids(session, session.scalars(select(GroupMember.group_id).where(
        GroupMember.individual_id == person.id)).all())
    for member, visible in memberships_of(session, person, scope=scope):
        group = member.group
        others = session.scalar(select(func.count()).where(GroupMember.group_id == group.id,
                                                          GroupMember.id != member.id))
        heads = group.kind == "household" and member.role == "head"
        if not others and (heads or group.primary_recipient_id == person.id):
            named = (f"{group.kind} {group.code}" if visible
                     else OUTSIDE_HOUSEHOLD if group.kind == "household" else OUTSIDE_GROUP)
            raise DomainError(f"{person.full_name} is the only member of {named}, which would be "
                              "led or paid by a deleted person: remove them from it first.")
        if not others:
            continue
        if heads:
            named = f"household {group.code}" if visible else OUTSIDE_HOUSEHOLD
            raise DomainError(f"{person.full_name} heads {named}: choose another head first.")
        if group.primary_recipient_id == person.id:
            named = group.code if visible else OUTSIDE_GROUP
            raise DomainError(f"{person.full_name} receives the payments of {named}: "
                              "choose another primary recipient first.")
    person.deleted_at = now()
    session.flush()
    _stop_payments(session, individual_id=person.id, actor_id=actor_id, group_ids=session.scalars(
        select(GroupMember.group_id).where(GroupMember.individual_id == person.id)).all())


def restore_individual(session: Session, person: Individual, *, show_pii: bool,
                       actor_id: int | None) -> None:
    """Bring a deleted person back, unless their national ID has been given to someone else
    (shown masked unless ``show_pii``)."""
    if person.deleted_at is None:
        raise DomainError(f"{person.full_name} is not deleted.")
    if person.national_id and session.scalar(select(Individual.id).where(
            Individual.national_id == person.national_id, Individual.deleted_at.is_(None),
            Individual.id != person.id)):
        national_id = person.national_id if show_pii else mask(person.national_id)
        raise DomainError(f"Another living person now has national ID {national_id}; "
                          "change one of them before restoring.")
    try:
        with session.begin_nested():
            person.deleted_at = None
            session.flush()
    except IntegrityError:  # someone was given the ID, or restored with it, meanwhile
        national_id = person.national_id if show_pii else mask(person.national_id)
        raise DomainError(f"Another living person now has national ID {national_id}; "
                          "change one of them before restoring.") from None


def programs_of(session: Session, person: Individual, memberships: list[tuple]) -> list[tuple]:
    """(program, beneficiary, name of the group it came through or None) for the person and
    their groups (``memberships`` as ``memberships_of`` gives them: a group outside the
    user's area is not named)."""
    if Beneficiary is None:
        return []
    groups = {m.group_id: m.group.name if visible else OUTSIDE_GROUP for m, visible in memberships}
    condition = Beneficiary.individual_id == person.id
    if groups:
        condition = or_(condition, Beneficiary.group_id.in_(list(groups)))
    rows = session.execute(select(Program, Beneficiary).join(Beneficiary, Beneficiary.program_id == Program.id)
                           .where(condition).order_by(Program.name))
    return [(p, b, groups.get(b.group_id)) for p, b in rows]


def programs_for_filter(session: Session) -> list:
    if Program is None:
        return []
    return list(session.execute(select(Program.id, Program.name).order_by(Program.name)).all())


# --- custom fields and member roles -----------------------------------------------------------

def save_custom_field(session: Session, custom_field: CustomField | None, *, name: str, label: str,
                      type: str, required: bool, unique: bool, pattern: str, choices: list[str],
                      active: bool = True, position: int = 0, actor_id: int | None) -> CustomField:
    name = name.strip().lower()
    if custom_field is None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name):
            raise DomainError("The name must start with a letter and hold only a-z, 0-9 and _ "
                              "(it is the column name in uploads).", field="name")
        reserved = {c.key for c in Individual.__table__.columns} | {"location"}
        if name in reserved:
            raise DomainError(f"{name} is a built-in field.", field="name")
        if session.scalar(select(CustomField.id).where(CustomField.name == name,
                                                       CustomField.program_id.is_(None))):
            raise DomainError(f"A custom field named {name} already exists.", field="name")
    if pattern:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise DomainError(f"The pattern is not a valid regular expression: {exc}.", field="pattern")
    choices = [c.strip() for c in choices if c.strip()]
    field_type = custom_field.type if custom_field is not None else type
    if field_type == "choice" and not choices:
        raise DomainError("A choice list needs at least one choice.", field="choices")
    if custom_field is None:
        custom_field = CustomField(name=name, type=type, program_id=None)
        session.add(custom_field)
    custom_field.label = label.strip() or name
    custom_field.required = required
    custom_field.unique = unique
    custom_field.pattern = pattern or None
    custom_field.choices = choices if field_type == "choice" else []
    custom_field.active = active
    custom_field.position = position
    session.flush()
    return custom_field


def member_roles(session: Session, *, include_inactive: bool = False) -> list[tuple[str, str]]:
    """(code, label) of the roles members can hold; the defaults until an admin edits them."""
    query = select(MemberRole).order_by(MemberRole.position, MemberRole.label)
    if not include_inactive:
        query = query.where(MemberRole.active.is_(True))
    rows = list(session.scalars(query))
    if not rows and not session.scalar(select(MemberRole.code).limit(1)):
        return list(DEFAULT_MEMBER_ROLES)
    return [(r.code, r.label) for r in rows]


def ensure_member_roles(session: Session) -> None:
    if session.scalar(select(MemberRole.code).limit(1)) is None:
        for position, (code, label) in enumerate(DEFAULT_MEMBER_ROLES):
            session.add(MemberRole(code=code, label=label, position=position, active=True))
        session.flush()


def save_member_role(session: Session, *, code: str, label: str, active: bool,
                     actor_id: int | None) -> MemberRole:
    ensure_member_roles(session)
    code = code.strip().lower().replace(" ", "_")
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,29}", code):
        raise DomainError("A role code holds only a-z, 0-9 and _.", field="code")
    if code == "head" and not active:
        raise DomainError("The head role cannot be switched off: every household has a head.",
                          field="code")
    role = session.get(MemberRole, code)
    if role is None:
        position = (session.scalar(select(func.max(MemberRole.position))) or 0) + 1
        role = MemberRole(code=code, position=position)
        session.add(role)
    role.label = label.strip() or code.replace("_", " ").title()
    role.active = active
    session.flush()
    return role


# --- groups -----------------------------------------------------------------------------------

GROUP_SORTS = {"name": Group.name, "code": Group.code, "newest": Group.id.desc()}


def group_filters(session: Session, *, scope, filters: dict) -> list:
    conditions = [Group.deleted_at.is_(None)]
    if not scope.everything:
        conditions.append(scope.covers(Group.location_id))
    q = (filters.get("q") or "").strip()
    if q:
        # Index ranges on the code (upper case) and the name as typed or capitalised.
        if any(c.isdigit() or c == "-" for c in q):  # a code such as HH-0012
            conditions.append(_prefix(Group.code, q.upper(), "any"))
        else:  # a name, capitalised as names are written when typed in lower case
            conditions.append(_prefix(Group.name, q[:1].upper() + q[1:] if q.islower() else q, "any"))
    if filters.get("kind") in GROUP_KINDS:
        conditions.append(Group.kind == filters["kind"])
    location = find_location(session, filters.get("location"))
    if filters.get("location"):
        if location is None:
            conditions.append(false())
        else:
            below = select(Location.id).where(Location.path.startswith(location.path, autoescape=True))
            conditions.append(Group.location_id.in_(below))
    return conditions


def search_groups(session: Session, *, scope, filters: dict, sort: str = "name", page: int = 1,
                  per_page: int = PER_PAGE) -> SearchResult:
    conditions = group_filters(session, scope=scope, filters=filters)
    order = GROUP_SORTS.get(sort, Group.name)
    rows = list(session.scalars(
        select(Group).options(contains_eager(Group.location).lazyload(Location.parent))
        .join(Group.location)
        .where(*conditions).order_by(order, Group.id).offset((page - 1) * per_page).limit(per_page + 1)))
    has_more = len(rows) > per_page
    rows = rows[:per_page]
    inner = select(Group.id).where(*conditions).limit(COUNT_CAP + 1).subquery()
    n = session.scalar(select(func.count()).select_from(inner))
    # Living members, as enrolment's household size counts them: a deleted person stays a
    # member (history kept) but no longer makes the household larger.
    sizes = dict(session.execute(
        select(GroupMember.group_id, func.count()).join(Individual, Individual.id == GroupMember.individual_id)
        .where(GroupMember.group_id.in_([g.id for g in rows]), Individual.deleted_at.is_(None))
        .group_by(GroupMember.group_id)).all()) if rows else {}
    return SearchResult(rows=rows, count=min(n, COUNT_CAP), capped=n > COUNT_CAP, page=page,
                        per_page=per_page, has_more=has_more, households=sizes)


def get_group(session: Session, group_id: int, *, scope) -> Group | None:
    group = session.get(Group, group_id)
    if group is None or group.deleted_at is not None or not scope.allows(group.location):
        return None
    return group


def _lock_groups(session: Session, *groups: Group) -> None:
    """Hold the groups' rows until the transaction ends and read them again as committed.
    Every change by hand to a group's members takes this lock, so two users changing the same
    household at once (PostgreSQL; a writing request on SQLite holds the whole database)
    act one after the other, the second seeing what the first did."""
    _lock_group_ids(session, [g.id for g in groups])
    for group in groups:
        session.refresh(group)


def _lock_group_ids(session: Session, ids) -> None:
    if ids:  # in id order, so that two changes of the same groups never wait for each other
        session.execute(select(Group.id).where(Group.id.in_(sorted(set(ids)))).order_by(Group.id)
                        .with_for_update())


def _check_role(session: Session, role: str) -> str:
    codes = dict(member_roles(session))
    if role not in codes:
        raise DomainError(f"{role or 'An empty role'} is not a member role.", field="role")
    return role


def _household_of(session: Session, individual_id: int) -> GroupMember | None:
    return session.scalar(select(GroupMember).where(GroupMember.individual_id == individual_id,
                                                    GroupMember.group_kind == "household"))


def _person_in_scope(session: Session, individual_id: int, scope) -> Individual:
    person = get_individual(session, individual_id, scope=scope)
    if person is None:
        raise DomainError("That person does not exist or is outside your locations.", field="individual")
    return person


def find_person(session: Session, text: str, *, scope) -> Individual:
    """A living person in scope by exact national ID, or by portal id ("#12" or "12")."""
    text = (text or "").strip()
    person = session.scalar(select(Individual).where(
        Individual.national_id == text.replace(" ", "").upper(), Individual.deleted_at.is_(None)))
    if person is None and (person_id := parse_id(text)) is not None:
        person = session.get(Individual, person_id)
    if person is None or person.deleted_at is not None or not scope.allows(person.location):
        raise DomainError(f"No person with the ID or national ID {text or '(empty)'} in your locations.",
                          field="individual")
    return person


def create_group(session: Session, *, code: str, name: str, kind: str, location_id: int | None,
                 head_id: int | None, scope, actor_id: int | None) -> Group:
    """A new group; a household needs its head (who becomes the primary recipient)."""
    code, name = code.strip().upper(), name.strip()
    if not code or not name:
        raise DomainError("Code and name are required.", field="code" if not code else "name")
    if len(code) > Group.code.type.length:  # ("ß" is "SS" in capitals)
        raise DomainError(f"A code has at most {Group.code.type.length} characters.", field="code")
    if kind not in GROUP_KINDS:
        raise DomainError("Choose household, cooperative or other.", field="kind")
    if session.scalar(select(Group.id).where(Group.code == code)):
        raise DomainError(f"The code {code} is already used.", field="code")
    location = session.get(Location, location_id) if location_id else None
    head = session.get(Individual, head_id) if head_id else None
    if location is None and head is not None:
        location = head.location
    if location is None:
        raise DomainError("Choose the group's location.", field="location")
    if not scope.allows(location):
        raise DomainError("That place is outside your locations.", field="location")
    if kind == "household" and head is None:
        raise DomainError("A household needs a head.", field="head")
    group = Group(code=code, name=name, kind=kind, location_id=location.id)
    session.add(group)
    session.flush()
    if head is not None:
        add_member(session, group, head.id, role="head" if kind == "household" else "member",
                   scope=scope, actor_id=actor_id)
    session.flush()
    return group


def add_member(session: Session, group: Group, individual_id: int, *, role: str, scope,
               actor_id: int | None) -> GroupMember:
    person = _person_in_scope(session, individual_id, scope)
    # The person, then the group, as a delete takes them: a person being deleted joins
    # nothing, and their other joins wait (one household at a time).
    lock_row(session, person)
    if person.deleted_at is not None:
        raise DomainError(f"{person.full_name} was deleted meanwhile; restore them first.",
                          field="individual")
    _lock_groups(session, group)
    role = _check_role(session, role)
    if session.scalar(select(GroupMember.id).where(GroupMember.group_id == group.id,
                                                   GroupMember.individual_id == person.id)):
        raise DomainError(f"{person.full_name} is already a member.", field="individual")
    if group.kind == "household":
        other = _household_of(session, person.id)
        if other is not None:
            named = (f"household {other.group.code}" if scope.allows(other.group.location)
                     else OUTSIDE_HOUSEHOLD)
            raise DomainError(f"{person.full_name} already belongs to {named}; move them instead.",
                              field="individual")
        head = _head(session, group)
        if role == "head" and head is not None:
            raise DomainError("The household already has a head; change the head instead.", field="role")
        if role != "head" and head is None:  # (its last member, the head, was removed)
            raise DomainError(f"Household {group.code} has no head: add its head first.", field="role")
    member = GroupMember(group_id=group.id, individual_id=person.id, group_kind=group.kind, role=role)
    session.add(member)
    if group.kind == "household" and role == "head" and group.primary_recipient_id is None:
        group.primary_recipient_id = person.id  # as a new household's head is
    session.flush()
    session.expire(group, ["members"])
    return member


def _head(session: Session, group: Group) -> GroupMember | None:
    return session.scalar(select(GroupMember).where(GroupMember.group_id == group.id,
                                                    GroupMember.role == "head"))


def get_member(session: Session, group: Group, member_id: int, *, scope) -> GroupMember | None:
    """A membership of ``group`` whose person lives in ``scope``, else None: a member id from
    a URL is trusted no further than the group it came with (whose scope the caller checked),
    and a member who lives elsewhere is shown by role only, so nothing is done to them here."""
    member = session.get(GroupMember, member_id, populate_existing=True)  # not as read before a lock
    if member is None or member.group_id != group.id or not scope.allows(member.individual.location):
        return None
    return member


def _member(session: Session, group: Group, member_id: int, scope) -> GroupMember:
    member = get_member(session, group, member_id, scope=scope)
    if member is None:
        raise DomainError("That person is not a member of this group.")
    return member


def _living_member(session: Session, group: Group, member_id: int, scope, place: str) -> GroupMember:
    """A member who may take a place (head, payee): a deleted person may not."""
    member = _member(session, group, member_id, scope)
    if member.individual.deleted_at is not None:
        raise DomainError(f"{member.individual.full_name} is deleted and cannot become {place}; "
                          "restore them first.")
    return member


def remove_member(session: Session, group: Group, member_id: int, *, scope,
                  actor_id: int | None) -> None:
    _lock_groups(session, group)
    member = _member(session, group, member_id, scope)
    if group.kind == "household":
        others = session.scalar(select(func.count()).where(GroupMember.group_id == group.id,
                                                          GroupMember.id != member.id))
        if member.role == "head" and others:
            raise DomainError("Choose another head before removing the head of the household.")
        if group.primary_recipient_id == member.individual_id and others:
            raise DomainError("Choose another primary recipient before removing this one.")
    if group.primary_recipient_id == member.individual_id:
        group.primary_recipient_id = None
    session.delete(member)
    session.flush()
    _stop_payments(session, group_ids=[group.id], actor_id=actor_id)
    session.expire(group, ["members"])


def change_role(session: Session, group: Group, member_id: int, role: str, *, scope,
                actor_id: int | None) -> GroupMember:
    _lock_groups(session, group)
    member = _member(session, group, member_id, scope)
    role = _check_role(session, role)
    if group.kind == "household":
        if member.role == "head" and role != "head":
            raise DomainError("A household always has a head: make someone else the head instead.",
                              field="role")
        if role == "head" and member.role != "head":
            return set_head(session, group, member_id, scope=scope, actor_id=actor_id)
    member.role = role
    session.flush()
    return member


def set_head(session: Session, group: Group, member_id: int, *, scope,
             former_head_role: str | None = None, actor_id: int | None) -> GroupMember:
    """Make a member the head; the former head takes ``former_head_role``, by default
    other_relative (or, if an admin switched that off, the first role still in use)."""
    _lock_groups(session, group)
    member = _living_member(session, group, member_id, scope, "the head")
    if former_head_role is None:
        roles = [code for code, _label in member_roles(session) if code != "head"]
        former_head_role = "other_relative" if "other_relative" in roles else next(iter(roles), "")
    former_head_role = _check_role(session, former_head_role)
    if former_head_role == "head":
        raise DomainError("The former head needs another role.", field="role")
    current = _head(session, group)
    if current is not None and current.id != member.id:
        current.role = former_head_role
        session.flush()  # the one-head index must see the old head go first
    member.role = "head"
    session.flush()
    return member


def set_primary_recipient(session: Session, group: Group, member_id: int, *, scope,
                          actor_id: int | None) -> None:
    _lock_groups(session, group)
    member = _living_member(session, group, member_id, scope, "the primary recipient")
    group.primary_recipient_id = member.individual_id
    session.flush()


def move_member(session: Session, source: Group, member_id: int, target: Group, *, role: str, scope,
                actor_id: int | None) -> GroupMember:
    """Move a member of ``source`` to another household, keeping both valid. Both households
    must lie in scope: taking someone out of a household is a change to it."""
    # The person, then the households, as adding a member and a delete take them: the other
    # way round, a move and a delete of the same person each held what the other waited for.
    person = _member(session, source, member_id, scope).individual
    lock_row(session, person)
    if person.deleted_at is not None:
        raise DomainError(f"{person.full_name} was deleted meanwhile; restore them first.")
    _lock_groups(session, source, target)
    member = _member(session, source, member_id, scope)  # as it is now, under the locks
    if source.id == target.id:
        raise DomainError("The person is already in this household.", field="target")
    if source.kind != "household" or target.kind != "household":
        raise DomainError("Only household members move between households.", field="target")
    if not scope.allows(source.location) or not scope.allows(target.location):
        raise DomainError("That household is outside your locations.", field="target")
    individual_id = member.individual_id
    remove_member(session, source, member.id, scope=scope, actor_id=actor_id)
    return add_member(session, target, individual_id, role=role, scope=scope, actor_id=actor_id)


def check_household(session: Session, group: Group) -> list[str]:
    """What is wrong with a household (empty list when it holds the invariants)."""
    if group.kind != "household":
        return []
    problems = []
    members = list(session.scalars(select(GroupMember).where(GroupMember.group_id == group.id)))
    heads = [m for m in members if m.role == "head"]
    if members and len(heads) != 1:
        problems.append("A household needs exactly one head.")
    if members and group.primary_recipient_id not in {m.individual_id for m in members}:
        problems.append("The primary recipient must be a member of the household.")
    return problems


def group_members(session: Session, group: Group, *, scope) -> list[tuple[GroupMember, bool]]:
    """(member with their person, lives in scope), in one statement. A group in the user's
    area may hold people who live outside it: the user may know their role, not who they are."""
    return [(member, bool(visible)) for member, visible in session.execute(
        select(GroupMember, scope.covers(Individual.location_id)).join(GroupMember.individual)
        .options(contains_eager(GroupMember.individual))
        .where(GroupMember.group_id == group.id).order_by(GroupMember.role != "head", GroupMember.id))]


def memberships_of(session: Session, person: Individual, *, scope) -> list[tuple[GroupMember, bool]]:
    """(membership with its group, group in scope), in one statement: a person in the user's
    area may belong to a group registered outside it, which must stay unnamed."""
    return [(member, bool(visible)) for member, visible in session.execute(
        select(GroupMember, scope.covers(Group.location_id)).join(GroupMember.group)
        .where(GroupMember.individual_id == person.id)
        .options(lazyload(GroupMember.individual), contains_eager(GroupMember.group).lazyload(Group.location))
        .order_by(GroupMember.group_kind != "household", GroupMember.id)
        .execution_options(populate_existing=True))]  # as committed, not as read before a lock

