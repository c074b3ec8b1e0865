"""Uploads from file to registry: checks per cell, households, duplicates, fixes, import."""
import itertools
from datetime import date, datetime

import pytest
from sqlalchemy import func, select, text

from portal.background.services import scope_from_params
from portal.errors import DomainError
from portal.imports import duplicates, services
from portal.imports.models import SavedMapping, UploadRow
from portal.imports.reading import FileProblem
from portal.locations.services import Scope
from portal.registry.models import Group, GroupMember, Individual

EVERYTHING = Scope(everything=True)
HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"
_files = itertools.count()


def _file(tmp_path, text: str, suffix=".csv"):
    path = tmp_path / f"upload{next(_files)}{suffix}"
    path.write_text(text, encoding="utf-8")
    return path


def _receive(db_session, tmp_path, text, *, policy="error", day_first=None, program_id=None):
    return services.receive_upload(
        db_session, path=_file(tmp_path, text), file_name="people.csv", duplicate_policy=policy,
        day_first=day_first, program_id=program_id, enrol_status="potential", area_id=None,
        actor_id=None, max_rows=1000)


def _validated(db_session, tmp_path, text, *, scope=EVERYTHING, **kwargs):
    upload = _receive(db_session, tmp_path, text, **kwargs)
    assert upload.status == "uploaded", upload.mapping
    services.validate_upload(db_session, upload, scope=scope, progress=lambda *a, **k: None)
    return upload


def _imported(db_session, upload, scope=EVERYTHING):
    services.start_import(db_session, upload, only_if_clean=False, scope=scope, actor_id=None,
                          may_enrol=True)
    return services.import_upload(db_session, upload, scope=scope, actor_id=None,
                                  progress=lambda *a, **k: None)


def _rows(db_session, upload) -> dict[int, UploadRow]:
    return {r.row_number: r for r in db_session.scalars(
        select(UploadRow).where(UploadRow.upload_id == upload.id))}


def test_a_clean_file_is_staged_with_every_row_valid_and_a_summary(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER
                        + "Amina,Banda,F,1990-05-17,A100,NV1,H1,head,yes\n"
                        + "Juma,Banda,male,2015-01-02,,NV1,H1,child,no\n"
                        + "Zoë,Phiri,F,1980-03-04,A101,NV2,,,\n")
    assert upload.status == "validated"
    assert {n: r.status for n, r in _rows(db_session, upload).items()} == {2: "valid", 3: "valid", 4: "valid"}
    assert upload.counts["rows"] == 3 and upload.counts["valid"] == 3
    assert upload.counts["new_people"] == 3 and upload.counts["new_households"] == 1
    assert upload.validate_seconds is not None


