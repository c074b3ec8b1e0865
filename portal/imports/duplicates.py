"""Probable duplicates of an upload's new people: registered people born the same day in the
same area, with a similar name (the registry's own rule, ``validation.similar_names``).

The database's share runs on a connection and a thread of its own while validation goes on
checking the next batch in Python, so it takes the machine's other core instead of adding its
time. The connection only reads the registry and writes temporary tables of its own, which
are gone with it; SQLite's WAL lets it read beside the job's open write transaction.

How the people born the same day in the same area are found:
- PostgreSQL joins each search's new people (50,000 at a time) to the registry by hashing,
  one pass over the registry a search. (Reading the registry into a temporary table keyed by
  birth date and area, as SQLite does, cost 1-1.5 s more of the server's CPU for 100,000 rows.)
- SQLite, a few rows: each new person's birth date is looked up in the registry's birth-date
  index, which holds every person born that day in the country (about 34 in a million people);
- SQLite, many rows: the registry's (birth date, area, person) are read once into a temporary
  table keyed that way, and each new person is one lookup in it. Past some 40,000 rows,
  walking each row's day costs more than reading the registry (a million people born over
  29,000 days), and the read starts while the file is still being loaded.
"""
from __future__ import annotations

import queue
import re
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing

import orjson
from sqlalchemy.engine import Connection, Engine

from portal.registry.validation import fold, similar_names

IN_FILE_ALL_PAIRS = 50  # rows born the same day in one area compared with each new one, at most
CACHE_KB = 65536  # SQLite's page cache for the search: the birth-date index and more
_CREATE = (
    "CREATE TEMPORARY TABLE temp_village_area (village_id INTEGER PRIMARY KEY, area VARCHAR(120))",
    "CREATE TEMPORARY TABLE temp_new_person (row_number INTEGER, birth_date DATE, "
    "area VARCHAR(120), first_name VARCHAR(80), last_name VARCHAR(80))",
)
# SQLite's rows arrive as one JSON array of arrays: one statement, however many rows.
# (PostgreSQL's come by COPY: the same array took its server five times as long.)
_INSERT_JSON = "INSERT INTO {table} SELECT {columns} FROM json_each(?)"
_JSON_COLUMNS = {
    "temp_village_area": "json_extract(value, '$[0]'), json_extract(value, '$[1]')",
    "temp_new_person": "json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
                       "json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]')",
}
# New people searched together: each search walks the registry's birth-date index (SQLite)
# or scans the registry once (PostgreSQL's hash join, 0.3 s over a million people, whether
# 10,000 or 50,000 people are looked for), so PostgreSQL's searches are fewer and larger: two
# for 100,000 rows, not four, took 0.9 s less of its time. The last one is what validation
# waits for. With the registry read once (SQLite), a search is one lookup a row.
SEARCH_ROWS = {False: 5000, True: 50000}
# From this many rows on, SQLite reads the registry's birth dates and areas once (see above).
READ_REGISTRY_ROWS = 40_000
# The join matches birth date and area together: each village's area comes from the
# temporary table, and the registry's names are read only for the pairs that match. The join
# order is written out (SQLite takes CROSS JOIN as it stands), and so is SQLite's index: the
# (birth date, sex, village, deleted) index gives the village and whether the person lives
# without reading the person; a plan that read every person born that day in the country
# made 3.4 million reads for 100,000 rows (validation waited 3 s, not 1).
_SAME_DAY = (
    "SELECT n.row_number, n.first_name, n.last_name, n.birth_date, i.id, i.first_name, "
    "i.last_name, i.location_id FROM temp_new_person n CROSS JOIN individual i{index} "
    "CROSS JOIN temp_village_area v WHERE i.birth_date = n.birth_date AND i.deleted_at IS NULL "
    "AND v.village_id = i.location_id AND v.area = n.area")
