"""The columns an upload may have, how file headers match them, and the templates built
from them (CSV and XLSX with instructions and dropdowns).

The list follows the registry: the person's fields, every active custom field for
individuals, and three household columns so one file creates people and their households.
"""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.imports.reading import PEOPLE_SHEET, normalise_header
from portal.registry.exports import inert
from portal.registry.models import DEFAULT_MEMBER_ROLES, SEXES, CustomField, MemberRole
from portal.registry.validation import FALSE_WORDS, TRUE_WORDS


@dataclass(frozen=True)
class Column:
    name: str  # the key in a row's raw values (a registry field or custom field name)
    label: str  # the header the template writes
    required: bool = False
    hint: str = ""
    example: str = ""
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default_factory=tuple)
    custom: bool = False


CORE = (
    Column("first_name", "First name", True, "Text", "Amina", aliases=("given name", "firstname", "forename")),
    Column("middle_name", "Middle name", False, "Text", "", aliases=("middlename", "other names")),
    Column("last_name", "Last name", True, "Text", "Mwangi", aliases=("surname", "family name", "lastname")),
    Column("sex", "Sex", True, "F, M or O (also Female, Male, Other)", "F", tuple(SEXES),
           aliases=("gender",)),
    Column("birth_date", "Birth date", True, "YYYY-MM-DD, or day/month/year as chosen on upload",
           "1990-05-17", aliases=("date of birth", "dob", "birthdate", "born")),
    Column("national_id_type", "National ID type", False, "Text, e.g. national_id, passport", "",
           aliases=("id type",)),
    Column("national_id", "National ID", False, "Unique per living person", "",
           aliases=("nid", "id number", "national id number", "id no")),
    Column("phone", "Phone", False, "Digits, optional leading +", "",
           aliases=("phone number", "mobile", "telephone", "msisdn")),
    Column("location", "Village code", True, "Code of a village in your area", "",
           aliases=("village", "location", "location code", "village id")),
)
HOUSEHOLD = (
    Column("household_code", "Household code", False,
           "Same code on every member's row; new codes create households", "HH-0001",
           aliases=("household", "household id", "hh code", "hh id", "group code")),
    Column("role", "Role", False, "Role in the household (one head per household)", "head",
           aliases=("member role", "relationship", "role in household")),
    Column("primary_recipient", "Primary recipient", False,
           "yes for the one member who receives payments (default: the head)", "yes", ("yes", "no"),
           aliases=("recipient", "is primary recipient")),
)
HOUSEHOLD_FIELDS = {c.name for c in HOUSEHOLD}


def custom_fields(session: Session) -> list[CustomField]:
    return list(session.scalars(select(CustomField).where(
        CustomField.program_id.is_(None), CustomField.active.is_(True)).order_by(
        CustomField.position, CustomField.id)))


def member_roles(session: Session) -> list[str]:
    """The codes of the active member roles (the registry's defaults until an admin edits
    the list)."""
    codes = list(session.scalars(select(MemberRole.code).where(MemberRole.active.is_(True))
                                 .order_by(MemberRole.position, MemberRole.code)))
    if not codes and session.scalar(select(MemberRole.code).limit(1)) is None:
        codes = [code for code, _label in DEFAULT_MEMBER_ROLES]
    return codes


def columns(session: Session, fields: list[CustomField] | None = None,
            roles: list[str] | None = None) -> list[Column]:
    fields = custom_fields(session) if fields is None else fields
    roles = member_roles(session) if roles is None else roles
    out = list(CORE)
    for cf in fields:
        choices: tuple[str, ...] = ()
        hint = cf.type
        if cf.type == "choice":
            choices = tuple(str(c) for c in cf.choices or ())
            hint = "One of " + ", ".join(choices)
        elif cf.type == "boolean":
            choices, hint = ("yes", "no"), "yes or no"
        elif cf.type == "date":
            hint = "YYYY-MM-DD"
        out.append(Column(cf.name, cf.label, cf.required, hint, "", choices, custom=True))
    role = HOUSEHOLD[1]
    out.extend([HOUSEHOLD[0], Column(role.name, role.label, False, role.hint, role.example,
                                     tuple(roles), role.aliases), HOUSEHOLD[2]])
    return out


def match_headers(headers: list[str], cols: list[Column]) -> dict[str, str]:
    """file header -> column name, for the headers that match a column (by name, label or
    alias, whatever the case and spacing); unmatched headers map to ''."""
    lookup: dict[str, str] = {}
    for col in cols:
        for key in (col.name, col.label, *col.aliases):
            lookup.setdefault(normalise_header(key), col.name)
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for header in headers:
        name = lookup.get(normalise_header(header), "")
        if name in used:
            name = ""
        if name:
            used.add(name)
        if header:
            mapping[header] = name
    return mapping


