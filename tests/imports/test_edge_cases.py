"""Uploads in the hard cases: stale forms, fixes uploaded back, jobs that stopped midway,
households with a row left out, and what the audit log and the downloads must hold."""
import csv
import hashlib
import io
import itertools
import re

import orjson
import pytest
from sqlalchemy import func, select

from portal.errors import DomainError
from portal.imports import services
from portal.imports.models import Upload, UploadRow
from portal.locations.services import Scope

EVERYTHING = Scope(everything=True)
HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"
_n = itertools.count()


def _validated(db_session, tmp_path, user, text, *, policy="error", program_id=None, scope=EVERYTHING,
               area=None):
    path = tmp_path / f"review{next(_n)}.csv"
    path.write_text(text, encoding="utf-8")
    upload = services.receive_upload(db_session, path=path, file_name="people.csv",
                                     duplicate_policy=policy, day_first=None, program_id=program_id,
                                     enrol_status="potential" if program_id else None, area_id=area,
                                     actor_id=user.id if user else None, max_rows=10_000)
    services.validate_upload(db_session, upload, scope=scope, progress=lambda *a, **k: None)
    db_session.commit()
    return upload


def _rows(db_session, upload) -> dict[int, UploadRow]:
    db_session.expire_all()
    return {r.row_number: r for r in db_session.scalars(
        select(UploadRow).where(UploadRow.upload_id == upload.id).order_by(UploadRow.row_number))}


def _reupload(client, upload, text: str):
    return client.post(f"/imports/{upload.id}/reupload",
                       data={"file": (io.BytesIO(text.encode()), "fixed.csv")},
                       content_type="multipart/form-data")


FIX_HEADER = ("Row,First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,"
              "Primary recipient,Errors\n")


@pytest.mark.parametrize("row_cell", ["inf", "99999999999999999999", "2.5", "nan"])
def test_a_fixed_file_with_a_nonsense_row_number_is_answered_with_a_message(
        client, login, db_session, tmp_path, country, row_cell):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    response = _reupload(client, upload, FIX_HEADER + f"{row_cell},Juma,Banda,M,1990-05-17,,NV1,,,,\n")
    assert response.status_code == 302
    assert "0 row(s) updated" in client.get(response.headers["Location"]).get_data(as_text=True)
    assert _rows(db_session, upload)[2].raw["sex"] == "Q"


def test_a_phone_downloaded_with_its_formula_guard_comes_back_unchanged_when_the_fixed_rows_are_uploaded(
        client, login, db_session, tmp_path, country):
    user = login("program_manager")  # sees phones unmasked
    header = "First name,Last name,Sex,Birth date,Phone,Village code\n"
    upload = _validated(db_session, tmp_path, user, header + "Juma,Banda,Q,1990-05-17,+265991234567,NV1\n")
    downloaded = client.get(f"/imports/{upload.id}/problems.csv").get_data().decode("utf-8-sig")
    head, row = list(csv.reader(io.StringIO(downloaded)))
    row[head.index("Sex")] = "M"  # the one fix; everything else is sent back as downloaded
    fixed = io.StringIO()
    csv.writer(fixed).writerows([head, row])
    assert _reupload(client, upload, fixed.getvalue()).status_code == 302
    staged = _rows(db_session, upload)[2]
    assert (staged.raw["phone"], staged.status) == ("+265991234567", "valid"), staged.errors


def test_the_upload_templates_keep_a_custom_fields_formula_like_label_and_choices_inert(client, login, db_session):
    from openpyxl import load_workbook

    from portal.registry.models import CustomField

    db_session.add(CustomField(name="income", label="=HYPERLINK(\"http://x.example\",\"Income\")", type="choice",
                               choices=["low", "=1+2"], required=False, active=True, position=0))
    db_session.commit()
    login("field_officer")
    text = client.get("/imports/template.csv").get_data().decode("utf-8-sig")
    in_csv = [h for h in next(csv.reader(io.StringIO(text))) if h.startswith("=")]
    book = load_workbook(io.BytesIO(client.get("/imports/template.xlsx").get_data()))
    in_xlsx = [(sheet.title, cell.coordinate, cell.value) for sheet in book.worksheets
               for row in sheet.iter_rows() for cell in row if cell.data_type == "f"]
    assert (in_csv, in_xlsx) == ([], [])


def test_a_page_number_too_large_for_the_database_is_not_a_server_error(client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    for url in ("/imports/", f"/imports/{upload.id}/rows", f"/imports/{upload.id}/people"):
        assert client.get(url + "?page=99999999999999999999").status_code < 500, url


def test_importing_the_valid_rows_only_does_not_make_a_household_without_its_head(db_session, tmp_path, country):
    from portal.registry.models import Group, GroupMember

    upload = _validated(db_session, tmp_path, None, HEADER
                        + "Amina,Banda,Q,1980-05-17,,NV1,H1,head,yes\n"  # the head's row has an error
                        + "Juma,Banda,M,2015-01-02,,NV1,H1,child,no\n"
                        + "Chisomo,Phiri,F,1990-05-17,,NV1,H2,head,yes\n")
    services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)  # "Import the valid rows"
    services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None, progress=lambda *a, **k: None)
    assert [r.status for r in _rows(db_session, upload).values()] == ["error", "error", "imported"]
    assert db_session.scalars(select(Group.code)).all() == ["H2"]
    assert db_session.scalar(select(func.count()).select_from(GroupMember)) == 1


