"""A large import's new people created in shares on connections of their own (PostgreSQL),
each share committed with its audit entry; the same upload imported in one transaction
elsewhere. Live: the shares commit for real, so they see the rows the test committed."""
import itertools
import os
import threading

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from jobs import imports as import_jobs, runtime
from portal.audit.models import AuditEntry
from portal.background.models import JobRun
from portal.extensions import db
from portal.imports import services
from portal.imports.models import Upload, UploadRow
from portal.locations.services import Scope
from portal.registry.models import Group, GroupMember, Individual

pytestmark = pytest.mark.live

EVERYTHING = Scope(everything=True)
HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"
_files = itertools.count()


@pytest.fixture
def shares(app, monkeypatch):
    """Shares of at least 10 rows, at most two of them; the jobs' runtime in this process."""
    for key, value in {"UPLOAD_IMPORT_CONNECTIONS": 2, "UPLOAD_IMPORT_PART_ROWS": 10}.items():
        monkeypatch.setitem(app.config, key, value)
    monkeypatch.setattr(runtime, "_app", app)
    monkeypatch.setattr(runtime, "_app_pid", os.getpid())


def _validated(db_session, tmp_path, rows: int, *, policy="error"):
    """An upload of ``rows`` people (national IDs SH00000...) validated and ready to import."""
    path = tmp_path / f"people{next(_files)}.csv"
    path.write_text(HEADER + "".join(
        f"Person{i},Family{i // 4},{'F' if i % 2 else 'M'},1980-01-{1 + i % 28:02d},SH{i:05d},NV1,"
        f"SHH{i // 4},{'head' if i % 4 == 0 else 'child'},{'yes' if i % 4 == 0 else 'no'}\n"
        for i in range(rows)), encoding="utf-8")
    upload = services.receive_upload(
        db_session, path=path, file_name="people.csv", duplicate_policy=policy, day_first=None,
        program_id=None, enrol_status=None, area_id=None, actor_id=None, max_rows=1000)
    services.validate_upload(db_session, upload, scope=EVERYTHING, progress=lambda *a, **k: None)
    services.start_import(db_session, upload, only_if_clean=False, scope=EVERYTHING, actor_id=None,
                          may_enrol=True)
    db_session.commit()
    return upload


def _import(db_session, upload):
    counts = services.import_upload(db_session, upload, scope=EVERYTHING, actor_id=None,
                                    progress=lambda *a, **k: db_session.commit(),
                                    commit_part=Session.commit)
    db_session.commit()
    return counts


def _row_audits(db_session, upload) -> list[str]:
    return sorted(db_session.scalars(select(AuditEntry.summary).where(
        AuditEntry.action == "import", AuditEntry.entity_id == str(upload.id),
        AuditEntry.summary.like("Rows %"))))


def test_a_large_import_creates_each_person_once_with_one_audit_entry_per_share(
        db_session, tmp_path, country, shares):
    upload = _validated(db_session, tmp_path, 40)
    counts = _import(db_session, upload)
    assert counts["people_created"] == 40 and counts["imported"] == 40
    assert db_session.scalar(select(func.count(func.distinct(Individual.national_id)))) == 40
    assert db_session.scalar(select(func.count()).select_from(Individual)) == 40
    assert db_session.scalar(select(func.count()).select_from(Group)) == 10
    assert db_session.scalar(select(func.count()).select_from(GroupMember)) == 40
    linked = db_session.execute(select(UploadRow.national_id, Individual.national_id).join(
        Individual, Individual.id == UploadRow.individual_id).where(UploadRow.upload_id == upload.id)).all()
    assert len(linked) == 40 and all(row == person for row, person in linked)
    if db_session.get_bind().dialect.name == "postgresql":
        assert _row_audits(db_session, upload) == ["Rows 2-21: 20 people imported",
                                                   "Rows 22-41: 20 people imported"]
    else:  # one writer at a time: one transaction
        assert _row_audits(db_session, upload) == ["Rows 2-41: 40 people imported"]


