"""Enrol 100,000 people by criteria into a program in one action (target: under 5 s).

    python -m bench.enrolment [--database-url URL] [--target 100000] [--keep]

Uses ``bench.population.ensure_population`` when it exists (the shared population of a
million people in households); otherwise builds its own population once (100,000 adults +
25,000 children in the demo locations) with bulk inserts. Then it creates a fresh program,
picks criteria that match about ``--target`` people (adults aged 18 to N), previews them and
enrols them with
``services.enrol_by_criteria`` (one INSERT ... SELECT), timing the action including its
commit, and a second run of the same criteria (everyone skipped).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import date
from pathlib import Path

from sqlalchemy import delete, func, insert, select

os.environ.setdefault("PORTAL_ENV", "development")

from bench import measured_on  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = f"sqlite:///{ROOT / 'instance' / 'bench' / 'enrolment.db'}"
FIRST = ["Chikondi", "Mphatso", "Thandiwe", "Kondwani", "Chisomo", "Blessings", "Mercy", "Tiyamike",
         "Grace", "Limbani", "Yamikani", "Madalitso", "Pemphero", "Tawonga", "Dalitso", "Chimwemwe"]
LAST = ["Banda", "Phiri", "Mwale", "Tembo", "Chirwa", "Nyirenda", "Zulu", "Mbewe", "Kumwenda",
        "Gondwe", "Msiska", "Kachale", "Chisale", "Jere", "Lungu", "Soko"]


def _url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _app(database_url: str):
    from flask_migrate import upgrade

    from portal import create_app

    if database_url.startswith("sqlite:///"):
        Path(database_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    app = create_app({"SQLALCHEMY_DATABASE_URI": _url(database_url)})
    with app.app_context():
        upgrade(revision="heads")
    return app


def _own_population(session, *, adults: int, children: int) -> None:
    """Locations and people, once: ``adults`` born 1940-2000, ``children`` born 2015-2020."""
    from portal.demo import build_locations
    from portal.locations.models import Location
    from portal.registry.models import Individual

    if (session.scalar(select(func.count()).select_from(Individual)
                          .where(Individual.deleted_at.is_(None))) or 0) >= adults + children:
        return
    rng = random.Random(5)
    villages = list(session.scalars(select(Location.id).where(Location.kind == "village")))
    if not villages:
        villages = build_locations(session, rng)
    start = (session.scalar(select(func.max(Individual.id))) or 0) + 1
    batch = []
    started = time.perf_counter()
    for n in range(adults + children):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        year = rng.randint(1940, 2000) if n < adults else rng.randint(2015, 2020)
        batch.append({
            "id": start + n, "first_name": first, "middle_name": None, "last_name": last,
            "name_key": f"{last} {first}".lower(), "sex": rng.choice("FM"),
            "birth_date": date(year, rng.randint(1, 12), rng.randint(1, 28)),
            "national_id_type": "national_id", "national_id": f"EB{start + n:09d}",
            "phone": None, "location_id": rng.choice(villages), "custom": {}, "version": 1})
        if len(batch) == 10_000:
            session.execute(insert(Individual), batch)
            batch = []
    if batch:
        session.execute(insert(Individual), batch)
    session.commit()
    print(f"built a population of {adults + children:,} people in "
          f"{time.perf_counter() - started:.1f} s", flush=True)


def _vacuum(engine) -> None:
    """Clear what the previous run left behind, as autovacuum would between real enrolments."""
    from sqlalchemy import text

    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE beneficiary, beneficiary_status_change, individual"))


def _pick_criteria(session, program, scope, target: int):
    """Adults aged 18 to N, with the smallest N that matches at least ``target`` people
    (a binary search on counts), so the bench enrols about ``target`` whatever the population."""
    from portal.programs.services import Criteria, criteria_query

    def count(criteria):
        return session.scalar(select(func.count()).select_from(
            criteria_query(session, program, scope=scope, criteria=criteria).subquery()))

    low, high = 18, 130
    if count(Criteria(age_min=18, age_max=high)) < target:
        return None
    while low < high:
        middle = (low + high) // 2
        if count(Criteria(age_min=18, age_max=middle)) >= target:
            high = middle
        else:
            low = middle + 1
    criteria = Criteria(age_min=18, age_max=high)
    return criteria, count(criteria)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    try:
        from bench.population import DEFAULT_URL as POPULATION_URL, ensure_population
    except ImportError:
        POPULATION_URL, ensure_population = DEFAULT_URL, None
    parser.add_argument("--database-url", default=POPULATION_URL,
                        help="default: the shared bench population (bench.population), or "
                             "instance/bench/enrolment.db when that module is absent")
    parser.add_argument("--target", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the bench program afterwards")
    args = parser.parse_args(argv)
    if ensure_population is not None:
        ensure_population(args.database_url)
    app = _app(args.database_url)

    from portal.extensions import db
    from portal.locations.services import Scope
    from portal.programs import services
    from portal.programs.models import Program

    with app.app_context():
        session = db.session
        if ensure_population is None:
            _own_population(session, adults=args.target, children=args.target // 4)
        # A fresh program each run; earlier bench programs go (not timed).
        session.execute(delete(Program).where(Program.code.like("BENCH-%")))
        session.commit()
        _vacuum(db.engine)
        everything = Scope(everything=True)
        program = services.save_program(session, None, code=f"BENCH-{int(time.time())}",
                                        name="Bench enrolment", beneficiary_kind="individual")
        services.activate_program(session, program)
        session.commit()
        program_id = program.id
        picked = _pick_criteria(session, program, everything, args.target)
        if picked is None:
            print(f"no criteria match {args.target:,} people; build a bigger population")
            return 1
        criteria, matching = picked
        dialect = db.engine.dialect.name
        print(f"database: {dialect}; criteria: {criteria.describe()} match {matching:,} people; "
              f"{measured_on(session.connection())}")

        started = time.perf_counter()
        preview = services.preview_criteria(session, program, scope=everything, criteria=criteria)
        session.rollback()
        preview_s = time.perf_counter() - started
        print(f"preview (count + sample): {preview['new']:,} to enrol in {preview_s:.2f} s")

        started = time.perf_counter()
        result = services.enrol_by_criteria(session, program_id, scope=everything,
                                            criteria=criteria, actor_id=None)
        session.commit()
        enrol_s = time.perf_counter() - started
        print(f"enrol by criteria: {result['enrolled']:,} enrolled, {result['skipped']:,} skipped "
              f"in {enrol_s:.2f} s ({result['enrolled'] / max(enrol_s, 1e-9):,.0f} people/s) "
              f"{'OK' if enrol_s < 5 else 'SLOWER THAN'} target 5 s")

        started = time.perf_counter()
        again = services.enrol_by_criteria(session, program_id, scope=everything,
                                           criteria=criteria, actor_id=None)
        session.commit()
        print(f"same criteria again: {again['enrolled']:,} enrolled, {again['skipped']:,} skipped "
              f"in {time.perf_counter() - started:.2f} s")
        taken = services.taken_places(session, program_id)
        assert taken == result["enrolled"], (taken, result)
        if not args.keep:  # leave the shared population as it was (not timed)
            session.execute(delete(Program).where(Program.id == program_id))
            session.commit()
        return 0 if enrol_s < 5 else 1


if __name__ == "__main__":
    sys.exit(main())