def test_a_household_waits_for_its_heads_row_and_goes_ahead_once_that_row_is_fixed(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER
                        + "Amina,Banda,Q,1980-05-17,,NV1,H1,head,yes\n"
                        + "Juma,Banda,M,2015-01-02,,NV1,H1,child,no\n")
    child = _rows(db_session, upload)[3]
    assert child.status == "error"
    assert child.errors["household"] == ("Household H1 is imported with its head and primary recipient: "
                                         "row 2 is not ready to import.")
    services.edit_row(db_session, upload, _rows(db_session, upload)[2], {"sex": "F"}, scope=EVERYTHING)
    assert [r.status for r in _rows(db_session, upload).values()] == ["valid", "valid"]


def test_a_household_whose_payee_is_a_probable_duplicate_waits_until_the_user_confirms_that_row(
        db_session, tmp_path, country, make_individual):
    from datetime import date

    make_individual("Chisomo", "Banda", location=country["NV1"], birth_date=date(1985, 1, 1))
    upload = _validated(db_session, tmp_path, None, HEADER
                        + "Amina,Banda,F,1980-05-17,,NV1,H1,head,no\n"
                        + "Chisomo,Banda,F,1985-01-01,,NV1,H1,spouse,yes\n")
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[3].status) == ("error", "duplicate")
    services.confirm_row(db_session, upload, rows[3], scope=EVERYTHING)
    assert [r.status for r in _rows(db_session, upload).values()] == ["valid", "valid"]


