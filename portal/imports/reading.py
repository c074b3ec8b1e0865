"""Reading uploaded spreadsheets: CSV (UTF-8 or Windows-1252, `,` `;` or tab) and XLSX
(streamed with python-calamine), with the checks that turn a bad file into a clear message.

``open_table(path, max_rows=...)`` returns a ``Table``: its headers and an iterator of
``(row_number, cells)`` with every cell as text (Excel dates as ISO dates, whole numbers
without ``.0``). Blank rows are skipped. A problem raises ``FileProblem`` (a DomainError)
and nothing has been written anywhere.

``read_head(path, max_rows=...)`` checks a file and returns its format and headers having
read only its first rows, so receiving a large workbook takes milliseconds in the web
request; the validation job reads the whole file.
"""
from __future__ import annotations

import codecs
import csv
import re
import zipfile
from xml.etree import ElementTree
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Iterator

from portal.errors import DomainError
from portal.registry.exports import without_guard

CELL_MAX = 2000  # characters in one cell
UNZIPPED_MAX = 400 * 1024 * 1024  # bytes of XML an .xlsx may expand to
RATIO_MAX = 100  # compression ratio of one member above 1 MB: a zip bomb, not a workbook
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NOT_SPREADSHEET = {
    b"%PDF": "a PDF document", b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image", b"\x1f\x8b": "a gzip archive", b"Rar!": "a RAR archive",
    b"7z\xbc\xaf": "a 7-Zip archive", b"{\\rtf": "an RTF document",
}
_ACCEPTED = "Upload a .csv or .xlsx file (in Excel: File > Save As > CSV UTF-8 or Excel Workbook)."


class FileProblem(DomainError):
    """The file cannot be read as a table of people."""


@dataclass
class Table:
    format: str
    headers: list[str]
    rows: Iterator[tuple[int, list[str]]]
    total: int | None = None  # data rows, when the format tells before reading


