"""Two requests starting a job on one upload at once (a double click on Import, two tabs):
the second waits for the first and is refused, so one job runs. PostgreSQL only: SQLite's
requests write one at a time. Live: the two requests are two real transactions."""
import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.background.models import JobRun
from portal.errors import DomainError
from portal.extensions import db
from portal.imports import services
from portal.imports.models import Upload
from portal.locations.services import Scope
from tests.factories import validated_upload

pytestmark = pytest.mark.live

EVERYTHING = Scope(everything=True)


def _started_at_once(app, first_upload_id: int, second_upload_id: int) -> str:
    """Two requests start the import of these uploads on two connections: the first has not
    committed when the second starts, which must wait for it. What the second was told."""
    def start(session, upload_id):
        services.start_import(session, session.get(Upload, upload_id), only_if_clean=False,
                              scope=EVERYTHING, actor_id=None, may_enrol=True)

    first = Session(db.engine)
    start(first, first_upload_id)  # not committed yet: its locks are held
    outcome = {}

    def second_request():
        with app.app_context(), Session(db.engine) as second:
            try:
                start(second, second_upload_id)
                second.commit()
                outcome["second"] = "queued"
            except DomainError as exc:
                outcome["second"] = exc.message

    thread = threading.Thread(target=second_request)
    thread.start()
    try:
        thread.join(1.0)
        assert thread.is_alive()  # waiting for the first request
        first.commit()
    finally:
        first.close()  # (a failed assertion must not leave the first upload's row locked)
        thread.join(10)
    return outcome["second"]


def test_a_second_import_started_while_the_first_is_being_queued_waits_and_is_refused(
        app, db_session, tmp_path, country):
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite's requests write one at a time")
    upload = validated_upload(db_session, tmp_path, "Amina,Banda,F,1990-05-17,CS1,NV1,,,\n")
    db_session.commit()

    assert _started_at_once(app, upload.id, upload.id) == (
        "This upload is importing; only a validated upload can be imported.")
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).select_from(JobRun).where(
        JobRun.kind == "upload_import")) == 1


def test_two_copies_of_one_file_imported_at_once_by_two_users_let_only_the_first_start(
        app, db_session, tmp_path, country):
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite's requests write one at a time")
    rows = "Amina,Banda,F,1990-05-17,,NV1,,,\n"  # no national ID: nothing else would stop a twin
    first_copy = validated_upload(db_session, tmp_path, rows)
    second_copy = validated_upload(db_session, tmp_path, rows)
    db_session.commit()
    assert first_copy.sha256 == second_copy.sha256

    assert _started_at_once(app, first_copy.id, second_copy.id) == (
        f"The same file was imported as upload #{first_copy.id} after this one was uploaded: "
        "importing it again would register its people twice.")
    db_session.expire_all()
    assert db_session.get(Upload, second_copy.id).status == "validated"
