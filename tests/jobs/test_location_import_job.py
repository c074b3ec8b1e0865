"""The locations CSV import proves the job framework on a real Redis and a real worker."""
import time

import pytest
from sqlalchemy import func, select

from portal.background.models import JobRun
from portal.background.services import create_job, job_queue, redis_connection, sweep_stale_jobs
from portal.errors import DomainError
from portal.extensions import db
from portal.locations.models import Location
from tests.conftest import kill_worker, start_worker, wait_for_job

pytestmark = pytest.mark.live


def _csv(villages: int) -> str:
    lines = ["code,name,type,parent code", "RX,Region X,region,", "RXD,District X,district,RX"]
    wards = max(1, villages // 50)
    for w in range(wards):
        lines.append(f"RXW{w},Ward {w},ward,RXD")
    for v in range(villages):
        lines.append(f"RXV{v},Village {v},village,RXW{v % wards}")
    return "\n".join(lines) + "\n"


def _start_import(app, client, login, text: str) -> int:
    import io

    login("admin")
    response = client.post("/locations/import", data={"file": (io.BytesIO(text.encode()), "places.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 302, response.get_data(as_text=True)
    return int(response.headers["Location"].rstrip("/").split("/")[-1])


def test_a_locations_csv_is_imported_by_the_worker_and_the_progress_fragment_stops_polling(
        app, client, login, worker):
    run_id = _start_import(app, client, login, _csv(20))
    run = wait_for_job(run_id)
    assert run.status == "succeeded", run.message
    assert run.result == {"created": 23, "updated": 0, "rows": 23}
    assert db.session.scalar(select(func.count()).select_from(Location).where(Location.code.like("RX%"))) == 23
    fragment = client.htmx("get", f"/jobs/{run_id}").get_data(as_text=True)
    assert "succeeded" in fragment and "hx-trigger" not in fragment


def test_a_bad_csv_fails_the_job_with_every_bad_line_and_imports_nothing(app, client, login, worker):
    run_id = _start_import(app, client, login, "code,name,type,parent code\nA,Aa,region,\nB,Bb,village,ZZZ\n")
    run = wait_for_job(run_id)
    assert run.status == "failed"
    assert "Line 3: parent code 'ZZZ' is not a known location." in run.message
    assert db.session.scalar(select(Location).where(Location.code == "A")) is None
    page = client.get(f"/jobs/{run_id}").get_data(as_text=True)
    assert "Run again" in page


def test_a_second_import_while_one_is_queued_is_refused(app, db_session):
    create_job(db_session, kind="location_import", entry_point="jobs.locations.import_locations",
               lock_key="location_import")
    db_session.commit()
    with pytest.raises(DomainError, match="already queued"):
        create_job(db_session, kind="location_import", entry_point="jobs.locations.import_locations",
                   lock_key="location_import")


def test_a_job_whose_worker_was_killed_is_run_again_and_imports_everything_once(app, client, login, worker):
    # Only the worker we kill may take this job: a stopped process would still pop it.
    worker.stop()
    victim = start_worker(app)
    try:
        run_id = _start_import(app, client, login, _csv(6000))
        wait_for_job(run_id, until=("running",), timeout=30)
        time.sleep(0.5)
        kill_worker(victim)
        db.session.commit()
        assert db.session.get(JobRun, run_id).status == "running"  # the row alone cannot know
    finally:
        worker.start()
    time.sleep(5.5)  # the test worker treats 5 s without a heartbeat as dead
    db.session.commit()
    queue = job_queue(redis_connection(app.config))
    swept = sweep_stale_jobs(db.session, queue, stale_after=5)
    db.session.commit()
    assert [r.id for r in swept] == [run_id]
    run = wait_for_job(run_id, timeout=120)
    assert run.status == "succeeded", run.message
    assert run.attempts == 2
    count = db.session.scalar(select(func.count()).select_from(Location).where(Location.code.like("RX%")))
    assert count == 6000 + 2 + 120


def test_the_job_list_shows_only_my_jobs_unless_i_manage_users(app, client, login, make_user, db_session):
    someone = make_user("program_manager")
    db_session.flush()
    other = create_job(db_session, kind="location_import", entry_point="jobs.locations.import_locations",
                       actor_id=someone.id)
    db_session.commit()
    login("field_officer")
    assert client.get(f"/jobs/{other.id}").status_code == 404
