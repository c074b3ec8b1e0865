"""A job that reaches a worker after its upload has had another job since (an old delivery,
a duplicate queued by two clicks) changes nothing: its upload belongs to the newer job."""
import os

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