_SAME_DAY_INDEX = {False: " INDEXED BY ix_individual_birth_sex", True: ""}
# SQLite's registry read once, in its key's order (appended to its table, WITHOUT ROWID).
_REGISTRY = (
    "CREATE TEMPORARY TABLE temp_registry_day (birth_date DATE, area VARCHAR(120), "
    "person_id INTEGER, PRIMARY KEY (birth_date, area, person_id)) WITHOUT ROWID",
    "INSERT INTO temp_registry_day SELECT i.birth_date, v.area, i.id FROM individual i "
    "INDEXED BY ix_individual_birth_sex CROSS JOIN temp_village_area v "
    "WHERE i.deleted_at IS NULL AND v.village_id = i.location_id ORDER BY 1, 2, 3",
)
_SAME_DAY_READ = (
    "SELECT n.row_number, n.first_name, n.last_name, n.birth_date, i.id, i.first_name, "
    "i.last_name, i.location_id FROM temp_new_person n CROSS JOIN temp_registry_day r "
    "CROSS JOIN individual i "
    "WHERE r.birth_date = n.birth_date AND r.area = n.area AND i.id = r.person_id")


def duplicate_warning(person_id: int, name: str, born: str, others: int, *,
                      outside: bool = False) -> str:
    """What a row flagged as a probable duplicate says (``others``: further look-alikes). A
    look-alike ``outside`` the uploader's area is not named: the area rule holds for what
    a warning tells too, and an administrator can compare the two by the number."""
    more = f" and {others} more" if others else ""
    if outside:
        return (f"Probably the same person as #{person_id}, who lives outside your area, "
                f"born {born}{more}.")[:500]
    return f"Probably the same person as #{person_id} {name}, born {born}{more}."[:500]


def crowd_keys(first: str | None, last: str | None) -> tuple[tuple[str, str], tuple[str, str]]:
    """Where many people share a birth day and area, a row is compared only with rows filed
    under one of these: (surname, first three letters of the first name), and the two
    swapped, which the name rule always counts as similar. A row is filed under the first."""
    first, last = fold(first or ""), fold(last or "")
    return (last, first[:3]), (first, last[:3])


def twin_warning(row_number: int, name: str, born: str) -> str:
    """What a row that looks like another row of the same file says."""
    return f"Probably the same person as row {row_number} {name}, born {born}."[:500]


_LOOK_ALIKE = re.compile(r"Probably the same person as #(\d+)\b")


def look_alike(warning: str | None) -> int | None:
    """The registered person a ``duplicate_warning`` names first (None for any other)."""
    found = _LOOK_ALIKE.match(warning or "")
    return int(found.group(1)) if found else None


_TWIN_ROW = re.compile(r"Probably the same person as row (\d+) ")


def twin_row(warning: str | None) -> int | None:
    """The row a ``twin_warning`` names, so that the warning can be checked again when that
    row changes or is dropped (None for any other warning)."""
    found = _TWIN_ROW.match(warning or "")
    return int(found.group(1)) if found else None


