"""Reading real-world spreadsheets, and a corpus of bad files that each get a clear message."""
import io
import zipfile
from datetime import date, datetime

import pytest
from openpyxl import Workbook

from portal.imports import services
from portal.imports.reading import CELL_MAX, FileProblem, open_table, read_head
from portal.locations.services import Scope

HEADER = "First name,Last name,Sex,Birth date,Village code\n"


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _xlsx(rows) -> bytes:
    wb = Workbook()
    for row in rows:
        wb.active.append(row)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _read(path, max_rows=100):
    table = open_table(path, max_rows=max_rows)
    return table.headers, list(table.rows)


# --- files that are accepted ------------------------------------------------------------------

def test_a_semicolon_csv_with_blank_lines_above_its_header_is_read_by_its_separator(tmp_path):
    path = _write(tmp_path, "a.csv", b"\r\n\r\nFirst name;Last name\r\nZoe;Phiri\r\n")
    headers, rows = _read(path)
    assert headers == ["First name", "Last name"] and rows == [(4, ["Zoe", "Phiri"])]


def test_a_csv_with_a_title_line_above_its_header_keeps_the_numbers_a_spreadsheet_shows(tmp_path):
    path = _write(tmp_path, "a.csv", b"Beneficiaries, North\n\nFirst name;Last name;Sex\nZoe;Phiri;F\n")
    assert _read(path) == (["First name", "Last name", "Sex"], [(4, ["Zoe", "Phiri", "F"])])


def test_a_one_column_csv_keeps_its_first_line_as_the_header(tmp_path):
    path = _write(tmp_path, "a.csv", b"First name\nZoe\nAmina\n")
    assert _read(path) == (["First name"], [(2, ["Zoe"]), (3, ["Amina"])])


def test_a_csv_row_after_a_cell_with_a_line_break_keeps_the_number_a_spreadsheet_shows(tmp_path):
    path = _write(tmp_path, "a.csv", b'First name,Note\nAmina,"two\nlines"\nJuma,one line\n')
    headers, rows = _read(path)
    # Excel shows Juma on row 3; the file's fourth line would send the user to the wrong person.
    assert [(number, cells[0]) for number, cells in rows] == [(2, "Amina"), (3, "Juma")]


def test_a_utf8_csv_with_a_bom_and_semicolons_is_read(tmp_path):
    path = _write(tmp_path, "a.csv", "\ufeffPrénom;Nom\r\nZoë;Ngúnì\r\n".encode("utf-8"))
    headers, rows = _read(path)
    assert headers == ["Prénom", "Nom"]
    assert rows == [(2, ["Zoë", "Ngúnì"])]


def test_a_windows_1252_csv_with_tabs_is_read(tmp_path):
    path = _write(tmp_path, "a.csv", "First name\tLast name\r\nJosé\tMüller\r\n".encode("cp1252"))
    headers, rows = _read(path)
    assert headers == ["First name", "Last name"]
    assert rows == [(2, ["José", "Müller"])]


def test_blank_rows_are_skipped_and_short_rows_are_padded(tmp_path):
    path = _write(tmp_path, "a.csv", b"a,b,c\n1,2\n,,\n\n4,5,6\n")
    _headers, rows = _read(path)
    assert rows == [(2, ["1", "2", ""]), (5, ["4", "5", "6"])]


def test_xlsx_date_cells_become_iso_dates_and_whole_numbers_lose_their_decimals(tmp_path):
    path = _write(tmp_path, "a.xlsx", _xlsx([
        ["Name", "Born", "National ID", "Score", "Seen", "Alive"],
        ["Ann", date(1990, 5, 17), 1234567890, 2.5, datetime(2020, 1, 2, 0, 0), True],
    ]))
    headers, rows = _read(path)
    assert headers == ["Name", "Born", "National ID", "Score", "Seen", "Alive"]
    assert rows == [(2, ["Ann", "1990-05-17", "1234567890", "2.5", "2020-01-02", "yes"])]


def test_numbers_stored_as_text_in_xlsx_keep_their_leading_zeros(tmp_path):
    path = _write(tmp_path, "a.xlsx", _xlsx([["Phone"], ["0991234567"]]))
    assert _read(path)[1] == [(2, ["0991234567"])]


# --- the bad-file corpus -----------------------------------------------------------------------

def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _number_cell_holding_text() -> bytes:
    """A workbook whose cell is typed as a number but holds a date written as text, as some
    tools other than Excel write them."""
    workbook = _xlsx([["First name", "Birth date"], ["Amina", 12345]])
    with zipfile.ZipFile(io.BytesIO(workbook)) as source:
        members = {name: source.read(name) for name in source.namelist()}
    sheet = members["xl/worksheets/sheet1.xml"]
    assert b"<v>12345</v>" in sheet
    members["xl/worksheets/sheet1.xml"] = sheet.replace(b"<v>12345</v>", b"<v>1990-05-17</v>")
    return _zip(members)


