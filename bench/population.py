"""A million people in 200,000 households, built once and reused by the benches.

    python -m bench.population [--database-url URL] [--people 1000000] [--households 200000]

``ensure_population(url)`` migrates the database, loads the demo locations when there are
none, and adds people in households (realistic name frequencies, ``portal.registry.demo``)
until there are ``people`` living individuals; a database that has them already is reused
as it is. Loading goes around the ORM: ``executemany`` in batches on SQLite, ``COPY`` on
PostgreSQL, then ANALYZE so the query planners know the tables' shape.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time

from sqlalchemy import func, select, text

os.environ.setdefault("PORTAL_ENV", "development")

from bench import default_database_url, sqlalchemy_url  # noqa: E402

DEFAULT_URL = default_database_url("population")
BATCH_HOUSEHOLDS = 20_000
PERSON_COLUMNS = ("id", "first_name", "middle_name", "last_name", "name_key", "sex", "birth_date",
                  "national_id_type", "national_id", "phone", "location_id", "custom", "version")
GROUP_COLUMNS = ("id", "code", "name", "kind", "location_id", "primary_recipient_id", "version")
MEMBER_COLUMNS = ("group_id", "individual_id", "group_kind", "role")


def bench_app(database_url: str):
    """The portal app on ``database_url``, migrated to the latest schema."""
    from flask_migrate import upgrade

    from portal import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(database_url)})
    with app.app_context():
        upgrade(revision="heads")
    return app


def _villages(session) -> list[int]:
    from portal.demo import build_locations
    from portal.locations.models import Location

    villages = list(session.scalars(select(Location.id).where(Location.kind == "village").order_by(Location.id)))
    if not villages:
        villages = build_locations(session, random.Random(42))
        session.commit()
    return villages


def _copy_pg(raw, table: str, columns, rows) -> None:
    with raw.cursor() as cursor:
        with cursor.copy(f'COPY "{table}" ({", ".join(columns)}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)


def _executemany_sqlite(raw, table: str, columns, rows) -> None:
    marks = ", ".join("?" for _ in columns)
    raw.executemany(f'INSERT INTO "{table}" ({", ".join(columns)}) VALUES ({marks})', rows)


def _person_tuple(p: dict, sqlite: bool) -> tuple:
    birth = p["birth_date"].isoformat() if sqlite else p["birth_date"]
    return (p["id"], p["first_name"], p["middle_name"], p["last_name"], p["name_key"], p["sex"], birth,
            p["national_id_type"], p["national_id"], p["phone"], p["location_id"], json.dumps(p["custom"]),
            p["version"])


def _load(engine, batches, dialect: str) -> None:
    """Insert batches of (people, groups, members) on one raw connection, a commit per batch."""
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        sqlite = dialect == "sqlite"
        if sqlite:
            driver.execute("PRAGMA cache_size=-400000")  # 400 MB page cache while loading
        for people, groups, members in batches:
            if sqlite:
                driver.execute("BEGIN IMMEDIATE")
                _executemany_sqlite(driver, "individual", PERSON_COLUMNS, (_person_tuple(p, True) for p in people))
                _executemany_sqlite(driver, "group", GROUP_COLUMNS, (tuple(g[c] for c in GROUP_COLUMNS) for g in groups))
                _executemany_sqlite(driver, "group_member", MEMBER_COLUMNS,
                                    (tuple(m[c] for c in MEMBER_COLUMNS) for m in members))
                driver.execute("COMMIT")
            else:
                _copy_pg(driver, "individual", PERSON_COLUMNS, (_person_tuple(p, False) for p in people))
                _copy_pg(driver, "group", GROUP_COLUMNS, (tuple(g[c] for c in GROUP_COLUMNS) for g in groups))
                _copy_pg(driver, "group_member", MEMBER_COLUMNS, (tuple(m[c] for c in MEMBER_COLUMNS) for m in members))
                driver.commit()
    finally:
        raw.close()


def _secondary_indexes(engine, dialect: str, tables=("individual", "group_member")) -> list[tuple[str, str]]:
    """(name, DDL) of the non-unique indexes of ``tables``, to drop before a bulk load into
    empty tables and build again after it (much faster than maintaining them row by row)."""
    with engine.connect() as conn:
        if dialect == "sqlite":
            rows = conn.execute(text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                "AND tbl_name IN ('individual', 'group_member')")).all()
        else:
            rows = conn.execute(text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                "AND tablename IN ('individual', 'group_member')")).all()
    return [(name, ddl) for name, ddl in rows if "UNIQUE" not in ddl.upper()]


def _run_ddl(engine, statements: list[str]) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def _analyze(engine, dialect: str) -> None:
    if dialect == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in ("individual", '"group"', "group_member", "location"):
                conn.execute(text(f"VACUUM ANALYZE {table}"))
            # Once more: statistics taken while autovacuum was still busy with the fresh
            # rows were seen to be useless for the name ranges (estimates of 1 row).
            conn.execute(text("ANALYZE individual"))
    else:
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()


def ensure_population(database_url: str = DEFAULT_URL, people: int = 1_000_000,
                      households: int = 200_000) -> None:
    """Build (once) a migrated database with the demo locations and ``people`` individuals in
    ``households`` households; reuse it when it already holds that many people."""
    from portal.extensions import db
    from portal.registry import demo
    from portal.registry.models import Group, Individual

    app = bench_app(database_url)
    with app.app_context():
        session = db.session
        engine = db.engine
        dialect = engine.dialect.name
        have = session.scalar(select(func.count()).select_from(Individual).where(Individual.deleted_at.is_(None)))
        if have >= people:
            print(f"population: reusing {have:,} people in {database_url}")
            return
        started = time.perf_counter()
        from portal.accounts.services import ensure_roles
        from portal.registry.services import ensure_member_roles

        ensure_roles(session)
        ensure_member_roles(session)
        villages = _villages(session)
        session.commit()
        missing = people - have
        missing_households = max(1, round(households * missing / people))
        rng = random.Random(f"population-{people}-{have}")
        sizes = demo.household_sizes(rng, missing_households, missing)
        first_person = (session.scalar(select(func.max(Individual.id))) or 0) + 1
        first_group = (session.scalar(select(func.max(Group.id))) or 0) + 1
        id_numbers = 10_000_000 + first_person  # clear of the demo's national IDs
        session.close()
        stream = demo.generate(rng, sizes, villages, first_individual_id=first_person,
                               first_group_id=first_group, first_id_number=id_numbers, code_prefix="HB")

        def batches():
            people_rows, group_rows, member_rows = [], [], []
            for person_list, group, links in stream:
                people_rows += person_list
                group_rows.append(group)
                member_rows += links
                if len(group_rows) >= BATCH_HOUSEHOLDS:
                    yield people_rows, group_rows, member_rows
                    people_rows, group_rows, member_rows = [], [], []
                    print(f"population: {time.perf_counter() - started:6.1f} s, "
                          f"up to person {person_list[-1]['id']:,}", flush=True)
            if group_rows:
                yield people_rows, group_rows, member_rows

        indexes = _secondary_indexes(engine, dialect) if have == 0 else []
        _run_ddl(engine, [f'DROP INDEX "{name}"' for name, _ in indexes])
        _load(engine, batches(), dialect)
        _run_ddl(engine, [ddl for _, ddl in indexes])
        with app.app_context():
            demo.advance_sequences(db.session)
            db.session.commit()
        loaded = time.perf_counter() - started
        _analyze(engine, dialect)
        print(f"population: {missing:,} people in {missing_households:,} households loaded in "
              f"{loaded:.1f} s, analysed in {time.perf_counter() - started - loaded:.1f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--households", type=int, default=200_000)
    args = parser.parse_args(argv)
    ensure_population(args.database_url, people=args.people, households=args.households)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
