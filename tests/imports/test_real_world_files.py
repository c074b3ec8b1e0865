"""Files as real people and programs save them, received, validated and imported as the
views do: each is read with nothing lost or changed, or refused with a message saying what
to do."""
import io
import itertools
import re
import zipfile
from datetime import date, datetime

import pytest
from openpyxl import Workbook
from sqlalchemy import select

from portal.imports import services
from portal.imports.models import UploadRow
from portal.imports.reading import FileProblem
from portal.locations.services import Scope
from portal.registry.models import CustomField, Individual

EVERYTHING = Scope(everything=True)
HEADERS = ["First name", "Last name", "Sex", "Birth date", "National ID", "Phone", "Village code",
           "Household code", "Role", "Primary recipient"]
HEAD = ",".join(HEADERS) + "\r\n"
AMINA = ["Amina", "Banda", "F", "1990-05-17", "A100", "+265991234567", "NV1", "H1", "head", "yes"]
JUMA = ["Juma", "Banda", "M", "2015-01-02", "", "", "NV1", "H1", "child", "no"]
_files = itertools.count()


def _write(tmp_path, data: bytes, suffix: str):
    path = tmp_path / f"people{next(_files)}{suffix}"
    path.write_bytes(data)
    return path


def _receive(db_session, path, *, day_first=None, max_rows=500_000):
    return services.receive_upload(
        db_session, path=path, file_name=path.name, duplicate_policy="error", day_first=day_first,
        program_id=None, enrol_status=None, area_id=None, actor_id=None, max_rows=max_rows)


def _validate(db_session, upload):
    services.validate_upload(db_session, upload, scope=EVERYTHING, progress=lambda *a, **k: None)
    return upload


def _import(db_session, upload):
    services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)
    return services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None,
                                  progress=lambda *a, **k: None)


def _checked(db_session, tmp_path, data: bytes, suffix: str, **receiving):
    return _validate(db_session, _receive(db_session, _write(tmp_path, data, suffix), **receiving))


def _rows(db_session, upload):
    return {r.row_number: r for r in db_session.scalars(
        select(UploadRow).where(UploadRow.upload_id == upload.id))}


def _person(db_session, first_name):
    return db_session.scalar(select(Individual).where(Individual.first_name == first_name))


