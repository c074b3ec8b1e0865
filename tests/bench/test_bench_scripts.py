"""The bench scripts still run: each is started as ``make bench`` starts it, at a tiny size on a
database of its own, so a change to a service they call breaks here and not on the day
someone measures."""
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[2]


def _bench(module: str, tmp_path, *args: str) -> str:
    database = f"sqlite:///{tmp_path / 'bench.db'}"
    done = subprocess.run([sys.executable, "-m", module, "--database-url", database, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_the_upload_bench_uploads_validates_and_imports_a_small_file(tmp_path):
    out = _bench("bench.upload", tmp_path, "--rows", "500", "--people", "5000")
    assert "people created 500" in out and "households new 100" in out
    assert "CPU time (" in out and "validation this process" in out
    assert "measured on SQLite 3." in out and "load average" in out


def test_an_upload_bench_run_first_removes_what_a_run_stopped_before_its_cleanup_left(tmp_path):
    kept = _bench("bench.upload", tmp_path, "--rows", "500", "--people", "5000", "--keep")
    assert "people created 500" in kept and "removed the bench's people" not in kept
    again = _bench("bench.upload", tmp_path, "--rows", "500", "--people", "5000")
    assert "removed 1 upload(s) a stopped run left" in again
    assert "registry before: 5,000 people" in again and "people created 500" in again


@pytest.mark.parametrize("module,args,expected", [
    ("bench.registry_search", ("--people", "3000", "--queries", "5"), "registry search p95"),
    ("bench.upload_fixes", ("--people", "3000", "--rows", "600"), "find-and-replace of 600 cells"),
], ids=["registry search", "large fix"])
def test_the_other_bench_scripts_run_to_their_figures(tmp_path, module, args, expected):
    assert expected in _bench(module, tmp_path, *args)


def test_a_bench_figure_names_the_database_settings_it_was_measured_with(db_session):
    from bench import measured_on

    line = measured_on(db_session.connection())
    if db_session.get_bind().dialect.name == "postgresql":
        server = db_session.execute(text("SHOW shared_buffers")).scalar()
        assert line.startswith("measured on PostgreSQL ") and f"shared_buffers {server}" in line
        assert "max_wal_size " in line and "work_mem " in line
    else:
        assert line.startswith("measured on SQLite 3.")