def test_an_upload_whose_validation_failed_for_a_dead_worker_offers_to_check_it_again(
        client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    path = tmp_path / "dead.csv"
    path.write_text(HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    upload = services.receive_upload(db_session, path=path, file_name="people.csv", duplicate_policy="error",
                                     day_first=None, program_id=None, enrol_status=None, area_id=None,
                                     actor_id=user.id, max_rows=100)
    # What reconcile() leaves after the sweep gave up on the worker.
    upload.status = "failed"
    upload.message = ("The worker stopped while running this job and it was not retried after 3 "
                      "attempt(s). Start it again: nothing is duplicated.")
    db_session.commit()
    page = client.get(f"/imports/{upload.id}").get_data(as_text=True)
    assert f'action="/imports/{upload.id}/validate"' in page


def test_a_file_of_fixes_whose_job_was_given_up_on_gives_the_rows_back_and_is_not_kept(
        db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("Row,First name,Last name,Sex\n2,Juma,Banda,M\n")
    run = services.start_fix(db_session, upload, {"kind": "file", "path": str(fixes)}, scope=EVERYTHING,
                             actor_id=None)
    assert upload.status == "fixing" and run.params["fix"]["rows"] == 1
    db_session.commit()
    run.status, run.message = "failed", "The worker stopped while running this job."  # the sweep's verdict
    assert services.reconcile(db_session, upload)
    assert (upload.status, upload.message) == (
        "validated", "The fix stopped before it was done: The worker stopped while running this job.")
    assert not fixes.exists()
    services.edit_row(db_session, upload, _rows(db_session, upload)[2], {"sex": "F"}, scope=EVERYTHING)
    assert [r.status for r in _rows(db_session, upload).values()] == ["valid"]


def _file_fix_running(db_session, tmp_path, *, attempts: int = 1):
    upload = _validated(db_session, tmp_path, None,
                        HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n" + "Ali,Banda,Q,1991-05-17,,NV1,,,\n")
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("Row,First name,Last name,Sex\n2,Juma,Banda,M\n3,Ali,Banda,M\n")
    run = services.start_fix(db_session, upload, {"kind": "file", "path": str(fixes)}, scope=EVERYTHING,
                             actor_id=None)
    run.status, run.attempts = "running", attempts
    db_session.commit()
    return upload, run, fixes


def test_a_file_fix_whose_worker_died_after_its_last_chunk_is_finished_by_the_next_attempt(
        db_session, tmp_path, country, monkeypatch):
    from jobs import imports as jobs
    from jobs.runtime import Progress

    upload, run, fixes = _file_fix_running(db_session, tmp_path)
    counted = services.summary_counts

    def killed(session, upload, *, households=True):
        if households:  # the job's last step, after every chunk was committed
            raise SystemExit("worker killed")
        return counted(session, upload, households=households)

    monkeypatch.setattr(services, "summary_counts", killed)
    with pytest.raises(SystemExit):
        jobs._fix(db_session, run, Progress(db_session, run, 1))
    db_session.rollback()  # what the dead process had not committed
    monkeypatch.undo()
    assert fixes.exists()  # the next attempt still reads it
    run.attempts = 2
    db_session.commit()
    assert jobs._fix(db_session, run, Progress(db_session, run, 2)) == {
        "updated": 2, "unknown": 0, "changed": 0, "changed_rows": [], "unchanged": 0, "not_read": []}
    upload = db_session.get(Upload, upload.id)
    assert (upload.status, upload.message) == ("validated", "2 row(s) updated and checked again.")
    assert [r.status for r in _rows(db_session, upload).values()] == ["valid", "valid"]
    assert not fixes.exists()


def test_an_attempt_taken_over_while_it_fails_leaves_the_file_of_fixes_to_the_attempt_now_running(
        db_session, tmp_path, country, monkeypatch):
    from jobs import imports as jobs
    from jobs.runtime import Progress, Superseded

    upload, run, fixes = _file_fix_running(db_session, tmp_path, attempts=2)

    def deadlocked(*_args, **_kwargs):
        raise RuntimeError("deadlock detected")

    monkeypatch.setattr(services, "fix_upload", deadlocked)
    with pytest.raises(Superseded):  # this is attempt 1, late: the sweep gave the job to attempt 2
        jobs._fix(db_session, run, Progress(db_session, run, 1))
    db_session.expire_all()
    assert db_session.get(Upload, upload.id).status == "fixing"
    assert fixes.exists()


def test_a_file_fix_that_failed_is_not_started_again_without_its_file(db_session, tmp_path, country):
    from jobs import imports as jobs
    from jobs.runtime import Progress

    upload, run, fixes = _file_fix_running(db_session, tmp_path)
    run.result = {"resume": {"read": 1, "updated": 1, "unknown": 0}}  # where it had got to
    run.status, run.message = "failed", "The worker stopped while running this job."  # the sweep's verdict
    db_session.commit()
    assert services.reconcile(db_session, upload) and not fixes.exists()
    run.status, run.attempts = "running", 2  # "Run again" on the job's page
    db_session.commit()
    with pytest.raises(DomainError, match="upload the file of fixes again"):
        jobs._fix(db_session, run, Progress(db_session, run, 2))
    assert db_session.get(Upload, upload.id).status == "validated"


def test_an_import_that_stopped_after_its_people_but_before_their_households_can_be_started_again(
        db_session, tmp_path, country, monkeypatch):
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1990-05-17,,NV1,H1,head,yes\n")
    run = services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                                may_enrol=True)
    db_session.commit()

    def killed(*_args, **_kwargs):
        raise RuntimeError("worker killed")

    monkeypatch.setattr(services, "import_households", killed)
    with pytest.raises(RuntimeError):
        services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None,
                               progress=lambda *a, **k: db_session.commit())  # as the job commits per batch
    db_session.rollback()
    upload = db_session.get(Upload, upload.id)
    run.status, run.message = "failed", "The worker stopped while running this job."  # the sweep's verdict
    assert services.reconcile(db_session, upload) and upload.status == "validated"
    db_session.commit()
    monkeypatch.undo()
    from portal.registry.models import Group, Individual

    assert db_session.scalar(select(Group.id).where(Group.code == "H1")) is None  # no household yet
    services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)  # resumes: the household is still to be made
    services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None, progress=lambda *a, **k: None)
    household = db_session.scalar(select(Group).where(Group.code == "H1"))
    assert [m.individual_id for m in household.members] == [_rows(db_session, upload)[2].individual_id]
    assert db_session.scalar(select(func.count()).select_from(Individual)) == 1


# --- stale forms ------------------------------------------------------------------------------

def _seen(form_html: str) -> str:
    return re.search(r'name="seen" value="([0-9a-f]+)"', form_html).group(1)


def _officers_row(client, login, db_session, tmp_path, country, line: str):
    """A field officer's upload of one row, and the address of that row's edit form."""
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + line)
    return upload, f"/imports/{upload.id}/rows/2/edit"


def test_a_row_saved_from_a_second_tab_opened_before_the_first_saved_does_not_silently_undo_the_first_fix(
        client, login, db_session, tmp_path, country):
    upload, url = _officers_row(client, login, db_session, tmp_path, country, "Juma,Banda,Q,1990-13-45,,NV1,,,\n")
    # Both tabs open the row's form while it reads sex Q, born 1990-13-45.
    tab_a = _seen(client.htmx("get", url).get_data(as_text=True))
    tab_b = _seen(client.htmx("get", url).get_data(as_text=True))
    cells = {"first_name": "Juma", "last_name": "Banda", "location": "NV1"}
    client.htmx("post", url, data={**cells, "sex": "M", "birth_date": "1990-13-45", "seen": tab_a})
    second = client.htmx("post", url, data={**cells, "sex": "Q", "birth_date": "1990-12-25", "seen": tab_b})
    page = second.get_data(as_text=True)
    assert second.status_code == 200 and "was changed after you opened it" in page
    assert 'value="1990-12-25"' in page  # what tab B typed is still there
    assert _rows(db_session, upload)[2].raw["sex"] == "M"  # and tab A's fix too
    client.htmx("post", url, data={**cells, "sex": "M", "birth_date": "1990-12-25", "seen": _seen(page)})
    row = _rows(db_session, upload)[2]
    assert (row.raw["sex"], row.raw["birth_date"], row.status) == ("M", "1990-12-25", "valid")


