"""The jobs pages: who sees which job, and what starting a failed job again takes."""
import itertools
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from portal.audit.models import AuditEntry
from portal.background.models import JobRun
from portal.clock import now
from portal.imports import services as imports
from portal.imports.models import Upload, UploadRow
from portal.locations.services import Scope
from tests.factories import validated_upload

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there
HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"
ONE_PERSON = HEADER + "Amina,Banda,F,1990-05-17,NX1,NV1,,,\n"
_files = itertools.count()


def _nothing(*_args, **_kwargs):
    """Progress for work run in the test's own transaction (it commits nothing)."""


def _received(db_session, tmp_path, user, *, program_id=None) -> Upload:
    path = tmp_path / f"people{next(_files)}.csv"
    path.write_text(ONE_PERSON)
    return imports.receive_upload(db_session, path=path, file_name="people.csv", duplicate_policy="error",
                                  day_first=None, program_id=program_id,
                                  enrol_status="potential" if program_id else None, area_id=None,
                                  actor_id=user.id, max_rows=100)


def _failed_validation(db_session, tmp_path, user) -> tuple[Upload, JobRun]:
    """An upload whose validation job failed, left as the worker leaves it."""
    upload = _received(db_session, tmp_path, user)
    run = imports.start_validation(db_session, upload, scope=Scope.for_user(user), actor_id=user.id)
    run.status, run.message = "failed", "Validation stopped: OperationalError: database is locked"
    upload.status, upload.message = "failed", run.message
    db_session.commit()
    return upload, run


def _validated(db_session, upload: Upload, user) -> Scope:
    """Validated by a validation job that succeeded (its work done here, in line)."""
    scope = Scope.for_user(user)
    run = imports.start_validation(db_session, upload, scope=scope, actor_id=user.id)
    imports.validate_upload(db_session, upload, scope=scope, progress=_nothing)
    run.status = "succeeded"
    return scope


def _audit_entries(db_session) -> int:
    return db_session.scalar(select(func.count()).select_from(AuditEntry))


def _retry_refused(client, db_session, run: JobRun, message: str) -> None:
    """Asking to start ``run`` again says ``message``, and leaves it failed and unaudited."""
    before = _audit_entries(db_session)
    response = client.post(f"/jobs/{run.id}/retry", follow_redirects=True)
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    db_session.refresh(run)
    assert run.status == "failed" and run.rq_id is None
    assert _audit_entries(db_session) == before


def _failed_job(db_session, user, *, kind="location_import", paths=None, **fields) -> JobRun:
    run = JobRun(kind=kind, status="failed", created_by_id=user.id,
                 message="Validation stopped: row 7 Amina Banda NX1 is not unique",
                 params={"entry_point": "jobs.locations.import_locations",
                         "everything": paths is None, "paths": paths or []}, **fields)
    db_session.add(run)
    db_session.commit()
    return run


# --- who sees which job ---------------------------------------------------------------------

def test_an_administrator_of_one_region_neither_sees_nor_starts_again_another_regions_job(
        client, login, db_session, country, make_user):
    south = make_user("field_officer", [country["S"]])
    theirs = _failed_job(db_session, south, kind="upload_validate", paths=[country["S"].path])
    me = login("admin", [country["N"]])
    mine = _failed_job(db_session, me, paths=[country["N"].path])

    assert client.get(f"/jobs/{theirs.id}").status_code == 404
    listing = client.get("/jobs/").get_data(as_text=True)
    assert f"/jobs/{mine.id}\"" in listing and f"/jobs/{theirs.id}\"" not in listing
    assert client.post(f"/jobs/{theirs.id}/retry").status_code == 404
    db_session.refresh(theirs)
    assert theirs.status == "failed"


def test_an_administrator_who_sees_every_location_sees_every_job(client, login, db_session, country, make_user):
    south = make_user("field_officer", [country["S"]])
    theirs = _failed_job(db_session, south, kind="upload_validate", paths=[country["S"].path])
    login("admin")
    assert "Amina Banda NX1" in client.get(f"/jobs/{theirs.id}").get_data(as_text=True)
    assert f"/jobs/{theirs.id}\"" in client.get("/jobs/").get_data(as_text=True)


# --- starting a failed job again ------------------------------------------------------------

def test_a_failed_validation_started_again_by_its_owner_is_queued_and_audited(
        client, login, db_session, tmp_path, country):
    officer = login("field_officer", [country["N"]])
    upload, run = _failed_validation(db_session, tmp_path, officer)
    assert "Run again" in client.get(f"/jobs/{run.id}").get_data(as_text=True)

    assert client.post(f"/jobs/{run.id}/retry").status_code == 303
    db_session.refresh(run)
    db_session.refresh(upload)
    assert run.status == "queued" and run.rq_id is not None
    assert upload.status == "validating" and upload.job_run_id == run.id  # busy again, as at its start
    entries = db_session.scalars(select(AuditEntry).where(
        AuditEntry.entity_type == "job_run", AuditEntry.entity_id == str(run.id)).order_by(AuditEntry.id))
    assert [(e.action, e.actor_id) for e in entries] == [("queue", officer.id), ("retry", officer.id)]


def test_a_job_is_not_started_again_by_its_owner_who_may_no_longer_do_what_it_does(
        client, login, db_session, tmp_path, country):
    from portal.accounts.models import Role, RolePermission

    officer = login("field_officer", [country["N"]])
    upload, run = _failed_validation(db_session, tmp_path, officer)
    officer.roles = [Role(name="watcher", label="Watcher", grants=[RolePermission(permission="job.view")])]
    db_session.commit()

    assert "Run again" not in client.get(f"/jobs/{run.id}").get_data(as_text=True)
    _retry_refused(client, db_session, run, "Your role does not allow what this job does")
    db_session.refresh(upload)
    assert upload.status == "failed"


