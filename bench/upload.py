"""Upload bench: a 100,000-row XLSX (11 columns, 20,000 households) into a registry that
already holds 1,000,000 people; parse+validate and import timed separately, and the peak
memory of the process doing the work (as the worker would).

    python -m bench.upload [--database-url URL] [--rows 100000] [--people 1000000]

Default database: ``instance/bench/upload.db`` (SQLite). For PostgreSQL create a database of
its own first (the run adds and then removes its 100,000 people):
    createdb -h 127.0.0.1 -p 54330 -U postgres portal_bench_upload
    python -m bench.upload --database-url postgresql://postgres@127.0.0.1:54330/portal_bench_upload
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

os.environ.setdefault("PORTAL_ENV", "development")

from bench import BENCH_DIR, default_database_url, measured_on, received_upload  # noqa: E402

DEFAULT_URL = default_database_url("upload")
COLUMNS = ["First name", "Middle name", "Last name", "Sex", "Birth date", "National ID", "Phone",
           "Village code", "Household code", "Role", "Primary recipient"]
FIRST = ["Chikondi", "Mphatso", "Thandiwe", "Kondwani", "Chisomo", "Blessings", "Mercy", "Tiyamike",
         "Grace", "Limbani", "Amina", "Juma", "Zawadi", "Baraka", "Neema", "Imani", "Faraji", "Asha"]
LAST = ["Banda", "Phiri", "Mwale", "Tembo", "Chirwa", "Nyirenda", "Zulu", "Mbewe", "Mwangi",
        "Otieno", "Kamau", "Njoroge", "Wanjiru", "Achieng", "Mutua", "Kiplagat"]


def _rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def _cpu_seconds(database_url: str) -> tuple[float, float, float | None]:
    """CPU seconds so far of this process (its threads included), of its ended children (the
    process that read the file) and, for a PostgreSQL server on this machine, of the
    server's processes (None otherwise). N cores give at most N times the wall time: what
    the work costs, however busy the machine's hour is."""
    mine, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    server = None
    if "@127.0.0.1" in database_url or "@localhost" in database_url:
        server, tick = 0.0, os.sysconf("SC_CLK_TCK")
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    name, fields = stat.read().split(" (", 1)[1].rsplit(")", 1)
                if name.startswith("postgres"):  # utime, stime, and those of reaped children
                    server += sum(map(int, fields.split()[11:15])) / tick
            except (OSError, ValueError, IndexError):
                continue  # a backend that ended meanwhile
    return (mine.ru_utime + mine.ru_stime, children.ru_utime + children.ru_stime, server)


def _cpu_spent(before: tuple, after: tuple) -> str:
    """What ``_cpu_seconds`` grew by, the reader named only in the phase that had one."""
    mine, reader, server = (None if b is None else a - b for b, a in zip(before, after))
    return ", ".join([f"this process {mine:.1f} s"]
                     + ([f"the file's reader {reader:.1f} s"] if reader > 0.05 else [])
                     + ([f"PostgreSQL {server:.1f} s"] if server is not None else []))


def write_xlsx(path: Path, rows: int, villages: list[str], seed: int = 7) -> None:
    from openpyxl import Workbook

    rng = random.Random(seed)
    wb = Workbook(write_only=True)
    sheet = wb.create_sheet("People")
    sheet.append(COLUMNS)
    households = rows // 5
    stamp = int(time.time()) % 100000
    for i in range(rows):
        h = i // 5 if i < households * 5 else households - 1
        head = i % 5 == 0
        born = date(1940, 1, 1) + timedelta(days=rng.randrange(80 * 365))
        sheet.append([
            rng.choice(FIRST), rng.choice(FIRST) if rng.random() < .3 else None, rng.choice(LAST),
            rng.choice("FM"), born, f"U{stamp:05d}{i:07d}",
            f"+2659{rng.randrange(10**8):08d}" if rng.random() < .7 else None,
            villages[h % len(villages)], f"UP{stamp:05d}-{h:06d}",
            "head" if head else rng.choice(["spouse", "child", "child", "parent", "other_relative"]),
            "yes" if head else "no",
        ])
    wb.save(path)