BAD_FILES = {
    "empty": (b"", "The file is empty"),
    "blank lines only": (b"\n\n  \n", "The file is empty"),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF document, not a spreadsheet"),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG image, not a spreadsheet"),
    "binary": (b"\x00\x01\x02\x03garbage\x00\x00", "not a spreadsheet or a text file"),
    "utf-16 text": ("a,b\n1,2\n".encode("utf-16"), "UTF-16"),
    "encrypted or old xls": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600,
                             "password-protected workbook or an old Excel"),
    "truncated xlsx": (_xlsx([["a"], ["b"]])[:300], "damaged"),
    "zip that is not a workbook": (_zip({"word/document.xml": b"<w/>"}), "not an Excel workbook"),
    "zip bomb": (_zip({"xl/workbook.xml": b"<workbook/>",
                       "xl/worksheets/sheet1.xml": b"\x00" * (60 * 1024 * 1024)}), "zip bomb"),
    "xlsx with a broken sheet": (_zip({"xl/workbook.xml": b"<not really", "[Content_Types].xml": b"?"}),
                                 "damaged, encrypted or not a real .xlsx"),
    "xlsx with a number cell holding text": (_number_cell_holding_text(),
                                             "damaged, encrypted or not a real .xlsx"),
    "duplicated headers": (b"First name,Last name,first_name\nA,B,C\n",
                           "The column 'first_name' appears twice (columns A and C)"),
    "control characters": (HEADER.encode() + b"Ann\x07,Banda,F,1990-01-01,V1\n",
                           "Row 2, column First name contains an invisible control character (U+0007)"),
    "a 10,000-character cell": (HEADER.encode() + b"A," + b"x" * 10_000 + b",F,1990-01-01,V1\n",
                                "Row 2, column Last name holds 10,000 characters"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_file_is_refused_with_a_clear_message(tmp_path, name):
    data, message = BAD_FILES[name]
    path = _write(tmp_path, "upload.bin", data)
    with pytest.raises(FileProblem) as caught:
        _read(path)
    assert message in caught.value.message


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_file_is_refused_from_its_first_rows_when_it_is_received(tmp_path, name):
    data, message = BAD_FILES[name]
    path = _write(tmp_path, "upload.bin", data)
    with pytest.raises(FileProblem) as caught:
        read_head(path, max_rows=100)
    assert message in caught.value.message


def test_a_workbook_with_headers_only_is_refused_when_it_is_received(tmp_path):
    path = _write(tmp_path, "a.xlsx", _xlsx([["First name", "Last name"], [None, "  "]]))
    with pytest.raises(FileProblem, match="column names but no rows"):
        read_head(path, max_rows=100)


def test_a_workbook_with_a_doctype_is_refused_unread(tmp_path):
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]>'
            b'<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"/>')
    path = _write(tmp_path, "a.xlsx", _zip({"xl/workbook.xml": bomb}))
    with pytest.raises(FileProblem, match="damaged, encrypted or not a real .xlsx"):
        read_head(path, max_rows=100)


def _rich_text_workbook() -> bytes:
    """An Excel-style workbook: shared strings (one in rich text), the table starting at C3,
    and a dimension that gives its size."""
    main = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rel = 'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
    return _zip({
        "[Content_Types].xml": b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                               b'<Default Extension="xml" ContentType="application/xml"/></Types>',
        "xl/workbook.xml": f'<workbook {main} {rel}><sheets><sheet name="People" sheetId="7" '
                           f'r:id="rId4"/></sheets></workbook>'.encode(),
        "xl/_rels/workbook.xml.rels":
            b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            b'<Relationship Id="rId4" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            b'relationships/worksheet" Target="worksheets/people.xml"/></Relationships>',
        "xl/sharedStrings.xml": f'<sst {main}><si><t>First name</t></si><si><r><t>Last </t></r>'
                                f'<r><t>name</t></r><rPh><t>ラスト</t></rPh></si><si><t>Ann</t></si>'
                                f'</sst>'.encode(),
        "xl/worksheets/people.xml": f'<worksheet {main}><dimension ref="C3:E5"/><sheetData>'
                                    f'<row r="3"><c r="C3" t="s"><v>0</v></c><c r="D3" t="s"><v>1</v></c>'
                                    f'<c r="E3" t="inlineStr"><is><t> Born </t></is></c></row>'
                                    f'<row r="4"><c r="C4" t="s"><v>2</v></c><c r="E4"><v>7</v></c></row>'
                                    f'<row r="5"><c r="C5" t="s"><v>2</v></c></row>'
                                    f'</sheetData></worksheet>'.encode(),
    })


def test_receiving_a_workbook_reads_shared_and_rich_text_headers_where_the_table_starts(tmp_path):
    path = _write(tmp_path, "a.xlsx", _rich_text_workbook())
    head = read_head(path, max_rows=100)
    assert (head.format, head.headers) == ("xlsx", ["First name", "Last name", "Born"])


@pytest.mark.parametrize("rows", [
    [["First name", "Born", 12, True], ["Ann", date(1990, 5, 17), 3, False]],
    [[None, "Village code", None, "Sex"], ["x", "V1", None, "F"]],
])
def test_the_headers_read_on_receiving_are_those_the_whole_read_finds(tmp_path, rows):
    path = _write(tmp_path, "a.xlsx", _xlsx(rows))
    assert read_head(path, max_rows=100).headers == open_table(path, max_rows=100).headers


