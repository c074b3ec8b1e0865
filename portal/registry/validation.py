"""Validation of people and their custom fields, the same on every path (form, upload, API).

Everything here takes raw values as they arrive (form strings, spreadsheet cells that may be
numbers or dates) and returns typed values ready for the model plus readable errors keyed by
field name. Nothing here writes.
"""
from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from difflib import SequenceMatcher
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.clock import today
from portal.locations.models import Location
from portal.registry.models import CustomField, Individual

SEX_WORDS = {
    "f": "F", "female": "F", "woman": "F", "w": "F", "girl": "F", "fem": "F",
    "m": "M", "male": "M", "man": "M", "boy": "M",
    "o": "O", "other": "O", "x": "O",
}
# Yes and no as forms, spreadsheets and French or Spanish speakers write them; a custom
# yes/no field and an upload's primary-recipient column take the same words.
TRUE_WORDS = {"true", "yes", "y", "1", "on", "t", "x", "oui", "si", "sí"}
FALSE_WORDS = {"false", "no", "n", "0", "off", "f", "non"}
ID_TYPES = ("national_id", "passport", "birth_certificate", "voter_card", "other")
PHONE_RE = re.compile(r"^\+?[0-9]{7,15}$")
MAX_NAME = 80
# Invisible characters a spreadsheet cannot hold (openpyxl refuses them) and no screen shows;
# tab, line feed and carriage return are ordinary text.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def control_character(text: str) -> str | None:
    """Why ``text`` cannot be kept, when it holds an invisible control character."""
    found = CONTROL.search(text)
    if found:
        return f"contains an invisible control character (U+{ord(found.group()):04X})"
    return None


def _text(value) -> str:
    """A cell as text: None is empty, 1234.0 from a spreadsheet is '1234'."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


@lru_cache(maxsize=65536)
def fold(text: str) -> str:
    """Lower-case, accents stripped, inner whitespace collapsed: the search form of a name.

    Remembered: names repeat (a registry has a few thousand distinct ones), and uploads and
    duplicate checks fold the same names again and again."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.lower().split())


_NAME_KEY_LENGTH = Individual.name_key.type.length


def name_key(first: str | None, middle: str | None, last: str | None) -> str:
    """'Chikondi', '', 'Banda' -> 'banda chikondi': indexed prefix search by surname first.
    Cut to its column: folding can lengthen a name (one ligature character unfolds into
    eighteen), and a prefix search reads no further anyway."""
    return " ".join(p for p in (fold(last), fold(first), fold(middle)) if p)[:_NAME_KEY_LENGTH]