def test_a_national_id_registered_meanwhile_fails_only_its_row_in_its_share(
        db_session, tmp_path, country, shares, make_individual):
    upload = _validated(db_session, tmp_path, 40)
    make_individual("Someone", "Else", national_id="SH00030", location=country["NV2"])
    db_session.commit()
    counts = _import(db_session, upload)
    assert counts["people_created"] == 39 and counts["imported"] == 39
    row = db_session.scalar(select(UploadRow).where(UploadRow.upload_id == upload.id,
                                                    UploadRow.national_id == "SH00030"))
    assert row.status == "error"
    assert row.errors["national_id"] == "This national ID was registered for someone else meanwhile."
    assert db_session.scalar(select(func.count()).select_from(Individual)) == 40  # 39 and Someone
    # A second run finds nothing left to create.
    assert _import(db_session, upload)["people_created"] == 39
    assert db_session.scalar(select(func.count()).select_from(Individual)) == 40


def test_a_batch_of_new_and_registered_people_records_the_shares_and_the_updates_apart(
        db_session, tmp_path, country, shares, make_individual):
    for i in (3, 33):
        make_individual(f"Person{i}", f"Family{i // 4}", national_id=f"SH{i:05d}", location=country["NV1"],
                        phone="+265990000000")
    db_session.commit()
    upload = _validated(db_session, tmp_path, 40, policy="update")
    counts = _import(db_session, upload)
    assert counts["people_created"] == 38 and counts["people_updated"] == 2
    assert db_session.scalar(select(func.count()).select_from(Individual)) == 40
    if db_session.get_bind().dialect.name == "postgresql":
        assert _row_audits(db_session, upload) == ["Rows 2-21: 19 people imported",
                                                   "Rows 22-41: 19 people imported",
                                                   "Rows 5-35: 2 people imported"]
    else:
        assert _row_audits(db_session, upload) == ["Rows 2-41: 40 people imported"]


def _household_audits(db_session, upload) -> list[str]:
    return sorted(db_session.scalars(select(AuditEntry.summary).where(
        AuditEntry.action == "import", AuditEntry.entity_id == str(upload.id),
        AuditEntry.summary.like("% households created, %"))))


def _households(db_session) -> dict[str, list[tuple[str, str]]]:
    """Each household's members (national ID, role), heads first."""
    found: dict[str, list] = {}
    for code, national_id, role in db_session.execute(
            select(Group.code, Individual.national_id, GroupMember.role)
            .join(GroupMember, GroupMember.group_id == Group.id)
            .join(Individual, Individual.id == GroupMember.individual_id)
            .order_by(Group.code, GroupMember.role != "head", Individual.national_id)):
        found.setdefault(code, []).append((national_id, role))
    return found