def test_a_row_edit_posted_after_the_upload_was_imported_says_why_it_was_refused(
        client, login, db_session, tmp_path, country):
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
                        + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    client.htmx("get", f"/imports/{upload.id}/rows/3/edit")  # the form is open in the grid
    upload.status = "imported"  # imported meanwhile, from another tab
    db_session.commit()
    response = client.htmx("post", f"/imports/{upload.id}/rows/3/edit", data={"sex": "M"})
    assert response.headers["HX-Redirect"] == f"/imports/{upload.id}/rows"
    page = client.get(response.headers["HX-Redirect"]).get_data(as_text=True)
    assert "rows can be fixed only after validation and before the import" in page


def test_editing_the_first_of_two_rows_sharing_a_national_id_leaves_it_valid(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1990-05-17,A100,NV1,,,\n"
                        + "Amina,Banda,F,1990-05-17,A100,NV1,,,\n")
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[3].status) == ("valid", "error")  # the later row is the duplicate
    services.edit_row(db_session, upload, rows[2], {"first_name": "Aminah"}, scope=EVERYTHING)
    assert rows[2].status == "valid", rows[2].errors


def test_two_rows_fixed_in_one_reupload_to_the_same_unique_value_are_not_both_valid(
        client, login, db_session, tmp_path, country):
    from portal.registry.models import CustomField

    db_session.add(CustomField(name="voter", label="Voter card", type="text", unique=True,
                               active=True, required=False, position=0))
    db_session.commit()
    user = login("program_manager")
    header = "First name,Last name,Sex,Birth date,National ID,Village code,Voter card\n"
    upload = _validated(db_session, tmp_path, user, header
                        + "Amina,Banda,Q,1990-05-17,,NV1,V1\n" + "Juma,Phiri,Q,1991-05-17,,NV1,V2\n")
    fixed = ("Row,First name,Last name,Sex,Birth date,National ID,Village code,Voter card,Errors\n"
             "2,Amina,Banda,F,1990-05-17,,NV1,V9,\n" "3,Juma,Phiri,M,1991-05-17,,NV1,V9,\n")
    assert _reupload(client, upload, fixed).status_code == 302
    rows = _rows(db_session, upload)
    assert (rows[2].raw["voter"], rows[3].raw["voter"]) == ("V9", "V9")
    assert (rows[2].status, rows[3].status) == ("valid", "error")
    assert rows[3].errors == {"voter": "Voter card V9 is also on row 2."}


def test_two_rows_fixed_in_one_reupload_to_the_same_national_id_are_not_both_valid(
        client, login, db_session, tmp_path, country):
    user = login("program_manager")
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,Q,1990-05-17,A1,NV1,,,\n"
                        + "Juma,Phiri,Q,1991-05-17,A2,NV1,,,\n")
    fixed = FIX_HEADER + "2,Amina,Banda,F,1990-05-17,A9,NV1,,,,\n" + "3,Juma,Phiri,M,1991-05-17,A9,NV1,,,,\n"
    assert _reupload(client, upload, fixed).status_code == 302
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[3].status) == ("valid", "error")
    assert rows[3].errors == {"national_id": "This national ID is also on row 2."}


def test_dropping_the_first_of_two_rows_sharing_a_national_id_clears_the_error_of_the_other(
        db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1990-05-17,A100,NV1,,,\n"
                        + "Juma,Phiri,M,1991-05-17,A100,NV1,,,\n")
    rows = _rows(db_session, upload)
    assert rows[3].errors == {"national_id": "This national ID is also on row 2."}
    services.drop_row(db_session, upload, rows[2], scope=EVERYTHING)
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[3].status, rows[3].errors) == ("dropped", "valid", {})


def test_a_probable_duplicate_confirmed_as_another_person_stays_confirmed_when_an_unrelated_cell_is_fixed(
        db_session, tmp_path, country, make_individual):
    from datetime import date

    make_individual("Amina", "Banda", location=country["NV1"], birth_date=date(1990, 5, 17))
    header = "First name,Last name,Sex,Birth date,Phone,Village code\n"
    upload = _validated(db_session, tmp_path, None, header + "Amina,Banda,F,1990-05-17,,NV1\n")
    row = _rows(db_session, upload)[2]
    assert row.status == "duplicate"
    services.confirm_row(db_session, upload, row, scope=EVERYTHING)  # "Not a duplicate"
    assert row.status == "valid"
    services.edit_row(db_session, upload, row, {"phone": "+265991234567"}, scope=EVERYTHING)
    assert row.status == "valid", row.warning


def test_a_confirmed_row_is_flagged_again_when_its_name_changes_to_another_look_alike(
        db_session, tmp_path, country, make_individual):
    from datetime import date

    make_individual("Amina", "Banda", location=country["NV1"], birth_date=date(1990, 5, 17))
    make_individual("Juma", "Banda", location=country["NV1"], birth_date=date(1990, 5, 17))
    header = "First name,Last name,Sex,Birth date,Phone,Village code\n"
    upload = _validated(db_session, tmp_path, None, header + "Amina,Banda,F,1990-05-17,,NV1\n")
    row = _rows(db_session, upload)[2]
    services.confirm_row(db_session, upload, row, scope=EVERYTHING)
    services.edit_row(db_session, upload, row, {"first_name": "Juma"}, scope=EVERYTHING)
    assert row.status == "duplicate" and "Juma Banda" in row.warning


