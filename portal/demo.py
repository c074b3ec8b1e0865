"""Realistic, deterministic demo data: a country slice of locations and a few users.

Other domains add their own part in ``portal/<domain>/demo.py`` with a
``build(session, rng, village_ids) -> dict`` function.
"""
from __future__ import annotations

import importlib
import random

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from portal.accounts import services as accounts
from portal.locations.models import Location
from portal.locations.services import Scope

SYLLABLES = ["ba", "ka", "lo", "mwa", "nji", "zi", "chi", "la", "ngo", "tu", "ma", "we", "ra",
             "sa", "ndu", "ko", "bi", "ya", "ze", "mbe", "po", "li", "gwe", "ta", "nya", "ru"]
REGIONS = ["Northern", "Central", "Eastern", "Southern"]


def place_name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3, 3)))).title()


def build_locations(session: Session, rng: random.Random, *, districts_per_region=10,
                    wards_per_district=3, villages_per_ward=5) -> list[int]:
    """Insert the tree in bulk (paths computed here); return the village ids."""
    rows, villages = [], []
    next_id = (session.scalar(select(Location.id).order_by(Location.id.desc()).limit(1)) or 0) + 1

    def add(code, name, kind, parent):
        nonlocal next_id
        lid = next_id
        next_id += 1
        path = f"{parent['path'] if parent else '/'}{lid}/"
        row = {"id": lid, "code": code, "name": name, "kind": kind,
               "parent_id": parent["id"] if parent else None, "path": path}
        rows.append(row)
        return row

    for r, region_name in enumerate(REGIONS, start=1):
        region = add(f"R{r}", region_name, "region", None)
        for d in range(1, districts_per_region + 1):
            district = add(f"R{r}D{d:02d}", place_name(rng), "district", region)
            for w in range(1, wards_per_district + 1):
                ward = add(f"{district['code']}W{w}", place_name(rng), "ward", district)
                for v in range(1, villages_per_ward + 1):
                    villages.append(add(f"{ward['code']}V{v}", place_name(rng), "village", ward)["id"])
    session.execute(insert(Location), rows)
    return villages


def build_demo(session: Session, *, seed: int = 42) -> dict:
    """Fill an empty database with a country slice and demo users; refuses a non-empty one."""
    if session.scalar(select(Location.id).limit(1)) is not None:
        return {"skipped": "the database already has locations"}
    rng = random.Random(seed)
    villages = build_locations(session, rng)
    roles = accounts.ensure_roles(session)
    everything = Scope(everything=True)
    district = session.scalar(select(Location).where(Location.code == "R1D01"))
    accounts.save_user(session, None, email="manager@example.org", name="Grace Banda (program manager)",
                       password="demo-password", roles=[roles["program_manager"]], locations=[],
                       all_locations=True, scope=everything)
    accounts.save_user(session, None, email="officer@example.org", name="Joseph Phiri (field officer)",
                       password="demo-password", roles=[roles["field_officer"]], locations=[district],
                       all_locations=False, scope=everything)
    accounts.save_user(session, None, email="viewer@example.org", name="Ruth Mwale (viewer)",
                       password="demo-password", roles=[roles["viewer"]], locations=[],
                       all_locations=True, scope=everything)
    summary = {"villages": len(villages)}
    # Each domain with a demo module adds its part, in the order of DOMAINS
    # (people and households before programs that enrol them).
    from portal import DOMAINS, ROOT

    for name in DOMAINS:
        if (ROOT / "portal" / name / "demo.py").exists():
            part = importlib.import_module(f"portal.{name}.demo")
            summary.update(part.build(session, rng, villages) or {})
    return summary
