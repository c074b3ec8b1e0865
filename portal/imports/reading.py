"""Reading uploaded spreadsheets: CSV (UTF-8 or Windows-1252, `,` `;` or tab) and XLSX
(streamed with python-calamine), with the checks that turn a bad file into a clear message.

``open_table(path, max_rows=...)`` returns a ``Table``: its headers and an iterator of
``(row_number, cells)`` with every cell as text (Excel dates as ISO dates, whole numbers
without ``.0``). Blank rows are skipped. A problem raises ``FileProblem`` (a DomainError)
and nothing has been written anywhere. A workbook is read from its sheet named like our
template's people sheet when it has one, else from its first sheet.

``read_head(path, max_rows=...)`` checks a file and returns its format and headers having
read only its first rows, so receiving a large workbook takes milliseconds in the web
request; the validation job reads the whole file.
"""
from __future__ import annotations

import codecs
import csv
import itertools
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from xml.etree import ElementTree
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Iterator

from portal.errors import DomainError
from portal.registry.exports import without_guard
from portal.registry.validation import CONTROL, control_character

CELL_MAX = 2000  # characters in one cell
UNZIPPED_MAX = 400 * 1024 * 1024  # bytes of XML an .xlsx may expand to
RATIO_MAX = 100  # compression ratio of one member above 1 MB: a zip bomb, not a workbook
_NOT_SPREADSHEET = {
    b"%PDF": "a PDF document", b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image", b"\x1f\x8b": "a gzip archive", b"Rar!": "a RAR archive",
    b"7z\xbc\xaf": "a 7-Zip archive", b"{\\rtf": "an RTF document",
}
_ACCEPTED = "Upload a .csv or .xlsx file (in Excel: File > Save As > CSV UTF-8 or Excel Workbook)."
_DAMAGED = ("The workbook is damaged, encrypted or not a real .xlsx file ({}). Open it in Excel, "
            "remove any password, save it as an Excel Workbook and upload it again.")
PEOPLE_SHEET = "People"  # the sheet of the XLSX template that holds the people
TITLE_ROWS_MAX = 5  # rows of one filled cell (a title, a date) that may stand above the header


class FileProblem(DomainError):
    """The file cannot be read as a table of people."""


def cell_problem(cell: str) -> str | None:
    """Why a cell cannot be kept, from a file or typed in the grid: a spreadsheet or a
    screen could not show it (a control character), or no field holds that much."""
    if len(cell) > CELL_MAX:
        return f"holds {len(cell):,} characters; a cell may hold at most {CELL_MAX:,}"
    return control_character(cell)


@dataclass
class Table:
    format: str
    headers: list[str]
    rows: Iterator[tuple[int, list[str]]]
    total: int | None = None  # data rows, when the format tells before reading
    # Cells showing an Excel error, which calamine reads as empty: row number -> {column
    # index, as the rows' lists count them: (the cell's reference, the error)}.
    excel_errors: dict[int, dict[int, tuple[str, str]]] = field(default_factory=dict)


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
    return _head(path, max_rows)[0]


def first_row(path: str | Path, *, max_rows: int) -> list[str]:
    """The cells of the first data row, read as ``read_head`` reads them (a workbook from
    its head alone), for the mapping page to show beside each header."""
    return _head(path, max_rows)[1]


def _head(path: str | Path, max_rows: int) -> tuple[Table, list[str]]:
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
    return table, first[1]


def _blank(cells: list[str]) -> bool:
    """A row of nothing but spaces and empty text: skipped wherever it is."""
    return not "".join(cells).strip()


