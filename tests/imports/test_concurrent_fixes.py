"""Two users fixing one row of an upload at the same moment: the second waits for the first
and, its page now out of date, is refused, so neither save silently undoes the other.
PostgreSQL only: SQLite's requests write one at a time. Live: two real transactions."""
import threading

import pytest
from sqlalchemy.orm import Session

from portal.errors import DomainError
from portal.extensions import db
from portal.imports import services
from portal.imports.models import Upload
from portal.locations.services import Scope
from tests.factories import validated_upload

pytestmark = pytest.mark.live

EVERYTHING = Scope(everything=True)


def _second_fix_told(app, upload_id: int, first_fix, second_fix) -> str | None:
    """``first_fix(session, upload, row)`` runs and holds its transaction open while
    ``second_fix`` runs on another connection; what the second was refused with, if anything."""
    first = Session(db.engine)
    upload = first.get(Upload, upload_id)
    first_fix(first, upload, services.get_row(first, upload, 2))
    outcome = {}

    def second_request():
        with app.app_context(), Session(db.engine) as second:
            upload = second.get(Upload, upload_id)
            try:
                second_fix(second, upload, services.get_row(second, upload, 2))
                second.commit()
                outcome["told"] = None
            except DomainError as exc:
                outcome["told"] = exc.message

    thread = threading.Thread(target=second_request)
    thread.start()
    try:
        thread.join(1.0)
        assert thread.is_alive()  # waiting for the first save
        first.commit()
    finally:
        first.close()
        thread.join(10)
    return outcome["told"]


@pytest.fixture
def upload_with_a_wrong_sex(app, db_session, tmp_path, country):
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite's requests write one at a time")
    upload = validated_upload(db_session, tmp_path, "Amina,Banda,Q,1990-05-17,,NV1,,,\n")
    db_session.commit()
    return upload, services.row_version(services.get_row(db_session, upload, 2))


def test_two_edits_of_one_row_at_the_same_moment_keep_the_first_and_refuse_the_second(
        app, db_session, upload_with_a_wrong_sex):
    upload, seen = upload_with_a_wrong_sex  # the version both users' pages were made from

    def edit(sex):
        return lambda session, upload, row: services.edit_row(
            session, upload, row, {"sex": sex}, scope=EVERYTHING, seen=seen)

    told = _second_fix_told(app, upload.id, edit("F"), edit("M"))
    assert told == ("Row 2 was changed after you opened it (in another tab or by someone else). "
                    "Your values are still here: check them and save again.")
    db_session.expire_all()
    assert services.get_row(db_session, upload, 2).raw["sex"] == "F"


def test_a_row_dropped_while_another_user_saves_it_is_refused_as_changed(
        app, db_session, upload_with_a_wrong_sex):
    upload, seen = upload_with_a_wrong_sex

    def edit(session, upload, row):
        services.edit_row(session, upload, row, {"sex": "F"}, scope=EVERYTHING, seen=seen)

    def drop(session, upload, row):
        services.drop_row(session, upload, row, scope=EVERYTHING, seen=seen)

    told = _second_fix_told(app, upload.id, edit, drop)
    assert told == ("Row 2 changed after the page showed it (in another tab or by someone else), "
                    "so it was not dropped: look at it again.")
    db_session.expire_all()
    row = services.get_row(db_session, upload, 2)
    assert (row.raw["sex"], row.status) == ("F", "valid")
