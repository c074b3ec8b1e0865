"""The probable-duplicate search: every new row searched once, whatever the search size; the
look-alike named whatever order the join gives its pairs in; a failure while judging fails
validation instead of hanging it or leaving the connection unusable."""
import os
import random
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import pytest

from portal.imports import duplicates
from portal.imports.duplicates import ProbableDuplicates

ROOT = Path(__file__).resolve().parents[2]


def _judge_of(pairs, visible):
    judge = object.__new__(ProbableDuplicates)
    judge._verdicts, judge._found, judge._visible = {}, {}, visible
    judge._judge(pairs)
    return judge._found


def test_the_look_alike_named_is_the_lowest_id_the_uploader_sees_whatever_order_the_pairs_come_in():
    rng = random.Random(7)
    for _ in range(300):
        pairs = [(n, "Amina", "Banda", "1990-05-17", rng.randrange(1, 50), "Amina", "Banda",
                  rng.choice([1, 2, 3])) for n in range(2, 6) for _k in range(rng.randrange(1, 6))]
        pairs = list({(p[0], p[4]): p for p in pairs}.values())  # a person once per row, as the join gives
        visible = rng.choice([None, {1}, {2, 3}, set()])
        sorted_pairs = sorted(pairs, key=lambda p: (p[0], p[4]))
        expected = {}
        for number in {p[0] for p in pairs}:
            mine = [p for p in sorted_pairs if p[0] == number]
            seen = [p for p in mine if visible is None or p[7] in visible]
            first = (seen or mine)[0]
            expected[number] = (first[4], len(mine) - 1, visible is None or first[7] in visible)
        shuffled = pairs[:]
        rng.shuffle(shuffled)
        found = _judge_of(iter(shuffled), visible)
        assert {n: (f[0], f[4], f[5]) for n, f in found.items()} == expected


@pytest.fixture
def look_alikes(db_session, country, make_individual):
    """Three Amina Bandas born the same day per birth day in NV1 and NV2 (area 'N')."""
    people = {}
    for day in range(1, 8):
        born = date(1990, 5, day)
        people[day] = [make_individual("Amina", "Banda", national_id=None, birth_date=born,
                                       location=country[v]).id for v in ("NV2", "NV1", "NV2")]
    db_session.flush()
    return people


@pytest.mark.parametrize("read_registry", [False, True])
@pytest.mark.parametrize("search_rows", [1, 2, 3, 7, 100])
def test_every_new_row_is_searched_once_whatever_the_search_size(db_session, country, look_alikes,
                                                          monkeypatch, read_registry, search_rows):
    monkeypatch.setitem(duplicates.SEARCH_ROWS, db_session.get_bind().dialect.name == "postgresql", search_rows)
    if read_registry:
        monkeypatch.setattr(duplicates, "READ_REGISTRY_ROWS", 0)
    judged = []
    real = ProbableDuplicates._judge

    def spy(self, pairs):
        pairs = list(pairs)
        judged.append(sorted({p[0] for p in pairs}))
        real(self, pairs)

    monkeypatch.setattr(ProbableDuplicates, "_judge", spy)
    areas = {country["NV1"].id: "N", country["NV2"].id: "N"}
    rows = [(day + 1, f"1990-05-0{day}", "N", "Aminah", "Banda", True) for day in range(1, 8)]
    with ProbableDuplicates(db_session.connection(), areas, visible={country["NV1"].id}) as search:
        for start in range(0, 7, 2):  # batches of 2, 2, 2, 1
            search.add(rows[start:start + 2])
        warnings = search.warnings()
    searched = [n for part in judged for n in part]
    assert sorted(searched) == [r[0] for r in rows]  # each row in exactly one search
    assert all(part for part in judged)  # no empty search was run
    for day in range(1, 8):
        assert warnings[day + 1].startswith(f"Probably the same person as #{look_alikes[day][1]} ")
        assert warnings[day + 1].endswith(" and 2 more.")


SCRIPT = textwrap.dedent("""
    import sys
    import threading
    sys.path.insert(0, {root!r})
    from sqlalchemy import create_engine
    from portal.imports import duplicates
    engine = create_engine(sys.argv[1])
    # Every new person 'matches' 20,000 registered people: no registry needed.
    duplicates._SAME_DAY = ("SELECT n.row_number, n.first_name, n.last_name, n.birth_date, g, "
                            "'Amina' || g, 'Banda', 1 FROM temp_new_person n "
                            "CROSS JOIN generate_series(1, 20000) g{{index}}")
    if sys.argv[2] == "fail_fetch":  # the server fails partway through the pairs
        duplicates._SAME_DAY = duplicates._SAME_DAY.replace(", g, ", ", 1 / (15000 - g), ")
    if sys.argv[2] == "raise":
        calls = [0]
        def similar_names(*names):
            calls[0] += 1
            if calls[0] > 100:
                raise RuntimeError("judging failed")
            return True
        duplicates.similar_names = similar_names
    try:
        with duplicates.ProbableDuplicates(engine, {{1: "N"}}) as search:
            search.add([(2, "1990-05-17", "N", "Amina", "Banda", False)])
            print(list(search.warnings().values()))
    except Exception as exc:
        print("failed cleanly:", exc)
    print("threads left:", sorted(t.name for t in threading.enumerate() if t is not threading.main_thread()))
    print("done")
""")


def _run(mode, env=None, timeout=60):
    url = os.environ.get("TEST_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: set TEST_DATABASE_URL")
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT)), url, mode],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_a_search_through_the_server_side_cursor_names_the_lowest_id_and_counts_the_others():
    done = _run("plain")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "#1 Amina1 Banda" in done.stdout and "19999 more" in done.stdout


def test_an_error_while_judging_pairs_fails_the_search_instead_of_hanging_it():
    """(A result streamed by psycopg's ``Cursor.stream`` kept the connection's lock while the
    error's traceback lived, and the rollback after it waited for ever.)"""
    try:
        done = _run("raise", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("ProbableDuplicates hung for 30 s after an error while judging the pairs")
    assert "failed cleanly: judging failed" in done.stdout and "done" in done.stdout, done.stderr[-2000:]
    assert "threads left: []" in done.stdout  # the thread fetching the next pairs ended with it


def test_a_database_error_while_fetching_the_pairs_fails_the_search_and_leaves_no_thread_behind():
    try:
        done = _run("fail_fetch", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("ProbableDuplicates hung for 30 s after the database failed partway through the pairs")
    assert "failed cleanly: division by zero" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "threads left: []" in done.stdout and "done" in done.stdout


def test_a_search_on_a_callers_connection_that_failed_while_judging_leaves_it_usable(
        db_session, country, look_alikes, monkeypatch):
    """The in-line path (a Connection, as in tests): after an error while reading the pairs,
    the temporary tables are still dropped, so the next search can make them again."""
    areas = {country["NV1"].id: "N", country["NV2"].id: "N"}
    rows = [(2, "1990-05-01", "N", "Aminah", "Banda", True)]

    def boom(*names):
        raise RuntimeError("judging failed")

    monkeypatch.setattr(duplicates, "similar_names", boom)
    with pytest.raises(RuntimeError):
        with ProbableDuplicates(db_session.connection(), areas) as search:
            search.add(rows)
            search.warnings()
    monkeypatch.undo()
    with ProbableDuplicates(db_session.connection(), areas) as search:
        search.add(rows)
        assert 2 in search.warnings()