class ProbableDuplicates:
    """``add`` each batch's new valid rows as they are checked; ``warnings`` waits for the
    search and returns {row number: warning} for the rows that look registered already, or
    that look like an earlier row of the file.
    ``expected_rows`` (about how many rows the file has) chooses how the registry is searched;
    ``visible`` holds the villages the uploader sees (None: all), and a look-alike among
    them is the one a warning names. Use as a context manager, so the thread and its connection end however validation does."""

    def __init__(self, bind: Engine | Connection, areas: dict[int, str], *,
                 expected_rows: int = 0, visible: set[int] | None = None):
        self._visible = visible
        self._postgres = bind.dialect.name == "postgresql"
        self._registry_read = expected_rows >= READ_REGISTRY_ROWS and not self._postgres
        if isinstance(bind, Engine):
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probable-duplicates")
            self._connection, self._own = None, True
        else:  # inside a transaction someone else holds (a test's): on its connection, in line
            self._thread = _InLine()
            self._connection, self._own = bind.connection.driver_connection, False
        self._waiting = 0  # new people stored in temp_new_person, not yet searched for (the thread's)
        # row number -> (first look-alike's id, first name, last name, birth date, how many
        # more, whether the uploader sees them), filled by the thread as each search ends
        self._found: dict[int, tuple] = {}
        self._verdicts: dict[tuple, bool] = {}  # the rule is a pure function of the four names
        self._identified: list[tuple] = []  # the file's rows so far, while all have a national ID
        self._in_file: dict[tuple, list] | None = None  # then: (birth date, area) -> its rows so far
        self._in_file_names: dict[tuple, list] = {}  # ... and by (birth date, area, surname, first 3)
        self._twins: dict[int, tuple] = {}  # row number -> (earlier row, its name, birth date)
        self._pending = [self._thread.submit(self._open, bind, areas)]

    def __enter__(self) -> "ProbableDuplicates":
        return self

    def __exit__(self, failure, *_details) -> None:
        closing = self._thread.submit(self._close)
        self._thread.shutdown()
        if failure is None:  # otherwise the error that ended validation is the one to report
            closing.result()

    def add(self, rows: list[tuple]) -> None:
        """(row number, birth date as ISO text, area, first name, last name, whether it has a
        national ID) of new valid rows."""
        if rows:
            self._pending.append(self._thread.submit(self._collect, rows))

    def warnings(self) -> dict[int, str]:
        self._pending.append(self._thread.submit(self._search))
        for job in self._pending:
            job.result()  # in order; re-raises the thread's error here
        warnings = {number: twin_warning(other, name, born) for number, (other, name, born) in self._twins.items()}
        for number, (pid, p_first, p_last, born, others, seen) in self._found.items():
            warnings[number] = duplicate_warning(pid, f"{p_first} {p_last}", str(born)[:10],
                                                 others, outside=not seen)
        return warnings

    # --- on the thread ------------------------------------------------------------------

    def _open(self, bind, areas: dict[int, str]) -> None:
        if self._own:
            self._connection = bind.raw_connection()
            self._connection.detach()  # closed for real at the end, temporary tables with it
        connection = self._connection
        cursor = connection.cursor()
        if self._own and not self._postgres:
            cursor.execute(f"PRAGMA cache_size=-{CACHE_KB}")
        if self._postgres:
            # The search's cursor planned for all its rows, not the first tenth; its counts
            # from a sample of 3,000 rows, which plan the join as well as 30,000 do, and
            # take 0.01 s instead of 0.07-0.12 s before each search.
            cursor.execute("SET LOCAL cursor_tuple_fraction = 1")
            cursor.execute("SET LOCAL default_statistics_target = 10")
        for statement in _CREATE:
            cursor.execute(statement)
        self._insert("temp_village_area", list(areas.items()))
        if self._postgres:
            cursor.execute("ANALYZE temp_village_area")
        if self._registry_read:
            for statement in _REGISTRY:
                cursor.execute(statement)

    def _collect(self, rows: list[tuple]) -> None:
        self._compare_in_file(rows)
        # Stored as they come, so that the last search, which validation waits for, is only
        # its join (storing 50,000 rows took PostgreSQL 0.3 s). In birth-date order, the
        # join walks the registry's birth-date index forwards.
        self._insert("temp_new_person", sorted((row[:5] for row in rows), key=lambda row: row[1]))
        self._waiting += len(rows)
        if self._waiting >= SEARCH_ROWS[self._postgres]:
            self._search()

    def _search(self) -> None:
        if not self._waiting:
            return
        cursor = self._connection.cursor()
        # Counted: SQLite would otherwise take the batch for a large table and build a Bloom
        # filter over the whole birth-date index each time; PostgreSQL plans its join by it.
        cursor.execute("ANALYZE temp_new_person")
        query = _SAME_DAY_READ if self._registry_read else _SAME_DAY.format(index=_SAME_DAY_INDEX[self._postgres])
        # The pairs are judged as the join finds them, in no order: the last search's names
        # are compared while PostgreSQL still scans the registry (0.15 s for 50,000 rows),
        # instead of after it has sorted them all. PostgreSQL's come through a server-side
        # cursor, 2,000 at a time, each fetch a whole command (a failure while judging leaves
        # the connection free to roll back), the next one asked for while these are judged;
        # SQLite's cursor is read as it steps. Either is closed however judging ends, or
        # SQLite could not drop its tables after a failure.
        pairs = self._connection.cursor(name="look_alikes") if self._postgres else self._connection.cursor()
        with closing(pairs):
            pairs.execute(query)
            with closing(_fetched_ahead(pairs, 2000) if self._postgres else pairs) as found:
                self._judge(found)
        cursor.execute("DELETE FROM temp_new_person")
        self._waiting = 0

    def _compare_in_file(self, rows: list[tuple]) -> None:
        """The same person twice in the file: a row with the birth date, area and a similar
        name of an earlier row of the file looks like that row, unless a national ID on each
        tells them apart. Until a row without a national ID comes there is nothing to
        compare, and the rows are only kept (a file of 100,000 identified rows would cost 0.3 s
        of this thread's time indexed as they come)."""
        if self._in_file is None:
            if all(row[5] for row in rows):
                self._identified += rows
                return
            self._in_file = {}
            self._index_in_file(self._identified)
            self._identified = []
        self._index_in_file(rows)

    def _index_in_file(self, rows: list[tuple]) -> None:
        """Each row against the earlier rows born the same day in its area: all of them while
        they are few, else (a file that gives everyone 1 January, say) only those with the
        same surname and first three letters of the first name, or the two swapped, which the
        name rule always counts as similar; comparing every pair there would take minutes."""
        earlier, named, twins = self._in_file, self._in_file_names, self._twins
        for row in rows:
            number, born, area, first, last, identified = row
            own, swapped = crowd_keys(first, last)
            same_day = earlier.setdefault((born, area), [])
            if len(same_day) < IN_FILE_ALL_PAIRS:
                others = same_day
            else:
                others = named.get((born, area, *own), []) + named.get((born, area, *swapped), [])
            for other in others:
                if identified and other[5]:
                    continue
                if similar_names(first or "", last or "", other[3] or "", other[4] or ""):
                    twins[number] = (other[0], f"{other[3]} {other[4]}", born)
                    break
            same_day.append(row)
            named.setdefault((born, area, *own), []).append(row)

    def _judge(self, pairs: Iterable[tuple]) -> None:
        """Compare the names of a search's pairs (in any order) here on the thread, while
        validation goes on, not all of them at the end. The look-alike the uploader sees
        with the lowest id is the one named, else the lowest id."""
        verdicts, found, visible = self._verdicts, self._found, self._visible
        for number, first, last, born, pid, p_first, p_last, village in pairs:
            names = (first or "", last or "", p_first, p_last)
            verdict = verdicts.get(names)
            if verdict is None:
                verdict = verdicts[names] = similar_names(*names)
            if verdict:
                seen = visible is None or village in visible
                match = found.get(number)
                if match is None:
                    found[number] = (pid, p_first, p_last, born, 0, seen)
                elif (not seen, pid) < (not match[5], match[0]):
                    found[number] = (pid, p_first, p_last, born, match[4] + 1, seen)
                else:
                    found[number] = (*match[:4], match[4] + 1, match[5])

    def _insert(self, table: str, rows: list) -> None:
        """One statement (or one COPY), not one a row: while the database works this thread
        lets go of Python's lock, and taking it back row by row would wait on validation
        every time."""
        cursor = self._connection.cursor()
        if self._postgres:
            with cursor.copy(f"COPY {table} FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        cursor.execute(_INSERT_JSON.format(table=table, columns=_JSON_COLUMNS[table]),
                       (orjson.dumps(rows).decode(),))

    def _close(self) -> None:
        if self._connection is None:
            return
        if not self._own:
            cursor = self._connection.cursor()
            for name in ("temp_village_area", "temp_new_person", "temp_registry_day"):
                cursor.execute(f"DROP TABLE IF EXISTS {name}")
            return
        try:
            self._connection.rollback()
        finally:
            self._connection.close()
            self._connection = None