def _members(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        return {name: source.read(name) for name in source.namelist()}


def _zipped(members: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _xlsx(rows, setup=None) -> bytes:
    wb = Workbook()
    ws = wb.active
    ws.title = "People"
    for row in rows:
        ws.append(row)
    if setup:
        setup(wb, ws)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _with_sheet(data: bytes, edit) -> bytes:
    """The workbook with its first sheet's XML changed by ``edit`` (text -> text)."""
    members = _members(data)
    members["xl/worksheets/sheet1.xml"] = edit(members["xl/worksheets/sheet1.xml"].decode()).encode()
    return _zipped(members)


# --- workbooks ------------------------------------------------------------------------------------

def _lookups_showing_na(sheet: str, cells=("E2", "F2", "H2")) -> str:
    """Cells turned into VLOOKUP formulas whose saved value is #N/A, as Excel saves a lookup
    that found nothing."""
    for ref in cells:
        sheet, n = re.subn(rf'<c r="{ref}"[^>]*>.*?</c>',
                           f'<c r="{ref}" t="e"><f>VLOOKUP(A2,Lookup!A:B,2,FALSE)</f><v>#N/A</v></c>', sheet)
        assert n == 1
    return sheet


def test_a_lookup_showing_na_in_a_column_the_upload_reads_is_refused_naming_the_cell_and_its_column(
        db_session, tmp_path, country):
    """Calamine reads an Excel error as an empty cell: imported, the person would have no
    national ID or phone, and nobody would be told."""
    data = _with_sheet(_xlsx([HEADERS, AMINA]), _lookups_showing_na)
    upload = _receive(db_session, _write(tmp_path, data, ".xlsx"))
    with pytest.raises(FileProblem, match=r"Cell E2 \(National ID\) shows the Excel error #N/A \(2 more "
                                          r"cells of the columns read are like it\).*Fix the formula"):
        _validate(db_session, upload)
    assert db_session.scalar(select(UploadRow.id).where(UploadRow.upload_id == upload.id)) is None


def test_an_excel_error_in_a_column_the_upload_does_not_read_does_not_refuse_the_file(
        db_session, tmp_path, country):
    """A working column of the officer's own (an age computed from a bad date, say) is not
    the portal's business: only the columns it reads must hold values."""
    data = _with_sheet(_xlsx([HEADERS + ["Notes"], AMINA + ["x"]]), lambda sheet: re.sub(
        r'<c r="K2"[^>]*>.*?</c>', '<c r="K2" t="e"><f>1/0</f><v>#DIV/0!</v></c>', sheet))
    upload = _receive(db_session, _write(tmp_path, data, ".xlsx"))
    if upload.status == "mapping":  # the unknown column is left out
        services.set_mapping(db_session, upload, {h: n for h, n in (upload.mapping or {}).items()},
                             actor_id=None)
    assert not (upload.mapping or {}).get("Notes")
    _validate(db_session, upload)
    row = _rows(db_session, upload)[2]
    assert row.status == "valid" and row.cleaned["national_id"] == "A100"


def test_an_excel_error_in_the_header_row_is_refused_on_receiving(db_session, tmp_path, country):
    data = _with_sheet(_xlsx([HEADERS, AMINA]), lambda sheet: re.sub(
        r'<c r="E1"[^>]*>.*?</c>', '<c r="E1" t="e"><v>#REF!</v></c>', sheet))
    with pytest.raises(FileProblem, match="Cell E1 shows the Excel error #REF!"):
        _receive(db_session, _write(tmp_path, data, ".xlsx"))


@pytest.mark.parametrize("error", ["#N/A", "#REF!", "#VALUE!", "#DIV/0!", "#NAME?", "#NULL!", "#NUM!"])
def test_excel_errors_further_down_are_refused_when_the_file_is_read_whole(db_session, tmp_path, country, error):
    def errors_on_row_3(sheet):
        return _lookups_showing_na(sheet, ("E3", "F3")).replace("#N/A", error, 1)
    juma = JUMA[:4] + ["X", "X"] + JUMA[6:]
    data = _with_sheet(_xlsx([HEADERS, AMINA, juma]), errors_on_row_3)
    upload = _receive(db_session, _write(tmp_path, data, ".xlsx"))
    with pytest.raises(FileProblem, match=rf"Cell E3 \(National ID\) shows the Excel error {re.escape(error)} \(1 more cells"):
        _validate(db_session, upload)
    assert _person(db_session, "Juma") is None


def test_formulas_saved_without_their_values_are_refused_when_the_file_is_read(db_session, tmp_path, country):
    """A workbook written by a script or a reporting tool (openpyxl, many exporters) keeps the
    formula and no value, which calamine reads as an empty cell."""
    amina = AMINA[:4] + ['=UPPER("a100")', '="+265"&"991234567"'] + AMINA[6:]
    upload = _receive(db_session, _write(tmp_path, _xlsx([HEADERS, amina]), ".xlsx"))
    with pytest.raises(FileProblem, match=r"Cell E2 \(National ID\) holds a formula with no saved value \(1 more "
                                          r"cells of the columns read are like it\): .*Open it in Excel or LibreOffice"):
        _validate(db_session, upload)


def test_a_header_cell_that_is_a_formula_without_its_value_is_refused_on_receiving(db_session, tmp_path, country):
    data = _xlsx([HEADERS[:4] + ['=UPPER("national id")'] + HEADERS[5:], AMINA])
    with pytest.raises(FileProblem, match="Cell E1 holds a formula with no saved value"):
        _receive(db_session, _write(tmp_path, data, ".xlsx"))


def test_formatted_but_empty_rows_down_to_excels_last_row_do_not_make_a_small_file_too_big(
        db_session, tmp_path, country):
    """Excel's used range (the sheet's <dimension>) counts cells that were only formatted:
    columns given a fill down to row 1,048,576 make it A1:J1048576 for two people."""
    def formatted_to_the_bottom(wb, ws):
        from openpyxl.styles import PatternFill
        ws.cell(row=1_048_576, column=10).fill = PatternFill("solid", fgColor="FFFF00")

    path = _write(tmp_path, _xlsx([HEADERS, AMINA, JUMA], formatted_to_the_bottom), ".xlsx")
    assert b'<dimension ref="A1:J1048576"' in _members(path.read_bytes())["xl/worksheets/sheet1.xml"]
    upload = _validate(db_session, _receive(db_session, path, max_rows=10))
    assert upload.counts["rows"] == 2


def _header_with_a_carriage_return(db_session, tmp_path):
    """Excel writes a carriage return in a cell's text as _x000D_ (a header pasted with CR LF)."""
    data = _with_sheet(_xlsx([HEADERS, AMINA, JUMA]),
                       lambda sheet: sheet.replace("<t>First name</t>", "<t>First_x000D_\nname</t>"))
    return _receive(db_session, _write(tmp_path, data, ".xlsx"))


def test_a_header_with_a_carriage_return_is_read_the_same_on_receiving_and_validating(
        db_session, tmp_path, country):
    upload = _header_with_a_carriage_return(db_session, tmp_path)
    assert upload.headers[0] == "First\r\nname" and upload.status == "uploaded", upload.mapping
    assert _validate(db_session, upload).counts["rows"] == 2


def test_a_header_with_a_carriage_return_mapped_by_hand_still_validates(db_session, tmp_path, country):
    upload = _header_with_a_carriage_return(db_session, tmp_path)
    services.set_mapping(db_session, upload, {**upload.mapping, upload.headers[0]: "first_name"}, actor_id=None)
    assert _validate(db_session, upload).counts["rows"] == 2


def test_a_hidden_lookup_sheet_before_the_people_is_not_read(db_session, tmp_path, country):
    def hidden_first(wb, ws):
        lists = wb.create_sheet("Lookup", 0)
        lists.append(["code", "name"])
        lists.append(["NV1", "Village 1"])
        lists.sheet_state = "hidden"
        ws.title = "Beneficiaries"
    upload = _checked(db_session, tmp_path, _xlsx([HEADERS, AMINA], hidden_first), ".xlsx")
    assert upload.headers == HEADERS and _rows(db_session, upload)[2].cleaned["first_name"] == "Amina"


def test_a_title_above_the_header_is_skipped_and_rows_keep_their_numbers(db_session, tmp_path, country):
    data = _xlsx([["Beneficiary list - Northern region"], [], HEADERS, AMINA, JUMA])
    upload = _checked(db_session, tmp_path, data, ".xlsx")
    assert upload.headers == HEADERS
    assert {n: r.cleaned["first_name"] for n, r in _rows(db_session, upload).items()} == {4: "Amina", 5: "Juma"}


def test_xlsx_numbers_for_ids_and_phones_and_booleans_and_datetimes(db_session, tmp_path, country):
    amina = ["Amina", "Banda", "F", datetime(1990, 5, 17, 8, 30), 2.65991234567e11, 265991234567,
             "NV1", "H1", "Head", True]
    juma = ["Juma", "O'Brien-Phiri", "m", date(2015, 1, 2), None, None, "nv1", "h1", "CHILD", False]
    upload = _checked(db_session, tmp_path, _xlsx([HEADERS, amina, juma]), ".xlsx")
    r = _rows(db_session, upload)
    assert r[2].status == "valid" and r[3].status == "valid", (r[2].errors, r[3].errors)
    assert r[2].cleaned["national_id"] == "265991234567" and r[2].cleaned["phone"] == "265991234567"
    assert r[2].cleaned["birth_date"] == "1990-05-17" and r[2].cleaned["primary_recipient"] is True
    _import(db_session, upload)
    assert _person(db_session, "Juma").last_name == "O'Brien-Phiri"


def test_a_header_with_a_no_break_space_and_a_line_break_and_non_latin_names(db_session, tmp_path, country):
    headers = ["First\u00a0name", "Last\nname"] + HEADERS[2:]
    amina = ["Αμίνα", "بندا", "F", "1990-05-17", "", "", "NV1", "", "", ""]
    upload = _checked(db_session, tmp_path, _xlsx([headers, amina]), ".xlsx")
    assert _rows(db_session, upload)[2].cleaned["first_name"] == "Αμίνα"


# --- CSV files ------------------------------------------------------------------------------------

def test_a_phone_written_as_a_float_by_an_export_keeps_its_digits(db_session, tmp_path, country):
    """'265991234567.0' is how pandas, R and many database exports write a phone read as a
    number; its '.0' is no digit."""
    text = HEAD + "Amina,Banda,F,1990-05-17,A100,265991234567.0,NV1,,,\r\n"
    upload = _checked(db_session, tmp_path, text.encode(), ".csv")
    assert _rows(db_session, upload)[2].status == "valid"
    _import(db_session, upload)
    assert _person(db_session, "Amina").phone == "265991234567"


def test_a_csv_with_excels_sep_line_is_read_by_the_separator_it_names(db_session, tmp_path, country):
    """'sep=;' on the first line is Excel's hint for the separator; Excel hides the line."""
    text = "sep=;\r\n" + ";".join(HEADERS) + "\r\nAmina;Banda;F;1990-05-17;A100;;NV1;;;\r\n"
    upload = _checked(db_session, tmp_path, text.encode(), ".csv")
    assert upload.headers == HEADERS and _rows(db_session, upload)[2].status == "valid"


def test_a_utf8_file_with_one_windows_1252_line_is_refused_naming_the_line(db_session, tmp_path, country):
    """Rows added in another editor: read as Windows-1252, every UTF-8 name (Zoë) would be
    garbled (ZoÃ«)."""
    data = (HEAD + "Zoë,Ngúnì,F,1990-05-17,A100,,NV1,,,\r\n").encode("utf-8") \
        + "José,Phiri,M,1980-01-01,A101,,NV1,,,\r\n".encode("cp1252")
    with pytest.raises(FileProblem, match='Line 3 .* not in UTF-8.*"CSV UTF-8"'):
        _receive(db_session, _write(tmp_path, data, ".csv"))


def test_a_byte_windows_1252_does_not_define_is_refused_naming_the_line(db_session, tmp_path, country):
    """0x81, 0x8D, 0x8F, 0x90 and 0x9D mean nothing in Windows-1252: the file is in another
    encoding (Mac Roman, DOS 850), and its names would be stored with a replacement mark."""
    data = HEAD.encode() + b"Ana\x8d,Banda,F,1990-05-17,A100,,NV1,,,\r\n"
    with pytest.raises(FileProblem, match='Line 2 .* another encoding.*"CSV UTF-8"'):
        _receive(db_session, _write(tmp_path, data, ".csv"))


def test_a_custom_yes_no_field_takes_the_same_words_as_primary_recipient(db_session, tmp_path, country):
    db_session.add(CustomField(name="disabled", label="Disabled", type="boolean"))
    db_session.flush()
    text = HEAD.rstrip("\r\n") + ",Disabled\r\n" + "Amina,Banda,F,1990-05-17,,,NV1,H1,head,oui,oui\r\n"
    row = _rows(db_session, _checked(db_session, tmp_path, text.encode(), ".csv"))[2]
    assert row.errors == {} and row.cleaned["custom"] == {"disabled": True}


@pytest.mark.parametrize("said,expected", [("TRUE", True), ("Oui", True), ("1", True), ("Sí", True),
                                           ("x", True), ("FALSE", False), ("non", False), ("f", False),
                                           ("", False)])
def test_the_words_a_primary_recipient_is_said_with(db_session, tmp_path, country, said, expected):
    text = HEAD + f"Amina,Banda,F,1990-05-17,,,NV1,H1,head,{said}\r\n"
    row = _rows(db_session, _checked(db_session, tmp_path, text.encode(), ".csv"))[2]
    assert row.cleaned["primary_recipient"] is expected and "primary_recipient" not in row.errors


@pytest.mark.parametrize("born,day_first,expected", [
    ("12/03/1990", True, "1990-03-12"), ("12/03/1990", False, "1990-12-03"),
    ("1990-03-12T00:00:00.000+02:00", None, "1990-03-12"), ("25/12/1990", None, "1990-12-25")])
def test_text_dates_are_read_in_the_order_the_user_chose(db_session, tmp_path, country, born, day_first, expected):
    text = HEAD + f"Amina,Banda,F,{born},,,NV1,,,\r\n"
    upload = _checked(db_session, tmp_path, text.encode(), ".csv", day_first=day_first)
    assert _rows(db_session, upload)[2].cleaned["birth_date"] == expected


@pytest.mark.parametrize("born,message", [("12/03/1990", "could be read two ways"),
                                          ("32874", "is not a date"), ("12-Mar-90", "is not a date")])
def test_unreadable_dates_are_errors_on_their_row(db_session, tmp_path, country, born, message):
    text = HEAD + f"Amina,Banda,F,{born},,,NV1,,,\r\n"
    upload = _checked(db_session, tmp_path, text.encode(), ".csv")
    assert message in _rows(db_session, upload)[2].errors["birth_date"]


@pytest.mark.parametrize("nid", ["2.65991E+11", "265991234567.0"])
def test_ids_mangled_by_excel_or_pandas_are_errors_on_their_row(db_session, tmp_path, country, nid):
    """A national ID is not a number: its '.0' may hide a lost digit, so it is not guessed."""
    text = HEAD + f"Amina,Banda,F,1990-05-17,{nid},,NV1,,,\r\n"
    upload = _checked(db_session, tmp_path, text.encode(), ".csv")
    assert "national_id" in _rows(db_session, upload)[2].errors


def test_a_windows_1252_tab_file_with_smart_quotes_and_quoted_separators(db_session, tmp_path, country):
    text = ("\t".join(HEADERS) + "\r\n" + "Zoë\t“O’Brien”\tF\t1990-05-17\t\t\tNV1\t\t\t\r\n"
            + 'Ñu\t"Banda\tJr"\tM\t1991-01-01\t\t\tNV1\t\t\t\r\n')
    r = _rows(db_session, _checked(db_session, tmp_path, text.encode("cp1252"), ".txt"))
    assert r[2].cleaned["last_name"] == "“O’Brien”" and r[3].cleaned["last_name"] == "Banda Jr"


def test_carriage_return_line_endings_and_messy_headers(db_session, tmp_path, country):
    headers = ["FIRST_NAME", " last  name ", "Gender", "DOB", "ID no", "Mobile", "Village", "HH ID",
               "Relationship", "Recipient"]
    text = ";".join(headers) + "\r" + "Amina;Banda;F;1990-05-17;;;NV1;;;\r"
    upload = _checked(db_session, tmp_path, text.encode(), ".csv")
    assert _rows(db_session, upload)[2].status == "valid"


def test_a_csv_named_xlsx_and_an_xlsx_named_csv_are_read_by_what_they_hold(db_session, tmp_path, country):
    assert _receive(db_session, _write(tmp_path, (HEAD + ",".join(AMINA)).encode(), ".xlsx")).format == "csv"
    assert _receive(db_session, _write(tmp_path, _xlsx([HEADERS, AMINA]), ".csv")).format == "xlsx"


def test_blank_rows_after_a_csv_at_the_row_limit_do_not_count(db_session, tmp_path, country):
    text = HEAD + "Amina,Banda,F,1990-05-17,,,NV1,,,\r\n" * 50 + ",,,,,,,,,\r\n" * 20
    assert _checked(db_session, tmp_path, text.encode(), ".csv", max_rows=50).counts["rows"] == 50


# --- files that are no spreadsheet of ours ------------------------------------------------------

@pytest.mark.parametrize("data,suffix,message", [
    ("a,b\n1,2\n".encode("utf-16"), ".txt", "UTF-16"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600, ".xlsx", "old Excel 97-2003"),
    (_zipped({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet", "content.xml": b"<x/>"}),
     ".ods", "not an Excel workbook"),
])
def test_files_of_another_kind_are_refused_saying_what_they_are(db_session, tmp_path, data, suffix, message):
    with pytest.raises(FileProblem, match=message):
        _receive(db_session, _write(tmp_path, data, suffix))


def test_strict_open_xml_is_refused_as_damaged(db_session, tmp_path):
    members = _members(_xlsx([HEADERS, ["Amina"]]))
    members = {k: v.replace(b"http://schemas.openxmlformats.org/spreadsheetml/2006/main",
                            b"http://purl.oclc.org/ooxml/spreadsheetml/main") for k, v in members.items()}
    with pytest.raises(FileProblem, match="damaged"):
        _receive(db_session, _write(tmp_path, _zipped(members), ".xlsx"))


def test_a_file_of_fixes_showing_an_excel_error_in_a_column_it_gives_is_refused_and_changes_nothing(
        db_session, tmp_path, country):
    """Read as empty, the error would blank the row's national ID when the fix is applied."""
    upload = _checked(db_session, tmp_path, (HEAD + "Juma,Banda,Q,2015-01-02,J200,,NV1,,,\r\n").encode(), ".csv")
    fixes = _with_sheet(_xlsx([["Row", "First name", "Last name", "Sex", "Birth date", "National ID", "Village code"],
                               [2, "Juma", "Banda", "M", "2015-01-02", "J200", "NV1"]]),
                        lambda sheet: _lookups_showing_na(sheet, ("F2",)))
    with pytest.raises(FileProblem, match=r"Cell F2 \(National ID\) shows the Excel error #N/A"):
        services.apply_corrections(db_session, upload, _write(tmp_path, fixes, ".xlsx"), scope=EVERYTHING)
    row = _rows(db_session, upload)[2]
    assert (row.raw["sex"], row.raw["national_id"], row.status) == ("Q", "J200", "error")


def test_an_id_and_a_phone_shown_with_leading_zeros_by_their_number_format_keep_them(db_session, tmp_path, country):
    """Excel keeps 01234567 typed into a cell formatted 00000000 as the number 1234567, and
    shows it with its zero; the same file saved as CSV gives 01234567. Both must register
    the same ID."""
    def zero_padded(wb, ws):
        ws["E2"].number_format = "00000000"
        ws["F2"].number_format = "0000000000"
        ws["E3"].number_format = "0.00"  # another format is left alone
    amina = AMINA[:4] + [1234567, 991234567] + AMINA[6:]
    juma = JUMA[:4] + [7654321, ""] + JUMA[6:]
    upload = _checked(db_session, tmp_path, _xlsx([HEADERS, amina, juma], zero_padded), ".xlsx")
    rows = _rows(db_session, upload)
    assert (rows[2].cleaned["national_id"], rows[2].cleaned["phone"]) == ("01234567", "0991234567")
    assert rows[3].cleaned["national_id"] == "7654321"


def test_a_formula_saved_without_its_value_further_down_a_column_the_upload_reads_is_refused_naming_the_cell(
        db_session, tmp_path, country):
    """Receiving reads only the first rows; a script that wrote formulas without calculating
    them would otherwise import people without what the formulas give."""
    juma = JUMA[:4] + ['=UPPER("j200")'] + JUMA[5:]
    data = _xlsx([HEADERS + ["Notes"], AMINA + ["ok"], juma + ['=LEN("x")']])
    upload = _receive(db_session, _write(tmp_path, data, ".xlsx"))
    with pytest.raises(FileProblem, match=r"Cell E3 \(National ID\) holds a formula with no saved value: "
                                          r"the file was written by a program that does not calculate"):
        _validate(db_session, upload)
    assert _person(db_session, "Juma") is None