def test_confirming_that_a_probable_duplicate_is_another_person_is_in_the_audit_log(
        client, login, db_session, tmp_path, country, make_individual):
    from datetime import date

    from portal.audit.models import AuditEntry

    make_individual("Amina", "Banda", location=country["NV1"], birth_date=date(1990, 5, 17))
    db_session.commit()
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    assert _rows(db_session, upload)[2].status == "duplicate"
    before = db_session.scalar(select(AuditEntry.id).order_by(AuditEntry.id.desc()).limit(1)) or 0
    assert client.htmx("post", f"/imports/{upload.id}/rows/2/confirm").status_code == 200
    assert _rows(db_session, upload)[2].status == "valid"
    entries = db_session.scalars(select(AuditEntry).where(AuditEntry.id > before)).all()
    assert [(e.action, e.summary) for e in entries] == [("confirm", "Row 2 is not a duplicate")]


def test_every_decision_taken_on_an_upload_is_in_the_audit_log(db_session, tmp_path, country):
    from portal.audit.models import AuditEntry

    upload = _validated(db_session, tmp_path, None, HEADER + "Juma,Banda,Q,1990-05-17,A1,NV1,,,\n"
                        + "Amina,Banda,Q,1990-05-17,,NV1,,,\n" + "Zawadi,Phiri,X,1990-05-17,,NV1,,,\n")
    rows = _rows(db_session, upload)
    services.edit_row(db_session, upload, rows[2], {"sex": "M", "national_id": "A2"}, scope=EVERYTHING)
    services.replace_in_column(db_session, upload, field="sex", find="q", replace="F", scope=EVERYTHING)
    services.drop_row(db_session, upload, rows[4], scope=EVERYTHING)
    entries = {e.action: e for e in db_session.scalars(
        select(AuditEntry).where(AuditEntry.entity_type == "upload", AuditEntry.entity_id == str(upload.id)))}
    assert {"create", "edit_row", "replace", "drop_row"} <= set(entries)
    assert entries["edit_row"].changes == {"sex": ["Q", "M"], "national_id": ["A1", "A2"]}
    assert (entries["replace"].summary, entries["replace"].changes) == ("Row 3: find and replace",
                                                                        {"sex": ["Q", "F"]})
    assert entries["drop_row"].summary == "Row 4 dropped"


def test_an_import_that_changes_a_registered_households_payee_writes_it_in_the_audit_log(
        db_session, tmp_path, country, make_individual, make_household):
    from portal.audit.models import AuditEntry
    from portal.registry.models import Group

    head = make_individual("Amina", "Banda", national_id="A100", location=country["NV1"])
    wife = make_individual("Chisomo", "Banda", national_id="A101", location=country["NV1"])
    household = make_household(head=head, members=[wife], code="H1", location=country["NV1"])
    db_session.commit()
    upload = _validated(db_session, tmp_path, None, HEADER + "Chisomo,Banda,F,1985-01-01,A101,NV1,H1,spouse,yes\n",
                        policy="update")
    assert _rows(db_session, upload)[2].status == "valid", _rows(db_session, upload)[2].errors
    services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)
    services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None, progress=lambda *a, **k: None)
    db_session.expire_all()
    assert db_session.get(Group, household.id).primary_recipient_id == wife.id  # the payee changed
    entries = db_session.scalars(select(AuditEntry).where(AuditEntry.entity_type == "group")).all()
    logged = [e for e in entries if e.entity_id == str(household.id)
              and (e.changes or {}).get("primary_recipient_id", [None, None])[1] == wife.id]
    assert logged, [(e.action, e.entity_type, e.entity_id, e.changes) for e in
                    db_session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(5))]


def test_the_same_person_twice_in_one_file_without_a_national_id_is_flagged_before_import(
        db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
                        + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[3].status) == ("valid", "duplicate")
    assert rows[3].warning == "Probably the same person as row 2 Amina Banda, born 1990-05-17."
    services.edit_row(db_session, upload, rows[3], {"sex": "M"}, scope=EVERYTHING)  # not who it is
    assert (rows[3].status, rows[3].warning) == ("duplicate", "Probably the same person as row 2 Amina Banda, "
                                                              "born 1990-05-17.")
    services.confirm_row(db_session, upload, rows[3], scope=EVERYTHING)
    assert rows[3].status == "valid"


def test_two_look_alike_rows_of_a_file_with_different_national_ids_are_two_people(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1990-05-17,A1,NV1,,,\n"
                        + "Aminah,Banda,F,1990-05-17,A2,NV1,,,\n" + "Amina,Banda,F,1990-05-17,,NV2,,,\n")
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[3].status, rows[4].status) == ("valid", "valid", "duplicate")
    assert rows[4].warning == "Probably the same person as row 2 Amina Banda, born 1990-05-17."