def test_each_bad_cell_keeps_the_registry_message_and_the_row_is_an_error(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,,Q,2990-01-01,A1 00?,NOWHERE,,,\n")
    row = _rows(db_session, upload)[2]
    assert row.status == "error"
    assert set(row.errors) >= {"last_name", "sex", "birth_date", "national_id", "location"}
    assert "No location has the code NOWHERE" in row.errors["location"]
    assert row.raw["first_name"] == "Amina"
    assert upload.counts["errors"] == 1


def test_a_village_outside_the_uploaders_locations_is_an_error(db_session, tmp_path, country):
    north = Scope(paths=(country["N"].path,))
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,SV1,,,\n", scope=north)
    assert "outside your locations" in _rows(db_session, upload)[2].errors["location"]


def test_dates_are_read_in_the_chosen_day_month_order(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,05/03/1990,,NV1,,,\n", day_first=True)
    assert _rows(db_session, upload)[2].cleaned["birth_date"] == "1990-03-05"


def test_a_national_id_twice_in_the_file_is_an_error_on_the_later_row(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,A100,NV1,,,\n"
                        + "Zoë,Phiri,F,1980-03-04,a 100,NV2,,,\n")
    rows = _rows(db_session, upload)
    assert rows[2].status == "valid"
    assert rows[3].errors["national_id"] == "This national ID is also on row 2."


@pytest.mark.parametrize("policy,status,action", [("update", "valid", "update"),
                                                  ("skip", "skipped", "skip"),
                                                  ("error", "error", "new")])
def test_a_registered_national_id_updates_skips_or_refuses_as_the_user_chose(
        db_session, tmp_path, country, make_individual, policy, status, action):
    person = make_individual("Amina", "Banda", national_id="A100", location=country["NV1"])
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,A100,NV2,,,\n", policy=policy)
    row = _rows(db_session, upload)[2]
    assert (row.status, row.action) == (status, action)
    if policy == "error":
        assert f"Already registered to #{person.id}" in row.errors["national_id"]
    else:
        assert row.individual_id == person.id


def test_an_unknown_role_is_an_error_naming_the_allowed_roles(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,H1,boss,yes\n")
    message = _rows(db_session, upload)[2].errors["role"]
    assert message.startswith("Unknown role 'boss'; use one of head, spouse, child")


def test_a_household_needs_exactly_one_head_and_at_most_one_primary_recipient(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER
                        + "Amina,Banda,F,1990-05-17,,NV1,H1,spouse,no\n"
                        + "Juma,Banda,M,1988-01-02,,NV1,H1,child,no\n"
                        + "Zoë,Phiri,F,1980-03-04,,NV2,H2,head,yes\n"
                        + "Ali,Phiri,M,1981-03-04,,NV2,H2,head,yes\n")
    rows = _rows(db_session, upload)
    assert rows[2].errors["household"] == "Household H1 has no head: give one member the role head."
    assert rows[3].status == "error"
    assert "H2 has more than one head (rows 4 and 5)" in rows[5].errors["household"]
    assert rows[4].status == "valid"


def test_joining_a_registered_household_that_has_a_head_needs_no_new_head(
        db_session, tmp_path, country, make_household):
    household = make_household(2, location=country["NV1"], code="HH-OLD")
    upload = _validated(db_session, tmp_path, HEADER + "Baby,Banda,F,2024-01-02,,NV1,HH-OLD,child,no\n"
                        + "Other,Banda,M,1970-01-02,,NV1,HH-OLD,head,no\n")
    rows = _rows(db_session, upload)
    assert rows[3].errors["household"] == "Household HH-OLD already has a head in the registry."
    # The file's household has a head of its own, so it may be another family: its child
    # waits until that is settled.
    assert rows[2].errors["household"] == (
        "Household HH-OLD in the registry has another head than row 3: this may be another "
        "family. Fix the household code, or that row's role.")
    services.drop_row(db_session, upload, rows[3], scope=EVERYTHING)
    db_session.refresh(rows[2])
    assert rows[2].status == "valid"
    _imported(db_session, upload)
    assert db_session.scalar(select(func.count()).where(GroupMember.group_id == household.id)) == 3
    assert upload.counts["updated_households"] == 1 and upload.counts["new_households"] == 0


def test_a_cooperatives_code_or_a_person_of_another_household_is_refused_in_a_household(
        db_session, tmp_path, country, make_group, make_household, make_individual):
    make_group("cooperative", code="COOP-1", location=country["NV1"])
    member = make_individual("Juma", "Phiri", national_id="A200", location=country["NV1"])
    make_household(1, head=member, code="HH-JUMA")
    upload = _validated(db_session, tmp_path, HEADER
                        + "Amina,Banda,F,1990-05-17,,NV1,COOP-1,head,yes\n"
                        + "Juma,Phiri,M,1970-01-01,A200,NV1,HH-NEW,head,yes\n", policy="update")
    rows = _rows(db_session, upload)
    assert rows[2].errors["household"] == "COOP-1 is the code of a cooperative, not of a household."
    assert rows[3].errors["household"] == ("This person is already in household HH-JUMA; move them "
                                           "in the registry first.")


def test_a_probable_duplicate_is_flagged_until_the_user_confirms_it(db_session, tmp_path, country, make_individual):
    make_individual("Amina", "Banda", national_id=None, birth_date=date(1990, 5, 17), location=country["NV2"])
    upload = _validated(db_session, tmp_path, HEADER + "Aminah,Banda,F,1990-05-17,,NV1,,,\n")
    row = _rows(db_session, upload)[2]
    assert row.status == "duplicate"
    assert "Probably the same person as" in row.warning and "Amina Banda" in row.warning
    services.confirm_row(db_session, upload, row, scope=EVERYTHING)
    assert row.status == "valid" and upload.counts["duplicates"] == 0


LOOK_ALIKES = (HEADER
               + "Amina,Banda,F,1990-05-17,,NV1,,,\n"  # two look-alikes in the N district
               + "Amina,Banda,F,1990-05-17,,SV2,,,\n"  # one in the S district
               + "Juma,Phiri,M,1985-01-03,,NV1,,,\n"  # a day apart
               + "Grace,Tembo,F,1985-01-02,,NV2,,,\n"  # the same day, another name
               + "Zawadi,Mwale,F,1970-07-07,,SV1,,,\n")  # only a deleted look-alike


@pytest.fixture
def registered_look_alikes(db_session, country, make_individual):
    """The registry LOOK_ALIKES is checked against: two Amina Bandas in the N district and
    one in the S district, a Juma Phiri born a day apart, a deleted Zawadi Mwale."""
    for first, village in (("Amina", "NV2"), ("Aminah", "NV1"), ("Amina", "SV1")):
        make_individual(first, "Banda", national_id=None, birth_date=date(1990, 5, 17),
                        location=country[village])
    make_individual("Juma", "Phiri", national_id=None, birth_date=date(1985, 1, 2), location=country["NV1"])
    gone = make_individual("Zawadi", "Mwale", national_id=None, birth_date=date(1970, 7, 7),
                           location=country["SV2"])
    gone.deleted_at = datetime(2026, 1, 1)
    db_session.flush()


def _look_alike_warnings(db_session, tmp_path) -> dict:
    """LOOK_ALIKES validated: row number -> (status, warning)."""
    upload = _validated(db_session, tmp_path, LOOK_ALIKES)
    return {n: (r.status, r.warning) for n, r in _rows(db_session, upload).items()}


def test_reading_the_registry_once_for_a_large_file_flags_the_same_look_alikes(
        registered_look_alikes, db_session, tmp_path, monkeypatch):
    row_by_row = _look_alike_warnings(db_session, tmp_path)
    monkeypatch.setattr(duplicates, "READ_REGISTRY_ROWS", 0)  # as for a file of 40,000 rows
    registry_read = _look_alike_warnings(db_session, tmp_path)
    assert registry_read == row_by_row
    assert [n for n, (status, _warning) in registry_read.items() if status == "duplicate"] == [2, 3]
    assert registry_read[2][1].endswith("born 1990-05-17 and 1 more.")
    assert "more" not in registry_read[3][1]


def test_a_file_searched_for_look_alikes_in_several_parts_is_flagged_as_in_one_search(
        registered_look_alikes, db_session, tmp_path, monkeypatch):
    one_search = _look_alike_warnings(db_session, tmp_path)
    # Rows checked two at a time, and the registry searched for every two new people: each
    # part is searched for its own rows, once.
    monkeypatch.setattr(services, "BATCH", 2)
    monkeypatch.setattr(duplicates, "SEARCH_ROWS", {False: 2, True: 2})
    in_parts = _look_alike_warnings(db_session, tmp_path)
    assert in_parts == one_search
    assert [n for n, (status, _warning) in in_parts.items() if status == "duplicate"] == [2, 3]
    assert in_parts[2][1].endswith("born 1990-05-17 and 1 more.")


def test_rows_fixed_together_are_searched_in_the_registry_as_validation_searches_them(
        registered_look_alikes, db_session, tmp_path):
    validated = _validated(db_session, tmp_path, LOOK_ALIKES)
    expected = {n: (r.status, r.warning) for n, r in _rows(db_session, validated).items()}
    # The same file with every sex wrong, then fixed by one find-and-replace.
    broken = _validated(db_session, tmp_path, LOOK_ALIKES.replace(",F,", ",Q,").replace(",M,", ",Q,"))
    assert {r.status for r in _rows(db_session, broken).values()} == {"error"}
    services.replace_in_column(db_session, broken, field="sex", find="Q", replace="F", scope=EVERYTHING)
    assert {n: (r.status, r.warning) for n, r in _rows(db_session, broken).items()} == expected
    assert [n for n, (status, _warning) in expected.items() if status == "duplicate"] == [2, 3]


@pytest.mark.parametrize("read_registry", [False, True], ids=["row by row", "registry read once"])
def test_a_fix_names_the_same_one_of_many_look_alikes_as_validation_and_counts_all_the_others(
        db_session, tmp_path, country, make_individual, monkeypatch, read_registry):
    if read_registry:
        monkeypatch.setattr(duplicates, "READ_REGISTRY_ROWS", 0)  # as for a file of 40,000 rows
    born = date(1990, 5, 17)
    make_individual("Amina", "Banda", national_id=None, birth_date=born, location=country["NV2"])  # outside
    inside = [make_individual("Amina", "Banda", national_id=None, birth_date=born, location=country["NV1"])
              for _ in range(11)]
    officer = Scope(paths=(country["NV1"].path,))
    expected = f"Probably the same person as #{inside[0].id} Amina Banda, born 1990-05-17 and 11 more."
    text = HEADER + "Aminah,Banda,F,1990-05-17,,NV1,,,\n"
    assert _rows(db_session, _validated(db_session, tmp_path, text, scope=officer))[2].warning == expected
    broken = _validated(db_session, tmp_path, text.replace(",F,", ",Q,"), scope=officer)
    services.replace_in_column(db_session, broken, field="sex", find="Q", replace="F", scope=officer)
    assert _rows(db_session, broken)[2].warning == expected


@pytest.mark.parametrize("read_registry", [False, True], ids=["row by row", "registry read once"])
def test_a_look_alike_outside_the_uploaders_villages_is_not_named(
        db_session, tmp_path, country, make_individual, monkeypatch, read_registry):
    if read_registry:
        monkeypatch.setattr(duplicates, "READ_REGISTRY_ROWS", 0)  # as for a file of 40,000 rows
    outside = make_individual("Amina", "Banda", national_id=None, birth_date=date(1990, 5, 17),
                              location=country["NV2"])
    text = HEADER + "Aminah,Banda,F,1990-05-17,,NV1,,,\n"
    officer = Scope(paths=(country["NV1"].path,))
    masked = f"Probably the same person as #{outside.id}, who lives outside your area, born 1990-05-17."
    upload = _validated(db_session, tmp_path, text, scope=officer)
    row = _rows(db_session, upload)[2]
    assert (row.status, row.warning) == ("duplicate", masked)
    services.edit_row(db_session, upload, row, {"first_name": "Aminaa"}, scope=officer)
    assert (row.status, row.warning) == ("duplicate", masked)
    inside = make_individual("Amina", "Banda", national_id=None, birth_date=date(1990, 5, 17),
                             location=country["NV1"])
    row = _rows(db_session, _validated(db_session, tmp_path, text, scope=officer))[2]
    assert row.warning == f"Probably the same person as #{inside.id} Amina Banda, born 1990-05-17 and 1 more."
    everything = _rows(db_session, _validated(db_session, tmp_path, text))[2]
    assert "Amina Banda" in everything.warning and "outside" not in everything.warning

def test_a_new_child_joins_a_registered_household_whose_head_the_file_lists_again_under_the_default_policy(
        db_session, tmp_path, country, make_individual, make_household):
    head = make_individual("Amina", "Banda", national_id="MW7000001", location=country["NV1"],
                           birth_date=date(1990, 5, 17))
    household = make_household(1, head=head, code="HH-KNOWN")
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,MW7000001,NV1,HH-KNOWN,head,yes\n"
                        + "Baby,Banda,F,2024-01-02,,NV1,HH-KNOWN,child,no\n")
    rows = _rows(db_session, upload)
    # The head is refused as already registered (this upload refuses them), but is the
    # household's own head: the child is no member of another family.
    assert "refuses people already registered" in rows[2].errors["national_id"]
    assert "household" not in rows[2].errors and rows[3].status == "valid"
    _imported(db_session, upload)
    assert db_session.scalar(select(func.count()).where(GroupMember.group_id == household.id)) == 2


@pytest.mark.parametrize("policy", ["error", "update", "skip"])
def test_a_new_child_joins_a_registered_household_whose_head_without_a_national_id_the_file_lists_again(
        db_session, tmp_path, country, policy):
    week1 = HEADER + "Amina,Banda,F,1990-05-17,,NV1,HH-1,head,yes\nJuma,Banda,M,2015-01-02,,NV1,HH-1,child,no\n"
    _imported(db_session, _validated(db_session, tmp_path, week1, policy=policy))
    household = db_session.scalar(select(Group).where(Group.code == "HH-1"))
    amina = household.primary_recipient_id
    week2 = _validated(db_session, tmp_path, week1 + "Baby,Banda,F,2024-01-02,,NV1,HH-1,child,no\n",
                       policy=policy)
    rows = _rows(db_session, week2)
    # Amina is known by the look-alike her row names, not taken for another family's head:
    # the baby joins (Juma, already a member, is counted with the household as before).
    assert rows[2].warning.startswith(f"Probably the same person as #{amina} Amina Banda")
    assert "household" not in rows[2].errors
    assert rows[4].status == "valid"


def test_a_household_registered_since_validation_under_the_same_code_takes_in_none_of_another_familys_rows(
        db_session, tmp_path, country):
    # Two files that both kept the template's example code, checked before either is imported.
    first = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,HH-0001,head,yes\n")
    second = _validated(db_session, tmp_path, HEADER + "Grace,Tembo,F,1985-02-03,,NV2,HH-0001,head,yes\n"
                        + "Limbani,Tembo,M,2012-07-08,,NV2,HH-0001,child,no\n")
    _imported(db_session, first)
    _imported(db_session, second)
    rows = _rows(db_session, second)
    assert (rows[2].status, rows[3].status) == ("error", "error")
    assert "has another head than row 2" in rows[3].errors["household"]
    assert "2 row(s) were held back" in second.message
    household = db_session.scalar(select(Group).where(Group.code == "HH-0001"))
    assert db_session.scalar(select(func.count()).where(GroupMember.group_id == household.id)) == 1
    assert db_session.scalar(select(func.count()).select_from(Individual).where(
        Individual.last_name == "Tembo")) == 0


def test_two_versions_of_one_file_validated_before_either_is_imported_register_nobody_twice(
        db_session, tmp_path, country):
    # The corrected version is uploaded anew while the first waits; both are imported.
    first = _validated(db_session, tmp_path, HEADER + "Juma,Banda,M,2015-01-02,,NV1,,,\n")
    second = _validated(db_session, tmp_path, HEADER + "Juma,Bandah,M,2015-01-02,,NV1,,,\n"
                        + "Zoe,Phiri,F,1980-03-04,,NV1,,,\n")
    assert second.counts["duplicates"] == 0  # nobody like Juma was registered then
    _imported(db_session, first)
    counts = _imported(db_session, second)
    rows = _rows(db_session, second)
    juma = db_session.scalar(select(Individual).where(Individual.first_name == "Juma"))
    assert (rows[2].status, rows[3].status) == ("duplicate", "imported")
    assert rows[2].warning == f"Probably the same person as #{juma.id} Juma Banda, born 2015-01-02."
    assert counts["people_created"] == 1
    assert "1 row(s) look like people registered since validation" in second.message
    assert db_session.scalar(select(func.count()).select_from(Individual).where(
        Individual.first_name == "Juma")) == 1


def test_a_row_confirmed_as_no_duplicate_stays_confirmed_when_a_look_alike_is_registered_meanwhile(
        db_session, tmp_path, country, make_individual):
    make_individual("Juma", "Banda", birth_date=date(2015, 1, 2), location=country["NV1"])
    upload = _validated(db_session, tmp_path, HEADER + "Juma,Banda,M,2015-01-02,,NV1,,,\n")
    row = _rows(db_session, upload)[2]
    assert row.status == "duplicate"
    services.confirm_row(db_session, upload, row, scope=EVERYTHING)
    make_individual("Juma", "Bandah", birth_date=date(2015, 1, 2), location=country["NV2"])
    counts = _imported(db_session, upload)
    db_session.expire_all()
    assert counts["people_created"] == 1 and _rows(db_session, upload)[2].status == "imported"


def test_a_household_code_registered_outside_the_uploaders_area_is_an_error_that_tells_nothing_more(
        db_session, tmp_path, country, make_household):
    household = make_household(2, location=country["SV1"], code="HH-S")
    payee = household.primary_recipient_id
    officer = Scope(paths=(country["N"].path,))
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,HH-S,head,yes\n",
                        scope=officer)
    row = _rows(db_session, upload)[2]
    assert row.status == "error"
    assert row.errors == {"household": "The code HH-S belongs to a group outside your area; use another code."}
    assert _rows(db_session, _validated(db_session, tmp_path, HEADER
                                        + "Amina,Banda,F,1990-05-17,,NV1,HH-S,head,yes\n"))[2].errors == {
        "household": "Household HH-S already has a head in the registry."}
    db_session.refresh(household)
    assert household.primary_recipient_id == payee


def test_a_person_in_a_household_outside_the_area_is_refused_without_naming_it(
        db_session, tmp_path, country, make_individual, make_household):
    member = make_individual("Juma", "Phiri", national_id="A200", location=country["NV1"])
    make_household(1, head=member, code="HH-SOUTH", location=country["SV1"])
    upload = _validated(db_session, tmp_path, HEADER + "Juma,Phiri,M,1970-01-01,A200,NV1,HH-NEW,head,yes\n",
                        policy="update", scope=Scope(paths=(country["N"].path,)))
    assert _rows(db_session, upload)[2].errors["household"] == (
        "This person is already in a household outside your area; move them in the registry first.")

def test_a_household_registered_outside_the_area_between_validation_and_import_holds_its_rows_back(
        db_session, tmp_path, country, make_household):
    officer = Scope(paths=(country["N"].path,))
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,HH-NEW,head,yes\n"
                        + "Juma,Banda,M,2015-01-02,,NV1,HH-OWN,head,yes\n", scope=officer)
    household = make_household(1, location=country["SV1"], code="HH-NEW")
    payee = household.primary_recipient_id
    counts = _imported(db_session, upload, scope=officer)
    db_session.refresh(household)
    assert counts["imported"] == 1 and counts["errors"] == 1 and counts["members_added"] == 1
    assert household.primary_recipient_id == payee and len(household.members) == 1
    held = _rows(db_session, upload)[2]
    assert held.status == "error"
    assert held.errors["household"] == "The code HH-NEW belongs to a group outside your area; use another code."
    assert upload.message == ("1 row(s) were held back: their person or household changed in the registry since "
                              "validation. Fix them and import again.")


