"""A large file is read and checked in a forked process: same rows, same refusals, and a
child that dies or fails is reported, never waited for."""
import os
import signal
import time
from contextlib import closing
from datetime import date

import pytest
from flask import current_app
from sqlalchemy import func, select

from portal.errors import DomainError
from portal.imports import services
from portal.imports.models import UploadRow
from portal.imports.reader_process import ReaderProcess, ReaderStopped
from portal.imports.reading import FileProblem
from tests.imports.test_services import EVERYTHING, HEADER, _receive, _rows

MIXED = (HEADER
         + "Amina,Banda,F,1990-05-17,A100,NV1,H1,head,yes\n"
         + "Juma,Banda,male,2015-01-02,,nv1,H1,child,no\n"  # a village code in small letters
         + "Zoë,Phiri,Q,1980-03-04,A100,NV9,,,\n"  # bad sex, a repeated ID, no such village
         + "Aminah,Banda,F,1990-05-17,,NV2,H2,chief,yes\n"  # a probable duplicate, a bad role
         + "Grace,Mwale,F,31/02/1999,B7,SD,,,\n"  # no such date, a district for a village
         + "Baraka,Otieno,M,1970-07-07,C8,SV1,H1,spouse,no\n")


def _validate(db_session, upload, *, child: bool):
    """Validate with the file read in a child process, or in this one, whatever its size."""
    before = current_app.config["UPLOAD_READER_PROCESS_BYTES"]
    current_app.config["UPLOAD_READER_PROCESS_BYTES"] = 0 if child else 1 << 40
    try:
        services.validate_upload(db_session, upload, scope=EVERYTHING, progress=lambda *a, **k: None)
    finally:
        current_app.config["UPLOAD_READER_PROCESS_BYTES"] = before


def _staged(db_session, upload) -> dict:
    return {n: (r.status, r.raw, r.cleaned, r.errors, r.action, r.warning, r.national_id,
                r.household_code, r.role, r.primary, r.birth_date)
            for n, r in _rows(db_session, upload).items()}


def test_a_file_checked_in_a_child_process_is_staged_exactly_as_in_this_one(
        db_session, tmp_path, country, make_individual):
    make_individual("Amina", "Banda", national_id=None, birth_date=date(1990, 5, 17),
                    location=country["NV2"])
    here = _receive(db_session, tmp_path, MIXED)
    _validate(db_session, here, child=False)
    there = _receive(db_session, tmp_path, MIXED)
    _validate(db_session, there, child=True)
    assert _staged(db_session, there) == _staged(db_session, here)
    assert there.counts == here.counts
    rows = _staged(db_session, there)
    assert rows[2][0] == "duplicate"  # the head: so the household waits for it
    assert rows[3][3].keys() == {"household"} and rows[3][2]["location_id"] == country["NV1"].id
    assert rows[4][3].keys() == {"sex", "national_id", "location"}
    assert rows[5][0] == "error" and "chief" in rows[5][3]["role"]
    assert "district" in rows[6][3]["location"]


def test_a_bad_cell_found_by_the_child_process_fails_validation_and_stages_nothing(
        db_session, tmp_path, country):
    upload = _receive(db_session, tmp_path, HEADER + "Amina,Banda,F,1990-05-17,A1,NV1,,,\n"
                      + "Juma,Ban\x07da,M,1990-05-17,A2,NV1,,,\n")
    with pytest.raises(FileProblem, match=r"Row 3, column Last name contains an invisible control "
                                          r"character \(U\+0007\)"):
        _validate(db_session, upload, child=True)
    db_session.rollback()
    assert db_session.scalar(select(func.count()).select_from(UploadRow)
                             .where(UploadRow.upload_id == upload.id)) == 0


def _killed_after_one():
    yield "first"
    os.kill(os.getpid(), signal.SIGKILL)
    yield "never"


def test_a_reader_process_killed_midway_is_reported_with_its_signal():
    with closing(ReaderProcess(_killed_after_one())) as reader:
        items = iter(reader)
        assert next(items) == "first"
        with pytest.raises(ReaderStopped, match=r"exit code -9"):
            next(items)


def _refusing():
    yield 1
    raise DomainError("The sheet is not a list of people.", field="file")


def test_a_refusal_in_the_reader_process_is_raised_here_with_its_message():
    with closing(ReaderProcess(_refusing())) as reader:
        items = iter(reader)
        assert next(items) == 1
        with pytest.raises(DomainError, match="not a list of people") as refused:
            next(items)
    assert refused.value.message == "The sheet is not a list of people."


def _endless():
    number = 0
    while True:
        number += 1
        yield os.getpid(), number


def test_leaving_the_loop_early_ends_the_reader_process():
    reader = ReaderProcess(_endless())
    child_pid, first = next(iter(reader))
    assert first == 1 and child_pid != os.getpid()
    reader.close()
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)  # reaped: no such process any more


def _opening(marker):
    marker.write_text(str(os.getpid()))
    yield "opened"


def test_the_reader_process_starts_reading_before_anything_is_asked_of_it(tmp_path):
    marker = tmp_path / "opened"
    with closing(ReaderProcess(_opening(marker))) as reader:
        for _ in range(100):  # up to 5 s
            if marker.exists() and marker.read_text():
                break
            time.sleep(0.05)
        assert marker.read_text() not in ("", str(os.getpid()))
        assert list(reader) == ["opened"]
