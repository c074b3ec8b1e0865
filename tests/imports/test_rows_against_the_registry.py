"""An upload's rows against the registry as it is, and as it changes between validation and
import: updates keep what the file leaves blank and what others saved since, households keep
one head and a payee who is a member, and values are read as the upload said."""
import itertools
from datetime import date

import pytest
from sqlalchemy import select

from portal.imports import services
from portal.imports.models import UploadRow
from portal.locations.services import Scope
from portal.registry.models import CustomField, Group, GroupMember
from portal.registry.validation import name_key

EVERYTHING = Scope(everything=True)
HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"
_files = itertools.count()


def _validated(db_session, tmp_path, text, *, policy="error", day_first=None, program_id=None,
               scope=EVERYTHING):
    path = tmp_path / f"review{next(_files)}.csv"
    path.write_text(text, encoding="utf-8")
    upload = services.receive_upload(
        db_session, path=path, file_name="people.csv", duplicate_policy=policy, day_first=day_first,
        program_id=program_id, enrol_status="potential", area_id=None, actor_id=None, max_rows=1000)
    assert upload.status == "uploaded", upload.mapping
    services.validate_upload(db_session, upload, scope=scope, progress=lambda *a, **k: None)
    return upload


def _imported(db_session, upload, scope=EVERYTHING, progress=lambda *a, **k: None):
    services.start_import(db_session, upload, only_if_clean=False, scope=scope, actor_id=None,
                          may_enrol=True)
    return services.import_upload(db_session, upload, scope=scope, actor_id=None, progress=progress)


def _rows(db_session, upload) -> dict[int, UploadRow]:
    return {r.row_number: r for r in db_session.scalars(
        select(UploadRow).where(UploadRow.upload_id == upload.id))}


# --- the update policy --------------------------------------------------------------------

def test_an_update_from_a_file_without_an_id_type_keeps_the_registered_id_type(
        db_session, tmp_path, country, make_individual):
    person = make_individual("Amina", "Banda", national_id="P100", national_id_type="passport",
                             sex="F", birth_date=date(1990, 5, 17), location=country["NV1"])
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,P100,NV1,,,\n",
                        policy="update")
    assert _rows(db_session, upload)[2].action == "update"
    _imported(db_session, upload)
    db_session.refresh(person)
    assert person.national_id_type == "passport"


def test_an_update_with_an_id_type_in_the_file_changes_the_registered_one(
        db_session, tmp_path, country, make_individual):
    person = make_individual("Amina", "Banda", national_id="P100", national_id_type="passport",
                             sex="F", birth_date=date(1990, 5, 17), location=country["NV1"])
    upload = _validated(db_session, tmp_path, "First name,Last name,Sex,Birth date,National ID,"
                        "National ID type,Village code\nAmina,Banda,F,1990-05-17,P100,national_id,NV1\n",
                        policy="update")
    _imported(db_session, upload)
    db_session.refresh(person)
    assert person.national_id_type == "national_id"


def test_an_update_that_leaves_the_middle_name_blank_keeps_the_name_key_of_the_registered_names(
        db_session, tmp_path, country, make_individual):
    person = make_individual("Amina", "Banda", middle_name="Grace", national_id="A100", sex="F",
                             birth_date=date(1990, 5, 17), location=country["NV1"])
    assert person.name_key == "banda amina grace"
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,A100,NV2,,,\n",
                        policy="update")
    _imported(db_session, upload)
    db_session.refresh(person)
    assert person.middle_name == "Grace" and person.location_id == country["NV2"].id
    assert person.name_key == name_key(person.first_name, person.middle_name, person.last_name)


@pytest.fixture
def amina(make_individual, country):
    """Registered with national ID A100 in NV1."""
    return make_individual("Amina", "Banda", national_id="A100", sex="F",
                           birth_date=date(1990, 5, 17), location=country["NV1"])