def test_a_head_registered_for_a_household_between_validation_and_import_holds_back_its_rows_from_the_file(
        db_session, tmp_path, country, make_household):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,HH-LATE,head,yes\n"
                        + "Juma,Banda,M,2015-01-02,,NV1,HH-LATE,child,no\n")
    household = make_household(1, location=country["NV1"], code="HH-LATE")  # with a head
    counts = _imported(db_session, upload)
    rows = _rows(db_session, upload)
    assert rows[2].status == "error" and "already has a head" in rows[2].errors["household"]
    # The file gives Juma another head than the registered household's: he is not put
    # into it without them, until someone settles which family this is.
    assert rows[3].status == "error" and "has another head than row 2" in rows[3].errors["household"]
    assert counts["imported"] == 0 and counts["errors"] == 2
    db_session.refresh(household)
    assert len(household.members) == 1


def test_an_import_asked_to_run_only_when_nothing_is_left_to_fix_imports_nobody_when_a_household_changed(
        db_session, tmp_path, country, make_household):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,HH-LATE,head,yes\n")
    make_household(1, location=country["NV1"], code="HH-LATE")
    services.start_import(db_session, upload, only_if_clean=True, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)
    with pytest.raises(DomainError, match="1 row\\(s\\) need fixing again"):
        services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None,
                               progress=lambda *a, **k: None, only_if_clean=True)
    assert db_session.scalar(select(func.count()).select_from(Individual).where(
        Individual.first_name == "Amina")) == 0


