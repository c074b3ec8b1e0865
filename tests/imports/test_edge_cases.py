"""Uploads in the hard cases: stale forms, fixes uploaded back, jobs that stopped midway,
households with a row left out, and what the audit log and the downloads must hold."""
import csv
import io
import itertools

import pytest
from sqlalchemy import select

from portal.imports import services
from portal.imports.models import UploadRow
from portal.locations.services import Scope

EVERYTHING = Scope(everything=True)
HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"
_n = itertools.count()


def _validated(db_session, tmp_path, user, text, *, policy="error", program_id=None, scope=EVERYTHING):
    path = tmp_path / f"review{next(_n)}.csv"
    path.write_text(text, encoding="utf-8")
    upload = services.receive_upload(db_session, path=path, file_name="people.csv",
                                     duplicate_policy=policy, day_first=None, program_id=program_id,
                                     enrol_status="potential" if program_id else None, area_id=None,
                                     actor_id=user.id if user else None, max_rows=1000)
    services.validate_upload(db_session, upload, scope=scope, progress=lambda *a, **k: None)
    db_session.commit()
    return upload


def _rows(db_session, upload) -> dict[int, UploadRow]:
    db_session.expire_all()
    return {r.row_number: r for r in db_session.scalars(
        select(UploadRow).where(UploadRow.upload_id == upload.id))}


def _reupload(client, upload, text: str):
    return client.post(f"/imports/{upload.id}/reupload",
                       data={"file": (io.BytesIO(text.encode()), "fixed.csv")},
                       content_type="multipart/form-data")


FIX_HEADER = ("Row,First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,"
              "Primary recipient,Errors\n")


@pytest.mark.parametrize("row_cell", ["inf", "99999999999999999999"])
def test_a_fixed_file_with_a_nonsense_row_number_is_answered_with_a_message(
        client, login, db_session, tmp_path, country, row_cell):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    response = _reupload(client, upload, FIX_HEADER + f"{row_cell},Juma,Banda,M,1990-05-17,,NV1,,,,\n")
    assert response.status_code == 302


def test_a_phone_downloaded_with_its_formula_guard_comes_back_unchanged_when_the_fixed_rows_are_uploaded(
        client, login, db_session, tmp_path, country):
    user = login("program_manager")  # sees phones unmasked
    header = "First name,Last name,Sex,Birth date,Phone,Village code\n"
    upload = _validated(db_session, tmp_path, user, header + "Juma,Banda,Q,1990-05-17,+265991234567,NV1\n")
    downloaded = client.get(f"/imports/{upload.id}/problems.csv").get_data().decode("utf-8-sig")
    head, row = list(csv.reader(io.StringIO(downloaded)))
    row[head.index("Sex")] = "M"  # the one fix; everything else is sent back as downloaded
    fixed = io.StringIO()
    csv.writer(fixed).writerows([head, row])
    assert _reupload(client, upload, fixed.getvalue()).status_code == 302
    staged = _rows(db_session, upload)[2]
    assert (staged.raw["phone"], staged.status) == ("+265991234567", "valid"), staged.errors


def test_the_upload_templates_keep_a_custom_fields_formula_like_label_and_choices_inert(client, login, db_session):
    from openpyxl import load_workbook

    from portal.registry.models import CustomField

    db_session.add(CustomField(name="income", label="=HYPERLINK(\"http://x.example\",\"Income\")", type="choice",
                               choices=["low", "=1+2"], required=False, active=True, position=0))
    db_session.commit()
    login("field_officer")
    text = client.get("/imports/template.csv").get_data().decode("utf-8-sig")
    in_csv = [h for h in next(csv.reader(io.StringIO(text))) if h.startswith("=")]
    book = load_workbook(io.BytesIO(client.get("/imports/template.xlsx").get_data()))
    in_xlsx = [(sheet.title, cell.coordinate, cell.value) for sheet in book.worksheets
               for row in sheet.iter_rows() for cell in row if cell.data_type == "f"]
    assert (in_csv, in_xlsx) == ([], [])


def test_a_page_number_too_large_for_the_database_is_not_a_server_error(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    for url in ("/imports/", f"/imports/{upload.id}/rows", f"/imports/{upload.id}/people"):
        assert client.get(url + "?page=99999999999999999999").status_code < 500, url
