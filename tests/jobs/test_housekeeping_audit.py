"""What the system changes on its own when someone's page or a worker's start notices a job
whose worker died is in the audit log, as the system's doing, not the viewer's."""
from datetime import timedelta

from sqlalchemy import select

from portal.audit.models import AuditEntry
from portal.background.models import JobRun
from portal.background.services import sweep_stale_jobs
from portal.clock import now
from portal.imports import services as imports
from portal.locations.services import Scope
from tests.factories import validated_upload

def _entries(db_session, action: str) -> list[AuditEntry]:
    return list(db_session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def test_a_job_given_up_by_the_sweep_is_audited_as_the_systems_change(db_session, make_user):
    owner = make_user("admin")
    run = JobRun(kind="location_import", status="running", created_by_id=owner.id, attempts=3,
                 heartbeat_at=now() - timedelta(minutes=5), params={"entry_point": "jobs.locations.import_locations"})
    db_session.add(run)
    db_session.flush()
    db_session.info["actor_id"] = owner.id  # someone's request noticed it

    assert sweep_stale_jobs(db_session, None, stale_after=60) == [run]
    [entry] = _entries(db_session, "sweep")
    assert (entry.entity_type, entry.entity_id, entry.actor_id) == ("job_run", str(run.id), None)
    assert entry.changes == {"status": ["running", "failed"]}


def test_an_upload_whose_import_job_failed_is_freed_by_its_page_and_audited_as_the_systems_change(
        client, login, db_session, tmp_path, country):
    officer = login("field_officer", [country["N"]])
    upload = validated_upload(db_session, tmp_path, "Amina,Banda,F,1990-05-17,HK1,NV1,,,\n", uploader=officer)
    run = imports.start_import(db_session, upload, only_if_clean=False, scope=Scope.for_user(officer),
                               actor_id=officer.id, may_enrol=True)
    run.status, run.message = "failed", "The worker stopped while running this job."
    db_session.commit()

    page = client.get(f"/imports/{upload.id}").get_data(as_text=True)
    assert "The worker stopped while running this job." in page
    db_session.refresh(upload)
    assert upload.status == "validated"
    [entry] = _entries(db_session, "job_failed")
    assert (entry.entity_type, entry.entity_id, entry.actor_id) == ("upload", str(upload.id), None)
    assert entry.changes == {"status": ["importing", "validated"]}