def test_a_head_registered_during_the_import_leaves_the_new_head_out_of_the_household_and_says_so(
        db_session, tmp_path, country, make_individual):
    from portal.registry.models import Group

    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,HH-RACE,head,yes\n"
                        + "Juma,Banda,M,2015-01-02,,NV1,HH-RACE,child,no\n")
    services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)

    def progress(done, total=None, message=None):
        # Someone registers HH-RACE with a head once the people exist, before the households.
        if message and message.startswith("Imported") and not db_session.scalar(
                select(Group.id).where(Group.code == "HH-RACE")):
            head = make_individual("Other", "Head", location=country["NV1"])
            group = Group(code="HH-RACE", kind="household", name="Race", location_id=country["NV1"].id)
            db_session.add(group)
            db_session.flush()
            db_session.add(GroupMember(group_id=group.id, individual_id=head.id, group_kind="household",
                                       role="head"))
            db_session.flush()

    counts = services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None, progress=progress)
    rows = _rows(db_session, upload)
    assert rows[2].status == rows[3].status == "imported" and counts["members_added"] == 1
    assert upload.message == ("Imported but not added to their household, which changed in the registry "
                              "during the import: rows 2.")


def test_rows_are_checked_in_the_uploaders_area_even_when_a_national_user_edits_them(
        db_session, tmp_path, country, make_individual, make_user):
    elsewhere = make_individual("Grace", "Tembo", national_id="S100", location=country["SV1"])
    officer = make_user("field_officer", [country["N"]])
    upload = _receive(db_session, tmp_path, HEADER + "Grace,Tembo,F,1990-05-17,X,NV1,,,\n", policy="update")
    upload.created_by = officer
    run = services.start_validation(db_session, upload, scope=EVERYTHING, actor_id=None)
    assert scope_from_params(run.params) == Scope(paths=(country["N"].path,))
    services.validate_upload(db_session, upload, scope=scope_from_params(run.params),
                             progress=lambda *a, **k: None)
    row = _rows(db_session, upload)[2]
    services.edit_row(db_session, upload, row, {"national_id": "S100"}, scope=EVERYTHING)
    assert (row.status, row.action, row.individual_id) == ("error", "new", None)
    assert row.errors["national_id"] == f"Already registered to person #{elsewhere.id}, who lives outside your area."