def _header_row(rows: Iterator[tuple[int, list[str]]], sheet: str
                ) -> tuple[int, list[str], Iterator[tuple[int, list[str]]]]:
    """The row that names the columns, and the rows after it. Blank rows above it are
    skipped, and so is a title above the table: a row with one filled cell, when one of the
    next few rows fills two or more (a one-column file keeps its first row). Receiving a
    file and reading it whole both pick the header row by this rule, so a file accepted on
    upload is read the same way later."""
    looked: list[tuple[int, list[str]]] = []  # the filled rows read so far
    for number, cells in rows:
        if _blank(cells):
            continue
        if sum(1 for cell in cells if cell.strip()) > 1:
            return number, cells, rows
        looked.append((number, cells))
        if len(looked) == TITLE_ROWS_MAX + 1:
            break
    if not looked:
        raise FileProblem(f"The file is empty: the sheet '{sheet}' has no rows." if sheet
                          else "The file is empty.")
    number, cells = looked[0]
    return number, cells, itertools.chain(looked[1:], rows)


def _visible(sheets: list[tuple[str, bool]]) -> list[str]:
    """The names of the sheets a person sees (all of them, if a workbook hid every one)."""
    return [name for name, visible in sheets if visible] or [name for name, _visible in sheets]


def data_sheet(sheets: list[tuple[str, bool]]) -> str:
    """The sheet to read, from the workbook's (name, visible) sheets: our template's people
    sheet when the workbook has one (the template puts its instructions first), else the
    first sheet a person sees; a hidden sheet holds lookup lists, not the people."""
    names = _visible(sheets)
    if not names:
        raise ValueError("a workbook without sheets")
    return next((n for n in names if n.strip().lower() == PEOPLE_SHEET.lower()), names[0])


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
        if not joined.strip():  # _blank, without joining the cells twice per row
            continue
        count += 1
        if count > max_rows:
            raise FileProblem(f"The file has more than {max_rows:,} rows; at most {max_rows:,} are "
                              "accepted in one upload. Split it into smaller files.")
        if len(joined) > CELL_MAX or CONTROL.search(joined):
            for i, cell in enumerate(cells):
                problem = cell_problem(cell)
                if problem:
                    where = f"Row {number}, column {headers[i] if i < width and headers[i] else _letter(i)}"
                    advice = "Is this the right file?" if len(cell) > CELL_MAX else "Remove it and upload again."
                    raise FileProblem(f"{where} {problem}. {advice}")
        if len(cells) < width:
            cells = cells + [""] * (width - len(cells))
        yield number, cells


# --- CSV ----------------------------------------------------------------------------------

_SAVE_AS_UTF8 = 'Open it in Excel, save it with File > Save As > "CSV UTF-8", and upload it again.'
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
_NOT_CP1252 = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")  # bytes Windows-1252 leaves undefined


