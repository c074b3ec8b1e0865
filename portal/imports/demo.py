"""Demo uploads: one file imported (people in households) and one left with rows to fix."""
from __future__ import annotations

import uuid
from pathlib import Path

from flask import current_app
from sqlalchemy import select

from portal.accounts.models import User
from portal.imports import services
from portal.locations.models import Location
from portal.locations.services import Scope

HEADER = "First name,Last name,Sex,Birth date,National ID,Phone,Village code,Household code,Role,Primary recipient\n"
FIRST = ["Chikondi", "Mphatso", "Thandiwe", "Kondwani", "Chisomo", "Mercy", "Tiyamike", "Limbani"]
LAST = ["Kalua", "Msiska", "Gondwe", "Kumwenda", "Lungu", "Ngwira"]
ROLES = ["head", "spouse", "child", "child", "parent"]


def _people(rng, villages: list[str], households: int, prefix: str) -> list[str]:
    lines = []
    for h in range(households):
        last, village = rng.choice(LAST), rng.choice(villages)
        for m in range(rng.randint(2, 5)):
            year = rng.randint(1950, 1995) if m < 2 else rng.randint(2005, 2020)
            lines.append(f"{rng.choice(FIRST)},{last},{'FM'[rng.randrange(2)]},{year}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)},"
                         f"{prefix}{h:03d}{m},,{village},{prefix}-HH{h:03d},{ROLES[m]},{'yes' if m == 0 else 'no'}\n")
    return lines


def _receive(session, text: str, name: str, actor_id: int | None) -> object:
    folder = Path(current_app.config["UPLOAD_DIR"]) / "people"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.csv"
    path.write_text(text, encoding="utf-8")
    upload = services.receive_upload(session, path=path, file_name=name, duplicate_policy="update",
                                     day_first=None, program_id=None, enrol_status=None,
                                     area_id=None, actor_id=actor_id, max_rows=10_000)
    services.validate_upload(session, upload, scope=Scope(everything=True), progress=lambda *a, **k: None)
    return upload


def build(session, rng, village_ids) -> dict:
    villages = list(session.scalars(select(Location.code).where(Location.id.in_(village_ids[:6]))))
    officer = session.scalar(select(User).where(User.email == "officer@example.org"))
    actor_id = officer.id if officer else None
    everything = Scope(everything=True)
    done = _receive(session, HEADER + "".join(_people(rng, villages, 8, "UPA")),
                    "household survey week 1.csv", actor_id)
    done.counts = services.summary_counts(session, done)
    services.import_upload(session, done, scope=everything, actor_id=actor_id,
                           progress=lambda *a, **k: None)
    lines = _people(rng, villages, 4, "UPB")
    lines[1] = lines[1].replace(",spouse,", ",wife,")  # an unknown role
    lines[3] = lines[3].replace(f",{villages[0]},", ",V-UNKNOWN,").replace(f",{villages[-1]},", ",V-UNKNOWN,")
    lines[4] = lines[4].replace(",F,", ",female?,").replace(",M,", ",male?,")
    _receive(session, HEADER + "".join(lines), "household survey week 2.csv", actor_id)
    return {"uploads": 2, "people_imported": done.counts.get("imported", 0)}