def test_a_person_who_moved_out_of_the_area_after_validation_is_not_updated(
        db_session, tmp_path, country, make_individual):
    person = make_individual("Amina", "Banda", national_id="A100", location=country["NV1"])
    officer = Scope(paths=(country["N"].path,))
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,A100,NV2,,,\n",
                        policy="update", scope=officer)
    person.location_id = country["SV1"].id
    db_session.flush()
    counts = _imported(db_session, upload, scope=officer)
    row = _rows(db_session, upload)[2]
    db_session.refresh(person)
    assert counts["people_updated"] == 0 and person.location_id == country["SV1"].id
    assert (row.status, row.errors) == ("error", {
        "national_id": "The person to update moved outside your area meanwhile."})

def test_overlong_codes_and_roles_are_errors_on_their_row_and_fixable_in_place(db_session, tmp_path, country):
    long = "H" * 300
    upload = _validated(db_session, tmp_path, HEADER + f"Amina,Banda,F,1990-05-17,{'N' * 300},NV1,{long},{long},yes\n")
    row = _rows(db_session, upload)[2]
    assert row.status == "error"
    assert row.errors["household_code"] == "A household code has at most 40 characters."
    assert "national_id" in row.errors and "role" in row.errors
    with pytest.raises(DomainError, match="holds 10,000 characters; a cell may hold at most 2,000"):
        services.edit_row(db_session, upload, row, {"household_code": "X" * 10_000}, scope=EVERYTHING)
    assert row.raw["household_code"] == long
    services.edit_row(db_session, upload, row, {"household_code": "X" * 100}, scope=EVERYTHING)
    assert row.errors["household_code"] == "A household code has at most 40 characters."
    services.edit_row(db_session, upload, row, {"household_code": "HH-1", "role": "head",
                                                "national_id": ""}, scope=EVERYTHING)
    assert row.status == "valid"

def test_editing_a_row_checks_it_again_with_its_household(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,H1,wife,yes\n"
                        + "Juma,Banda,M,2015-01-02,,NV1,H1,child,no\n")
    rows = _rows(db_session, upload)
    assert rows[3].errors["household"].endswith("has no head: give one member the role head.")
    services.edit_row(db_session, upload, rows[2], {"role": "Head"}, scope=EVERYTHING)
    assert rows[2].status == "valid" and rows[2].cleaned["role"] == "head"
    db_session.refresh(rows[3])
    assert rows[3].status == "valid" and rows[3].errors == {}
    assert upload.counts["errors"] == 0


def test_find_and_replace_fixes_every_matching_cell_of_a_column(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "".join(
        f"P{i},Banda,F,1990-05-{i + 10},,Village-1,,,\n" for i in range(5)))
    assert upload.counts["errors"] == 5
    changed = services.replace_in_column(db_session, upload, field="location", find=" village-1 ",
                                         replace="NV1", scope=EVERYTHING)
    assert changed == 5
    assert upload.counts["errors"] == 0 and upload.counts["valid"] == 5


def test_find_and_replace_within_cells_changes_only_the_cells_holding_the_text(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,old-NV1,,,\n"
                        + "Juma,Banda,M,1991-05-17,,OLD-nv2,,,\n" + "Zoë,Phiri,F,1980-03-04,,NV1,,,\n")
    assert upload.counts["errors"] == 2
    with pytest.raises(DomainError, match="Write the text to find"):
        services.replace_in_column(db_session, upload, field="location", find=" ", replace="",
                                   scope=EVERYTHING, whole_cell=False)
    changed = services.replace_in_column(db_session, upload, field="location", find="old-",
                                         replace="", scope=EVERYTHING, whole_cell=False)
    rows = _rows(db_session, upload)
    assert changed == 2
    assert [rows[n].raw["location"] for n in (2, 3, 4)] == ["NV1", "nv2", "NV1"]
    assert upload.counts["errors"] == 0 and upload.counts["valid"] == 3


def test_a_dropped_row_is_left_out_of_the_import(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\nBad,Row,?,,,NV1,,,\n")
    services.drop_row(db_session, upload, _rows(db_session, upload)[3], scope=EVERYTHING)
    counts = _imported(db_session, upload)
    assert counts["imported"] == 1 and counts["dropped"] == 1
    assert db_session.scalar(select(func.count()).select_from(Individual).where(Individual.last_name == "Row")) == 0


def test_import_creates_people_and_households_and_a_second_run_changes_nothing(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER
                        + "Amina,Banda,F,1990-05-17,A100,NV1,H1,head,no\n"
                        + "Juma,Banda,M,2015-01-02,,NV1,H1,child,yes\n"
                        + "=HYPERLINK(1),Phiri,F,1980-03-04,,NV2,,,\n")
    counts = _imported(db_session, upload)
    assert upload.status == "imported"
    assert counts["imported"] == 3 and counts["people_created"] == 3 and counts["new_households"] == 1
    rows = _rows(db_session, upload)
    household = db_session.scalar(select(Group).where(Group.code == "H1"))
    assert household.kind == "household" and household.primary_recipient_id == rows[3].individual_id
    assert {m.role for m in household.members} == {"head", "child"}
    assert db_session.get(Individual, rows[4].individual_id).first_name == "=HYPERLINK(1)"
    services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None, progress=lambda *a, **k: None)
    assert db_session.scalar(select(func.count()).select_from(Individual).where(
        Individual.last_name.in_(["Banda", "Phiri"]))) == 3
    assert db_session.scalar(select(func.count()).select_from(GroupMember).where(
        GroupMember.group_id == household.id)) == 2


def test_importing_an_update_changes_the_registered_person(db_session, tmp_path, country, make_individual):
    person = make_individual("Amina", "Banda", national_id="A100", phone=None, location=country["NV1"])
    upload = _validated(db_session, tmp_path, "First name,Last name,Sex,Birth date,National ID,Village code,Phone\n"
                        "Amina,Mwale,F,1990-05-17,A100,NV2,+265991234567\n", policy="update")
    counts = _imported(db_session, upload)
    db_session.refresh(person)
    assert (person.last_name, person.location_id, person.phone) == ("Mwale", country["NV2"].id, "+265991234567")
    assert counts["people_updated"] == 1 and counts["people_created"] == 0


