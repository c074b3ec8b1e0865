"""``make bench``: every bench script in turn, each printing its own figures.

    python -m bench.run [--only pages,registry_search] [--database-url URL]

Without ``--database-url`` each script uses its SQLite file under ``instance/bench/``; pass
a PostgreSQL URL to measure there. Building a million people takes minutes the first
time; later runs reuse the database.
"""
from __future__ import annotations

import argparse
import importlib
import time

SCRIPTS = ("pages", "registry_search", "upload", "upload_updates", "upload_fixes", "enrolment")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the bench scripts")
    parser.add_argument("--only", default=",".join(SCRIPTS))
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    failures = 0
    for name in args.only.split(","):
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            print(f"== {name}: not available ({exc})")
            continue
        print(f"\n======== bench.{name} ========", flush=True)
        started = time.perf_counter()
        code = module.main(["--database-url", args.database_url] if args.database_url else [])
        print(f"== bench.{name} finished in {time.perf_counter() - started:.1f} s (exit {code or 0})")
        failures += bool(code)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
