"""Upload pages: history, templates, the upload form, mapping, the error grid and its fixes."""
import csv
import io
import itertools
import re

from pathlib import Path

import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from portal.background.models import JobRun
from portal.imports import services
from portal.imports.models import Upload, UploadRow
from portal.locations.services import Scope
from portal.registry.models import CustomField, Individual

HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"
_n = itertools.count()


def _validated(db_session, tmp_path, user, text, scope=Scope(everything=True)):
    path = tmp_path / f"u{next(_n)}.csv"
    path.write_text(text)
    upload = services.receive_upload(db_session, path=path, file_name="people.csv",
                                     duplicate_policy="error", day_first=None, program_id=None,
                                     enrol_status=None, area_id=None, actor_id=user.id, max_rows=100)
    services.validate_upload(db_session, upload, scope=scope, progress=lambda *a, **k: None)
    db_session.commit()
    return upload


def _post_file(client, data: bytes, name: str, **fields):
    return client.post("/imports/new", data={"file": (io.BytesIO(data), name), "duplicate_policy": "error",
                                             "date_order": "", "enrol_status": "potential", **fields},
                       content_type="multipart/form-data")


def test_the_history_lists_uploads_with_their_counts(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    page = client.get("/imports/").get_data(as_text=True)
    assert "people.csv" in page and "validated" in page and "Upload a file" in page


def test_a_viewer_sees_the_history_but_may_not_upload(client, login):
    login("viewer")
    assert client.get("/imports/").status_code == 200
    assert client.get("/imports/new").status_code == 403


def test_the_templates_hold_every_field_including_custom_fields_and_household_columns(client, login, db_session):
    db_session.add(CustomField(name="income", label="Monthly income", type="choice",
                               choices=["low", "high"], required=True))
    db_session.commit()
    login("field_officer")
    text = client.get("/imports/template.csv").get_data().decode("utf-8-sig")
    header = next(csv.reader(io.StringIO(text)))
    assert header[:3] == ["First name", "Middle name", "Last name"]
    assert {"Monthly income", "Household code", "Role", "Primary recipient"} <= set(header)
    book = load_workbook(io.BytesIO(client.get("/imports/template.xlsx").get_data()))
    assert book.sheetnames[:2] == ["Instructions", "People"]
    people = book["People"]
    assert [c.value for c in people[1]] == header
    lists = [v.formula1 for v in people.data_validations.dataValidation]
    assert any(f.startswith("Lists!") for f in lists)  # sex, role, income ... dropdowns
    instructions = " ".join(str(c.value) for row in book["Instructions"].iter_rows() for c in row if c.value)
    assert "Monthly income" in instructions and "One of low, high" in instructions


def test_a_file_that_is_not_a_spreadsheet_is_refused_with_its_reason(client, login, db_session):
    login("field_officer")
    response = _post_file(client, b"%PDF-1.4 fake", "people.csv")
    assert response.status_code == 422
    assert "This is a PDF document, not a spreadsheet" in response.get_data(as_text=True)
    assert db_session.scalar(select(Upload.id)) is None


def test_a_good_file_is_stored_and_its_validation_queued(client, login, db_session, country):
    login("field_officer")
    response = _post_file(client, (HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n").encode(), "people.csv")
    assert response.status_code == 302
    upload = db_session.scalar(select(Upload))
    assert upload.status == "validating" and upload.job_run_id
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert 'hx-trigger="every 1s"' in page
    assert client.get(f"/imports/{upload.id}/file").get_data() == (HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n").encode()


def test_unrecognised_columns_are_mapped_before_validation(client, login, db_session, country):
    login("field_officer")
    response = _post_file(client, b"Given;Family;Gender;DOB;Village\nAmina;Banda;F;1990-05-17;NV1\n", "p.csv")
    assert response.headers["Location"].endswith("/mapping")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Given" in page and "(leave out)" in page
    answer = client.post(response.headers["Location"], data={"col-0": "first_name", "col-1": "", "col-2": "sex",
                                                             "col-3": "birth_date", "col-4": "location"})
    assert answer.status_code == 422
    assert "Choose a column for every required field: Last name." in answer.get_data(as_text=True)
    answer = client.post(response.headers["Location"], data={
        "col-0": "first_name", "col-1": "last_name", "col-2": "sex", "col-3": "birth_date",
        "col-4": "location", "save_as": "Survey"})
    assert answer.status_code == 302
    assert db_session.scalar(select(Upload.status)) == "validating"


def test_the_mapping_page_shows_each_columns_first_value_greyed_shortened_and_escaped(
        client, login, db_session, country):
    login("program_manager")
    long_name = "Village of the " + "very " * 10 + "long name"
    response = _post_file(client, ("Given;Family;Gender;DOB;Place;Note\n"
                                   f"Amina;Banda;F;1990-05-17;{long_name};<b>bold</b>\n"
                                   "Juma;Phiri;M;1980-01-01;NV1;\n").encode(), "p.csv")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert '<td class="muted">Amina</td>' in page and "Juma" not in page
    assert f'<td class="muted">{long_name[:39]}…</td>' in page
    assert '<td class="muted">&lt;b&gt;bold&lt;/b&gt;</td>' in page and "<b>bold" not in page


def test_the_mapping_page_reads_the_first_value_of_a_workbook_column_by_column(
        client, login, db_session, country):
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append([None, "Given", "Family", "Gender", "DOB", "Place"])  # from column B
    sheet.append([None, "Amina", "Banda", "F", "1990-05-17", "NV1"])
    data = io.BytesIO()
    workbook.save(data)
    login("program_manager")
    response = _post_file(client, data.getvalue(), "p.xlsx")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert re.search(r'for="col-0">Given</label></td>\s*<td class="muted">Amina</td>', page)
    assert re.search(r'for="col-4">Place</label></td>\s*<td class="muted">NV1</td>', page)


@pytest.mark.parametrize("header", ["NRC no", "Num ID", "ID No.", "Téléphone", "N.R.C.", "IDNo",
                                    "Phone#", "NationalID", "Col7"])
def test_a_colleague_who_may_not_see_identifiers_sees_none_on_the_mapping_page_whatever_its_header(
        client, login, db_session, country, header):
    login("field_officer", [country["NV1"]])
    secret = "+265880000001"
    response = _post_file(client, f"Given;Family;Gender;DOB;Village;{header}\n"
                                  f"Amina;Banda;F;1990-05-17;NV1;{secret}\n".encode(), "p.csv")
    assert response.headers["Location"].endswith("/mapping")  # the header is no field's
    upload = db_session.scalar(select(Upload))
    client.post("/logout")
    colleague = login("field_officer", [country["NV1"]])  # who may open the upload, not its file
    assert colleague.id != upload.created_by_id
    assert client.get(f"/imports/{upload.id}/file").status_code == 403
    page = client.get(f"/imports/{upload.id}/mapping").get_data(as_text=True)
    assert secret not in page and '<td class="muted">•••••••••0001</td>' in page
    assert '<td class="muted">1990-05-17</td>' in page and '<td class="muted">NV1</td>' in page


@pytest.mark.parametrize("role, shown", [("field_officer", "•••••6789"), ("program_manager", "123456789")])
def test_the_mapping_page_masks_a_sample_national_id_unless_the_role_sees_them(
        client, login, db_session, country, role, shown):
    login(role)
    response = _post_file(client, b"Given;Family;Gender;DOB;Village;NRC no;Col7\n"
                                  b"Amina;Banda;F;1990-05-17;NV1;123456789;+265880000001\n", "p.csv")
    upload = db_session.scalar(select(Upload))
    assert upload.mapping["Village"] == "location" and upload.mapping["NRC no"] == ""
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert f'<td class="muted">{shown}</td>' in page
    # A column only chosen as an identifier, its name telling nothing, is masked once chosen.
    answer = client.post(response.headers["Location"], data={"col-6": "phone"}).get_data(as_text=True)
    assert ("+265880000001" in answer) is (role == "program_manager")


def test_the_error_grid_shows_only_rows_with_problems_and_marks_each_bad_cell(
        client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
                        + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    page = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert 'id="row-3"' in page and 'id="row-2"' not in page
    assert 'class="grid-cell-error">Q<br><small class="error">Sex must be F, M or O' in page


def test_editing_a_row_inline_checks_it_again(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    form = client.htmx("get", f"/imports/{upload.id}/rows/2/edit").get_data(as_text=True)
    assert '<input name="sex" form="edit-2" value="Q"' in form
    fixed = client.htmx("post", f"/imports/{upload.id}/rows/2/edit", data={"sex": "male"})
    assert fixed.status_code == 200
    html = fixed.get_data(as_text=True)
    assert 'data-status="valid"' in html and "grid-cell-error" not in html
    db_session.expire_all()
    assert db_session.get(Upload, upload.id).counts["valid"] == 1


def test_edit_on_a_row_dropped_since_the_grid_opened_says_why_instead_of_an_error_page(
        client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    client.htmx("post", f"/imports/{upload.id}/rows/2/drop")  # in another tab
    answer = client.htmx("get", f"/imports/{upload.id}/rows/2/edit")
    assert (answer.status_code, answer.headers["HX-Redirect"]) == (204, f"/imports/{upload.id}/rows")
    assert "Row 2 is dropped; it cannot be edited." in client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)


def test_fixing_a_households_head_shows_its_waiting_members_row_fixed_too(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Tiyamike,Zimba,Q,1985-04-02,,NV1,H1,head,yes\n"
                        + "Kondwani,Zimba,M,2012-07-09,,NV1,H1,child,no\n")
    page = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert '<tr id="row-3" data-status="error">' in page  # waits for its head's row
    html = client.htmx("post", f"/imports/{upload.id}/rows/2/edit", data={"sex": "F"}).get_data(as_text=True)
    assert '<tr id="row-2" data-status="valid">' in html
    assert '<tr id="row-3" data-status="valid" hx-swap-oob="true">' in html


def test_dropping_a_row_shows_the_row_that_looked_like_it_again_without_its_warning(
        client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
                        + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    html = client.htmx("post", f"/imports/{upload.id}/rows/2/drop").get_data(as_text=True)
    assert '<tr id="row-3" data-status="valid" hx-swap-oob="true">' in html
    assert 'id="row-2"' not in html  # the dropped row leaves the grid


def test_a_row_can_be_dropped_from_the_grid(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    response = client.htmx("post", f"/imports/{upload.id}/rows/2/drop")
    assert response.status_code == 200 and response.get_data(as_text=True).strip().startswith('<div id="flash-messages"') \
        or response.get_data(as_text=True).strip() == ""
    assert db_session.scalar(select(UploadRow.status)) == "dropped"


def test_find_and_replace_in_a_column_fixes_many_rows(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "A,B,F,1990-05-17,,north-1,,,\n"
                        + "C,D,F,1990-05-17,,North-1,,,\n")
    response = client.post(f"/imports/{upload.id}/replace", data={"field": "location", "find": "north-1",
                                                                  "replace": "NV1"})
    assert response.status_code == 303
    page = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert "2 cell(s) replaced" in page and "No row is left to fix." in page


def test_a_find_and_replace_that_matches_no_cell_says_so_as_a_warning_not_a_success(
        client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "A,B,F,1990-05-17,,north-1,,,\n")
    response = client.post(f"/imports/{upload.id}/replace", data={"field": "location", "find": "south-9",
                                                                  "replace": "NV1"})
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert ('<p class="flash flash-warning" role="status">No cell of that column matched, '
            "so nothing was replaced.</p>") in page
    assert "cell(s) replaced" not in page and "flash-success" not in page


@pytest.fixture
def one_row_per_page_fix(app, monkeypatch):
    monkeypatch.setitem(app.config, "UPLOAD_FIX_INLINE_ROWS", 1)


def _fix_job(db_session, upload) -> JobRun:
    db_session.expire_all()
    assert db_session.get(Upload, upload.id).status == "fixing"
    return db_session.get(JobRun, db_session.get(Upload, upload.id).job_run_id)


def test_a_find_and_replace_made_by_a_worker_that_matches_no_cell_says_so_as_a_warning(
        one_row_per_page_fix, client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user,
                        HEADER + "A,B,F,1990-05-17,,north-1,,,\n" + "C,D,F,1990-05-17,,North-1,,,\n")
    client.post(f"/imports/{upload.id}/replace", data={"field": "location", "find": "south-9", "replace": "NV1"})
    run = _fix_job(db_session, upload)
    upload = db_session.get(Upload, upload.id)
    run.result = services.fix_upload(db_session, upload, run.params["fix"], scope=Scope.for_user(user),
                                     run=run, progress=lambda *_args: None)
    run.status = "succeeded"  # as the worker ends it
    db_session.commit()
    page = client.get(f"/imports/{upload.id}").get_data(as_text=True)
    assert ('<p class="flash flash-warning" role="alert">No cell of that column matched, '
            "so nothing was replaced.</p>") in page
    assert "cell(s) replaced" not in page


def test_a_find_and_replace_in_an_upload_with_more_open_rows_than_a_page_checks_is_queued_for_a_worker(
        one_row_per_page_fix, client, login, db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, login("field_officer", [country["N"]]),
                        HEADER + "A,B,F,1990-05-17,,north-1,,,\n" + "C,D,F,1990-05-17,,North-1,,,\n")
    response = client.post(f"/imports/{upload.id}/replace", data={"field": "location", "find": "north-1",
                                                                  "replace": "NV1"})
    assert response.headers["Location"] == f"/imports/{upload.id}"
    run = _fix_job(db_session, upload)
    assert (run.kind, run.status) == ("upload_fix", "queued")
    assert run.params["fix"] == {"kind": "replace", "field": "location", "find": "north-1",
                                 "replace": "NV1", "whole_cell": True}
    # Nothing is changed until the worker makes the fix, and nobody edits the rows meanwhile.
    assert sorted(r.raw["location"] for r in db_session.scalars(select(UploadRow))) == ["North-1", "north-1"]
    summary = client.get(f"/imports/{upload.id}").get_data(as_text=True)
    assert "<p>Fixing</p>" in summary and "Waiting for a worker" in summary
    assert "it is made in the background" in summary
    grid = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert "A large fix is being made in the background" in grid and "Find and replace" not in grid
    refused = client.post(f"/imports/{upload.id}/rows/2/edit", data={"location": "NV1"})
    assert refused.status_code == 303
    assert ("A large fix is being made in this upload; its rows can be edited again when it ends."
            in client.get(refused.headers["Location"]).get_data(as_text=True))
    db_session.expire_all()
    assert db_session.scalar(select(UploadRow.raw).where(UploadRow.row_number == 2))["location"] == "north-1"


def test_a_find_and_replace_without_a_column_of_the_file_is_refused_before_any_job_is_queued(
        one_row_per_page_fix, client, login, db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, login("field_officer", [country["N"]]),
                        HEADER + "A,B,F,1990-05-17,,north-1,,,\n" + "C,D,F,1990-05-17,,North-1,,,\n")
    response = client.post(f"/imports/{upload.id}/replace", data={"field": "location", "match": "part",
                                                                  "find": "  ", "replace": "NV1"})
    assert "Write the text to find within the cells." in client.get(response.headers["Location"]).get_data(as_text=True)
    db_session.expire_all()
    assert db_session.get(Upload, upload.id).status == "validated"
    assert db_session.scalar(select(JobRun).where(JobRun.kind == "upload_fix")) is None


def test_a_large_fix_that_cannot_be_queued_says_so_and_gives_the_rows_back(
        one_row_per_page_fix, app, client, login, db_session, tmp_path, country, monkeypatch):
    upload = _validated(db_session, tmp_path, login("field_officer", [country["N"]]),
                        HEADER + "A,B,F,1990-05-17,,north-1,,,\n" + "C,D,F,1990-05-17,,North-1,,,\n")
    monkeypatch.setitem(app.config, "REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    response = client.post(f"/imports/{upload.id}/replace", data={"field": "location", "find": "north-1",
                                                                  "replace": "NV1"})
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "The background queue could not be reached just now, so nothing was started" in page
    db_session.expire_all()
    upload = db_session.get(Upload, upload.id)
    assert upload.status == "validated" and "The job queue could not be reached" in upload.message
    assert db_session.get(JobRun, upload.job_run_id).status == "failed"
    grid = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert "Find and replace" in grid  # the rows can be fixed again, by hand or by another try


def test_an_upload_whose_check_cannot_be_queued_says_so_and_offers_to_check_it_again(
        app, client, login, db_session, country, monkeypatch):
    login("field_officer", [country["N"]])
    monkeypatch.setitem(app.config, "REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    response = _post_file(client, (HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n").encode(), "people.csv")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "The background queue could not be reached just now" in page
    assert 'data-status="failed"' in page and "Check again" in page


FIXED_HEADER = "Row,First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"


def test_a_file_of_fixes_with_more_rows_than_a_page_checks_is_kept_for_a_worker(
        one_row_per_page_fix, app, client, login, db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, login("field_officer", [country["N"]]),
                        HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n" + "Ali,Banda,Q,1991-05-17,,NV1,,,\n")
    fixed = FIXED_HEADER + "2,Juma,Banda,M,1990-05-17,,NV1,,,\n3,Ali,Banda,M,1991-05-17,,NV1,,,\n"
    response = client.post(f"/imports/{upload.id}/reupload", data={"file": (io.BytesIO(fixed.encode()), "fixed.csv")},
                           content_type="multipart/form-data")
    assert response.headers["Location"] == f"/imports/{upload.id}"
    run = _fix_job(db_session, upload)
    assert run.params["fix"]["kind"] == "file" and run.params["fix"]["rows"] == 2
    assert Path(run.params["fix"]["path"]).read_text() == fixed
    assert [r.status for r in db_session.scalars(select(UploadRow))] == ["error", "error"]


def test_a_file_of_fixes_that_breaks_deep_inside_is_refused_before_a_job_changes_anything(
        one_row_per_page_fix, app, client, login, db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, login("field_officer", [country["N"]]),
                        HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n" + "Ali,Banda,Q,1991-05-17,,NV1,,,\n")
    fixed = (FIXED_HEADER + "2,Juma,Banda,M,1990-05-17,,NV1,,,\n3,Ali,Banda,M,1991-05-17,,NV1,,,\n"
             + "".join(f"{n},X,Y,M,1991-05-17,,NV1,,,\n" for n in range(4, 40)) + "40,X\x0bY,Y,M,1991-05-17,,NV1,,,\n")
    kept = set((Path(app.config["UPLOAD_DIR"]) / "fixes").glob("*"))
    response = client.post(f"/imports/{upload.id}/reupload", data={"file": (io.BytesIO(fixed.encode()), "fixed.csv")},
                           content_type="multipart/form-data")
    assert "invisible control character" in client.get(response.headers["Location"]).get_data(as_text=True)
    db_session.expire_all()
    assert db_session.get(Upload, upload.id).status == "validated"
    assert db_session.scalar(select(JobRun).where(JobRun.kind == "upload_fix")) is None
    assert [r.status for r in db_session.scalars(select(UploadRow))] == ["error", "error"]
    assert set((Path(app.config["UPLOAD_DIR"]) / "fixes").glob("*")) == kept


def test_rows_to_fix_download_with_an_error_column_and_inert_formulas(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "=cmd(),Banda,Q,1990-05-17,,NV1,,,\n")
    text = client.get(f"/imports/{upload.id}/problems.csv").get_data().decode("utf-8-sig")
    header, row = list(csv.reader(io.StringIO(text)))
    assert header[0] == "Row" and header[-2:] == ["Errors", "Row version"]
    assert row[0] == "2" and row[1] == "'=cmd()" and "Sex must be F, M or O" in row[-2]
    book = load_workbook(io.BytesIO(client.get(f"/imports/{upload.id}/problems.xlsx").get_data()))
    assert book.active["B2"].value == "'=cmd()"


def test_fixed_rows_can_be_uploaded_back_into_the_same_upload(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    fixed = "Row,First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient,Errors\n" \
            "2,Juma,Banda,M,1990-05-17,,NV1,,,,sex: wrong\n"
    response = client.post(f"/imports/{upload.id}/reupload", data={"file": (io.BytesIO(fixed.encode()), "fixed.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 302
    assert "1 row(s) updated and checked again." in client.get(response.headers["Location"]).get_data(as_text=True)
    assert db_session.scalar(select(UploadRow.status)) == "valid"


def test_rows_fixed_offline_by_someone_who_sees_identifiers_masked_keep_their_national_ids(
        client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,AB123456,NV1,,,\n")
    downloaded = client.get(f"/imports/{upload.id}/problems.csv").get_data().decode("utf-8-sig")
    header, row = list(csv.reader(io.StringIO(downloaded)))
    assert row[header.index("National ID")] == "••••3456"
    row[header.index("Sex")] = "M"
    fixed = io.StringIO()
    csv.writer(fixed).writerows([header, row])
    response = client.post(f"/imports/{upload.id}/reupload",
                           data={"file": (io.BytesIO(fixed.getvalue().encode()), "fixed.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 302
    staged = db_session.scalar(select(UploadRow).where(UploadRow.upload_id == upload.id))
    db_session.refresh(staged)
    assert (staged.raw["national_id"], staged.raw["sex"], staged.status) == ("AB123456", "M", "valid")


def test_importing_is_queued_from_the_summary(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    page = client.get(f"/imports/{upload.id}").get_data(as_text=True)
    assert "Import 1 valid row(s)" in page and "New people</dt><dd>1" in page
    assert client.post(f"/imports/{upload.id}/import").status_code == 303
    db_session.expire_all()
    assert db_session.get(Upload, upload.id).status == "importing"


class _WorkerGone(BaseException):
    """The worker's process ending between two steps (killed, out of memory)."""


def test_an_import_that_stopped_after_its_people_is_finished_from_the_summary(
        client, login, db_session, tmp_path, country):
    from portal.registry.models import Group

    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,H1,head,yes\n"
                        "Juma,Banda,M,2015-01-02,,NV1,H1,child,no\n")
    scope = Scope(everything=True)
    run = services.start_import(db_session, upload, only_if_clean=False, scope=scope,
                                actor_id=user.id, may_enrol=True)

    def progress(done, total, message):
        db_session.commit()
        if message.startswith("Imported 2 of 2"):  # the people committed, not their household
            raise _WorkerGone

    with pytest.raises(_WorkerGone):
        services.import_upload(db_session, upload, scope=scope, actor_id=user.id, progress=progress)
    run.status, run.message = "failed", "The worker stopped while running this job."  # as the sweep gives up
    services.reconcile(db_session, upload)
    db_session.commit()
    assert (upload.status, upload.counts["valid"], upload.counts["imported"]) == ("validated", 0, 2)
    page = client.get(f"/imports/{upload.id}").get_data(as_text=True)
    # Else the two people stayed without their household, and nobody could go on.
    assert "Finish the import" in page and f"/imports/{upload.id}/import" in page
    assert client.post(f"/imports/{upload.id}/import").status_code == 303
    db_session.expire_all()
    upload = db_session.get(Upload, upload.id)
    assert upload.status == "importing"
    services.import_upload(db_session, upload, scope=scope, actor_id=user.id, progress=lambda *a: None)
    assert db_session.scalar(select(Group).where(Group.code == "H1")) is not None


def test_queuing_an_import_is_in_the_audit_log_with_who_asked_and_for_which_upload(
        client, login, db_session, tmp_path, country):
    from portal.audit.models import AuditEntry

    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    assert client.post(f"/imports/{upload.id}/import").status_code == 303
    db_session.expire_all()
    run_id = db_session.get(Upload, upload.id).job_run_id
    [entry] = db_session.scalars(select(AuditEntry).where(AuditEntry.action == "queue"))
    assert (entry.entity_type, entry.entity_id, entry.actor_id) == ("job_run", str(run_id), user.id)
    assert entry.summary == f"Job #{run_id} queued: upload_import"
    assert entry.changes == {"upload_id": upload.id}


def test_an_upload_that_enrols_into_a_program_is_imported_only_by_someone_who_may_enrol(
        client, login, db_session, tmp_path, country, make_user):
    from portal.programs.models import Program

    program = Program(code="CT1", name="Cash for all", beneficiary_kind="individual", status="active")
    db_session.add(program)
    manager = make_user("program_manager")
    upload = _validated(db_session, tmp_path, manager, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    upload.program_id, upload.enrol_status, upload.location_id = program.id, "active", country["N"].id
    db_session.commit()
    login("field_officer", [country["N"]])  # sees the upload, may not enrol
    client.post(f"/imports/{upload.id}/import")
    db_session.expire_all()
    assert db_session.get(Upload, upload.id).status == "validated"
    page = client.get(f"/imports/{upload.id}").get_data(as_text=True)
    assert "only someone who may enrol beneficiaries can import it" in page

def test_the_same_content_already_imported_warns_before_going_on(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    text = HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
    earlier = _validated(db_session, tmp_path, user, text)
    earlier.status = "imported"
    db_session.commit()
    response = _post_file(client, text.encode(), "again.csv")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "exactly the same content was already imported" in page
    assert "Go on and check the rows" in page


def test_the_same_content_imported_in_another_area_warns_without_naming_that_upload(
        client, login, db_session, tmp_path, country, make_user):
    south = make_user("field_officer", [country["S"]])
    text = HEADER + "Amina,Banda,F,1990-05-17,,SV1,,,\n"
    earlier = _validated(db_session, tmp_path, south, text)
    earlier.status, earlier.location_id, earlier.file_name = "imported", country["S"].id, "south-secret.csv"
    db_session.commit()
    login("field_officer", [country["N"]])
    page = client.get(_post_file(client, text.encode(), "again.csv").headers["Location"]).get_data(as_text=True)
    assert "already imported\n      by someone in another area." in page and "Go on and check the rows" in page
    assert "south-secret" not in page and f"upload #{earlier.id}" not in page


def test_the_original_file_goes_to_its_uploader_or_to_roles_that_see_national_ids(
        client, login, db_session, tmp_path, country, make_user):
    uploader = make_user("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, uploader, HEADER + "Amina,Banda,F,1990-05-17,N1,NV1,,,\n")
    upload.location_id = country["N"].id
    db_session.commit()
    login("field_officer", [country["N"]])  # a colleague of the same area sees the upload
    assert "original file" not in client.get(f"/imports/{upload.id}").get_data(as_text=True)
    assert client.get(f"/imports/{upload.id}/file").status_code == 403
    client.post("/logout")
    login("program_manager")
    assert client.get(f"/imports/{upload.id}/file").get_data().endswith(b"N1,NV1,,,\n")


def test_someone_who_moved_out_of_the_area_is_listed_without_details_among_the_imported(
        client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
                        + "Thandiwe,Phiri,F,1991-02-03,,NV2,,,\n", scope=Scope(paths=(country["N"].path,)))
    services.import_upload(db_session, upload, scope=Scope(everything=True), actor_id=None,
                           progress=lambda *a, **k: None)
    moved = db_session.scalar(select(Individual).where(Individual.first_name == "Thandiwe"))
    moved.location_id = country["SV1"].id
    db_session.commit()
    page = client.get(f"/imports/{upload.id}/people").get_data(as_text=True)
    assert "Amina Banda" in page and "Thandiwe" not in page
    assert "Someone who now lives outside your area" in page

def test_another_officers_upload_elsewhere_is_not_found(client, login, db_session, tmp_path, country, make_user):
    south = make_user("field_officer", [country["S"]])
    db_session.flush()
    upload = _validated(db_session, tmp_path, south, HEADER + "Amina,Banda,F,1990-05-17,,SV1,,,\n",
                        scope=Scope(paths=(country["S"].path,)))
    upload.location_id = country["S"].id
    db_session.commit()
    login("field_officer", [country["N"]])
    assert client.get(f"/imports/{upload.id}").status_code == 404
    assert client.get(f"/imports/{upload.id}/rows").status_code == 404
    assert client.post(f"/imports/{upload.id}/rows/2/drop").status_code == 404


def test_identifiers_in_the_grid_are_masked_without_the_pii_permission(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,Q,1990-05-17,AB123456,NV1,,,\n")
    page = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert "AB123456" not in page and "••••3456" in page


def test_a_masked_identifier_sent_back_unchanged_keeps_the_files_value_and_a_typed_one_replaces_it(
        client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,Q,1990-05-17,AB123456,NV1,,,\n"
                        + "Juma,Phiri,Q,1990-05-17,CD654321,NV1,,,\n")
    client.htmx("post", f"/imports/{upload.id}/rows/2/edit", data={"sex": "F", "national_id": "••••3456"})
    client.htmx("post", f"/imports/{upload.id}/rows/3/edit", data={"sex": "M", "national_id": "•••EF999"})
    rows = {r.row_number: r for r in db_session.scalars(select(UploadRow).where(UploadRow.upload_id == upload.id))}
    db_session.refresh(rows[2]), db_session.refresh(rows[3])
    assert (rows[2].raw["national_id"], rows[2].status) == ("AB123456", "valid")
    assert rows[3].raw["national_id"] == "•••EF999" and "national_id" in rows[3].errors


def test_find_and_replace_is_not_offered_on_identifiers_the_user_sees_masked(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,Q,1990-05-17,AB123456,NV1,,,\n")
    page = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert 'value="national_id"' not in page and 'value="sex"' in page
    response = client.post(f"/imports/{upload.id}/replace", data={"field": "national_id", "find": "AB123456",
                                                                  "replace": "AB123457"})
    assert "1 cell(s) replaced" not in client.get(response.headers["Location"]).get_data(as_text=True)
    row = db_session.scalar(select(UploadRow).where(UploadRow.upload_id == upload.id))
    db_session.refresh(row)
    assert row.raw["national_id"] == "AB123456"


def test_a_file_over_the_size_limit_is_refused_before_it_is_stored(app, client, login, db_session):
    login("field_officer")
    limit = app.config["MAX_CONTENT_LENGTH"]
    app.config["MAX_CONTENT_LENGTH"] = 2000
    try:
        response = _post_file(client, (HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n" * 100).encode(), "big.csv")
    finally:
        app.config["MAX_CONTENT_LENGTH"] = limit
    assert response.status_code == 413
    assert "The file is larger than the portal accepts." in response.get_data(as_text=True)
    assert db_session.scalar(select(Upload.id)) is None


def test_the_people_of_an_imported_upload_link_to_their_registry_pages(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,H9,head,yes\n")
    services.start_import(db_session, upload, only_if_clean=False, scope=Scope(everything=True),
                          actor_id=user.id, may_enrol=True)
    services.import_upload(db_session, upload, scope=Scope(everything=True), actor_id=user.id,
                           progress=lambda *a, **k: None)
    db_session.commit()
    person_id = db_session.scalar(select(UploadRow.individual_id))
    page = client.get(f"/imports/{upload.id}/people").get_data(as_text=True)
    assert f'href="/registry/individuals/{person_id}">Amina Banda</a>' in page
    assert "H9" in page and "created" in page


def _seen(page: str, row_number: int, action: str) -> str:
    """The row version a grid row's button sends with its action."""
    import re

    match = re.search(rf'rows/{row_number}/{action}"\s+hx-vals=\'{{"seen": "([0-9a-f]+)"}}\'', page)
    assert match, f"no {action} button with the row's version"
    return match.group(1)


def test_not_a_duplicate_clicked_on_a_grid_showing_another_warning_is_refused(
        client, login, db_session, tmp_path, country, make_individual):
    from datetime import date

    user = login("field_officer", [country["N"]])
    first = make_individual("Amina", "Banda", birth_date=date(1990, 5, 17), location=country["NV1"])
    second = make_individual("Grace", "Tembo", birth_date=date(1980, 1, 1), location=country["NV1"])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    grid = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert f"#{first.id}" in grid  # what the user judges
    seen = _seen(grid, 2, "confirm")
    row = db_session.scalar(select(UploadRow).where(UploadRow.upload_id == upload.id))
    # Meanwhile someone retypes the row: now it looks like another registered person.
    services.edit_row(db_session, upload, row, {"first_name": "Grace", "last_name": "Tembo",
                                                "birth_date": "1980-01-01"}, scope=Scope(everything=True))
    db_session.commit()
    assert f"#{second.id}" in row.warning
    response = client.htmx("post", f"/imports/{upload.id}/rows/2/confirm", data={"seen": seen})
    assert response.headers.get("HX-Redirect") or response.status_code in (302, 303)
    db_session.refresh(row)
    assert row.status == "duplicate" and f"#{second.id}" in row.warning
    page = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert "Row 2 changed after the page showed it" in page
    # Confirmed from the grid as it is now, it goes through.
    client.htmx("post", f"/imports/{upload.id}/rows/2/confirm", data={"seen": _seen(page, 2, "confirm")})
    db_session.refresh(row)
    assert row.status == "valid" and row.warning is None


def test_a_row_changed_since_the_grid_showed_it_is_not_dropped(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    seen = _seen(client.get(f"/imports/{upload.id}/rows").get_data(as_text=True), 2, "drop")
    row = db_session.scalar(select(UploadRow).where(UploadRow.upload_id == upload.id))
    services.edit_row(db_session, upload, row, {"sex": "M"}, scope=Scope(everything=True))
    db_session.commit()
    client.htmx("post", f"/imports/{upload.id}/rows/2/drop", data={"seen": seen})
    db_session.refresh(row)
    assert row.status == "valid"


def test_a_file_of_fixes_downloaded_before_a_grid_edit_leaves_that_row_as_the_grid_left_it(
        client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,AB123456,NV1,,,\n"
                        + "Ali,Phiri,Q,1991-05-17,,NV1,,,\n")
    downloaded = client.get(f"/imports/{upload.id}/problems.csv").get_data().decode("utf-8-sig")
    header, row2, row3 = list(csv.reader(io.StringIO(downloaded)))
    assert header[-1] == "Row version"
    # Meanwhile row 2 is fixed in the grid: its sex, and a mistyped national ID.
    form = client.htmx("get", f"/imports/{upload.id}/rows/2/edit").get_data(as_text=True)
    seen = form.split('name="seen" value="')[1].split('"')[0]
    client.htmx("post", f"/imports/{upload.id}/rows/2/edit", data={"sex": "M", "national_id": "AB999999", "seen": seen})
    # The file, with row 3 fixed and row 2 as downloaded (its ID masked), comes back.
    row3[header.index("Sex")] = "M"
    out = io.StringIO()
    csv.writer(out).writerows([header, row2, row3])
    response = client.post(f"/imports/{upload.id}/reupload",
                           data={"file": (io.BytesIO(out.getvalue().encode()), "fixed.csv")},
                           content_type="multipart/form-data")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert ("1 row(s) updated and checked again; 1 row(s) changed since the file was downloaded were "
            "left as they are (rows 2): download the rows to fix again.") in page
    rows = {r.row_number: r for r in db_session.scalars(select(UploadRow).where(UploadRow.upload_id == upload.id))}
    for row in rows.values():
        db_session.refresh(row)
    assert (rows[2].status, rows[2].raw["sex"], rows[2].raw["national_id"]) == ("valid", "M", "AB999999")
    assert (rows[3].status, rows[3].raw["sex"]) == ("valid", "M")


def test_a_file_larger_than_any_form_may_be_is_still_uploaded(app, client, login, db_session):
    login("field_officer")
    limit = app.config["MAX_FORM_BYTES"]
    app.config["MAX_FORM_BYTES"] = 2000  # the file below is ten times that
    try:
        response = _post_file(client, (HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n" * 600).encode(), "big.csv")
    finally:
        app.config["MAX_FORM_BYTES"] = limit
    assert response.status_code in (302, 303), response.status_code
    assert db_session.scalar(select(Upload.id)) is not None


def test_a_large_file_of_fixes_with_none_of_the_uploads_columns_is_refused_before_any_job(
        app, client, login, db_session, tmp_path, country, monkeypatch):
    monkeypatch.setitem(app.config, "UPLOAD_FIX_INLINE_ROWS", 1)  # two rows make a job
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,?,2015-01-02,,NV1,,,\n"
                        + "Zoe,Phiri,?,1980-03-04,,NV1,,,\n")
    response = client.post(f"/imports/{upload.id}/reupload", content_type="multipart/form-data",
                           data={"file": (io.BytesIO(b"Row,Colour\n2,blue\n3,red\n"), "fixed.csv")})
    assert response.status_code == 302
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "None of the file&#39;s columns is a field of this upload" in page
    db_session.expire_all()
    upload = db_session.get(Upload, upload.id)
    assert upload.status == "validated" and upload.job_run_id is None


def test_an_upload_is_checked_only_in_its_own_area_after_its_uploader_is_given_another(
        client, login, db_session, tmp_path, country, make_individual, make_user):
    """The upload belongs to North, where the uploader worked, and North's officers read its
    rows: a check made after the uploader was also given South must not name South's people."""
    from datetime import date

    from tests.factories import UPLOAD_HEADER

    make_individual("Zeldah", "Outsider", location=country["SV1"], birth_date=date(1977, 7, 7),
                    national_id="ZZ9990001")
    uploader = make_user("field_officer", [country["ND"]])
    db_session.commit()
    path = tmp_path / "a.csv"
    path.write_text(UPLOAD_HEADER + "Zelda,Outsider,F,1977-07-07,,SV1,,,\n")
    upload = services.receive_upload(db_session, path=path, file_name="a.csv", duplicate_policy="error",
                                     day_first=None, program_id=None, enrol_status=None,
                                     area_id=services.uploader_area(uploader), actor_id=uploader.id,
                                     max_rows=100)
    uploader.locations = [country["ND"], country["SD"]]
    db_session.commit()
    scope = services.checking_scope(upload, Scope(everything=True))  # an administrator checks it
    services.validate_upload(db_session, upload, scope=scope, progress=lambda *a, **k: None)
    db_session.commit()

    row = db_session.scalar(select(UploadRow).where(UploadRow.upload_id == upload.id))
    assert row.status == "error" and "outside your locations" in row.errors["location"]
    login("field_officer", [country["ND"]])
    page = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert "Zeldah" not in page