def test_a_csv_with_more_rows_than_allowed_is_refused(tmp_path):
    path = _write(tmp_path, "a.csv", HEADER.encode() + b"A,B,F,1990-01-01,V1\n" * 11)
    with pytest.raises(FileProblem, match="more than 10 rows"):
        _read(path, max_rows=10)


def test_an_xlsx_with_more_rows_than_allowed_is_refused_before_reading_them(tmp_path):
    path = _write(tmp_path, "a.xlsx", _xlsx([["a"]] + [["x"]] * 20))
    with pytest.raises(FileProblem, match="20 rows; at most 10"):
        open_table(path, max_rows=10)


def test_a_cell_at_the_limit_is_accepted(tmp_path):
    path = _write(tmp_path, "a.csv", b"a\n" + b"x" * CELL_MAX + b"\n")
    assert len(_read(path)[1][0][1][0]) == CELL_MAX


# --- which sheet, and which row names the columns ------------------------------------------------

def _book(sheets: dict[str, list]) -> bytes:
    wb = Workbook()
    wb.remove(wb.active)
    for title, rows in sheets.items():
        sheet = wb.create_sheet(title)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def test_a_workbook_is_read_from_its_people_sheet_when_another_sheet_comes_first(tmp_path):
    path = _write(tmp_path, "a.xlsx", _book({"Instructions": [["How to fill in this file"]],
                                              "People": [["First name"], ["Amina"]]}))
    assert read_head(path, max_rows=100).headers == ["First name"]
    assert _read(path) == (["First name"], [(2, ["Amina"])])


def test_a_workbook_without_a_people_sheet_is_read_from_its_first_sheet(tmp_path):
    path = _write(tmp_path, "a.xlsx", _book({"Survey": [["First name"], ["Amina"]],
                                              "Notes": [["Remarks"], ["none"]]}))
    assert read_head(path, max_rows=100).headers == ["First name"]
    assert _read(path) == (["First name"], [(2, ["Amina"])])


HEADERS = ["First name", "Last name", "Sex", "Birth date", "Village code"]
AMINA = ["Amina", "Banda", "F", "1990-05-17", "NV1"]


def _as_excel_saves_empty_text(data: bytes) -> bytes:
    """openpyxl saves a formula without its value; Excel saves ="" as text with an empty one."""
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        members = {name: source.read(name) for name in source.namelist()}
    members["xl/worksheets/sheet1.xml"] = members["xl/worksheets/sheet1.xml"].replace(
        b'"><f>""</f><v /></c>', b'" t="str"><f>""</f><v></v></c>')
    return _zip(members)


@pytest.mark.parametrize("above,saved", [
    ([[" "]], None),  # a space typed in A1
    ([['=""', '=""']], _as_excel_saves_empty_text),  # formulas giving empty text
    ([[None], [None, "  "]], None),  # two blank rows, the table starting on row 3
    ([["Beneficiary list - Northern region"], [None], ["Printed 2024-05-01"]], None),  # a title
])
def test_rows_above_the_table_holding_only_blanks_or_a_title_are_skipped_on_receiving_and_on_the_whole_read(
        tmp_path, above, saved):
    data = _xlsx(above + [HEADERS, AMINA])
    path = _write(tmp_path, "a.xlsx", saved(data) if saved else data)
    header_row = len(above) + 1
    head = read_head(path, max_rows=100)
    assert head.headers == HEADERS
    table = open_table(path, max_rows=100)
    assert (table.headers, table.total) == (HEADERS, 1)
    assert list(table.rows) == [(header_row + 1, AMINA)]


def test_a_table_starting_below_and_right_of_a1_keeps_excels_row_numbers(tmp_path):
    wb = Workbook()
    for row, values in ((3, ["First name", "Born"]), (4, ["Ann", 7]), (6, ["Bea", None])):
        for column, value in enumerate(values, start=3):
            wb.active.cell(row=row, column=column, value=value)
    path = tmp_path / "a.xlsx"
    wb.save(path)
    assert read_head(path, max_rows=100).headers == ["First name", "Born"]
    assert _read(path) == (["First name", "Born"], [(4, ["Ann", "7"]), (6, ["Bea", ""])])


def test_a_workbook_whose_first_row_holds_only_a_space_validates_with_its_rows(db_session, tmp_path, country):
    path = _write(tmp_path, "a.xlsx", _xlsx([[" "], HEADERS, AMINA, ["Juma", "Banda", "M", "2015-01-02", "NV1"]]))
    upload = services.receive_upload(db_session, path=path, file_name="a.xlsx", duplicate_policy="error",
                                     day_first=None, program_id=None, enrol_status=None, area_id=None,
                                     actor_id=None, max_rows=1000)
    assert upload.status == "uploaded"
    counts = services.validate_upload(db_session, upload, scope=Scope(everything=True),
                                      progress=lambda *a, **k: None)
    assert upload.status == "validated"
    assert counts["rows"] == 2 and counts["valid"] == 2