def test_updates_change_only_what_differs_and_write_one_audit_entry_per_changed_person(
        db_session, tmp_path, country, make_individual):
    from portal.audit.models import AuditEntry

    born = date(1990, 5, 17)
    people = [make_individual(first, "Banda", national_id=nid, phone=phone, sex="F", birth_date=born,
                              location=country["NV1"])
              for first, nid, phone in (("Amina", "A100", "+265990000001"), ("Grace", "A200", "+265990000002"),
                                        ("Mercy", "A300", None), ("Neema", "A400", "+265990000004"))]
    upload = _validated(db_session, tmp_path, "First name,Last name,Sex,Birth date,National ID,Village code,Phone\n"
                        "Amina,Banda,F,1990-05-17,A100,NV1,+265991111111\n"   # new phone
                        "Grace,Banda,F,1990-05-17,A200,NV1,+265992222222\n"   # new phone too
                        "Mercy,Mwale,F,1990-05-17,A300,NV2,\n"                # married, moved; no phone given
                        "Neema,Banda,F,1990-05-17,A400,NV1,+265990000004\n",  # as registered
                        policy="update")
    counts = _imported(db_session, upload)
    for person in people:
        db_session.refresh(person)
    assert [(p.last_name, p.location_id, p.phone, p.version) for p in people] == [
        ("Banda", country["NV1"].id, "+265991111111", 2), ("Banda", country["NV1"].id, "+265992222222", 2),
        ("Mwale", country["NV2"].id, None, 2), ("Banda", country["NV1"].id, "+265990000004", 1)]
    assert people[2].name_key == "mwale mercy" and people[2].updated_at is not None
    assert counts["people_updated"] == 4 and counts["imported"] == 4
    entries = {e.entity_id: e for e in db_session.scalars(select(AuditEntry).where(
        AuditEntry.entity_type == "individual", AuditEntry.action == "update"))}
    assert sorted(entries) == sorted(str(p.id) for p in people[:3])
    assert entries[str(people[0].id)].changes == {"phone": ["+265990000001", "+265991111111"]}
    assert entries[str(people[2].id)].changes == {"last_name": ["Banda", "Mwale"],
                                                  "location_id": [country["NV1"].id, country["NV2"].id]}
    assert entries[str(people[2].id)].summary == "Mercy Mwale"


def test_an_update_of_a_person_deleted_after_validation_fails_only_its_row(
        db_session, tmp_path, country, make_individual):
    kept = make_individual("Amina", "Banda", national_id="A100", location=country["NV1"])
    gone = make_individual("Juma", "Phiri", national_id="A200", location=country["NV1"])
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,A100,NV2,,,\n"
                        + "Juma,Phiri,M,1970-01-01,A200,NV2,,,\n", policy="update")
    gone.deleted_at = datetime(2026, 11, 1)
    db_session.flush()
    counts = _imported(db_session, upload)
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[3].status) == ("imported", "error")
    assert rows[3].errors["national_id"] == "The person to update was deleted meanwhile."
    assert counts["people_updated"] == 1 and kept.location_id == country["NV2"].id


def test_a_file_of_fixes_made_from_the_original_file_is_read_by_the_uploads_own_mapping(
        db_session, tmp_path, country):
    upload = _receive(db_session, tmp_path, "Prenom,Nom,Sexe,Ne le,Village\n"
                                            "Juma,Banda,Q,2015-01-02,NV1\nZoe,Phiri,Z,1980-03-04,NV1\n")
    services.set_mapping(db_session, upload, {"Prenom": "first_name", "Nom": "last_name", "Sexe": "sex",
                                              "Ne le": "birth_date", "Village": "location"}, actor_id=None)
    services.validate_upload(db_session, upload, scope=EVERYTHING, progress=lambda *a, **k: None)
    fixed = _file(tmp_path, "Row,Prenom,Nom,Sexe,Ne le,Village,Remarque\n"
                            "2,Juma,Banda,M,2015-01-02,NV1,corrige\n3,Zoe,Phiri,Z,1980-03-04,NV1,\n")
    result = services.apply_corrections(db_session, upload, fixed, scope=EVERYTHING)
    # The Sexe column was passed over and both rows were said to be updated.
    assert (result["updated"], result["unchanged"], result["not_read"]) == (1, 1, ["Remarque"])
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[2].raw["sex"], rows[3].status) == ("valid", "M", "error")
    assert services.corrections_message(result) == (
        "1 row(s) updated and checked again; 1 row(s) were as they are already; not read, as no "
        "field of this upload: the column(s) Remarque.")


def test_the_downloaded_rows_to_fix_are_read_whole_when_the_original_left_out_a_column_of_a_fields_name(
        db_session, tmp_path, country):
    # The original's "Role" (the person's job) was left out; its "Relation" gives the role.
    upload = _receive(db_session, tmp_path, "First name,Last name,Sex,Birth date,Village code,Household code,"
                                            "Relation,Role\nAmina,Banda,F,1990-05-17,NV1,HH-9,boss,farmer\n"
                                            "Juma,Banda,M,2015-01-02,NV1,HH-9,child,pupil\n")
    services.set_mapping(db_session, upload, {**upload.mapping, "Relation": "role", "Role": ""}, actor_id=None)
    services.validate_upload(db_session, upload, scope=EVERYTHING, progress=lambda *a, **k: None)
    # The download names its columns by the fields' labels: the role is under "Role".
    fixed = _file(tmp_path, "Row,First name,Last name,Sex,Birth date,Village code,Household code,Role,Errors\n"
                            "2,Amina,Banda,F,1990-05-17,NV1,HH-9,head,\n")
    result = services.apply_corrections(db_session, upload, fixed, scope=EVERYTHING)
    assert (result["updated"], result["not_read"]) == (1, [])
    rows = _rows(db_session, upload)
    assert rows[2].raw["role"] == "head" and rows[2].status == "valid"


def test_a_file_of_fixes_with_no_column_of_the_upload_is_refused(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "Juma,Banda,?,2015-01-02,,NV1,,,\n")
    fixed = _file(tmp_path, "Row,Colour\n2,blue\n")
    with pytest.raises(FileProblem, match="None of the file's columns is a field of this upload"):
        services.apply_corrections(db_session, upload, fixed, scope=EVERYTHING)
    assert _rows(db_session, upload)[2].raw["sex"] == "?"