def test_a_job_is_not_started_again_by_its_owner_whose_locations_no_longer_cover_it(
        client, login, db_session, tmp_path, country):
    officer = login("field_officer", [country["N"]])
    upload, run = _failed_validation(db_session, tmp_path, officer)
    officer.locations = [country["S"]]  # moved to another region since
    db_session.commit()

    _retry_refused(client, db_session, run, "This job reaches locations outside yours")
    assert run.params["paths"] == [country["N"].path]


def test_a_failed_validation_of_an_upload_imported_since_is_not_started_again(
        client, login, db_session, tmp_path, country):
    officer = login("field_officer", [country["N"]])
    upload, old = _failed_validation(db_session, tmp_path, officer)
    # Validated again and imported since (the jobs' work done here, in line).
    scope = _validated(db_session, upload, officer)
    run = imports.start_import(db_session, upload, only_if_clean=True, scope=scope, actor_id=officer.id,
                               may_enrol=False)
    imports.import_upload(db_session, upload, scope=scope, actor_id=officer.id, progress=_nothing)
    run.status = "succeeded"
    db_session.commit()
    assert upload.status == "imported"

    _retry_refused(client, db_session, old, "This upload has had another job since")
    db_session.refresh(upload)
    assert upload.status == "imported"
    assert db_session.scalars(select(UploadRow.status).where(UploadRow.upload_id == upload.id)).all() == ["imported"]


def test_an_import_that_enrols_is_not_started_again_by_its_owner_who_may_no_longer_enrol(
        client, login, db_session, tmp_path, country):
    from portal.accounts.models import Role
    from portal.programs.models import Program

    program = Program(code="P1", name="Cash", status="active", beneficiary_kind="individual")
    db_session.add(program)
    db_session.flush()
    manager = login("program_manager", [country["N"]])
    upload = _received(db_session, tmp_path, manager, program_id=program.id)
    scope = _validated(db_session, upload, manager)
    run = imports.start_import(db_session, upload, only_if_clean=False, scope=scope, actor_id=manager.id,
                               may_enrol=True)
    run.status, run.message = "failed", "The import stopped: database is locked"
    upload.status = "validated"
    manager.roles = [db_session.scalar(select(Role).where(Role.name == "field_officer"))]  # may upload, not enrol
    db_session.commit()

    _retry_refused(client, db_session, run, "only someone who may enrol beneficiaries can import it")
    db_session.refresh(upload)
    assert upload.status == "validated"


def test_a_job_is_not_started_again_while_another_run_of_the_same_thing_is_queued(client, login, db_session):
    admin = login("admin")
    failed = _failed_job(db_session, admin, lock_key="location_import")
    _failed_job(db_session, admin, lock_key="location_import").status = "queued"
    db_session.commit()

    _retry_refused(client, db_session, failed, "This is already queued")


@pytest.mark.parametrize("kind", ["payroll_export", ""])
def test_a_job_of_a_kind_with_no_known_permission_is_not_started_again(client, login, db_session, kind):
    admin = login("admin")
    run = _failed_job(db_session, admin, kind=kind)
    assert "Run again" not in client.get(f"/jobs/{run.id}").get_data(as_text=True)
    _retry_refused(client, db_session, run, "This kind of job cannot be started again from here")


def test_polling_a_job_whose_worker_died_while_the_queue_is_unreachable_fails_the_job_instead_of_the_page(
        app, client, login, db_session, monkeypatch):
    admin = login("admin")
    run = JobRun(kind="location_import", status="running", created_by_id=admin.id, attempts=1,
                 heartbeat_at=now() - timedelta(minutes=5), message="Checking 10 locations",
                 params={"entry_point": "jobs.locations.import_locations", "everything": True, "paths": []})
    db_session.add(run)
    db_session.commit()
    monkeypatch.setitem(app.config, "REDIS_URL", UNREACHABLE_REDIS)
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)  # answer as in production

    response = client.htmx("get", f"/jobs/{run.id}")

    assert response.status_code == 200, "the progress fragment of a stale job answered 500"
    db_session.refresh(run)
    assert run.status == "failed"  # not left "running" for ever, polled into a 500 every second
    assert "Start it again: nothing is duplicated." in run.message


def test_a_find_and_replace_on_national_ids_is_not_started_again_by_its_owner_who_now_sees_them_masked(
        client, login, db_session, tmp_path, country):
    from portal.accounts.models import Role
    from portal.accounts.services import set_role_permissions
    from portal.imports import services as imports

    manager = login("program_manager")
    upload = validated_upload(db_session, tmp_path, "Amina,Banda,F,1990-05-17,NX1234,NV1,,,\n"
                                                    "Juma,Phiri,Q,1991-02-03,NX5678,NV1,,,\n", uploader=manager)
    run = imports.start_fix(db_session, upload, {"kind": "replace", "field": "national_id", "find": "NX12",
                                                 "replace": "NX12", "whole_cell": False},
                            scope=Scope.for_user(manager), actor_id=manager.id)
    run.status, run.message = "failed", "The fix stopped: database is locked"
    role = db_session.scalar(select(Role).where(Role.name == "program_manager"))
    set_role_permissions(role, sorted(role.permissions - {"individual.view_pii"}))
    db_session.commit()
    # A new start would be refused: the page offers national_id only to roles that see it.

    response = client.post(f"/jobs/{run.id}/retry", follow_redirects=True)

    assert response.status_code == 200
    db_session.refresh(run)
    assert run.status == "failed"  # the count it reports would tell whether an ID holds the text
    assert "which your role sees masked, so it was not started again" in response.get_data(as_text=True)