def parse_date(value, *, day_first: bool | None = None) -> date:
    """A date from a date, an ISO string, or d/m/Y (day_first) or m/d/Y text.

    With day_first None a slash date is accepted only when it cannot be misread
    (a part above 12); otherwise ValueError asks for YYYY-MM-DD."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = _text(value)
    if len(text) == 10 and text[4] == "-" == text[7] and text[:4].isdigit():
        try:  # YYYY-MM-DD, as most files and every date cell give it: 4 times faster
            return date.fromisoformat(text)
        except ValueError:
            pass  # the general reading below says what is wrong
    if not text:
        raise ValueError("is empty")
    text = text.split("T")[0].split(" ")[0]
    if re.fullmatch(r"\d{4}-\d{1,2}-\d{1,2}", text):
        y, m, d = (int(p) for p in text.split("-"))
        return date(y, m, d)
    match = re.fullmatch(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})", text)
    if not match:
        raise ValueError("is not a date; use YYYY-MM-DD")
    a, b, y = (int(p) for p in match.groups())
    if day_first is None:
        if a > 12 >= b:
            day_first = True
        elif b > 12 >= a:
            day_first = False
        elif a == b:
            day_first = True
        else:
            raise ValueError("could be read two ways; use YYYY-MM-DD")
    d, m = (a, b) if day_first else (b, a)
    return date(y, m, d)


# --- custom fields ----------------------------------------------------------------------------

def _choice_values(field: CustomField) -> list[str]:
    values = []
    for choice in field.choices or []:
        if isinstance(choice, dict):
            values.append(str(choice.get("value", "")))
        elif isinstance(choice, (list, tuple)) and choice:
            values.append(str(choice[0]))
        else:
            values.append(str(choice))
    return [v for v in values if v]


# A custom number is kept in JSON and compared in queries: past 15 digits a float (JSON's
# number) loses digits, and past 19 no integer parameter holds it (the query would fail).
NUMBER_DIGITS = 15
NUMBER_MAX = 10**NUMBER_DIGITS - 1


# Commas that group thousands (1,250.5); any other comma is a decimal comma (2,5), which is
# refused rather than read as a number ten times larger.
_GROUPED = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?")


def _number_text(text: str) -> str:
    text = text.replace(" ", "")
    return text.replace(",", "") if _GROUPED.fullmatch(text) else text


def _typed(field: CustomField, raw, day_first: bool | None = None):
    """One custom value, typed for JSON; ValueError with the reason when it is not valid."""
    text = _text(raw)
    if field.type == "text":
        if problem := control_character(text):
            raise ValueError(problem)
        value = text
    elif field.type == "integer":
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError("must be a whole number")
        try:
            value = int(_number_text(text))
        except ValueError:
            raise ValueError("must be a whole number") from None
        if abs(value) > NUMBER_MAX:
            raise ValueError(f"must be a whole number of at most {NUMBER_DIGITS} digits")
    elif field.type == "decimal":
        try:
            number = Decimal(_number_text(text))
        except InvalidOperation:
            raise ValueError("must be a number, with a point before any decimals (2.5)" if "," in text
                             else "must be a number") from None
        if not number.is_finite():
            raise ValueError("must be a number")
        if abs(number) > NUMBER_MAX:
            raise ValueError(f"must be a number of at most {NUMBER_DIGITS} digits before the point")
        value = float(number)
    elif field.type == "boolean":
        if isinstance(raw, bool):
            value = raw
        elif text.lower() in TRUE_WORDS:
            value = True
        elif text.lower() in FALSE_WORDS:
            value = False
        else:
            raise ValueError("must be yes or no")
    elif field.type == "date":
        try:
            value = parse_date(raw, day_first=day_first).isoformat()
        except ValueError as exc:
            raise ValueError(f"must be a date ({exc})") from None
    elif field.type == "choice":
        allowed = _choice_values(field)
        matches = [c for c in allowed if c.lower() == text.lower()]
        if not matches:
            raise ValueError("must be one of " + ", ".join(allowed))
        value = matches[0]
    else:  # the database check constraint makes this unreachable
        raise ValueError(f"has an unknown type {field.type}")
    if field.pattern and field.type in ("text", "integer", "choice"):
        try:
            matched = re.fullmatch(field.pattern, text)
        except re.error:
            matched = True  # a broken pattern is refused when the field is saved
        if not matched:
            raise ValueError("does not have the expected format")
    return value


_EMPTY = object()  # a custom value left out: empty and not required


def custom_value(field: CustomField, raw_value, day_first: bool | None = None) -> tuple[object, str | None]:
    """One active custom field's typed value (``_EMPTY`` when left out) and its error; a date
    is read in ``day_first`` order, as the birth date beside it."""
    if raw_value is None or _text(raw_value) == "":
        return _EMPTY, (f"{field.label} is required." if field.required else None)
    try:
        return _typed(field, raw_value, day_first), None
    except ValueError as exc:
        return _EMPTY, f"{field.label} {exc}."


def clean_custom(fields: list[CustomField], raw: dict) -> tuple[dict, dict[str, str]]:
    """Typed values of the active custom fields present in ``raw``, and errors by field name.

    Empty values are left out (a required one is an error)."""
    values: dict = {}
    errors: dict[str, str] = {}
    for field in fields:
        if not field.active:
            continue
        value, error = custom_value(field, raw.get(field.name))
        if error:
            errors[field.name] = error
        elif value is not _EMPTY:
            values[field.name] = value
    return values, errors


def _json_column(model, field: CustomField):
    return typed_json(model.custom[field.name], field)


def typed_json(element, field: CustomField):
    """A JSON element compared as the custom field's type."""
    if field.type == "integer":
        return element.as_integer()
    if field.type == "decimal":
        return element.as_float()
    if field.type == "boolean":
        return element.as_boolean()
    return element.as_string()


def check_custom_unique(session: Session, fields: list[CustomField], values: dict,
                        exclude_id: int | None = None, *, model=None) -> dict[str, str]:
    """Errors for unique custom fields whose value another living record already has."""
    model = model or Individual
    errors: dict[str, str] = {}
    for field in fields:
        if not (field.active and field.unique) or values.get(field.name) is None:
            continue
        query = select(model.id).where(_json_column(model, field) == values[field.name])
        if hasattr(model, "deleted_at"):
            query = query.where(model.deleted_at.is_(None))
        if exclude_id is not None:
            query = query.where(model.id != exclude_id)
        if session.scalar(query.limit(1)) is not None:
            errors[field.name] = f"{field.label} {values[field.name]} is already used by someone else."
    return errors


