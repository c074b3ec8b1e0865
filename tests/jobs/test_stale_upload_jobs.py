"""A job that reaches a worker after its upload has had another job since (an old delivery,
a duplicate queued by two clicks) changes nothing: its upload belongs to the newer job."""
import os
from datetime import date

import pytest
from sqlalchemy import func, select

from jobs import imports as import_jobs, runtime
from portal.background.models import JobRun
from portal.background.services import create_job
from portal.extensions import db
from portal.imports import services
from portal.imports.models import Upload, UploadRow
from portal.locations.services import Scope
from portal.registry.models import Individual
from tests.factories import validated_upload

pytestmark = pytest.mark.live

EVERYTHING = Scope(everything=True)


@pytest.fixture
def job_app(app, monkeypatch):
    """The jobs' runtime in this process, on the test database."""
    monkeypatch.setattr(runtime, "_app", app)
    monkeypatch.setattr(runtime, "_app_pid", os.getpid())
    return app


def _validated(db_session, tmp_path) -> Upload:
    return validated_upload(db_session, tmp_path, "Amina,Banda,F,1990-05-17,ST1,NV1,,,\n")


def _stray(db_session, upload: Upload, kind: str) -> int:
    """A job for the upload that is not the upload's own job."""
    run = create_job(db_session, kind=f"upload_{kind}", entry_point=f"jobs.imports.{kind}_upload",
                     params={"upload_id": upload.id, "everything": True}, actor_id=None,
                     lock_key=f"stray:{upload.id}")
    db_session.commit()
    return run.id


def _failed_as_another_jobs(run_id: int) -> None:
    db.session.remove()
    run = db.session.get(JobRun, run_id)
    assert run.status == "failed" and "has had another job since" in run.message


def test_an_old_validation_of_an_upload_imported_since_fails_and_leaves_its_rows_as_they_are(
        job_app, db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path)
    services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)
    services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None, progress=lambda *a, **k: None)
    upload_id, stray = upload.id, _stray(db_session, upload, "validate")
    with pytest.raises(Exception):
        runtime.run(stray, import_jobs._validate)
    _failed_as_another_jobs(stray)
    assert db.session.get(Upload, upload_id).status == "imported"
    assert db.session.scalar(select(func.count()).where(
        UploadRow.upload_id == upload_id, UploadRow.status == "imported")) == 1


def test_a_second_import_job_of_one_upload_fails_and_the_upload_is_imported_once_by_its_own(
        job_app, db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path)
    own = services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                                may_enrol=True)
    db_session.commit()
    upload_id, own_id, stray = upload.id, own.id, _stray(db_session, upload, "import")
    with pytest.raises(Exception):
        runtime.run(stray, import_jobs._import)
    _failed_as_another_jobs(stray)
    assert db.session.scalar(select(func.count()).select_from(Individual)) == 0
    runtime.run(own_id, import_jobs._import)
    db.session.remove()
    assert db.session.get(Upload, upload_id).status == "imported"
    assert db.session.scalar(select(func.count()).select_from(Individual)) == 1


def test_an_import_asked_to_run_only_when_nothing_is_left_to_fix_keeps_the_new_household_errors_it_found(
        job_app, db_session, tmp_path, country, make_household):
    upload = validated_upload(db_session, tmp_path, "Amina,Banda,F,1990-05-17,,NV1,HH-LATE,head,yes\n")
    make_household(1, location=country["NV1"], code="HH-LATE")  # registered with a head meanwhile
    run = services.start_import(db_session, upload, only_if_clean=True, scope=EVERYTHING, actor_id=None,
                                may_enrol=True)
    db_session.commit()
    upload_id, run_id = upload.id, run.id
    with pytest.raises(Exception):
        runtime.run(run_id, import_jobs._import)
    db.session.remove()
    assert "1 row(s) need fixing again" in db.session.get(JobRun, run_id).message
    upload = db.session.get(Upload, upload_id)
    row = db.session.scalar(select(UploadRow).where(UploadRow.upload_id == upload_id))
    assert upload.status == "validated" and row.status == "error"  # the grid shows what to fix
    assert "already has a head" in row.errors["household"]
    assert db.session.scalar(select(func.count()).select_from(Individual).where(
        Individual.first_name == "Amina")) == 0


def test_a_copy_of_a_file_whose_import_stopped_partway_is_not_imported_by_a_job(
        job_app, db_session, tmp_path, country):
    rows = "Amina,Banda,F,1990-05-17,,NV1,,,\nJuma,Phiri,M,1991-02-03,,NV1,,,\n"
    first, second = validated_upload(db_session, tmp_path, rows), validated_upload(db_session, tmp_path, rows)
    run = services.start_import(db_session, second, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                                may_enrol=True)
    # Meanwhile the first copy's import created its first person, then stopped: back to validated.
    row = db_session.scalar(select(UploadRow).where(UploadRow.upload_id == first.id, UploadRow.row_number == 2))
    person = Individual(first_name="Amina", last_name="Banda", name_key="banda amina", sex="F",
                        birth_date=date(1990, 5, 17), location_id=country["NV1"].id, custom={}, version=1)
    db_session.add(person)
    db_session.flush()
    row.status, row.individual_id = "imported", person.id
    db_session.commit()
    first_id, second_id, run_id = first.id, second.id, run.id
    with pytest.raises(Exception):
        runtime.run(run_id, import_jobs._import)
    db.session.remove()
    assert f"The same file was imported as upload #{first_id}" in db.session.get(JobRun, run_id).message
    assert db.session.get(Upload, second_id).status == "validated"
    assert db.session.scalar(select(func.count()).select_from(Individual)) == 1