def test_importing_only_when_nothing_is_left_to_fix_is_refused_while_rows_have_errors(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\nBad,Row,?,,,NV1,,,\n")
    with pytest.raises(DomainError, match="1 row\\(s\\) still need fixing"):
        services.start_import(db_session, upload, only_if_clean=True, scope=EVERYTHING, actor_id=None,
                              may_enrol=True)


def test_fixed_rows_uploaded_back_are_matched_by_row_number(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
                        + "Juma,Banda,?,2015-01-02,,NV1,,,\nZoë,Phiri,F,1980-03-04,,NOPE,,,\n")
    downloaded = list(services.problem_rows_for_download(db_session, upload))
    assert [n for n, _raw, _errors, _version in downloaded] == [3, 4]
    assert "sex: Sex must be F, M or O" in downloaded[0][2]
    fixed = _file(tmp_path, "Row,First name,Last name,Sex,Birth date,National ID,Village code,Errors\n"
                            "3,Juma,Banda,M,2015-01-02,,NV1,sex: ...\n99,X,Y,F,2000-01-01,,NV1,\n")
    result = services.apply_corrections(db_session, upload, fixed, scope=EVERYTHING)
    assert result == {"updated": 1, "unknown": 1, "changed": 0, "changed_rows": [], "unchanged": 0,
                      "not_read": []}
    rows = _rows(db_session, upload)
    assert rows[3].status == "valid" and rows[4].status == "error"


def test_a_file_with_headers_only_is_refused_and_not_kept(db_session, tmp_path, country):
    path = _file(tmp_path, HEADER)
    with pytest.raises(FileProblem, match="column names but no rows"):
        services.receive_upload(db_session, path=path, file_name="x.csv", duplicate_policy="error",
                                day_first=None, program_id=None, enrol_status=None, area_id=None,
                                actor_id=None, max_rows=10)
    assert not path.exists()


def test_unknown_headers_ask_for_a_mapping_which_is_saved_for_the_next_file(db_session, tmp_path, country):
    text = "Given,Family,Gender,DOB,Village\nAmina,Banda,F,1990-05-17,NV1\n"
    upload = _receive(db_session, tmp_path, text)
    assert upload.status == "mapping"
    assert upload.mapping["Village"] == "location" and upload.mapping["Given"] == ""
    with pytest.raises(DomainError, match="First name, Last name"):
        services.set_mapping(db_session, upload, {"Gender": "sex", "DOB": "birth_date",
                                                  "Village": "location"}, actor_id=None)
    services.set_mapping(db_session, upload, {"Given": "first_name", "Family": "last_name", "Gender": "sex",
                                              "DOB": "birth_date", "Village": "location"},
                         save_as="District survey", actor_id=None)
    assert upload.status == "uploaded"
    assert db_session.scalar(select(SavedMapping.name)) == "District survey"
    again = _receive(db_session, tmp_path, text.replace("Amina", "Zoë"))
    assert again.status == "uploaded" and again.mapping["Given"] == "first_name"


def test_a_saved_mapping_keeps_its_fields_when_next_weeks_headers_differ_in_capitals(db_session, tmp_path, country):
    week1 = _receive(db_session, tmp_path, "Given,Family,Gender,DOB,Village,Telephone,NIN\n"
                                           "Amina,Banda,F,1990-05-17,NV1,+265991234567,A100\n")
    services.set_mapping(db_session, week1, {
        "Given": "first_name", "Family": "last_name", "Gender": "sex", "DOB": "birth_date",
        "Village": "location", "Telephone": "phone", "NIN": "national_id"}, save_as="Survey", actor_id=None)
    week2 = _receive(db_session, tmp_path, "Given,Family,Gender,DOB,Village,TELEPHONE,nin\n"
                                           "Juma,Phiri,M,1985-01-02,NV1,+265991234568,A101\n")
    # Found by the same headers whatever their capitals, and applied the same way: the phone
    # numbers and national IDs were left out of the file without a word.
    assert week2.status == "uploaded"
    assert week2.mapping["TELEPHONE"] == "phone" and week2.mapping["nin"] == "national_id"


def test_a_saved_mapping_naming_a_field_that_is_gone_asks_for_the_columns_again(db_session, tmp_path, country):
    text = "Given,Family,Gender,DOB,Village,Clan\nAmina,Banda,F,1990-05-17,NV1,Nkhoma\n"
    week1 = _receive(db_session, tmp_path, text)
    services.set_mapping(db_session, week1, {"Given": "first_name", "Family": "last_name", "Gender": "sex",
                                             "DOB": "birth_date", "Village": "location"},
                         save_as="Survey", actor_id=None)
    saved = db_session.scalar(select(SavedMapping))
    saved.mapping = {**saved.mapping, "Clan": "custom_clan"}  # a custom field removed since
    db_session.flush()
    again = _receive(db_session, tmp_path, text)
    assert again.status == "mapping" and again.mapping["Clan"] == ""


def test_a_file_whose_content_was_already_imported_is_recognised(db_session, tmp_path, country):
    text = HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
    first = _validated(db_session, tmp_path, text)
    _imported(db_session, first)
    second = _receive(db_session, tmp_path, text)
    assert services.earlier_import_of_same_file(db_session, second, scope=EVERYTHING,
                                                actor_id=None) == (True, first)
    elsewhere = Scope(paths=(country["S"].path,))
    assert services.earlier_import_of_same_file(db_session, second, scope=elsewhere,
                                                actor_id=0) == (True, None)  # another user


def test_imported_people_are_enrolled_into_the_chosen_program(db_session, tmp_path, country):
    from portal.programs.models import Beneficiary, Program

    program = Program(code="CT1", name="Cash for all", beneficiary_kind="individual", status="active")
    db_session.add(program)
    db_session.flush()
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
                        + "Juma,Banda,M,2015-01-02,,NV1,,,\n", program_id=program.id)
    counts = _imported(db_session, upload)
    assert counts["enrolled"] == 2
    statuses = db_session.scalars(select(Beneficiary.status).where(Beneficiary.program_id == program.id)).all()
    assert statuses == ["potential", "potential"]


def test_uploads_are_seen_by_their_uploader_and_by_users_whose_area_holds_them(
        db_session, tmp_path, country, make_user):
    north_officer = make_user("field_officer", [country["N"]])
    south_officer = make_user("field_officer", [country["S"]])
    db_session.flush()
    upload = _receive(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    upload.location_id = country["ND"].id
    upload.created_by_id = south_officer.id
    db_session.flush()
    north = Scope(paths=(country["N"].path,))
    assert services.get_upload(db_session, upload.id, scope=north, actor_id=north_officer.id) is upload
    elsewhere = Scope(paths=(country["SW"].path,))
    assert services.get_upload(db_session, upload.id, scope=elsewhere, actor_id=south_officer.id) is upload
    assert services.get_upload(db_session, upload.id, scope=elsewhere, actor_id=north_officer.id) is None


def test_the_demo_leaves_one_imported_upload_and_one_with_rows_to_fix(db_session, country):
    import random

    from portal.imports import demo
    from portal.imports.models import Upload

    summary = demo.build(db_session, random.Random(1), [country["NV1"].id, country["NV2"].id])
    statuses = sorted(db_session.scalars(select(Upload.status)))
    assert statuses == ["imported", "validated"] and summary["people_imported"] > 0


def test_a_national_id_registered_between_validation_and_import_fails_only_its_row(
        db_session, tmp_path, country, make_individual):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,A100,NV1,,,\n"
                        + "Zoë,Phiri,F,1980-03-04,A101,NV2,,,\n")
    make_individual("Someone", "Else", national_id="A101", location=country["NV1"])
    counts = _imported(db_session, upload)
    rows = _rows(db_session, upload)
    assert rows[2].status == "imported" and rows[3].status == "error"
    assert rows[3].errors["national_id"] == "This national ID was registered for someone else meanwhile."
    assert counts["imported"] == 1