def test_an_update_does_not_undo_a_change_someone_saved_to_the_person_after_validation(
        db_session, tmp_path, amina):
    person = amina
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,A100,NV1,,,\n",
                        policy="update")
    person.last_name, person.name_key = "Mwale", "mwale amina"  # married: saved in the registry
    db_session.flush()
    _imported(db_session, upload)
    db_session.refresh(person)
    assert person.last_name == "Mwale"
    row = _rows(db_session, upload)[2]
    assert row.status == "error" and "changed in the registry after this row was checked" in row.errors["national_id"]


def test_a_row_checked_again_after_the_registry_changed_updates_the_person(
        db_session, tmp_path, country, amina):
    person = amina
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,A100,NV2,,,\n",
                        policy="update")
    person.phone = "+265991234567"  # saved in the registry since the check
    db_session.flush()
    services.recheck_rows(db_session, upload, [_rows(db_session, upload)[2]], scope=EVERYTHING)
    _imported(db_session, upload)
    db_session.refresh(person)
    assert person.location_id == country["NV2"].id and person.phone == "+265991234567"


# --- households -----------------------------------------------------------------------------

def test_the_registered_head_uploaded_again_as_head_of_the_same_household_is_not_a_second_head(
        db_session, tmp_path, country, make_individual, make_household):
    head = make_individual("Amina", "Banda", national_id="A100", sex="F",
                           birth_date=date(1990, 5, 17), location=country["NV1"])
    make_household(1, head=head, code="HH-A", location=country["NV1"])
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,A100,NV1,HH-A,head,yes\n",
                        policy="update")
    row = _rows(db_session, upload)[2]
    assert (row.status, row.errors) == ("valid", {}), row.errors
    _imported(db_session, upload)
    household = db_session.scalar(select(Group).where(Group.code == "HH-A"))
    db_session.refresh(household)
    assert [(m.individual_id, m.role) for m in household.members] == [(head.id, "head")]


def test_members_cannot_join_a_registered_household_that_has_no_head_without_one(
        db_session, tmp_path, country):
    # A household whose only member (its head) was removed stays registered with nobody.
    empty = Group(code="HH-EMPTY", name="Empty household", kind="household",
                  location_id=country["NV1"].id)
    db_session.add(empty)
    db_session.flush()
    upload = _validated(db_session, tmp_path, HEADER + "Baby,Banda,F,2024-01-02,,NV1,HH-EMPTY,child,no\n")
    row = _rows(db_session, upload)[2]
    assert row.status == "error" and "has no head" in row.errors.get("household", "")


def test_a_new_household_whose_heads_update_fails_at_import_is_not_made_headless_and_paid_to_a_child(
        db_session, tmp_path, country, make_individual):
    """The head's row is held back before anyone is created, and with it the rest of the new
    household: not made from the child alone."""
    head = make_individual("Amina", "Banda", national_id="A100", sex="F",
                           birth_date=date(1990, 5, 17), location=country["NV1"])
    upload = _validated(db_session, tmp_path, HEADER
                        + "Amina,Banda,F,1990-05-17,A100,NV1,HH-NEW,head,yes\n"
                        + "Baby,Banda,F,2020-01-02,,NV1,HH-NEW,child,no\n", policy="update")
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[3].status) == ("valid", "valid"), (rows[2].errors, rows[3].errors)
    head.phone = "+265991234567"  # saved in the registry after the check
    db_session.flush()
    _imported(db_session, upload)
    rows = _rows(db_session, upload)
    assert rows[2].status == "error" and "changed in the registry" in rows[2].errors["national_id"]
    assert rows[3].status == "error" and "imported with its head" in rows[3].errors["household"]
    assert db_session.scalar(select(Group).where(Group.code == "HH-NEW")) is None
    assert "2 row(s) were held back" in upload.message


# --- custom fields --------------------------------------------------------------------------

def test_a_custom_date_is_read_in_the_day_month_order_chosen_for_the_upload(db_session, tmp_path, country):
    db_session.add(CustomField(name="registered_on", label="Registered on", type="date", active=True,
                               required=False, unique=False, position=0))
    db_session.flush()
    upload = _validated(db_session, tmp_path,
                        "First name,Last name,Sex,Birth date,Village code,Registered on\n"
                        "Amina,Banda,F,05/03/1990,NV1,07/04/2020\n", day_first=True)
    row = _rows(db_session, upload)[2]
    assert row.cleaned["birth_date"] == "1990-03-05"
    assert row.errors == {}
    assert row.cleaned["custom"]["registered_on"] == "2020-04-07"