def _cleanup(engine, upload_id: int) -> None:
    """Take the bench's people out again, so every run starts from the same registry.

    Every reference to them is deleted here, so the per-row foreign-key checks (the registry
    has no index on group.primary_recipient_id) are switched off for these statements."""
    people = "SELECT individual_id FROM upload_row WHERE upload_id = {0} AND individual_id IS NOT NULL"
    statements = [
        'DELETE FROM group_member WHERE individual_id IN (' + people + ')',
        'DELETE FROM "group" WHERE code IN (SELECT household_code FROM upload_row WHERE upload_id = {0})',
        "DELETE FROM individual WHERE id IN (" + people + ")",
        "DELETE FROM upload_row WHERE upload_id = {0}",
        "DELETE FROM upload WHERE id = {0}",
        "DELETE FROM job_run WHERE lock_key = 'upload:{0}'",
        # SQLite gives the next upload this one's id: it must not inherit these.
        "DELETE FROM audit_entry WHERE entity_type = 'upload' AND entity_id = '{0}'",
    ]
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            raw.rollback()
            cursor.execute("PRAGMA foreign_keys=OFF")
            cursor.execute("BEGIN IMMEDIATE")
        else:
            cursor.execute("SET session_replication_role = replica")
        for statement in statements:
            cursor.execute(statement.format(int(upload_id)))
        raw.commit() if engine.dialect.name != "sqlite" else cursor.execute("COMMIT")
        if engine.dialect.name == "sqlite":
            cursor.execute("PRAGMA foreign_keys=ON")
        else:
            cursor.execute("SET session_replication_role = DEFAULT")
            raw.commit()
            # The dead rows go now, not whenever autovacuum comes: left, they slowed the
            # next run's import by a third.
            raw.driver_connection.autocommit = True
            cursor.execute('VACUUM ANALYZE individual, group_member, "group", upload_row')
            # The pages this run dirtied are written now, not by a checkpoint in the middle
            # of the next run: left, the same insert took 2.6 s in one run and 4.5 s in the next.
            cursor.execute("CHECKPOINT")
            raw.driver_connection.autocommit = False
    finally:
        raw.close()


def compact(engine) -> tuple[int, float] | None:
    """Start from the registry as ``bench.population`` built it. ``_cleanup`` takes each run's
    people out again, but SQLite keeps the pages they used on its free list, scattered through
    the file, and the index pages around them part-empty: after some hundreds of runs 38% of
    the bench's file was free pages. (In two pairs of runs taken in turn, uploads into it
    took 12.3 and 12.5 s, into the same registry compacted 11.2 and 8.9 s; this machine's
    noise is as large, so the gain is not established, but every run now measures the same
    registry.) So a run first compacts the file when earlier runs left free pages: VACUUM,
    not timed, in a process of its own so that this one's peak memory stays the upload's.
    Returns (free pages, seconds), or None (PostgreSQL: ``_cleanup`` vacuums)."""
    if engine.dialect.name != "sqlite":
        return None
    with engine.connect() as connection:
        free = connection.exec_driver_sql("PRAGMA freelist_count").scalar()
    if free < 1000:
        return None
    engine.dispose()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('VACUUM')",
                    engine.url.database], check=True)
    return free, time.perf_counter() - started