def _encoding(path: Path) -> str:
    """UTF-8 (with or without BOM) when every byte decodes as UTF-8, else Windows-1252. A
    file that is neither, or UTF-8 but for a few bytes (rows added in another editor), is
    refused: read as Windows-1252, its names would be silently garbled."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as fh:
        try:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
            return "utf-8-sig"
        except UnicodeDecodeError:
            pass
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start
    if _UTF8_SEQUENCE.search(data):
        raise FileProblem(f"Line {_line_of(data, bad)} of the file has a character that is not in "
                          f"UTF-8, the encoding of the rest of the file. {_SAVE_AS_UTF8}")
    undefined = _NOT_CP1252.search(data)
    if undefined:
        raise FileProblem(f"Line {_line_of(data, undefined.start())} of the file has a character "
                          f"that is neither UTF-8 nor Windows text: the file was saved in another encoding. "
                          f"{_SAVE_AS_UTF8}")
    return "cp1252"


def _line_of(data: bytes, position: int) -> int:
    """The line of the file holding the byte at ``position`` (lines end in LF, CR LF or CR)."""
    before = data[:position]
    return (before.count(b"\n") or before.count(b"\r")) + 1


_EXCEL_SEPARATOR = re.compile(r"sep=([,;\t|])[\r\n]*")  # Excel's 'sep=;' line, which Excel hides


def _delimiter(lines: list[str]) -> str:
    """The separator used most in the first filled lines (a title above the header may hold
    none, or a comma of its own)."""
    text = "".join(lines)
    counts = {d: text.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _first_filled_lines(fh) -> list[str]:
    """The first lines with something on them (the header and a title above it, after any
    blank lines), from which the separator is guessed."""
    lines = []
    for _n, line in zip(range(1000), fh):
        if line.strip():
            lines.append(line)
            if len(lines) > TITLE_ROWS_MAX:
                break
    return lines


def _open_csv(path: Path) -> Table:
    fh = open(path, encoding=_encoding(path), newline="")
    lines = _first_filled_lines(fh)
    named = _EXCEL_SEPARATOR.fullmatch(lines[0]) if lines else None
    fh.seek(0)
    if named:  # the separator the line names; the file is read after it
        delimiter = named.group(1)
        fh.readline()
    else:
        delimiter = _delimiter(lines)
    reader = csv.reader(fh, delimiter=delimiter)

    def rows():
        # Rows are numbered by record, as a spreadsheet shows the file: a cell with a line
        # break in it is on one row there, so the physical line would name the wrong person
        # after it.
        try:
            for record, values in enumerate(reader, start=1):
                yield record, [v.strip() for v in values]
        except csv.Error as exc:
            raise FileProblem(f"Line {reader.line_num} could not be read as CSV: {exc}.") from exc
        finally:
            fh.close()

    records = rows()
    try:
        _number, headers, rest = _header_row(records, "")
    except FileProblem:
        records.close()
        raise
    return Table("csv", headers, rest)


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
    from python_calamine import CalamineWorkbook, SheetVisibleEnum

    _check_zip(path)
    try:
        with zipfile.ZipFile(path) as archive, ThreadPoolExecutor(1) as thread:
            part = _sheet_part(archive)[1]
            # Searched while calamine loads the sheet, which lets go of Python's lock: the
            # search took a quarter of the load's second, which the job waited for.
            marked = thread.submit(_has_unread_cells, archive, part)
            workbook = CalamineWorkbook.from_path(str(path))
            name = data_sheet([(sheet.name, sheet.visible == SheetVisibleEnum.Visible)
                               for sheet in workbook.sheets_metadata])
            sheet = workbook.get_sheet_by_name(name)
            # iter_rows yields the empty rows above the sheet's range too, so the rows
            # counted from 1 have Excel's numbers.
            last_row = sheet.start[0] + sheet.height if sheet.start else 0
            values = iter(sheet.iter_rows())
            first_column = sheet.start[1] if sheet.start else 0
            errors = _excel_errors(archive, part, first_column=first_column) if marked.result() else {}
            padded = _zero_padded_cells(archive, part, first_column=first_column)
    except Exception as exc:  # calamine raises its own errors for damaged or encrypted files
        raise FileProblem(_DAMAGED.format(type(exc).__name__)) from exc

    def cells():
        convert = cell_text
        for number, row in enumerate(values, start=1):
            yield number, [v.strip() if type(v) is str else convert(v) for v in row]

    read = _padded(cells(), padded) if padded else cells()
    header_number, headers, rows = _header_row(read, name)
    if header_number in errors:
        raise FileProblem(_excel_error_message(*next(iter(errors[header_number].values()))))
    return Table("xlsx", headers, rows, total=max(last_row - header_number, 0),
                 excel_errors={n: cells for n, cells in errors.items() if n > header_number})


_ZEROS_ONLY = re.compile(r"0{2,}")  # a number format that shows leading zeros: "00000000"
# A number cell (no type, or t="n") with a style, as Excel writes its attributes.
_STYLED_NUMBER = re.compile(rb'<c r="([A-Z]{1,3})([0-9]+)" s="([0-9]+)"(?: t="n")?/?>')


def _zero_padded_cells(archive: zipfile.ZipFile, part: str, *, first_column: int = 0
                       ) -> dict[int, dict[int, int]]:
    """row number -> {column index, as the rows count it: width} of the number cells whose
    format shows leading zeros ("00000000" shows 1234567 as 01234567, as an officer typed
    an ID or a phone): calamine gives the number, and the zero would be lost. Only a workbook
    whose styles have such a format has its sheet searched, by bytes."""
    if "xl/styles.xml" not in archive.namelist():
        return {}
    with _xml(archive, "xl/styles.xml") as fh:
        styles = ElementTree.parse(fh).getroot()
    widths = {fmt.get("numFmtId"): len(fmt.get("formatCode", ""))
              for fmt in styles.iter(f"{_MAIN}numFmt") if _ZEROS_ONLY.fullmatch(fmt.get("formatCode", ""))}
    formats = styles.find(f"{_MAIN}cellXfs")
    padding = {str(index).encode(): widths[xf.get("numFmtId")]
               for index, xf in enumerate(formats if formats is not None else ())
               if xf.get("numFmtId") in widths}
    cells: dict[int, dict[int, int]] = {}
    if not padding:
        return cells
    for window in _sheet_windows(archive, part, overlap=100):
        for found in _STYLED_NUMBER.finditer(window):
            width = padding.get(found.group(3))
            if width:
                column = _column(found.group(1).decode(), 0) - first_column
                cells.setdefault(int(found.group(2)), {})[column] = width
    return cells


def _sheet_windows(archive: zipfile.ZipFile, part: str, *, overlap: int):
    """The sheet's XML a megabyte at a time, for byte searches, each window starting with
    the last ``overlap`` bytes of the one before: a match cut by a chunk's end is found whole
    in the next. (A match within the overlap can be found twice.)"""
    tail = b""
    with archive.open(part) as fh:
        while chunk := fh.read(1 << 20):
            yield tail + chunk
            tail = chunk[-overlap:]


def _padded(rows, padded: dict[int, dict[int, int]]):
    """The rows with the numbers of ``_zero_padded_cells`` shown as the workbook shows them."""
    for number, cells in rows:
        for column, width in padded.get(number, {}).items():
            if column < len(cells) and cells[column].isdigit():
                cells[column] = cells[column].zfill(width)
        yield number, cells


# How a sheet's XML shows a cell calamine reads as empty although it is not: an Excel error,
# or a formula saved with no value (by a program that does not calculate; Excel's own empty
# text result is typed t="str", which the parse below tells apart).
_UNREAD_MARKS = (b't="e"', b"</f></c>", b"</f><v /></c>", b"</f><v/></c>", b"</f><v></v></c>")


def _has_unread_cells(archive: zipfile.ZipFile, part: str) -> bool:
    """Whether the sheet's XML may hold a cell of ``_excel_errors``: one pass through zlib
    and a byte search, a quarter of calamine's load; only a sheet that has one is parsed."""
    return any(mark in window for window in _sheet_windows(archive, part, overlap=20)
               for mark in _UNREAD_MARKS)