def test_a_row_without_a_national_id_is_compared_with_identified_rows_of_earlier_batches(db_session, tmp_path, country):
    others = "".join(f"Person{i},Family{i},M,19{10 + i % 80}-02-0{1 + i % 9},N{i},NV1,,,\n" for i in range(services.BATCH))
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1990-05-17,A1,NV1,,,\n" + others
                        + "Amina,Banda,F,1990-05-17,,NV1,,,\n", scope=EVERYTHING)
    last = services.BATCH + 3
    row = db_session.scalar(select(UploadRow).where(UploadRow.upload_id == upload.id, UploadRow.row_number == last))
    assert (row.status, row.warning) == ("duplicate", "Probably the same person as row 2 Amina Banda, born 1990-05-17.")


TWINS = HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n" + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
ROW_2_LOOK_ALIKE = "Probably the same person as row 2 Amina Banda, born 1990-05-17."


def test_a_row_fixed_to_look_like_another_row_of_the_file_is_flagged_as_that_person(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
                        + "Juma,Phiri,M,1990-05-17,,NV2,,,\n")
    rows = _rows(db_session, upload)
    assert rows[3].status == "valid"
    services.edit_row(db_session, upload, rows[3], {"first_name": "Amina", "last_name": "Banda"}, scope=EVERYTHING)
    assert (rows[3].status, rows[3].warning) == ("duplicate", ROW_2_LOOK_ALIKE)
    assert (rows[2].status, rows[2].warning) == ("valid", None)


def test_a_row_fixed_to_look_like_a_row_with_another_national_id_is_not_flagged(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1990-05-17,A1,NV1,,,\n"
                        + "Juma,Phiri,M,1990-05-17,A2,NV1,,,\n")
    row = _rows(db_session, upload)[3]
    services.edit_row(db_session, upload, row, {"first_name": "Amina", "last_name": "Banda"}, scope=EVERYTHING)
    assert (row.status, row.warning) == ("valid", None)


def test_dropping_the_row_another_row_was_flagged_as_looking_like_clears_that_warning(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, TWINS)
    rows = _rows(db_session, upload)
    assert (rows[3].status, rows[3].warning) == ("duplicate", ROW_2_LOOK_ALIKE)
    services.drop_row(db_session, upload, rows[2], scope=EVERYTHING)
    rows = _rows(db_session, upload)
    assert (rows[3].status, rows[3].warning) == ("valid", None)
    assert upload.counts["duplicates"] == 0


def test_renaming_the_row_another_row_was_flagged_as_looking_like_clears_that_warning(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, TWINS)
    rows = _rows(db_session, upload)
    services.edit_row(db_session, upload, rows[2], {"first_name": "Zawadi"}, scope=EVERYTHING)
    rows = _rows(db_session, upload)
    assert [(rows[n].status, rows[n].warning) for n in (2, 3)] == [("valid", None), ("valid", None)]


def test_renaming_the_first_of_two_look_alikes_to_a_similar_name_flags_the_pair_once_with_the_new_name(
        db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, TWINS)
    rows = _rows(db_session, upload)
    services.edit_row(db_session, upload, rows[2], {"first_name": "Aminah"}, scope=EVERYTHING)
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[2].warning) == ("valid", None)
    assert (rows[3].status, rows[3].warning) == (
        "duplicate", "Probably the same person as row 2 Aminah Banda, born 1990-05-17.")


def test_a_look_alike_warning_held_by_a_row_waiting_for_its_head_goes_with_the_row_it_named(
        db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1990-05-17,,NV1,,,\n"
                        + "Mercy,Banda,Q,1980-03-04,,NV1,H1,head,yes\n" + "Amina,Banda,F,1990-05-17,,NV1,H1,child,no\n")
    rows = _rows(db_session, upload)
    assert (rows[4].status, rows[4].warning) == ("error", ROW_2_LOOK_ALIKE)  # and waits for its head
    services.drop_row(db_session, upload, rows[2], scope=EVERYTHING)
    services.edit_row(db_session, upload, _rows(db_session, upload)[3], {"sex": "F"}, scope=EVERYTHING)
    rows = _rows(db_session, upload)
    assert (rows[4].status, rows[4].warning) == ("valid", None)


def test_a_row_fixed_to_look_like_a_row_waiting_for_its_head_is_flagged(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER + "Mercy,Banda,Q,1980-03-04,,NV1,H1,head,yes\n"
                        + "Amina,Banda,F,1990-05-17,,NV1,H1,child,no\n" + "Juma,Phiri,M,1990-05-17,,NV1,,,\n")
    rows = _rows(db_session, upload)
    assert rows[3].status == "error" and set(rows[3].errors) == {"household"}
    services.edit_row(db_session, upload, rows[4], {"first_name": "Amina", "last_name": "Banda", "sex": "F"},
                      scope=EVERYTHING)
    assert (rows[4].status, rows[4].warning) == (
        "duplicate", "Probably the same person as row 3 Amina Banda, born 1990-05-17.")


