"""Uploads validated and imported by a real worker on a real Redis, including a worker killed
in the middle of an import: nobody is created twice and no row is lost."""
import io
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portal.background.models import JobRun
from portal.background.services import job_queue, redis_connection, sweep_stale_jobs
from portal.extensions import db
from portal.imports.models import Upload, UploadRow
from portal.registry.models import Group, GroupMember, Individual
from tests.conftest import child_pids, kill_worker, start_worker, wait_for_job

pytestmark = pytest.mark.live

HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"


def _people(n: int, village: str = "JV1") -> str:
    lines = [HEADER]
    for i in range(n):
        household = f"JH{i // 5}"
        role = "head" if i % 5 == 0 else "child"
        lines.append(f"Person{i},Family{i // 5},{'F' if i % 2 else 'M'},19{50 + i % 50}-0{1 + i % 9}-1{i % 9},"
                     f"JN{i:07d},{village},{household},{role},{'yes' if i % 5 == 0 else 'no'}\n")
    return "".join(lines)


@pytest.fixture
def villages(db_session):
    from portal.locations.services import Scope, create_location

    everywhere = Scope(everything=True)
    region = create_location(db_session, code="JR", name="Job region", kind="region", parent=None, scope=everywhere)
    district = create_location(db_session, code="JD", name="Job district", kind="district", parent=region, scope=everywhere)
    ward = create_location(db_session, code="JW", name="Job ward", kind="ward", parent=district, scope=everywhere)
    create_location(db_session, code="JV1", name="Job village", kind="village", parent=ward, scope=everywhere)
    db_session.commit()


def _upload(client, login, text: str, name="people.csv") -> Upload:
    login("admin")
    response = client.post("/imports/new", data={"file": (io.BytesIO(text.encode()), name),
                                                 "duplicate_policy": "error", "date_order": "",
                                                 "enrol_status": "potential"},
                           content_type="multipart/form-data")
    assert response.status_code == 302, response.get_data(as_text=True)
    upload_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
    db.session.commit()
    return db.session.get(Upload, upload_id)


def _wait(upload: Upload, **kwargs) -> JobRun:
    run = wait_for_job(upload.job_run_id, **kwargs)
    db.session.refresh(upload)
    return run


def test_an_upload_is_validated_then_imported_by_the_worker(app, client, login, villages, worker):
    upload = _upload(client, login, _people(10))
    run = _wait(upload)
    assert run.status == "succeeded", run.message
    assert upload.status == "validated" and upload.counts["valid"] == 10
    page = client.htmx("get", f"/imports/{upload.id}").get_data(as_text=True)
    assert "hx-trigger" not in page and "Import 10 valid row(s)" in page
    assert client.post(f"/imports/{upload.id}/import").status_code == 303
    db.session.commit()
    db.session.refresh(upload)
    run = _wait(upload)
    assert run.status == "succeeded", run.message
    assert upload.status == "imported" and upload.counts["imported"] == 10
    assert db.session.scalar(select(func.count()).select_from(Individual)) == 10
    assert db.session.scalar(select(func.count()).select_from(Group)) == 2


def test_a_control_character_deep_in_the_file_fails_the_upload_and_stages_nothing(
        app, client, login, villages, worker):
    text = _people(300)
    lines = text.splitlines(keepends=True)
    lines[250] = lines[250].replace("Person249", "Person\x0b249")
    upload = _upload(client, login, "".join(lines))
    run = _wait(upload)
    assert run.status == "failed"
    assert upload.status == "failed"
    assert "Row 251, column First name contains an invisible control character (U+000B)" in upload.message
    assert db.session.scalar(select(func.count()).where(UploadRow.upload_id == upload.id)) == 0
    page = client.get(f"/imports/{upload.id}").get_data(as_text=True)
    assert "invisible control character" in page


def _wait_until_midway(run_id: int, rows: int) -> None:
    """Until the job has done some of its rows, and less than half."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        db.session.commit()
        run = db.session.get(JobRun, run_id)
        if run.status == "running" and 0 < run.done < rows // 2:
            return
        time.sleep(0.02)


def _swept_and_run_again(app, run_id: int) -> JobRun:
    """The killed worker's job, found stale by the sweep, queued again and finished."""
    time.sleep(5.5)  # the test worker treats 5 s without a heartbeat as dead
    db.session.commit()
    swept = sweep_stale_jobs(db.session, job_queue(redis_connection(app.config)), stale_after=5)
    db.session.commit()
    assert [r.id for r in swept] == [run_id]
    run = wait_for_job(run_id, timeout=180)
    assert run.status == "succeeded", run.message
    assert run.attempts == 2
    return run