def _unread(cell) -> tuple[bool, str | None]:
    """Whether calamine reads this cell of the sheet's XML as empty although it is not, and
    why: the Excel error it shows, or None for a formula saved with no value (Excel's own
    empty text result is typed "str", and is read as the empty text it is)."""
    kind, value = cell.get("t"), cell.findtext(f"{_MAIN}v")
    if kind == "e":
        return True, (value or "").strip() or "#VALUE!"
    return not value and kind != "str" and cell.find(f"{_MAIN}f") is not None, None


def _excel_errors(archive: zipfile.ZipFile, part: str, *, first_column: int = 0
                  ) -> dict[int, dict[int, tuple[str, str | None]]]:
    """The sheet's cells holding an Excel error (#N/A, #REF!, ...), or a formula with no saved
    value (None), as ``Table.excel_errors`` gives them (``first_column``: the column
    calamine's rows start at): calamine reads such a cell as an empty one, so a lookup that
    found nothing would import as a missing ID."""
    errors: dict[int, dict[int, tuple[str, str | None]]] = {}
    number = 0
    with _xml(archive, part) as fh:
        for _event, element in ElementTree.iterparse(fh):
            if element.tag == f"{_MAIN}row":
                number = int(element.get("r") or number + 1)
                for position, cell in enumerate(element.iter(f"{_MAIN}c")):
                    unread, error = _unread(cell)
                    if not unread:
                        continue
                    reference = cell.get("r") or f"{_letter(position)}{number}"
                    errors.setdefault(number, {})[_column(reference, position) - first_column] = (reference, error)
                element.clear()
    return errors


