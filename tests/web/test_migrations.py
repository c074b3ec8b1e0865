"""The migrations build exactly the schema the models describe, and those that change data
or drop a rule do what they say, both ways."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from portal import create_app
from portal.extensions import db
from portal.registry.models import SEARCH_INDEXES

# An upload of one file, as the rows of the migrations' tests need.
_UPLOAD = ("INSERT INTO upload (id, file_name, stored_path, sha256, size, format, status, message, "
           "duplicate_policy, headers, mapping, counts) VALUES (1, 'people.csv', 'x', 'x', 1, 'csv', "
           ":status, '', 'error', '[]', '{}', '{}')")


def _app_on_its_own_database(tmp_path, redis_url):
    """An app whose database (SQLite, new) a test takes through the migrations itself."""
    return create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'old.db'}",
                       "REDIS_URL": redis_url})


def _keys_of_staged_rows() -> list:
    return [(k["referred_table"], k["constrained_columns"])
            for k in inspect(db.engine).get_foreign_keys("upload_row")]


# (SQLite's indexes on an expression, the lower-case codes', cannot be read back to compare.)
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
def test_the_migrated_database_matches_the_models(db_session):
    context = MigrationContext.configure(db_session.connection(), opts={"compare_type": True})
    differences = [d for d in compare_metadata(context, db.metadata)
                   if not (d[0] == "remove_index" and d[1].name in SEARCH_INDEXES)]
    assert differences == []


def test_migration_0011_names_the_row_of_each_look_alike_warning_already_staged(tmp_path, redis_url):
    app = _app_on_its_own_database(tmp_path, redis_url)
    with app.app_context():
        upgrade(revision="0010")
        with db.engine.begin() as connection:
            connection.execute(text(_UPLOAD), {"status": "validated"})
            for number, warning in ((3, "Probably the same person as row 2 Amina Banda, born 1990-05-17."),
                                    (4, "Probably the same person as #7 Amina Banda, born 1990-05-17.")):
                connection.execute(text(
                    "INSERT INTO upload_row (upload_id, row_number, raw, errors, status, \"primary\", warning) "
                    "VALUES (1, :number, '{}', '{}', 'duplicate', 0, :warning)"),
                    {"number": number, "warning": warning})
        upgrade(revision="0011")
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT row_number, twin_row FROM upload_row ORDER BY row_number")
                                      ).all() == [(3, 2), (4, None)]
        db.engine.dispose()


def test_migration_0012_puts_household_codes_in_capitals_where_the_code_is_free(tmp_path, redis_url):
    app = _app_on_its_own_database(tmp_path, redis_url)
    with app.app_context():
        upgrade(revision="0011")
        with db.engine.begin() as connection:
            connection.execute(text("INSERT INTO location (id, code, name, kind, path) "
                                    "VALUES (1, 'V1', 'Village', 'village', '/1/')"))
            for group_id, code in ((1, "hh-low"), (2, "hh-taken"), (3, "HH-TAKEN")):
                connection.execute(text(
                    "INSERT INTO \"group\" (id, code, name, kind, location_id, version) "
                    "VALUES (:id, :code, 'Home', 'household', 1, 1)"), {"id": group_id, "code": code})
            connection.execute(text(_UPLOAD), {"status": "validated"})
            for number, status in ((2, "valid"), (3, "imported")):
                connection.execute(text(
                    "INSERT INTO upload_row (upload_id, row_number, raw, cleaned, errors, status, "
                    "\"primary\", household_code) VALUES (1, :number, '{}', "
                    "'{\"household_code\": \"hh-new\", \"first_name\": \"Amina\"}', '{}', :status, 0, 'hh-new')"),
                    {"number": number, "status": status})
        upgrade(revision="0012")
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT id, code FROM \"group\" ORDER BY id")).all() == [
                (1, "HH-LOW"), (2, "hh-taken"), (3, "HH-TAKEN")]
            assert connection.execute(text(
                "SELECT row_number, household_code, json_extract(cleaned, '$.household_code'), "
                "json_extract(cleaned, '$.first_name') FROM upload_row ORDER BY row_number")).all() == [
                (2, "HH-NEW", "HH-NEW", "Amina"), (3, "hh-new", "hh-new", "Amina")]
        db.engine.dispose()


def test_migration_0016_drops_the_rows_key_to_people_and_going_back_clears_rows_naming_nobody(tmp_path, redis_url):
    app = _app_on_its_own_database(tmp_path, redis_url)

    with app.app_context():
        upgrade(revision="0015")
        assert ("individual", ["individual_id"]) in _keys_of_staged_rows()
        upgrade(revision="0016")
        assert _keys_of_staged_rows() == [("upload", ["upload_id"])]
        with db.engine.begin() as connection:
            connection.execute(text(_UPLOAD), {"status": "imported"})
            connection.execute(text(  # a person removed by hand in the database
                "INSERT INTO upload_row (upload_id, row_number, raw, errors, status, \"primary\", individual_id) "
                "VALUES (1, 2, '{}', '{}', 'imported', 0, 404)"))
        downgrade(revision="0015")
        assert ("individual", ["individual_id"]) in _keys_of_staged_rows()
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT row_number, status, individual_id FROM upload_row")
                                      ).all() == [(2, "imported", None)]
        db.engine.dispose()


def test_migration_0017_drops_the_rows_key_to_their_upload_and_going_back_removes_rows_of_no_upload(tmp_path, redis_url):
    app = _app_on_its_own_database(tmp_path, redis_url)

    with app.app_context():
        upgrade(revision="0016")
        assert _keys_of_staged_rows() == [("upload", ["upload_id"])]
        upgrade(revision="0017")
        assert _keys_of_staged_rows() == []
        with db.engine.begin() as connection:
            connection.execute(text(_UPLOAD), {"status": "validated"})
            for upload_id in (1, 404):  # the second's upload was removed by hand in the database
                connection.execute(text(
                    "INSERT INTO upload_row (upload_id, row_number, raw, errors, status, \"primary\") "
                    "VALUES (:upload, 2, '{}', '{}', 'valid', 0)"), {"upload": upload_id})
        downgrade(revision="0016")
        assert _keys_of_staged_rows() == [("upload", ["upload_id"])]
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT upload_id, row_number FROM upload_row")).all() == [(1, 2)]
        db.engine.dispose()


def test_migration_0018_names_codes_that_differ_only_in_capitals_and_then_holds_codes_unique_whatever_their_capitals(
        tmp_path, redis_url, capfd):
    from sqlalchemy.exc import IntegrityError
    app = _app_on_its_own_database(tmp_path, redis_url)
    with app.app_context():
        upgrade(revision="0017")
        with db.engine.begin() as connection:
            for code in ("MOG", "mog", "MOF"):  # two saved at the same moment before 0018
                connection.execute(text("INSERT INTO institution (code, name, kind, description) "
                                        "VALUES (:code, 'Ministry', 'ministry', '')"), {"code": code})
        with pytest.raises(SystemExit):  # (Flask-Migrate logs the error and exits)
            upgrade(revision="0018")
        assert "These institution codes differ only in capitals: MOG and mog. Rename one" in capfd.readouterr().err
        with db.engine.begin() as connection:
            connection.execute(text("UPDATE institution SET code = 'MOG2' WHERE code = 'mog'"))
        upgrade(revision="0018")
        with pytest.raises(IntegrityError):
            with db.engine.begin() as connection:
                connection.execute(text("INSERT INTO institution (code, name, kind, description) "
                                        "VALUES ('Mof', 'Ministry', 'ministry', '')"))
        db.engine.dispose()
