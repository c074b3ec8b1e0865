import io
from datetime import date

import pytest
from openpyxl import load_workbook

from portal.registry.exports import export_response, inert


@pytest.mark.parametrize("value", ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "\rx",
                                   '=HYPERLINK("http://evil","x")'])
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
