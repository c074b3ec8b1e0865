"""Someone registered by another transaction while an upload waits between validation and
import is looked at again by the import, even when that transaction began before validation
did and gave the person an id below the highest one validation saw (PostgreSQL: other
writers commit beside the job; on SQLite the job's write lock waits for them)."""
import pytest
from sqlalchemy import select, text

from portal.extensions import db
from portal.imports import services
from portal.imports.models import UploadRow
from portal.locations.services import Scope
from portal.registry.models import Individual

pytestmark = pytest.mark.live

EVERYTHING = Scope(everything=True)
HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"


def test_a_look_alike_saved_in_a_transaction_open_as_validation_began_holds_its_row_back_at_the_import(
        db_session, tmp_path, country, make_individual):
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite's job waits for every open write before it validates")
    make_individual("Zoe", "Phiri", location=country["NV2"])  # the region has people already
    db_session.commit()
    with db.engine.connect() as other:  # a request registering Juma Banda, not yet committed
        saving = other.begin()
        juma = other.scalar(text(
            "INSERT INTO individual (first_name, last_name, name_key, sex, birth_date, location_id, "
            "custom, version) VALUES ('Juma', 'Banda', 'banda juma', 'M', '2015-01-02', :village, "
            "'{}', 1) RETURNING id"), {"village": country["NV1"].id})
        later = make_individual("Thoko", "Mwale", location=country["NV2"])  # committed, a higher id
        db_session.commit()
        assert later.id > juma
        path = tmp_path / "people.csv"
        path.write_text(HEADER + "Juma,Bandah,M,2015-01-02,,NV1,,,\n", encoding="utf-8")
        upload = services.receive_upload(
            db_session, path=path, file_name="people.csv", duplicate_policy="error", day_first=None,
            program_id=None, enrol_status=None, area_id=None, actor_id=None, max_rows=1000)
        services.validate_upload(db_session, upload, scope=EVERYTHING, progress=lambda *a, **k: None)
        db_session.commit()
        assert upload.counts["duplicates"] == 0  # Juma was not there to see
        assert upload.registry_checked_through >= later.id > juma
        saving.commit()
    services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)
    counts = services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None,
                                    progress=lambda *a, **k: None)
    db_session.commit()
    row = db_session.scalar(select(UploadRow).where(UploadRow.upload_id == upload.id))
    assert counts["people_created"] == 0
    assert (row.status, row.warning) == ("duplicate", f"Probably the same person as #{juma} Juma Banda, born 2015-01-02.")
    assert db_session.scalar(select(db.func.count()).select_from(Individual).where(Individual.first_name == "Juma")) == 1