def _excel_error_message(cell: str, error: str | None, count: int = 1, column: str = "") -> str:
    named = f" ({column})" if column else ""
    others = f" ({count - 1:,} more cells of the columns read are like it)" if count > 1 else ""
    if error is None:
        return (f"Cell {cell}{named} holds a formula with no saved value{others}: the file was "
                "written by a program that does not calculate. Open it in Excel or LibreOffice, "
                "save it and upload it again.")
    return (f"Cell {cell}{named} shows the Excel error {error}{others}, from which the portal "
            "cannot read a value. Fix the formula or type the value, save the file and upload it "
            "again.")


def excel_error_in(table: Table, columns: set[int], headers: list[str]) -> str | None:
    """The message refusing a workbook whose cells in these columns (those the upload reads)
    show Excel errors or formulas without values; such cells in the other columns do not
    matter."""
    found = [(number, column, cell) for number, cells in sorted(table.excel_errors.items())
             for column, cell in sorted(cells.items()) if column in columns]
    if not found:
        return None
    _number, column, (reference, error) = found[0]
    return _excel_error_message(reference, error, len(found), headers[column])



_EXCEL_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")  # how Excel writes a character XML cannot hold


def _unescaped(text: str) -> str:
    """Text of the sheet's XML with Excel's _xHHHH_ escapes decoded, as calamine decodes them
    (_x005F_ is the escape of the underscore, so '_x005F_x000D_' is the text '_x000D_')."""
    if "_x" not in text:
        return text
    return _EXCEL_ESCAPE.sub(lambda found: chr(int(found.group(1), 16)), text)


_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_PACKAGE_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
_REL_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"


def _xml(archive: zipfile.ZipFile, name: str):
    """A member of the workbook to parse; XML with a DOCTYPE (entity tricks) is refused."""
    with archive.open(name) as fh:
        if b"<!DOCTYPE" in fh.read(4096).upper():
            raise ValueError("DOCTYPE in a workbook part")
    return archive.open(name)


def _sheet_part(archive: zipfile.ZipFile) -> tuple[str, str]:
    """The name of the sheet to read (the one calamine reads) and the part holding it."""
    with _xml(archive, "xl/workbook.xml") as fh:
        sheets = ElementTree.parse(fh).getroot().findall(f"{_MAIN}sheets/{_MAIN}sheet")
    names = [sheet.get("name", "") for sheet in sheets]
    name = data_sheet([(sheet.get("name", ""), sheet.get("state", "visible") == "visible") for sheet in sheets])
    sheet = sheets[names.index(name)]
    target = f"worksheets/sheet{names.index(name) + 1}.xml"
    if "xl/_rels/workbook.xml.rels" in archive.namelist():
        with _xml(archive, "xl/_rels/workbook.xml.rels") as fh:
            for rel in ElementTree.parse(fh).getroot().iter(_PACKAGE_REL):
                if rel.get("Id") == sheet.get(_REL_ID):
                    target = rel.get("Target", target)
    return name, target.lstrip("/") if target.startswith("/") else "xl/" + target


def _column(reference: str | None, fallback: int) -> int:
    letters = re.match(r"[A-Z]+", reference or "")
    if not letters:
        return fallback
    index = 0
    for letter in letters.group():
        index = index * 26 + ord(letter) - 64
    return index - 1