def test_a_unique_custom_value_already_registered_or_earlier_in_the_file_is_an_error(
        db_session, tmp_path, country, make_individual):
    from portal.registry.models import CustomField

    db_session.add(CustomField(name="voter", label="Voter card", type="text", unique=True,
                               active=True, required=False, position=0))
    db_session.flush()
    make_individual("Amina", "Banda", national_id="A100", location=country["NV1"], custom={"voter": "V1"})
    make_individual("Juma", "Phiri", national_id="A200", location=country["NV1"], custom={"voter": "V3"})
    header = "First name,Last name,Sex,Birth date,National ID,Village code,Voter card\n"
    upload = _validated(db_session, tmp_path, header
                        + "Zoë,Mwale,F,1990-05-17,,NV1,V1\n"  # another person's card
                        + "Ann,Tembo,F,1991-05-17,,NV1,V2\n"
                        + "Ben,Tembo,M,1992-05-17,,NV1,V2\n"  # the card of row 3
                        + "Juma,Phiri,M,1970-01-01,A200,NV1,V3\n", policy="update")  # his own card
    rows = _rows(db_session, upload)
    assert rows[2].errors["voter"] == "Voter card V1 is already used by someone else."
    assert rows[3].status == "valid"
    assert rows[4].errors["voter"] == "Voter card V2 is also on row 3."
    assert (rows[5].status, rows[5].action) == ("valid", "update")


def test_a_mapped_column_that_the_whole_file_lacks_fails_validation_naming_it(db_session, tmp_path, country):
    upload = _receive(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    upload.mapping = {**upload.mapping, "Ghost column": "phone"}
    with pytest.raises(FileProblem, match="The column 'Ghost column' was not found"):
        services.validate_upload(db_session, upload, scope=EVERYTHING, progress=lambda *a, **k: None)


def test_a_second_copy_of_a_file_validated_before_the_first_was_imported_is_not_imported(
        db_session, tmp_path, country):
    text = HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
    first, second = _validated(db_session, tmp_path, text), _validated(db_session, tmp_path, text)
    _imported(db_session, first)
    with pytest.raises(DomainError, match=f"The same file was imported as upload #{first.id} after this one"):
        services.start_import(db_session, second, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                              may_enrol=True)
    assert db_session.scalar(select(func.count()).select_from(Individual).where(
        Individual.first_name == "Amina")) == 1


def test_a_file_imported_before_its_copy_was_uploaded_was_warned_about_and_its_copy_may_be_imported(
        db_session, tmp_path, country):
    text = HEADER + "Amina,Banda,F,1990-05-17,CP1,NV1,,,\n"
    first = _validated(db_session, tmp_path, text, policy="update")
    _imported(db_session, first)
    second = _validated(db_session, tmp_path, text, policy="update")
    assert services.earlier_import_of_same_file(db_session, second, scope=EVERYTHING, actor_id=None)[0]
    _imported(db_session, second)  # the user was told on arrival and went on
    assert second.status == "imported" and second.counts["people_updated"] == 1


class _WorkerGone(BaseException):
    """The worker's process ending between two batches (killed, out of memory)."""


def test_an_import_that_stopped_partway_counts_the_rows_it_imported_once_its_job_is_given_up(
        app, db_session, tmp_path, country, monkeypatch):
    upload = _validated(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,SP1,NV1,,,\n"
                        + "Juma,Phiri,M,1985-01-02,SP2,NV1,,,\n")
    run = services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING,
                                actor_id=None, may_enrol=True)
    assert upload.counts["imported"] == 0
    monkeypatch.setitem(app.config, "UPLOAD_IMPORT_BATCH", 1)

    def progress(done, total, message):
        db_session.commit()
        if message.startswith("Imported 1 "):
            raise _WorkerGone

    with pytest.raises(_WorkerGone):
        services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None, progress=progress)
    run.status, run.message = "failed", "The worker stopped."  # as the sweep gives it up
    assert services.reconcile(db_session, upload)
    assert upload.status == "validated"
    assert (upload.counts["imported"], upload.counts["valid"]) == (1, 1)


def test_each_person_an_import_adds_to_a_registered_household_is_in_the_audit_log(
        db_session, tmp_path, country, make_household):
    from portal.audit.models import AuditEntry

    household = make_household(1, code="HH-OLD", location=country["NV1"])
    upload = _validated(db_session, tmp_path, HEADER + "Kondwani,Banda,M,2019-03-04,,NV1,HH-OLD,child,no\n"
                        + "Amina,Phiri,F,1990-05-17,,NV1,HH-FRESH,head,yes\n")
    before = db_session.scalar(select(func.max(AuditEntry.id)))
    counts = _imported(db_session, upload)
    assert counts["members_added"] == 2
    child = _rows(db_session, upload)[2].individual_id
    member = db_session.scalar(select(GroupMember).where(GroupMember.individual_id == child))
    entries = db_session.scalars(select(AuditEntry).where(AuditEntry.entity_type == "groupmember",
                                                          AuditEntry.id > before)).all()
    assert [(e.action, e.entity_id, e.summary) for e in entries] == [
        ("create", str(member.id), f"Joined household HH-OLD from upload #{upload.id}")]
    assert entries[0].changes == {"group_id": [None, household.id], "individual_id": [None, child],
                                  "group_kind": [None, "household"], "role": [None, "child"]}


def test_marking_rows_imported_rewrites_each_row_in_place_on_postgresql(db_session, tmp_path, country):
    """No index holds a staged row's status or person, so PostgreSQL updates the row where it
    is (a HOT update) instead of writing a new entry into every index of the table."""
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("HOT updates are PostgreSQL's")
    upload = _validated(db_session, tmp_path, HEADER + "".join(
        f"Person{i},Family,F,1990-05-{1 + i:02d},HOT{i:03d},NV1,,,\n" for i in range(20)))
    services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)
    hot = "SELECT pg_stat_get_xact_tuples_hot_updated('upload_row'::regclass)"
    before = db_session.scalar(text(hot))
    services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None,
                           progress=lambda *a, **k: None)
    assert upload.counts["people_created"] == 20
    assert db_session.scalar(text(hot)) - before >= 20