def _expected_households(rows: int) -> dict[str, list[tuple[str, str]]]:
    return {f"SHH{h}": [(f"SH{i:05d}", "head" if i % 4 == 0 else "child")
                        for i in range(4 * h, min(4 * h + 4, rows))] for h in range((rows + 3) // 4)}


def test_a_large_imports_households_are_created_in_shares_by_code_each_once_with_its_members_and_an_audit_entry_per_share(
        db_session, tmp_path, country, shares):
    upload = _validated(db_session, tmp_path, 40)
    counts = _import(db_session, upload)
    assert counts["members_added"] == 40
    assert _households(db_session) == _expected_households(40)
    payees = dict(db_session.execute(select(Group.code, Individual.national_id).join(
        Individual, Individual.id == Group.primary_recipient_id)).all())
    assert payees == {f"SHH{h}": f"SH{4 * h:05d}" for h in range(10)}
    audits = _household_audits(db_session, upload)
    if db_session.get_bind().dialect.name == "postgresql":
        assert len(audits) == 2  # one a share, which together created all ten and their members
        created = [int(a.split()[0]) for a in audits]
        added = [int(a.split(", ")[1].split()[0]) for a in audits]
        assert sum(created) == 10 and sum(added) == 40 and min(created) > 0
    else:
        assert audits == ["10 households created, 40 members added"]


def test_a_registered_household_joined_from_a_share_audits_each_member_who_joins(
        db_session, tmp_path, country, shares):
    db_session.add(Group(code="SHH2", name="Registered household", kind="household",
                         location_id=country["NV1"].id))
    db_session.commit()
    upload = _validated(db_session, tmp_path, 40)
    _import(db_session, upload)
    assert _households(db_session) == _expected_households(40)
    joined = sorted(db_session.scalars(select(AuditEntry.summary).where(
        AuditEntry.entity_type == "groupmember", AuditEntry.action == "create")))
    assert joined == [f"Joined household SHH2 from upload #{upload.id}"] * 4


def test_a_household_share_that_fails_leaves_its_households_to_the_next_run_which_adds_no_one_twice(
        db_session, tmp_path, country, shares):
    upload = _validated(db_session, tmp_path, 40)

    def failing(conn, cursor, statement, parameters, *args):
        """The second share's members fail once, as a lost connection would."""
        if (statement.startswith("INSERT INTO group_member") and isinstance(parameters, dict)
                and parameters.get("share") == 1 and not failing.done):
            failing.done = True
            raise RuntimeError("connection lost")
    failing.done = False

    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite adds households in the import's one transaction")
    event.listen(db.engine, "before_cursor_execute", failing)
    try:
        with pytest.raises(RuntimeError, match="connection lost"):
            _import(db_session, upload)
    finally:
        event.remove(db.engine, "before_cursor_execute", failing)
    db_session.rollback()
    partly = _households(db_session)
    assert 0 < sum(map(len, partly.values())) < 40  # the first share's households are in
    assert _import(db_session, upload)["members_added"] == 40
    assert _households(db_session) == _expected_households(40)
    assert db_session.scalar(select(func.count()).select_from(Group)) == 10
    # the first share's households, whose payees stayed, were not changed again
    assert set(db_session.scalars(select(Group.version))) == {1}


def test_an_import_taken_over_while_its_shares_work_commits_neither_share_and_the_next_attempt_imports_everyone_once(
        db_session, tmp_path, country, shares):
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite imports in one transaction, which holds the write lock the takeover needs")
    upload = _validated(db_session, tmp_path, 40)
    run_id = upload.job_run_id

    taking_over = threading.Lock()

    def taken_over(conn, cursor, statement, *args):
        """What the sweep and a second worker do, as the first share starts its insert; the
        other share's insert waits for it (else it could commit before the takeover did)."""
        if statement.startswith("WITH batch"):
            with taking_over:
                if not taken_over.done:
                    with db.engine.begin() as other:
                        other.execute(update(JobRun).where(JobRun.id == run_id)
                                      .values(attempts=JobRun.attempts + 1))
                    taken_over.done = True
    taken_over.done = False

    event.listen(db.engine, "before_cursor_execute", taken_over)
    try:
        assert runtime.run(run_id, import_jobs._import) is None
    finally:
        event.remove(db.engine, "before_cursor_execute", taken_over)
    db.session.remove()
    rows = dict(db.session.execute(select(UploadRow.status, func.count()).where(
        UploadRow.upload_id == upload.id).group_by(UploadRow.status)).all())
    assert rows == {"valid": 40}  # neither share kept anything
    assert db.session.scalar(select(func.count()).select_from(Individual)) == 0
    # The sweep's new attempt finishes the import, creating each person once.
    with db.engine.begin() as other:
        other.execute(update(JobRun).where(JobRun.id == run_id).values(status="queued"))
    runtime.run(run_id, import_jobs._import)
    db.session.remove()
    assert db.session.get(JobRun, run_id).status == "succeeded"
    assert db.session.get(Upload, upload.id).counts["people_created"] == 40
    assert db.session.scalar(select(func.count()).select_from(Individual)) == 40
    assert db.session.scalar(select(func.count(func.distinct(Individual.national_id)))) == 40
    assert db.session.scalar(select(func.count()).where(
        UploadRow.upload_id == upload.id, UploadRow.status == "imported")) == 40