def missing_required(mapping: dict[str, str], cols: list[Column]) -> list[Column]:
    mapped = set(mapping.values())
    return [c for c in cols if c.required and c.name not in mapped]


def apply_saved(mapping: dict[str, str], saved: dict[str, str], cols: list[Column]) -> dict[str, str] | None:
    """A saved mapping applied to a file's headers, each found as the signature finds it
    (whatever its case and spacing: a "TELEPHONE" column once saved as "Telephone" keeps its
    field); a header it lacks keeps ``mapping``'s match. None when the saved mapping names a
    field that no longer exists: the user maps the columns again."""
    by_key = {normalise_header(h): name for h, name in saved.items()}
    names = {c.name for c in cols}
    chosen = {h: by_key.get(normalise_header(h), name) for h, name in mapping.items()}
    return None if any(name and name not in names for name in chosen.values()) else chosen


def headers_signature(headers: list[str]) -> str:
    keys = sorted(normalise_header(h) for h in headers if normalise_header(h))
    return hashlib.sha256("\x1f".join(keys).encode()).hexdigest()


def parse_yes_no(text: str) -> bool | None:
    """True, False, or None when the text is neither: the words of a custom yes/no field,
    and an empty cell is no."""
    key = (text or "").strip().lower()
    if key in TRUE_WORDS:
        return True
    if not key or key in FALSE_WORDS:
        return False
    return None


# --- templates ----------------------------------------------------------------------------

def template_csv(cols: list[Column]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([inert(c.label) for c in cols])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def template_xlsx(cols: list[Column]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font, PatternFill
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    wb = Workbook()
    sheet = wb.active
    sheet.title = PEOPLE_SHEET  # the sheet an upload is read from
    sheet.append([inert(c.label) for c in cols])
    bold = Font(bold=True)
    required_fill = PatternFill("solid", fgColor="FFF2CC")
    lists = wb.create_sheet("Lists")
    lists.sheet_state = "hidden"
    for i, col in enumerate(cols, start=1):
        letter = get_column_letter(i)
        cell = sheet.cell(row=1, column=i)
        cell.font = bold
        if col.required:
            cell.fill = required_fill
        sheet.column_dimensions[letter].width = max(12, len(col.label) + 4)
        # Text columns stay text: IDs and phones keep their leading zeros.
        number_format = "yyyy-mm-dd" if col.name == "birth_date" or "YYYY-MM-DD" == col.hint else "@"
        for row in range(2, 1002):
            sheet.cell(row=row, column=i).number_format = number_format
        if col.choices:
            for j, choice in enumerate(col.choices, start=1):
                lists.cell(row=j, column=i, value=inert(choice))
            ref = f"Lists!${letter}$1:${letter}${len(col.choices)}"
            rule = DataValidation(type="list", formula1=ref, allow_blank=not col.required,
                                  showErrorMessage=True, errorTitle=col.label,
                                  error=f"Choose one of: {', '.join(col.choices)}")
            rule.add(f"{letter}2:{letter}100000")
            sheet.add_data_validation(rule)
        elif col.name == "birth_date":
            rule = DataValidation(type="date", operator="greaterThan", formula1="1",
                                  showErrorMessage=True, errorTitle="Birth date",
                                  error="Enter a date, e.g. 1990-05-17")
            rule.add(f"{letter}2:{letter}100000")
            sheet.add_data_validation(rule)
    sheet.freeze_panes = "A2"
    notes = wb.create_sheet("Instructions", 0)
    notes.append(["How to fill in this file"])
    notes["A1"].font = Font(bold=True, size=14)
    for line in (
        f"One row per person, on the sheet '{PEOPLE_SHEET}'. Keep the first row (the column names).",
        "Columns with a yellow header are required.",
        "Dates: YYYY-MM-DD, or a date cell. Other orders are accepted when chosen on upload.",
        "Households: give every member the same household code, one member the role 'head'.",
        "A person whose national ID is already registered is updated, skipped or refused, "
        "as you choose when uploading.",
        "",
    ):
        notes.append([line])
    notes.append(["Column", "Required", "Format", "Example"])
    for cell in notes[notes.max_row]:
        cell.font = bold
    for col in cols:
        notes.append([inert(v) for v in (col.label, "yes" if col.required else "", col.hint, col.example)])
    notes.column_dimensions["A"].width = 24
    notes.column_dimensions["C"].width = 70
    wb.active = 1
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