def active_custom_fields(session: Session, program_id: int | None = None) -> list[CustomField]:
    query = select(CustomField).where(CustomField.active.is_(True))
    query = query.where(CustomField.program_id.is_(None) if program_id is None
                        else CustomField.program_id == program_id)
    return list(session.scalars(query.order_by(CustomField.position, CustomField.id)))


# --- individuals ------------------------------------------------------------------------------

def _village(session: Session, code: str, location_id,
             every: dict | None = None) -> tuple[Location | None, str]:
    """The location named by a code or an id; cached per session, or taken from ``every``
    location (keyed as the cache is) without reading anything."""
    cache = session.info.setdefault("registry_locations", {}) if every is None else every
    if code:
        key = ("code", code.upper())
        if every is None and key not in cache:
            cache[key] = session.scalar(select(Location).where(Location.code == code)) or \
                session.scalar(select(Location).where(Location.code == code.upper()))
        return cache.get(key), code
    if location_id not in (None, ""):
        try:
            location_id = int(location_id)
        except (TypeError, ValueError):
            return None, str(location_id)
        key = ("id", location_id)
        if every is None and key not in cache:
            cache[key] = session.get(Location, location_id)
        return cache.get(key), str(location_id)
    return None, ""


NAME_FIELDS = (("first_name", "First name", True), ("middle_name", "Middle name", False),
               ("last_name", "Last name", True))
NATIONAL_ID_RE = re.compile(r"[A-Z0-9/-]+")
PHONE_NOISE_RE = re.compile(r"[\s().'-]")  # ' also: exports guard "+265..." as "'+265..."
PHONE_AS_FLOAT_RE = re.compile(r"(\+?[0-9]{7,15})\.0+")  # "265991234567.0", as pandas writes it


