"""The XLSX template as users fill it in: people on its 'People' sheet, after 'Instructions'."""
import io
from datetime import date

from openpyxl import load_workbook
from sqlalchemy import select

from portal.imports import columns, services
from portal.imports.models import Upload, UploadRow
from portal.locations.services import Scope

PEOPLE = [
    {"First name": "Amina", "Last name": "Banda", "Sex": "F", "Birth date": date(1990, 5, 17),
     "Village code": "NV1", "Household code": "HH-1", "Role": "head", "Primary recipient": "yes"},
    {"First name": "Juma", "Last name": "Banda", "Sex": "M", "Birth date": date(2015, 1, 2),
     "Village code": "NV1", "Household code": "HH-1", "Role": "child", "Primary recipient": "no"},
]


def _filled(template: bytes) -> bytes:
    """The template with PEOPLE typed into its People sheet, as in Excel."""
    book = load_workbook(io.BytesIO(template))
    sheet = book["People"]
    header = [cell.value for cell in sheet[1]]
    for row, person in enumerate(PEOPLE, start=2):
        for column, label in enumerate(header, start=1):
            if label in person:
                sheet.cell(row=row, column=column, value=person[label])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_a_filled_in_xlsx_template_is_received_with_its_columns_and_validates_its_people(
        db_session, tmp_path, country):
    cols = columns.columns(db_session)
    path = tmp_path / "people.xlsx"
    path.write_bytes(_filled(columns.template_xlsx(cols)))
    upload = services.receive_upload(db_session, path=path, file_name="people.xlsx", duplicate_policy="error",
                                     day_first=None, program_id=None, enrol_status=None, area_id=None,
                                     actor_id=None, max_rows=1000)
    assert upload.headers == [c.label for c in cols]
    assert upload.status == "uploaded"
    counts = services.validate_upload(db_session, upload, scope=Scope(everything=True),
                                      progress=lambda *a, **k: None)
    assert upload.status == "validated"
    assert counts["valid"] == 2 and counts["new_people"] == 2 and counts["new_households"] == 1
    rows = db_session.scalars(select(UploadRow).where(UploadRow.upload_id == upload.id)
                              .order_by(UploadRow.row_number)).all()
    assert [(r.row_number, r.raw["first_name"], r.raw["birth_date"]) for r in rows] == [
        (2, "Amina", "1990-05-17"), (3, "Juma", "2015-01-02")]


def test_the_template_downloaded_and_filled_in_goes_straight_to_validation(client, login, db_session, country):
    login("field_officer")
    data = _filled(client.get("/imports/template.xlsx").get_data())
    response = client.post("/imports/new", data={
        "file": (io.BytesIO(data), "people.xlsx"), "duplicate_policy": "error", "date_order": "",
        "enrol_status": "potential"}, content_type="multipart/form-data")
    assert response.status_code == 302
    assert not response.headers["Location"].endswith("/mapping")
    assert db_session.scalar(select(Upload.status)) == "validating"