def insert_floor(engine, rows: int) -> tuple[float, float]:
    """Seconds to insert ``rows`` people into ``individual`` by one INSERT ... SELECT, with
    all its indexes and with only its key and national-ID index: the part of an import no
    code of ours can make faster. Everything is rolled back."""
    from sqlalchemy import text

    copy_people = (
        "INSERT INTO individual (id, first_name, middle_name, last_name, name_key, sex, "
        "birth_date, national_id_type, national_id, phone, location_id, custom, version) "
        "SELECT id + {shift}, first_name, middle_name, last_name, name_key, sex, birth_date, "
        "national_id_type, '{tag}' || national_id, phone, location_id, custom, 1 FROM floor_source")
    figures = []
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            shift = connection.scalar(text("SELECT max(id) FROM individual")) + 1
            connection.execute(text("CREATE TEMPORARY TABLE floor_source AS SELECT * FROM individual "
                                    f"WHERE id % 10 = 3 LIMIT {int(rows)}"))
            for tag in ("F1", "F2"):
                if tag == "F2":
                    for name in connection.scalars(text(
                            "SELECT indexname FROM pg_indexes WHERE tablename = 'individual' AND "
                            "indexname LIKE 'ix_%'" if engine.dialect.name == "postgresql" else
                            "SELECT name FROM sqlite_master WHERE type = 'index' AND "
                            "tbl_name = 'individual' AND name LIKE 'ix_%'")).all():
                        connection.execute(text(f"DROP INDEX {name}"))
                    # Past every id the first copy took (the source's ids need not be the
                    # smallest: PostgreSQL's scan may meet imported people first).
                    shift += connection.scalar(text("SELECT max(id) FROM floor_source")) + 1
                started = time.perf_counter()
                connection.execute(text(copy_people.format(shift=shift, tag=tag)))
                figures.append(time.perf_counter() - started)
        finally:
            transaction.rollback()
            if engine.dialect.name == "sqlite":
                connection.execute(text("DROP TABLE IF EXISTS floor_source"))
    return figures[0], figures[1]


