"""Importing a locations CSV in the background."""
from __future__ import annotations

from pathlib import Path

from jobs import runtime
from portal.locations import services
from portal.locations.services import Scope


def import_locations(run_id: int):
    return runtime.run(run_id, _work)


def _work(session, job, progress):
    path = Path(job.params["path"])
    text = services.decode_text(path.read_bytes())
    rows, errors = services.parse_location_csv(text)
    if errors:
        raise services.DomainError("\n".join(errors))
    progress(0, len(rows), f"Checking {len(rows)} locations")
    scope = Scope(everything=True) if job.params.get("everything") else Scope(paths=tuple(job.params["paths"]))
    result = services.import_locations(session, rows, scope=scope)
    progress(len(rows), len(rows), f"{result['created']} created, {result['updated']} updated")
    return result
