"""Large-fix bench: a CSV of new people whose every village code was typed with a stray
prefix ("X-R1D01W1V1"), so every row is an error, uploaded into the 1,000,000-person registry
of ``bench.upload``; then one find-and-replace within the cells takes the prefix off every
row, as the worker's fix job makes it (chunks of 500 rows, each committed), and is timed.

    python -m bench.upload_fixes [--database-url URL] [--rows 20000]

The run's upload, staged rows, job and audit entries are removed afterwards; it creates no
people, so every run starts the same.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import time
from datetime import date, timedelta

os.environ.setdefault("PORTAL_ENV", "development")

from bench import BENCH_DIR, measured_on, received_upload, remove_upload  # noqa: E402
from bench.upload import DEFAULT_URL, FIRST, LAST  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--people", type=int, default=1_000_000)
    args = parser.parse_args(argv)

    from bench.population import ensure_population

    ensure_population(args.database_url, people=args.people, households=args.people // 5)
    from bench.setup import demo_app
    from sqlalchemy import func, select

    app = demo_app(args.database_url)
    from jobs.imports import prepare_session
    from portal import extensions
    from portal.audit.models import AuditEntry
    from portal.extensions import db
    from portal.imports import services
    from portal.locations.models import Location
    from portal.locations.services import Scope

    extensions.sqlite_immediate_everywhere = True  # as in the worker
    app.config["UPLOAD_DIR"] = str(BENCH_DIR)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    everything = Scope(everything=True)
    rng = random.Random(11)
    with app.app_context():
        session = db.session
        prepare_session(session)  # as the jobs do
        villages = list(session.scalars(select(Location.code).where(Location.kind == "village")
                                         .order_by(Location.id).limit(50)))
        path = BENCH_DIR / f"fixes-{os.getpid()}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["First name", "Last name", "Sex", "Birth date", "Village code",
                             "Household code", "Role", "Primary recipient"])
            for i in range(args.rows):
                head = i % 5 == 0
                writer.writerow([
                    rng.choice(FIRST), rng.choice(LAST), rng.choice("FM"),
                    (date(1940, 1, 1) + timedelta(days=rng.randrange(80 * 365))).isoformat(),
                    f"X-{villages[(i // 5) % len(villages)]}", f"FX{os.getpid()}-{i // 5:06d}",
                    "head" if head else "child", "yes" if head else "no"])
        audit_before = session.scalar(select(func.max(AuditEntry.id))) or 0
        session.commit()

        def progress(done, total=None, message=None):
            session.commit()  # the worker's Progress commits between batches too

        upload = received_upload(session, path, file_name=path.name, policy="error")
        t0 = time.perf_counter()
        counts = services.validate_upload(session, upload, scope=everything, progress=progress)
        session.commit()
        t1 = time.perf_counter()
        run = services.start_fix(session, upload, {"kind": "replace", "field": "location", "find": "X-",
                                                   "replace": "", "whole_cell": False},
                                 scope=everything, actor_id=None)
        run.status = "running"  # this process does the work the worker would
        session.commit()
        t2 = time.perf_counter()
        result = services.fix_upload(session, upload, run.params["fix"], scope=everything, run=run,
                                     progress=progress)
        session.commit()
        t3 = time.perf_counter()
        after = services.status_counts(session, upload.id)
        print(f"database: {db.engine.dialect.name}; {args.rows:,} new people, every village code "
              f"with a stray prefix (validated in {t1 - t0:.2f} s: errors {counts['errors']:,}); "
              f"{measured_on(session.connection())}")
        print(f"find-and-replace of {result['changed']:,} cells as the fix job makes it: {t3 - t2:6.2f} s "
              f"({1000 * (t3 - t2) / max(result['changed'], 1):.2f} ms a row; after it: valid "
              f"{after.get('valid', 0):,}, probable duplicates {after.get('duplicate', 0):,}, "
              f"errors {after.get('error', 0):,})")

        started = time.perf_counter()
        remove_upload(session, upload.id, audit_after=audit_before)
        path.unlink(missing_ok=True)
        print(f"(removed the upload again in {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