def test_an_import_whose_worker_was_killed_resumes_without_duplicates_or_losses(
        app, client, login, villages, worker):
    rows = 40_000
    upload = _upload(client, login, _people(rows))
    assert _wait(upload, timeout=180).status == "succeeded"
    assert upload.counts["valid"] == rows
    # Only the worker we kill may take the import.
    worker.stop()
    victim = start_worker(app)
    try:
        assert client.post(f"/imports/{upload.id}/import").status_code == 303
        db.session.commit()
        db.session.refresh(upload)
        run_id = upload.job_run_id
        _wait_until_midway(run_id, rows)
        kill_worker(victim)
        db.session.commit()
        half_done = db.session.scalar(select(func.count()).where(
            UploadRow.upload_id == upload.id, UploadRow.status == "imported"))
        assert 0 < half_done < rows
        # Every imported row has its person, and no person exists without an imported row.
        assert db.session.scalar(select(func.count()).select_from(Individual)) == half_done
    finally:
        worker.start()
    _swept_and_run_again(app, run_id)
    db.session.refresh(upload)
    assert upload.status == "imported" and upload.counts["imported"] == rows
    assert upload.counts["people_created"] == rows  # the killed attempt's people counted too
    assert db.session.scalar(select(func.count()).select_from(Individual)) == rows
    assert db.session.scalar(select(func.count(func.distinct(Individual.national_id)))) == rows
    assert db.session.scalar(select(func.count(func.distinct(UploadRow.individual_id))).where(
        UploadRow.upload_id == upload.id)) == rows
    assert db.session.scalar(select(func.count()).select_from(Group)) == rows // 5
    assert db.session.scalar(select(func.count()).select_from(GroupMember)) == rows


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_validation_whose_worker_was_killed_leaves_no_reader_behind_and_runs_again_staging_each_row_once(
        app, client, login, villages, worker):
    rows = 40_000
    worker.stop()  # only the worker we kill may take the validation
    victim = start_worker(app)
    try:
        upload = _upload(client, login, _people(rows))
        run_id = upload.job_run_id
        _wait_until_midway(run_id, rows)
        horses = child_pids(victim.pid)
        readers = [pid for horse in horses for pid in child_pids(horse)]
        assert len(horses) == 1 and len(readers) == 1  # the job's process and the one reading the file
        kill_worker(victim)  # the worker and its job's process; the reader is left an orphan
        deadline = time.monotonic() + 15
        while _running(readers[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(readers[0]), "the process reading the file outlived its job"
        db.session.commit()
        assert 0 < db.session.scalar(select(func.count()).where(UploadRow.upload_id == upload.id)) < rows
    finally:
        worker.start()
    _swept_and_run_again(app, run_id)
    db.session.refresh(upload)
    assert upload.status == "validated" and upload.counts["valid"] == rows
    staged = select(UploadRow.row_number).where(UploadRow.upload_id == upload.id)
    assert db.session.scalar(select(func.count()).select_from(staged.subquery())) == rows
    assert db.session.scalar(select(func.count(func.distinct(UploadRow.row_number)))
                             .where(UploadRow.upload_id == upload.id)) == rows


def test_the_worker_flags_probable_duplicates_in_every_batch_and_only_in_the_same_district(
        app, client, login, villages, worker):
    from datetime import date

    from portal.locations.models import Location
    from portal.locations.services import Scope, create_location

    everywhere = Scope(everything=True)
    region = db.session.scalar(select(Location).where(Location.code == "JR"))
    district = create_location(db.session, code="JD2", name="Other district", kind="district", parent=region, scope=everywhere)
    ward = create_location(db.session, code="JW2", name="Other ward", kind="ward", parent=district, scope=everywhere)
    far = create_location(db.session, code="JV2", name="Far village", kind="village", parent=ward, scope=everywhere)
    near = db.session.scalar(select(Location).where(Location.code == "JV1"))

    def registered(first, last, born, village, nid):
        person = Individual(first_name=first, last_name=last, name_key=f"{last} {first}".lower(), sex="F",
                            birth_date=born, national_id=nid, location_id=village.id, custom={})
        db.session.add(person)
        return person

    # The people of rows 2 and 5002 (in the worker's first and second batch of 5,000), and of
    # row 7 (from another district), are registered already under similar names.
    first = registered("Chikondi", "Banda", date(1952, 3, 12), near, "R1")
    second = registered("Mphatso", "Phirie", date(1952, 8, 17), near, "R2")
    registered("Tiyamike", "Mwale", date(1957, 8, 17), far, "R3")
    registered("Zebedee", "Quartermaine", date(1959, 1, 10), near, "R4")  # same day, other name
    db.session.commit()
    text = (_people(5100).replace("Person2,Family0,", "Chikondi,Banda,")
            .replace("Person5002,Family1000,", "Mphatso,Phiri,")
            .replace("Person7,Family1,", "Tiyamike,Mwale,"))

    upload = _upload(client, login, text)
    run = _wait(upload, timeout=120)
    assert run.status == "succeeded", run.message
    flagged = dict(db.session.execute(select(UploadRow.national_id, UploadRow.warning).where(
        UploadRow.upload_id == upload.id, UploadRow.status == "duplicate")).all())
    assert flagged == {
        "JN0000002": f"Probably the same person as #{first.id} Chikondi Banda, born 1952-03-12.",
        "JN0005002": f"Probably the same person as #{second.id} Mphatso Phirie, born 1952-08-17.",
    }
    assert upload.counts["duplicates"] == 2 and upload.counts["valid"] == 5098