def test_fixing_a_row_that_looks_like_a_later_row_flags_the_fixed_row(db_session, tmp_path, country):
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,Q,1990-05-17,,NV1,,,\n"
                        + "Amina,Banda,F,1990-05-17,,NV1,,,\n")
    rows = _rows(db_session, upload)
    services.edit_row(db_session, upload, rows[2], {"sex": "F"}, scope=EVERYTHING)
    rows = _rows(db_session, upload)
    assert (rows[2].status, rows[2].warning) == (
        "duplicate", "Probably the same person as row 3 Amina Banda, born 1990-05-17.")
    assert (rows[3].status, rows[3].warning) == ("valid", None)


def test_a_household_waits_when_its_heads_row_breaks_a_household_rule(
        db_session, tmp_path, country, make_individual, make_household):
    from portal.registry.models import Group

    head = make_individual("Amina", "Banda", national_id="A100", location=country["NV1"])
    make_household(head=head, members=[], code="H9", location=country["NV1"])
    db_session.commit()
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1980-05-17,A100,NV1,H1,head,yes\n"
                        + "Juma,Banda,M,2015-01-02,,NV1,H1,child,no\n"
                        + "Chisomo,Phiri,F,1990-05-17,,NV1,H2,head,yes\n", policy="update")
    rows = _rows(db_session, upload)
    assert "already in household H9" in rows[2].errors["household"]
    assert "row 2 is not ready to import" in rows[3].errors["household"]
    services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)
    services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None, progress=lambda *a, **k: None)
    assert db_session.scalars(select(Group.code).order_by(Group.code)).all() == ["H2", "H9"]


def test_a_fix_leaves_the_error_of_a_row_linked_to_it_through_another_rows_other_value(
        db_session, tmp_path, country):
    from portal.registry.models import CustomField

    db_session.add(CustomField(name="voter", label="Voter card", type="text", unique=True,
                               active=True, required=False, position=0))
    db_session.commit()
    header = "First name,Last name,Sex,Birth date,National ID,Village code,Voter card\n"
    upload = _validated(db_session, tmp_path, None, header + "Amina,Banda,F,1990-05-17,A1,NV1,V1\n"
                        + "Juma,Phiri,M,1991-05-17,A2,NV1,V1\n" + "Zawadi,Mwale,Q,1992-05-17,A2,NV1,V3\n")
    services.edit_row(db_session, upload, _rows(db_session, upload)[4], {"sex": "F"}, scope=EVERYTHING)
    rows = _rows(db_session, upload)
    assert rows[3].errors == {"voter": "Voter card V1 is also on row 2."}
    assert rows[4].errors == {"national_id": "This national ID is also on row 3."}


def test_a_stale_save_by_someone_who_sees_ids_masked_does_not_put_dots_in_place_of_the_id(
        client, login, db_session, tmp_path, country):
    upload, url = _officers_row(client, login, db_session, tmp_path, country,
                                "Juma,Banda,Q,1990-05-17,AB123456,NV1,,,\n")
    seen = _seen(client.htmx("get", url).get_data(as_text=True))
    services.edit_row(db_session, upload, _rows(db_session, upload)[2], {"national_id": "CD654321"},
                      scope=EVERYTHING)  # someone else, meanwhile
    db_session.commit()
    page = client.htmx("post", url, data={"sex": "M", "national_id": "••••3456", "seen": seen}).get_data(as_text=True)
    assert 'value="••••4321"' in page and 'value="M"' in page
    client.htmx("post", url, data={"sex": "M", "national_id": "••••4321", "seen": _seen(page)})
    assert _rows(db_session, upload)[2].raw["national_id"] == "CD654321"



def test_in_a_crowd_born_the_same_day_a_row_is_still_matched_with_its_twin(db_session, tmp_path, country):
    crowd = "".join(f"P{i}x{'abcdefghij'[i % 10]}{i},Family{i},M,1980-01-01,,NV1,,,\n" for i in range(80))
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1980-01-01,,NV1,,,\n" + crowd
                        + "Aminata,Banda,F,1980-01-01,,NV1,,,\n")
    twin = _rows(db_session, upload)[83]
    assert twin.warning == "Probably the same person as row 2 Amina Banda, born 1980-01-01."


def test_in_a_crowd_born_the_same_day_a_row_fixed_to_look_like_another_is_flagged(db_session, tmp_path, country):
    crowd = "".join(f"P{i}x{'abcdefghij'[i % 10]}{i},Family{i},M,1980-01-01,,NV1,,,\n" for i in range(80))
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1980-01-01,,NV1,,,\n" + crowd
                        + "Juma,Phiri,M,1980-01-01,,NV1,,,\n")
    row = _rows(db_session, upload)[83]
    assert (row.status, row.warning) == ("valid", None)
    services.edit_row(db_session, upload, row, {"first_name": "Aminata", "last_name": "Banda"}, scope=EVERYTHING)
    assert (row.status, row.warning) == ("duplicate", "Probably the same person as row 2 Amina Banda, born 1980-01-01.")


