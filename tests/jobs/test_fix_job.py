"""Fixes too large for a page (a find-and-replace over many rows, a long file of fixes) made
by a real worker on a real Redis, including a worker killed in the middle of one: every cell
is replaced once, however many attempts it took."""
import io

import pytest
from sqlalchemy import func, select

from portal.audit.models import AuditEntry
from portal.background.models import JobRun
from portal.extensions import db
from portal.imports.models import Upload, UploadRow
from tests.conftest import kill_worker, start_worker
from tests.jobs.test_import_job import _swept_and_run_again, _upload, _wait, _wait_until_midway, villages  # noqa: F401

pytestmark = pytest.mark.live

HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"


def _people_with_a_wrong_sex(n: int) -> str:
    """People on their own (no household), each with the sex "Q": every row is an error."""
    return HEADER + "".join(f"Person{i},Family{i},Q,19{50 + i % 50}-0{1 + i % 9}-1{i % 9},FN{i:07d},JV1,,,\n"
                            for i in range(n))


@pytest.fixture
def small_page_fixes(app, monkeypatch):
    """Any fix of more than 100 rows goes to the worker."""
    monkeypatch.setitem(app.config, "UPLOAD_FIX_INLINE_ROWS", 100)


def _validated_upload(client, login, rows: int) -> Upload:
    upload = _upload(client, login, _people_with_a_wrong_sex(rows))
    assert _wait(upload, timeout=120).status == "succeeded"
    assert upload.counts["errors"] == rows
    return upload


def test_a_file_of_fixes_too_long_for_a_page_is_applied_by_the_worker_with_its_progress_shown(
        small_page_fixes, app, client, login, villages, worker):  # noqa: F811
    rows = 300
    upload = _validated_upload(client, login, rows)
    fixed = ("Row,First name,Last name,Sex,Birth date,National ID,Village code\n"
             + "".join(f"{i + 2},Person{i},Family{i},{'F' if i % 2 else 'M'},19{50 + i % 50}-0{1 + i % 9}-1{i % 9},"
                       f"FN{i:07d},JV1\n" for i in range(rows)) + "9999,Nobody,Here,M,1990-01-01,,JV1\n")
    response = client.post(f"/imports/{upload.id}/reupload", content_type="multipart/form-data",
                           data={"file": (io.BytesIO(fixed.encode()), "fixed.csv")})
    assert response.headers["Location"] == f"/imports/{upload.id}"
    db.session.commit()
    db.session.refresh(upload)
    run = _wait(upload, timeout=120)
    assert run.status == "succeeded", run.message
    assert run.result == {"updated": rows, "unknown": 1, "changed": 0, "changed_rows": [],
                          "unchanged": 0, "not_read": []}
    assert upload.status == "validated" and upload.counts["valid"] == rows and upload.counts["errors"] == 0
    assert upload.message == f"{rows} row(s) updated and checked again; 1 row(s) did not match a row to fix."
    page = client.get(f"/imports/{upload.id}").get_data(as_text=True)
    assert f'<p class="flash flash-success" role="status">{upload.message}</p>' in page
    assert f"Import {rows} valid row(s)" in page
    assert db.session.scalar(select(func.count()).where(
        AuditEntry.action == "fixes", AuditEntry.entity_id == str(upload.id))) == rows


def _replace_killed_midway(app, client, upload: Upload, rows: int, worker) -> int:
    """A find-and-replace within the first names whose new text holds the old (replacing a
    cell twice would show), its worker killed midway. Returns the job's id."""
    worker.stop()  # only the worker we kill may take the fix
    victim = start_worker(app)
    try:
        response = client.post(f"/imports/{upload.id}/replace", data={
            "field": "first_name", "match": "part", "find": "Person", "replace": "Person Ann"})
        assert response.headers["Location"] == f"/imports/{upload.id}"
        db.session.commit()
        db.session.refresh(upload)
        _wait_until_midway(upload.job_run_id, rows)
        kill_worker(victim)
    finally:
        worker.start()
    db.session.commit()
    replaced = select(func.count()).where(UploadRow.upload_id == upload.id,
                                          UploadRow.raw["first_name"].as_string().like("Person Ann%"))
    assert 0 < db.session.scalar(replaced) < rows
    assert db.session.get(Upload, upload.id).status == "fixing"
    return upload.job_run_id


def _each_first_name_replaced_once(upload: Upload, rows: int) -> None:
    assert upload.status == "validated" and upload.message == f"{rows:,} cell(s) replaced and their rows checked again."
    names = db.session.execute(select(UploadRow.row_number, UploadRow.raw).where(UploadRow.upload_id == upload.id)).all()
    assert sorted(raw["first_name"] for _n, raw in names) == sorted(f"Person Ann{n - 2}" for n, _raw in names)
    assert db.session.scalar(select(func.count()).where(
        AuditEntry.action == "replace", AuditEntry.entity_id == str(upload.id))) == rows


def test_a_find_and_replace_whose_worker_was_killed_goes_on_and_replaces_each_cell_once(
        small_page_fixes, app, client, login, villages, worker):  # noqa: F811
    rows = 4000
    upload = _validated_upload(client, login, rows)
    run_id = _replace_killed_midway(app, client, upload, rows, worker)
    run = _swept_and_run_again(app, run_id)
    assert run.result == {"changed": rows}
    db.session.refresh(upload)
    _each_first_name_replaced_once(upload, rows)
    # The rows are still errors (their sex), now with the new names checked.
    assert upload.counts["errors"] == rows


def test_a_find_and_replace_given_up_on_goes_on_from_where_it_stopped_when_started_again(
        small_page_fixes, app, client, login, villages, worker):  # noqa: F811
    rows = 4000
    upload = _validated_upload(client, login, rows)
    run_id = _replace_killed_midway(app, client, upload, rows, worker)
    run = db.session.get(JobRun, run_id)
    run.status, run.message = "failed", "The worker stopped while running this job."  # the sweep gave up
    db.session.commit()
    grid = client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)
    assert "Find and replace" in grid and "being made in the background" not in grid
    page = client.get(f"/imports/{upload.id}").get_data(as_text=True)
    assert "The fix stopped before it was done: The worker stopped while running this job." in page
    db.session.refresh(upload)
    assert upload.status == "validated"  # its rows can be fixed by hand again, or the fix started again
    assert client.post(f"/jobs/{run_id}/retry").status_code == 303
    db.session.commit()
    run = _wait(upload, timeout=180)
    assert run.status == "succeeded", run.message
    assert run.result == {"changed": rows}
    _each_first_name_replaced_once(upload, rows)