def _time_grid_edit(session, services, upload, scope) -> float:
    """One row's name changed in the grid, as a user fixing a row would, and committed."""
    from sqlalchemy import select

    from portal.imports.models import UploadRow

    row = session.scalar(select(UploadRow).where(UploadRow.upload_id == upload.id, UploadRow.status == "valid")
                         .order_by(UploadRow.id.desc()).limit(1))
    started = time.perf_counter()
    services.edit_row(session, upload, row, {"first_name": "Wezzie"}, scope=scope)
    session.commit()
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the imported people (until the next run)")
    args = parser.parse_args(argv)

    url = args.database_url
    if args.people:
        from bench.population import ensure_population

        started = time.perf_counter()
        ensure_population(url, people=args.people, households=args.people // 5)
        print(f"registry ready ({args.people:,} people) in {time.perf_counter() - started:.1f} s", flush=True)
    from bench.setup import demo_app
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    app = demo_app(url)
    from portal.extensions import db
    from portal import extensions
    from portal.imports import services
    from portal.locations.models import Location
    from portal.locations.services import Scope
    from portal.registry.models import Individual

    extensions.sqlite_immediate_everywhere = True  # as in the worker
    folder = BENCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    app.config["UPLOAD_DIR"] = str(folder)
    with app.app_context():
        # A run stopped before its cleanup left its upload and people: the next run's import
        # of the same file would be refused, and the registry would not be the same.
        from portal.imports.models import Upload

        stopped = list(db.session.scalars(select(Upload.id).where(
            Upload.file_name.like("upload-%"), Upload.created_by_id.is_(None))))
        db.session.close()
        for upload_id in stopped:
            _cleanup(db.engine, upload_id)
        if stopped:
            print(f"removed {len(stopped)} upload(s) a stopped run left [not timed below]", flush=True)
        compacted = compact(db.engine)
        if compacted:
            print(f"compacted the registry first ({compacted[0]:,} free pages left by earlier runs) "
                  f"in {compacted[1]:.1f} s [not timed below]", flush=True)
        session = db.session
        from jobs.imports import prepare_session

        villages = list(session.scalars(select(Location.code).where(Location.kind == "village")
                                        .order_by(Location.id).limit(500)))
        registered = session.scalar(select(func.count()).select_from(Individual)
                                    .where(Individual.deleted_at.is_(None)))
        measured = measured_on(session.connection())  # (before the run: its load not counted)
        session.commit()
        # A new connection, as the job's: the count's pages are not in its cache (or its memory).
        session.close()
        db.engine.dispose()
        prepare_session(session)  # as the validation job does
        xlsx = folder / f"upload-{args.rows}.xlsx"
        started = time.perf_counter()
        if not xlsx.exists():  # the run removes its people again, so the file can be reused
            write_xlsx(xlsx, args.rows, villages)
        print(f"file {xlsx.name} ({xlsx.stat().st_size / 1e6:.1f} MB, {args.rows:,} rows, "
              f"{args.rows // 5:,} households) in {time.perf_counter() - started:.1f} s "
              f"[not timed below]", flush=True)
        rss_before = _rss_mb()
        everything = Scope(everything=True)

        def progress(done, total=None, message=None):
            session.commit()  # the worker's Progress commits between batches too

        cpu_before = _cpu_seconds(url)
        t0 = time.perf_counter()
        copy = folder / f"upload-{args.rows}-{os.getpid()}.xlsx"  # receive owns (and may delete) it
        copy.write_bytes(xlsx.read_bytes())
        upload = received_upload(session, copy, file_name=xlsx.name, policy="update")
        t1 = time.perf_counter()
        counts = services.validate_upload(session, upload, scope=everything, progress=progress)
        session.commit()
        t2 = time.perf_counter()
        cpu_validated = _cpu_seconds(url)
        validation_peak = _rss_mb()
        edit_seconds = _time_grid_edit(session, services, upload, everything)  # [not in the total]
        # The import is a job of its own, in a process of its own: it starts with the
        # database's page cache empty, not warmed by the validation.
        session.close()
        db.engine.dispose()
        prepare_session(session, cache_mb=256)  # as the import job does
        upload = session.get(type(upload), upload.id)
        run = services.start_import(session, upload, only_if_clean=False, scope=everything, actor_id=None,
                                    may_enrol=True)
        run.status = "running"  # this process does the work the worker would
        session.commit()
        cpu_import = _cpu_seconds(url)
        t3 = time.perf_counter()
        result = services.import_upload(session, upload, scope=everything, actor_id=None,
                                        progress=progress, commit_part=Session.commit)
        run.status = "succeeded"
        session.commit()
        t4 = time.perf_counter()
        cpu_imported = _cpu_seconds(url)
        peak = _rss_mb()
        dialect = db.engine.dialect.name
        print(f"database: {dialect}, registry before: {registered:,} people; {measured}")
        print(f"receive (type, header and first-row check): {t1 - t0:6.2f} s")
        print(f"parse + validate + stage {counts['rows']:,} rows: {t2 - t1:6.2f} s  "
              f"(valid {counts['valid']:,}, errors {counts['errors']:,}, "
              f"probable duplicates {counts['duplicates']:,}, updates {counts['updates']:,})")
        print(f"import: {t4 - t3:6.2f} s  (people created {result.get('people_created', 0):,}, "
              f"updated {result.get('people_updated', 0):,}, households new "
              f"{result.get('new_households', 0):,}, members added {result.get('members_added', 0):,})")
        print(f"total upload -> imported: {t4 - t0 - edit_seconds:6.2f} s")
        print(f"CPU time ({os.cpu_count()} cores here): validation {_cpu_spent(cpu_before, cpu_validated)}; "
              f"import {_cpu_spent(cpu_import, cpu_imported)}")
        print(f"one grid edit between the two (a name changed, the row checked again against the "
              f"registry and the file's rows): {edit_seconds:6.2f} s [not in the total]")
        reader = _rss_mb(resource.RUSAGE_CHILDREN)
        print(f"peak memory (max RSS): {peak:,.0f} MB for this process (before the upload "
              f"{rss_before:,.0f} MB, after validating {validation_peak:,.0f} MB); the process "
              f"reading the file {reader:,.0f} MB, pages shared with its parent included: "
              f"validation at most {validation_peak + reader:,.0f} MB together")
        upload_id = upload.id
        session.close()
        with_indexes, key_only = insert_floor(db.engine, args.rows)
        print(f"floor, one INSERT of {args.rows:,} people into the registry table: {with_indexes:6.2f} s "
              f"with its indexes, {key_only:.2f} s with only the key and the national-ID index")
        if not args.keep:
            started = time.perf_counter()
            _cleanup(db.engine, upload_id)
            print(f"(removed the bench's people again in {time.perf_counter() - started:.1f} s)")
            copy.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