def detect_format(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if not head.strip():
        raise FileProblem("The file is empty.")
    if head.startswith(b"PK\x03\x04"):
        return "xlsx"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise FileProblem("This is a password-protected workbook or an old Excel 97-2003 (.xls) "
                          "file. Remove the password and save it as an Excel Workbook (.xlsx).")
    for magic, what in _NOT_SPREADSHEET.items():
        if head.startswith(magic):
            raise FileProblem(f"This is {what}, not a spreadsheet. {_ACCEPTED}")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FileProblem("This text file is in UTF-16. Save it as CSV UTF-8 and upload it again.")
    if b"\x00" in head:
        raise FileProblem(f"This is not a spreadsheet or a text file. {_ACCEPTED}")
    return "csv"


def normalise_header(text) -> str:
    """'  First_Name ' -> 'first name' (and a header our template guarded as text, unguarded)."""
    return re.sub(r"[\s_\-.]+", " ", without_guard(str(text or "").strip()).lower()).strip(" *")


def open_table(path: str | Path, *, max_rows: int) -> Table:
    path = Path(path)
    fmt = detect_format(path)
    return _checked_table(_open_xlsx(path) if fmt == "xlsx" else _open_csv(path), max_rows)


def read_head(path: str | Path, *, max_rows: int) -> Table:
    """The file's format and headers, its size limit and its first data row checked; the
    returned table has no rows left to read."""
    path = Path(path)
    if detect_format(path) == "xlsx":
        _check_zip(path)
        table = _checked_table(_xlsx_head(path), max_rows)
    else:
        table = _checked_table(_open_csv(path), max_rows)
    first = next(table.rows, None)
    table.rows.close()
    if first is None:
        raise FileProblem("The file has column names but no rows of people.")
    return table


def _checked_table(table: Table, max_rows: int) -> Table:
    headers = table.headers
    _check_headers(headers)
    if table.total is not None and table.total > max_rows:
        raise FileProblem(f"The file has {table.total:,} rows; at most {max_rows:,} are accepted "
                          "in one upload. Split it into smaller files.")
    table.rows = _checked(table.rows, headers, max_rows)
    return table


def _check_headers(headers: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, header in enumerate(headers):
        key = normalise_header(header)
        if not key:
            continue
        if key in seen:
            raise FileProblem(f"The column '{header}' appears twice (columns {_letter(seen[key])} "
                              f"and {_letter(i)}). Remove or rename one of them.")
        seen[key] = i
    if not seen:
        raise FileProblem("The first row has no column names. The first row must name the "
                          "columns; download the template to see them.")


def _letter(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(65 + rest) + name
    return name


def _checked(rows, headers, max_rows: int):
    width = len(headers)
    count = 0
    for number, cells in rows:
        joined = "".join(cells)
        if not joined.strip():
            continue
        count += 1
        if count > max_rows:
            raise FileProblem(f"The file has more than {max_rows:,} rows; at most {max_rows:,} are "
                              "accepted in one upload. Split it into smaller files.")
        if len(joined) > CELL_MAX or CONTROL.search(joined):
            for i, cell in enumerate(cells):
                where = f"Row {number}, column {headers[i] if i < width and headers[i] else _letter(i)}"
                if len(cell) > CELL_MAX:
                    raise FileProblem(f"{where} holds {len(cell):,} characters; a cell may hold at "
                                      f"most {CELL_MAX:,}. Is this the right file?")
                found = CONTROL.search(cell)
                if found:
                    raise FileProblem(f"{where} contains an invisible control character "
                                      f"(U+{ord(found.group()):04X}). Remove it and upload again.")
        if len(cells) < width:
            cells = cells + [""] * (width - len(cells))
        yield number, cells


# --- CSV ----------------------------------------------------------------------------------

def _encoding(path: Path) -> str:
    """UTF-8 (with or without BOM) when every byte decodes as UTF-8, else Windows-1252."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as fh:
        try:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "cp1252"
    return "utf-8-sig"


def _delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _open_csv(path: Path) -> Table:
    encoding = _encoding(path)
    fh = open(path, encoding=encoding, errors="replace", newline="")
    first = fh.readline()
    fh.seek(0)
    reader = csv.reader(fh, delimiter=_delimiter(first))
    try:
        headers = next(reader, None)
        while headers is not None and not "".join(headers).strip():
            headers = next(reader, None)
    except csv.Error as exc:
        fh.close()
        raise FileProblem(f"The file could not be read as CSV: {exc}.") from exc
    if headers is None:
        fh.close()
        raise FileProblem("The file is empty.")

    def rows():
        try:
            for values in reader:
                yield reader.line_num, [v.strip() for v in values]
        except csv.Error as exc:
            raise FileProblem(f"Line {reader.line_num} could not be read as CSV: {exc}.") from exc
        finally:
            fh.close()

    return Table("csv", [h.strip() for h in headers], rows())


# --- XLSX ---------------------------------------------------------------------------------

def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise FileProblem("The workbook is damaged and cannot be opened. Open it in Excel, "
                          "save it again, and upload the new file.") from exc
    names = {m.filename for m in members}
    if "xl/workbook.xml" not in names:
        raise FileProblem(f"This zip file is not an Excel workbook. {_ACCEPTED}")
    total = 0
    for member in members:
        total += member.file_size
        if member.file_size > (1 << 20) and member.file_size > RATIO_MAX * max(member.compress_size, 1):
            raise FileProblem("The workbook expands to far more data than it holds (a 'zip bomb'); "
                              "it was not opened.")
    if total > UNZIPPED_MAX:
        raise FileProblem(f"The workbook expands to {total // (1 << 20):,} MB; at most "
                          f"{UNZIPPED_MAX // (1 << 20)} MB is accepted. Split it into smaller files.")


def cell_text(value) -> str:
    """A calamine cell as the text a person would have typed."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) else value.isoformat(sep=" ")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return str(value)


def _open_xlsx(path: Path) -> Table:
    from python_calamine import CalamineWorkbook

    _check_zip(path)
    try:
        workbook = CalamineWorkbook.from_path(str(path))
        sheet = workbook.get_sheet_by_index(0)
        rows = iter(sheet.iter_rows())
        header_row = next(rows, None)
        start = sheet.start[0] if sheet.start else 0
        height = sheet.height
    except Exception as exc:  # calamine raises its own errors for damaged or encrypted files
        raise FileProblem("The workbook is damaged, encrypted or not a real .xlsx file "
                          f"({type(exc).__name__}). Open it in Excel, remove any password, "
                          "save it as an Excel Workbook and upload it again.") from exc
    if header_row is None or not any(cell_text(v) for v in header_row):
        raise FileProblem("The file is empty: the first sheet has no rows.")
    headers = [cell_text(v) for v in header_row]

    def cells():
        convert = cell_text
        number = start + 1
        for values in rows:
            number += 1
            yield number, [v.strip() if type(v) is str else convert(v) for v in values]

    return Table("xlsx", headers, cells(), total=max(height - 1, 0))


_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_PACKAGE_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
_REL_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"


def _xml(archive: zipfile.ZipFile, name: str):
    """A member of the workbook to parse; XML with a DOCTYPE (entity tricks) is refused."""
    with archive.open(name) as fh:
        if b"<!DOCTYPE" in fh.read(4096).upper():
            raise ValueError("DOCTYPE in a workbook part")
    return archive.open(name)


def _first_sheet(archive: zipfile.ZipFile) -> str:
    """The part holding the workbook's first sheet (the one calamine reads)."""
    with _xml(archive, "xl/workbook.xml") as fh:
        sheet = ElementTree.parse(fh).getroot().find(f"{_MAIN}sheets/{_MAIN}sheet")
    if sheet is None:
        raise ValueError("a workbook without sheets")
    target = "worksheets/sheet1.xml"
    if "xl/_rels/workbook.xml.rels" in archive.namelist():
        with _xml(archive, "xl/_rels/workbook.xml.rels") as fh:
            for rel in ElementTree.parse(fh).getroot().iter(_PACKAGE_REL):
                if rel.get("Id") == sheet.get(_REL_ID):
                    target = rel.get("Target", target)
    return target.lstrip("/") if target.startswith("/") else "xl/" + target


def _column(reference: str | None, fallback: int) -> int:
    letters = re.match(r"[A-Z]+", reference or "")
    if not letters:
        return fallback
    index = 0
    for letter in letters.group():
        index = index * 26 + ord(letter) - 64
    return index - 1


def _xlsx_head(path: Path) -> Table:
    """The header row and the first data row of the first sheet, streamed from its XML."""
    rows: list[tuple[int, dict[int, tuple[str, str]]]] = []
    total = None
    try:
        with zipfile.ZipFile(path) as archive:
            sheet = _first_sheet(archive)
            with _xml(archive, sheet) as fh:
                for _event, element in ElementTree.iterparse(fh):
                    if element.tag == f"{_MAIN}dimension":
                        bounds = re.findall(r"\d+", element.get("ref", ""))
                        total = int(bounds[-1]) - int(bounds[0]) if len(bounds) == 2 else None
                    elif element.tag == f"{_MAIN}row":
                        cells = {}
                        for position, cell in enumerate(element.iter(f"{_MAIN}c")):
                            kind = cell.get("t", "n")
                            if kind == "inlineStr":
                                value = "".join(t.text or "" for t in cell.iter(f"{_MAIN}t"))
                            else:
                                value = cell.findtext(f"{_MAIN}v") or ""
                            if value.strip():
                                cells[_column(cell.get("r"), position)] = (kind, value)
                        element.clear()
                        if cells:
                            rows.append((int(element.get("r") or len(rows) + 1), cells))
                            if len(rows) == 2:
                                break
            needed = {int(v) for _n, cells in rows for kind, v in cells.values() if kind == "s"}
            strings = _shared_strings(archive, max(needed)) if needed else []
    except (KeyError, ValueError, ElementTree.ParseError, zipfile.BadZipFile, OSError) as exc:
        raise FileProblem("The workbook is damaged, encrypted or not a real .xlsx file "
                          f"({type(exc).__name__}). Open it in Excel, remove any password, "
                          "save it as an Excel Workbook and upload it again.") from exc
    if not rows:
        raise FileProblem("The file is empty: the first sheet has no rows.")
    first_column = min(min(cells) for _n, cells in rows)
    width = max(max(cells) for _n, cells in rows) + 1 - first_column

    def text(kind: str, value: str) -> str:
        if kind == "s":
            return strings[int(value)].strip()
        if kind == "b":
            return cell_text(value == "1")
        if kind == "n":
            return cell_text(float(value))
        return value.strip()

    as_lists = [(number, [text(*cells[i]) if i in cells else "" for i in
                          range(first_column, first_column + width)]) for number, cells in rows]
    return Table("xlsx", as_lists[0][1], iter(as_lists[1:]), total)


def _shared_strings(archive: zipfile.ZipFile, last: int) -> list[str]:
    """The workbook's shared strings up to index ``last`` (the rest is not read)."""
    strings: list[str] = []
    with _xml(archive, "xl/sharedStrings.xml") as fh:
        for _event, element in ElementTree.iterparse(fh):
            if element.tag == f"{_MAIN}si":
                # Plain text, or the runs of rich text; phonetic guides (rPh) are not text.
                parts = element.findall(f"{_MAIN}t") + element.findall(f"{_MAIN}r/{_MAIN}t")
                strings.append("".join(t.text or "" for t in parts))
                element.clear()
                if len(strings) > last:
                    break
    if len(strings) <= last:
        raise ValueError("a shared string that is not there")
    return strings