class PersonRules:
    """The registry's rules for a person's fields, as ``clean_individual`` applies them.

    Rows are checked column by column, each distinct value of a column once: a 100,000-row
    upload holds a few thousand distinct names, dates, sexes and villages, so most of its
    cells cost a dictionary lookup. National IDs and phones, unique by nature, are checked
    cell by cell."""

    def __init__(self, session: Session, *, custom_fields: list[CustomField], scope,
                 day_first: bool | None = None):
        self.session = session
        self.scope = scope
        self.day_first = day_first
        self.custom_fields = [f for f in custom_fields if f.active]
        self._memo: dict = {}
        self._today = today()
        self._locations: dict | None = None  # every location, once load_locations ran

    def load_locations(self) -> None:
        """Read every location now, so checking rows needs no database: a process forked to
        check a file must not use its parent's connection. Keyed as ``_village`` looks up,
        a code in capitals; a code stored in capitals wins over one differing in case only."""
        locations: dict = {}
        for location in self.session.scalars(select(Location)):
            key = ("code", location.code.upper())
            if key not in locations or location.code == key[1]:
                locations[key] = location
            locations[("id", location.id)] = location
        self._locations = locations

    def _column(self, values: list, rule, *args) -> list:
        """``rule(value, *args)`` for each value of a column, computed once per distinct
        value. Only text (and empty) cells are remembered: other types could compare equal
        (1 == 1.0 == True) and still be different answers."""
        if not set(map(type, values)) <= {str, type(None)}:
            return [rule(value, *args) for value in values]
        memo = self._memo.setdefault((rule, args), {})
        for value in set(values).difference(memo):
            memo[value] = rule(value, *args)
        return list(map(memo.__getitem__, values))

    @staticmethod
    def _name(raw, label: str, required: bool) -> tuple[str | None, str | None]:
        text = " ".join(_text(raw).split())
        if required and not text:
            return text, f"{label} is required."
        if len(text) > MAX_NAME:
            return text, f"{label} is longer than {MAX_NAME} characters."
        return text, None

    @staticmethod
    def _sex(raw) -> tuple[str | None, str | None]:
        sex = _text(raw).lower()
        if not sex:
            return None, "Sex is required."
        if sex not in SEX_WORDS:
            return None, "Sex must be F, M or O (female, male, other)."
        return SEX_WORDS[sex], None

    def _birth_date(self, raw, day_first) -> tuple[date | None, str | None]:
        if raw is None or _text(raw) == "":
            return None, "Date of birth is required."
        try:
            born = parse_date(raw, day_first=day_first)
        except ValueError as exc:
            return None, f"Date of birth {exc}."
        if born > self._today:
            return born, "Date of birth is in the future."
        if born.year < 1900:
            return born, "Date of birth is before 1900."
        return born, None

    def _location(self, code, location_id=None) -> tuple[int | None, str | None]:
        code = _text(code)
        location, given = _village(self.session, code, location_id, self._locations)
        if location is None:
            return None, f"No location has the code {given}." if given else "Village is required."
        if not self.scope.allows(location):  # its name is not told to someone outside it
            return location.id, (f"The code {given} is a place outside your locations."
                                 if code else "That place is outside your locations.")
        if location.kind != "village":
            return location.id, f"{location.name} is a {location.kind}; choose a village."
        return location.id, None

    def _custom(self, raw, field: CustomField) -> tuple[object, str | None]:
        return custom_value(field, raw, self.day_first)

    def clean(self, raw: dict) -> tuple[dict, dict[str, str]]:
        """Values ready for ``Individual(**values)`` and errors {field: message}; custom
        fields are not checked for uniqueness here."""
        return self.clean_many([raw])[0]

    def clean_many(self, raws: list[dict]) -> list[tuple[dict, dict[str, str]]]:
        """``clean`` for many rows at once, column by column."""
        column = self._column

        def cells(key: str) -> list:
            return [raw.get(key) for raw in raws]

        checked = []  # (field name in errors, value key or None, answers)
        for key, label, required in NAME_FIELDS:
            checked.append((key, None, column(cells(key), self._name, label, required)))
        checked.append(("sex", "sex", column(cells("sex"), self._sex)))
        checked.append(("birth_date", "birth_date",
                        column(cells("birth_date"), self._birth_date, self.day_first)))
        ids = cells("location_id")
        if any(lid not in (None, "") for lid in ids):  # a form or the API names the village by id
            locations = [self._location(code, lid if type(lid) in (int, str) else None)
                         for code, lid in zip(cells("location"), ids)]
        else:
            locations = column(cells("location"), self._location)
        checked.append(("location", "location_id", locations))
        customs = [(field.name, column(cells(field.name), self._custom, field))
                   for field in self.custom_fields]
        name_keys = self._memo.setdefault(name_key, {})
        identities = map(self._identity, cells("national_id"), cells("national_id_type"))
        phones = map(self._phone, cells("phone"))
        results = []
        for i, (identity, phone) in enumerate(zip(identities, phones)):
            values: dict = {}
            errors: dict[str, str] = {}
            for key, value_key, answers in checked:
                value, error = answers[i]
                if error:
                    errors[key] = error
                values[value_key or key] = value
            names = (values["first_name"], values["middle_name"] or None, values["last_name"])
            values["middle_name"] = names[1]
            key = name_keys.get(names)
            if key is None:
                key = name_keys[names] = name_key(*names)
            values["name_key"] = key
            (values["national_id"], values["national_id_type"]), identity_errors = identity
            if identity_errors:
                errors.update(identity_errors)
            values["phone"], error = phone
            if error:
                errors["phone"] = error
            custom: dict = {}
            for name, answers in customs:
                value, error = answers[i]
                if error:
                    errors[name] = error
                elif value is not _EMPTY:
                    custom[name] = value
            values["custom"] = custom
            results.append((values, errors))
        return results

    @staticmethod
    def _identity(raw_id, raw_type) -> tuple[tuple[str | None, str | None], dict[str, str]]:
        national_id = (raw_id.strip() if type(raw_id) is str else _text(raw_id)).replace(" ", "").upper()
        id_type = (raw_type.strip() if type(raw_type) is str else _text(raw_type)).lower().replace(" ", "_")
        errors = {}
        if len(national_id) > 40:
            errors["national_id"] = "National ID is longer than 40 characters."
        elif national_id and not NATIONAL_ID_RE.fullmatch(national_id):
            errors["national_id"] = "National ID may hold only letters, digits, / and -."
        if id_type and id_type not in ID_TYPES:
            errors["national_id_type"] = "ID type must be one of " + ", ".join(ID_TYPES) + "."
        return (national_id or None, (id_type or "national_id") if national_id else (id_type or None)), errors

    @staticmethod
    def _phone(raw) -> tuple[str | None, str | None]:
        phone = raw.strip() if type(raw) is str else _text(raw)
        if "." in phone:  # a number written as a float by an export: its ".0" is no digit
            as_float = PHONE_AS_FLOAT_RE.fullmatch(phone)
            phone = as_float.group(1) if as_float else phone
        phone = PHONE_NOISE_RE.sub("", phone)
        if phone and not PHONE_RE.match(phone):
            return phone, "Phone must have 7 to 15 digits, optionally starting with +."
        return phone or None, None