def _xlsx_head(path: Path) -> Table:
    """The header row and the first data row of the sheet to read, streamed from its XML.
    The sheet's <dimension> is not taken for its number of rows: cells only formatted (a
    fill down to the last row) count in it, so the whole read counts the rows."""

    errors: dict[int, tuple[str, str | None]] = {}  # row number -> its first unreadable cell

    def sheet_rows(fh, strings: _SharedStrings):
        number = 0
        for _event, element in ElementTree.iterparse(fh):
            if element.tag == f"{_MAIN}row":
                number = int(element.get("r") or number + 1)
                texts = {}
                for position, cell in enumerate(element.iter(f"{_MAIN}c")):
                    unread, error = _unread(cell)
                    if unread:  # read as empty, as calamine reads it
                        errors.setdefault(number, (cell.get("r", ""), error))
                        continue
                    text = _xml_cell_text(cell, strings)
                    if text:
                        texts[_column(cell.get("r"), position)] = text
                element.clear()
                yield number, [texts.get(i, "") for i in range(max(texts, default=-1) + 1)]

    try:
        with zipfile.ZipFile(path) as archive:
            name, part = _sheet_part(archive)
            with _xml(archive, part) as fh, closing(_SharedStrings(archive)) as strings:
                source = sheet_rows(fh, strings)
                header_number, headers, rows = _header_row(source, name)
                first = next((row for row in rows if not _blank(row[1])), None)
                source.close()
        # A column named by an error cannot be matched; an error further down matters only in
        # a column the upload reads, which validation knows (services._read_and_check).
        if header_number in errors:
            raise FileProblem(_excel_error_message(*errors[header_number]))
    except DomainError:
        raise
    except Exception as exc:  # whatever a damaged or hand-made workbook throws, it is the file
        raise FileProblem(_DAMAGED.format(type(exc).__name__)) from exc
    kept = [(header_number, headers)] if first is None else [(header_number, headers), first]
    used = [i for _n, cells in kept for i, text in enumerate(cells) if text]
    start, end = min(used), max(used) + 1
    as_lists = [(number, (cells + [""] * end)[start:end]) for number, cells in kept]
    return Table("xlsx", as_lists[0][1], iter(as_lists[1:]))


def _xml_cell_text(cell, strings: _SharedStrings) -> str:
    """A cell of a worksheet's XML as calamine would give its text (date cells aside)."""
    kind = cell.get("t", "n")
    if kind == "inlineStr":
        return _unescaped("".join(t.text or "" for t in cell.iter(f"{_MAIN}t"))).strip()
    value = cell.findtext(f"{_MAIN}v") or ""
    if not value.strip():
        return ""
    if kind == "s":
        return strings[int(value)].strip()
    if kind == "b":
        return cell_text(value.strip() == "1")
    if kind == "n":
        return cell_text(float(value))
    return _unescaped(value).strip()


class _SharedStrings:
    """The workbook's shared strings, read only as far as the cells looked up need."""

    def __init__(self, archive: zipfile.ZipFile):
        self.archive = archive
        self.strings: list[str] = []
        self.fh = None
        self.parts = None

    def __getitem__(self, index: int) -> str:
        if index < 0:
            raise ValueError("a negative shared string index")
        if self.parts is None:
            self.fh = _xml(self.archive, "xl/sharedStrings.xml")
            self.parts = ElementTree.iterparse(self.fh)
        while len(self.strings) <= index:
            _event, element = next(self.parts, (None, None))
            if element is None:
                raise ValueError("a shared string that is not there")
            if element.tag == f"{_MAIN}si":
                # Plain text, or the runs of rich text; phonetic guides (rPh) are not text.
                parts = element.findall(f"{_MAIN}t") + element.findall(f"{_MAIN}r/{_MAIN}t")
                self.strings.append(_unescaped("".join(t.text or "" for t in parts)))
                element.clear()
        return self.strings[index]

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