@pytest.mark.parametrize("others", ["with errors of their own", "in another district"])
def test_a_row_fixed_on_a_day_busy_only_with_rows_validation_never_compares_is_compared_with_every_row(
        db_session, tmp_path, country, others):
    sex, village = ("Q", "NV1") if others == "with errors of their own" else ("M", "SV1")
    busy = "".join(f"P{i}x{'abcdefghij'[i % 10]}{i},Family{i},{sex},1990-05-17,,{village},,,\n" for i in range(60))
    upload = _validated(db_session, tmp_path, None, HEADER + "John,Banda,M,1990-05-17,,NV1,,,\n"
                        + "Jon,Banda,Q,1990-05-17,,NV1,,,\n" + busy)
    row = _rows(db_session, upload)[3]
    services.edit_row(db_session, upload, row, {"sex": "M"}, scope=EVERYTHING)
    assert (row.status, row.warning) == ("duplicate", "Probably the same person as row 2 John Banda, born 1990-05-17.")


def test_an_early_row_fixed_in_a_crowd_born_the_same_day_is_compared_with_every_earlier_row(
        db_session, tmp_path, country):
    crowd = "".join(f"P{i}x{'abcdefghij'[i % 10]}{i},Family{i},M,1990-05-17,,NV1,,,\n" for i in range(80))
    upload = _validated(db_session, tmp_path, None, HEADER + "John,Banda,M,1990-05-17,,NV1,,,\n"
                        + "Jon,Banda,Q,1990-05-17,,NV1,,,\n" + crowd)
    row = _rows(db_session, upload)[3]
    services.edit_row(db_session, upload, row, {"sex": "M"}, scope=EVERYTHING)  # "Jon" is not "Joh..."
    assert (row.status, row.warning) == ("duplicate", "Probably the same person as row 2 John Banda, born 1990-05-17.")


def test_a_household_whose_head_is_skipped_as_registered_says_so(db_session, tmp_path, country, make_individual):
    make_individual("Amina", "Banda", national_id="A100", location=country["NV1"])
    db_session.commit()
    upload = _validated(db_session, tmp_path, None, HEADER + "Amina,Banda,F,1980-05-17,A100,NV1,H1,head,yes\n"
                        + "Juma,Banda,M,2015-01-02,,NV1,H1,child,no\n", policy="skip")
    rows = _rows(db_session, upload)
    assert rows[2].status == "skipped"
    assert rows[3].errors["household"] == (
        "Household H1 is imported with its head and primary recipient: row 2 is someone already "
        "registered, whom this upload skips (upload these rows with 'update' to add them).")


def test_a_grid_edit_or_replacement_with_a_control_character_is_refused_and_the_rows_still_download(
        client, login, db_session, tmp_path, country):
    # A file with a control character is refused when read; typed in the grid it would be
    # kept, and the XLSX of the rows to fix (openpyxl refuses such a cell) would fail.
    user = login("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, user, HEADER + "Juma,Banda,Q,1990-05-17,,NV1,,,\n")
    page = client.htmx("post", f"/imports/{upload.id}/rows/2/edit",
                       data={"first_name": "Ju\x0bma", "sex": "M"}).get_data(as_text=True)
    assert "Row 2, column First name contains an invisible control character (U+000B)" in page
    assert 'value="M"' in page  # what was typed is still in the form
    client.post(f"/imports/{upload.id}/replace", data={"field": "first_name", "match": "part",
                                                       "find": "u", "replace": "\x07"})
    assert client.get(f"/imports/{upload.id}/rows").status_code == 200
    assert _rows(db_session, upload)[2].raw["first_name"] == "Juma"
    assert _rows(db_session, upload)[2].raw["sex"] == "Q"
    assert client.get(f"/imports/{upload.id}/problems.xlsx").status_code == 200


def _hash_anyone_can_make(value) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def test_the_row_versions_do_not_give_away_a_national_id_shown_masked(
        client, login, db_session, tmp_path, country, make_user):
    # A colleague of the same area without individual.view_pii sees ••••7733 beside the
    # row's versions; were those a plain hash of the cells, trying the 10,000 possible
    # hidden digits would find the ID.
    uploader = make_user("field_officer", [country["N"]])
    upload = _validated(db_session, tmp_path, uploader, HEADER + "Juma,Banda,Q,1990-05-17,90417733,NV1,,,\n",
                        area=country["N"].id)
    login("field_officer", [country["N"]])
    downloaded = client.get(f"/imports/{upload.id}/problems.csv").get_data().decode("utf-8-sig")
    header, row = list(csv.reader(io.StringIO(downloaded)))
    shown = dict(zip(header, row))
    assert shown["National ID"] == "••••7733"
    seen = set(re.findall(r'"seen": "(\w+)"', client.get(f"/imports/{upload.id}/rows").get_data(as_text=True)))
    assert seen and shown["Row version"]
    cells = {field: shown[label] for label, field in upload.mapping.items()}
    staged = _rows(db_session, upload)[2]
    for guess in (f"{n:04d}7733" for n in range(10_000)):
        guessed = {**cells, "national_id": guess}
        assert "v" + _hash_anyone_can_make(guessed) != shown["Row version"], guess
        assert _hash_anyone_can_make([guessed, staged.warning]) not in seen, guess