def clean_individual(session: Session, raw: dict, *, custom_fields: list[CustomField], scope,
                     day_first: bool | None = None, check_unique: bool = True,
                     exclude_id: int | None = None) -> tuple[dict, dict[str, str]]:
    """Values ready for ``Individual(**values)`` and errors {field: message}.

    Checks names, sex, birth date, identifiers, that the location is a village within the
    caller's scope, and the custom fields (including uniqueness unless ``check_unique`` is
    False, for callers that check a whole batch at once)."""
    values, errors = PersonRules(session, custom_fields=custom_fields, scope=scope,
                                 day_first=day_first).clean(raw)
    if check_unique and values["custom"]:
        for name, message in check_custom_unique(session, custom_fields, values["custom"],
                                                 exclude_id).items():
            errors.setdefault(name, message)
    return values, errors


# --- duplicates -------------------------------------------------------------------------------

def similar_names(a_first: str, a_last: str, b_first: str, b_last: str) -> bool:
    a_first, a_last, b_first, b_last = fold(a_first), fold(a_last), fold(b_first), fold(b_last)
    if (a_first == b_first and a_last == b_last) or (a_first == b_last and a_last == b_first):
        return True  # same names, perhaps swapped
    if a_last == b_last and a_first[:3] == b_first[:3] and a_first:
        return True
    a, b = f"{a_first} {a_last}", f"{b_first} {b_last}"
    # ratio() is 2M/T (M matching characters, T both lengths), so ratio() >= 0.8 needs
    # 5M >= 2T. M is at most the shorter length and at most the letters the two names share:
    # these bounds cost far less than the matcher and tell most strangers apart.
    total = len(a) + len(b)
    if 5 * min(len(a), len(b)) < 2 * total:
        return False
    if max(len(a), len(b)) < _SLOT_BITS and 5 * (_letters(a) & _letters(b)).bit_count() < 2 * total:
        return False
    return SequenceMatcher(None, a, b).ratio() >= 0.8


_SLOTS = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}
_SLOT_BITS = 256  # more than any letter's count in a name of first and last (80 each)


@lru_cache(maxsize=65536)
def _letters(text: str) -> int:
    """The letters of ``text`` as a bit set, one bit per occurrence (the k-th of letter i is
    bit 256 i + k): the letters two names share are then one AND and a bit count, in C (an
    upload compares some 70,000 pairs). Other characters share the last slot and are counted
    there together, which can only raise the bound, so no similar pair is missed."""
    bits, counted = 0, [0] * (len(_SLOTS) + 1)
    other = len(_SLOTS)
    for c in text:
        slot = _SLOTS.get(c, other)
        bits |= 1 << (_SLOT_BITS * slot + counted[slot])
        counted[slot] += 1
    return bits


def area_path(location: Location) -> str:
    """The district (or the location itself when higher) whose people count as 'same area'."""
    parts = [p for p in location.path.split("/") if p]
    return "/" + "/".join(parts[:2]) + "/"


def find_duplicates(session: Session, *, national_id, first_name, last_name, birth_date,
                    location_id, exclude_id: int | None = None
                    ) -> tuple[list[Individual], list[Individual]]:
    """(blocking, warnings): the living people with the same national ID, and those with a
    similar name, the same date of birth and a village in the same district."""
    live = [Individual.deleted_at.is_(None)]
    if exclude_id is not None:
        live.append(Individual.id != exclude_id)
    blocking: list[Individual] = []
    if national_id:
        blocking = list(session.scalars(
            select(Individual).where(Individual.national_id == national_id, *live).limit(10)))
    warnings: list[Individual] = []
    location = session.get(Location, location_id) if location_id else None
    if birth_date and location is not None and (first_name or last_name):
        area = area_path(location)
        candidates = session.scalars(
            select(Individual).join(Location, Individual.location_id == Location.id)
            .where(Individual.birth_date == birth_date, Location.path.startswith(area, autoescape=True),
                   *live).order_by(Individual.id).limit(200))
        seen = {p.id for p in blocking}
        warnings = [p for p in candidates if p.id not in seen and
                    similar_names(first_name or "", last_name or "", p.first_name, p.last_name)]
    return blocking, warnings[:10]
