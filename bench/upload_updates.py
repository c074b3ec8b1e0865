"""Re-upload bench: a CSV of registered people with changes (a new phone each, one in ten
moved to another village) uploaded with "update people already registered", into the
1,000,000-person registry of ``bench.upload``; validation and import timed separately.

    python -m bench.upload_updates [--database-url URL] [--rows 20000]

The people are put back as they were afterwards (phone, village, name key, version), and the
run's upload, staged rows and audit entries are removed, so every run starts the same.
"""
from __future__ import annotations

import argparse
import csv
import os
import time

os.environ.setdefault("PORTAL_ENV", "development")

from bench import BENCH_DIR, measured_on, received_upload, remove_upload  # noqa: E402
from bench.upload import DEFAULT_URL  # noqa: E402

RESTORED = ("phone", "location_id", "name_key", "version", "updated_at")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args(argv)

    from bench.population import ensure_population

    ensure_population(args.database_url, people=1_000_000, households=200_000)
    from bench.setup import demo_app
    from sqlalchemy import bindparam, func, select, update

    app = demo_app(args.database_url)
    from jobs.imports import prepare_session
    from portal import extensions
    from portal.audit.models import AuditEntry
    from portal.extensions import db
    from portal.imports import services
    from portal.locations.models import Location
    from portal.locations.services import Scope
    from portal.registry.models import Individual

    extensions.sqlite_immediate_everywhere = True  # as in the worker
    app.config["UPLOAD_DIR"] = str(BENCH_DIR)
    everything = Scope(everything=True)
    with app.app_context():
        session = db.session
        prepare_session(session)
        table = Individual.__table__
        people = session.execute(
            select(table.c.id, table.c.first_name, table.c.last_name, table.c.sex, table.c.birth_date,
                   table.c.national_id, Location.code, *(table.c[c] for c in RESTORED))
            .join(Location, Location.id == table.c.location_id)
            .where(table.c.id % 20 == 7, table.c.national_id.isnot(None), table.c.deleted_at.is_(None))
            .order_by(table.c.id).limit(args.rows)).all()
        villages = list(session.scalars(select(Location.code).where(Location.kind == "village")
                                         .order_by(Location.id).limit(50)))
        path = BENCH_DIR / f"updates-{os.getpid()}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["First name", "Last name", "Sex", "Birth date", "National ID", "Phone",
                             "Village code"])
            for k, p in enumerate(people):
                writer.writerow([p.first_name, p.last_name, p.sex, p.birth_date.isoformat(),
                                 p.national_id, f"+26588{k:07d}",
                                 villages[k % len(villages)] if k % 10 == 0 else p.code])
        audit_before = session.scalar(select(func.max(AuditEntry.id))) or 0
        session.commit()

        def progress(done, total=None, message=None):
            session.commit()  # the worker's Progress commits between batches too

        t0 = time.perf_counter()
        upload = received_upload(session, path, file_name=path.name, policy="update")
        counts = services.validate_upload(session, upload, scope=everything, progress=progress)
        session.commit()
        t1 = time.perf_counter()
        run = services.start_import(session, upload, only_if_clean=False, scope=everything, actor_id=None,
                                    may_enrol=True)
        run.status = "running"
        session.commit()
        prepare_session(session, cache_mb=256)  # as the import job does
        t2 = time.perf_counter()
        result = services.import_upload(session, upload, scope=everything, actor_id=None,
                                        progress=progress)
        session.commit()
        t3 = time.perf_counter()
        entries = session.scalar(select(func.count()).where(
            AuditEntry.id > audit_before, AuditEntry.entity_type == "individual"))
        print(f"database: {db.engine.dialect.name}; {len(people):,} registered people re-uploaded "
              f"with a new phone each, one in ten moved; {measured_on(session.connection())}")
        print(f"receive + validate: {t1 - t0:6.2f} s  (updates {counts['updates']:,}, "
              f"errors {counts['errors']:,})")
        print(f"import: {t3 - t2:6.2f} s  (people updated {result.get('people_updated', 0):,}, "
              f"audit entries {entries:,})")

        started = time.perf_counter()
        session.execute(update(table).where(table.c.id == bindparam("person")).values(
            **{c: bindparam(f"old_{c}", type_=table.c[c].type) for c in RESTORED}),
            [{"person": p.id, **{f"old_{c}": getattr(p, c) for c in RESTORED}} for p in people])
        remove_upload(session, upload.id, audit_after=audit_before)
        path.unlink(missing_ok=True)
        print(f"(put the people back in {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