def _register_during_import(db_session, make_individual, code, village):
    """A progress callback that registers household ``code`` with a head of its own once the
    upload's people exist, before their households are made (as another user might)."""

    def progress(done, total=None, message=None):
        if message and message.startswith("Imported") and not db_session.scalar(
                select(Group.id).where(Group.code == code)):
            head = make_individual("Other", "Head", location=village)
            group = Group(code=code, kind="household", name="Registered meanwhile", location_id=village.id,
                          primary_recipient_id=head.id)
            db_session.add(group)
            db_session.flush()
            db_session.add(GroupMember(group_id=group.id, individual_id=head.id, group_kind="household",
                                       role="head"))
            db_session.flush()

    return progress


def test_a_payee_left_out_of_a_household_registered_during_the_import_does_not_become_its_payee(
        db_session, tmp_path, country, make_individual):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,HH-RACE,head,yes\n")
    progress = _register_during_import(db_session, make_individual, "HH-RACE", country["NV1"])
    _imported(db_session, upload, progress=progress)
    amina = _rows(db_session, upload)[2].individual_id
    household = db_session.scalar(select(Group).where(Group.code == "HH-RACE"))
    db_session.refresh(household)
    members = {m.individual_id for m in household.members}
    assert amina not in members  # left out as a second head, and named in the message
    assert household.primary_recipient_id in members


def test_a_household_registered_outside_the_area_during_the_import_does_not_stop_the_enrolment_of_the_others(
        db_session, tmp_path, country, make_individual):
    from portal.programs.models import Beneficiary, Program

    program = Program(code="HHCT", name="Household grant", beneficiary_kind="group", status="active")
    db_session.add(program)
    db_session.flush()
    officer = Scope(paths=(country["N"].path,))
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,HH-OURS,head,yes\n"
                        + "Juma,Phiri,M,1985-01-02,,NV1,HH-TAKEN,head,yes\n", program_id=program.id, scope=officer)
    progress = _register_during_import(db_session, make_individual, "HH-TAKEN", country["SV1"])
    _imported(db_session, upload, scope=officer, progress=progress)
    ours = db_session.scalar(select(Group.id).where(Group.code == "HH-OURS"))
    assert ours is not None
    enrolled = db_session.scalars(select(Beneficiary.group_id).where(Beneficiary.program_id == program.id)).all()
    assert enrolled == [ours], upload.message


def test_a_decimal_written_with_a_decimal_comma_is_not_read_as_a_number_ten_times_larger(
        db_session, tmp_path, country):
    db_session.add(CustomField(name="land", label="Land (ha)", type="decimal", active=True,
                               required=False, unique=False, position=0))
    db_session.flush()
    upload = _validated(db_session, tmp_path, "First name,Last name,Sex,Birth date,Village code,Land (ha)\n"
                                              "Amina,Banda,F,1990-05-17,NV1,\"2,5\"\n")
    row = _rows(db_session, upload)[2]
    assert row.cleaned["custom"].get("land") != 25.0
    assert "with a point before any decimals" in row.errors["land"]


def test_commas_that_group_thousands_are_still_read(db_session, tmp_path, country):
    db_session.add_all([
        CustomField(name="land", label="Land (ha)", type="decimal", active=True, required=False,
                    unique=False, position=0),
        CustomField(name="income", label="Income", type="integer", active=True, required=False,
                    unique=False, position=1)])
    db_session.flush()
    upload = _validated(db_session, tmp_path, "First name,Last name,Sex,Birth date,Village code,Land (ha),Income\n"
                                              "Amina,Banda,F,1990-05-17,NV1,\"1,250.5\",\"12,000\"\n"
                                              "Juma,Phiri,M,1985-01-02,NV1,1,\"2,5\"\n")
    rows = _rows(db_session, upload)
    assert rows[2].cleaned["custom"] == {"land": 1250.5, "income": 12000}
    assert "must be a whole number" in rows[3].errors["income"]