def _fetched_ahead(cursor, size: int) -> Iterator[tuple]:
    """The rows of ``cursor`` (a server-side one), fetched ``size`` at a time on a thread of
    their own while the caller works through the ones before: the server goes on with the
    join instead of waiting for each batch's names to be compared (the last search of
    50,000 rows took 0.47 s instead of 0.59-0.66 s). Close it (``closing``) however the
    caller stops: the fetching has ended when that returns, so the cursor may be closed; an
    error while fetching is raised here."""
    fetched: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def fetch() -> None:
        try:
            while not stop.is_set():
                rows = cursor.fetchmany(size)
                fetched.put(rows)
                if not rows:
                    return
        except Exception as exc:  # noqa: BLE001 - raised in the caller's thread
            fetched.put(exc)

    fetcher = threading.Thread(target=fetch, name="look-alike-fetch", daemon=True)
    fetcher.start()
    try:
        while True:
            rows = fetched.get()
            if isinstance(rows, Exception):
                raise rows
            if not rows:
                return
            yield from rows
    finally:
        stop.set()
        while fetcher.is_alive():  # (a fetch waiting for room in the queue gets it)
            try:
                fetched.get(timeout=0.05)
            except queue.Empty:
                pass
        fetcher.join()


class _InLine:
    """An executor that runs each call at once, where no second connection may be opened."""

    def submit(self, call, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(call(*args))
        except Exception as exc:  # handed on to whoever waits for the result, as a thread's is
            future.set_exception(exc)
        return future

    def shutdown(self) -> None:
        pass
