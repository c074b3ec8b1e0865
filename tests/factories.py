"""Factories for registry and program objects, shared by every domain's tests.

Owned by the registry work; other domains add factories at the end of the file.

    make_individual(first_name=..., location=<village>, **any Individual field) -> Individual
    make_household(size=3, location=<village>, head=None, members=[...]) -> Group
        (a household with a head who is also the primary recipient, plus members)
    make_group(kind="cooperative", members=[...]) -> Group
"""
from __future__ import annotations

import itertools
from datetime import date

import pytest

_numbers = itertools.count(1)
FIRST_NAMES = ["Chikondi", "Mphatso", "Thandiwe", "Kondwani", "Chisomo", "Blessings", "Mercy",
               "Tiyamike", "Grace", "Limbani"]
LAST_NAMES = ["Banda", "Phiri", "Mwale", "Tembo", "Chirwa", "Nyirenda", "Zulu", "Mbewe"]


@pytest.fixture
def default_village(db_session, make_location):
    """A village (with its region, district and ward) for people made without a location."""
    from sqlalchemy import select

    from portal.locations.models import Location

    village = db_session.scalar(select(Location).where(Location.code == "FACTORY-V"))
    if village is None:
        region = make_location("FACTORY-R", "region")
        district = make_location("FACTORY-D", "district", region)
        ward = make_location("FACTORY-W", "ward", district)
        village = make_location("FACTORY-V", "village", ward)
    return village


@pytest.fixture
def make_individual(db_session, request):
    from portal.registry.models import Individual
    from portal.registry.validation import name_key

    def make(first_name=None, last_name=None, *, location=None, **fields) -> Individual:
        n = next(_numbers)
        if location is None and "location_id" not in fields:
            location = request.getfixturevalue("default_village")
        first_name = first_name or FIRST_NAMES[n % len(FIRST_NAMES)]
        last_name = last_name or LAST_NAMES[n % len(LAST_NAMES)]
        values = {
            "sex": "F" if n % 2 else "M",
            "birth_date": date(1960 + n % 50, 1 + n % 12, 1 + n % 28),
            "national_id": f"T{n:08d}",
            "national_id_type": "national_id",
            "phone": f"+26599{n:07d}",
            "custom": {},
        }
        values.update(fields)
        if location is not None:
            values["location_id"] = location.id
        person = Individual(first_name=first_name, last_name=last_name,
                            name_key=name_key(first_name, values.get("middle_name"), last_name),
                            **values)
        db_session.add(person)
        db_session.flush()
        return person

    return make


@pytest.fixture
def make_group(db_session, make_individual, request):
    from portal.registry.models import Group, GroupMember

    def make(kind="cooperative", *, members=(), location=None, code=None, name=None,
             roles=None) -> Group:
        n = next(_numbers)
        if location is None:
            location = members[0].location if members else request.getfixturevalue("default_village")
        group = Group(code=code or f"G{n:06d}", name=name or f"Group {n}", kind=kind,
                      location_id=location.id)
        db_session.add(group)
        db_session.flush()
        for i, person in enumerate(members):
            role = (roles or {}).get(person.id) or "member"
            db_session.add(GroupMember(group_id=group.id, individual_id=person.id,
                                       group_kind=kind, role=role))
        db_session.flush()
        db_session.refresh(group)
        return group

    return make


@pytest.fixture
def make_household(db_session, make_individual, request):
    """A household: head (also the primary recipient) plus size-1 other members."""
    from portal.registry.models import Group, GroupMember

    def make(size=3, *, location=None, head=None, members=None, code=None, name=None) -> Group:
        n = next(_numbers)
        if location is None:
            location = head.location if head is not None else request.getfixturevalue("default_village")
        head = head or make_individual(location=location)
        others = list(members) if members is not None else [
            make_individual(last_name=head.last_name, location=location) for _ in range(size - 1)]
        group = Group(code=code or f"HH{n:06d}", name=name or f"{head.last_name} household {n}",
                      kind="household", location_id=location.id, primary_recipient_id=head.id)
        db_session.add(group)
        db_session.flush()
        db_session.add(GroupMember(group_id=group.id, individual_id=head.id,
                                   group_kind="household", role="head"))
        for i, person in enumerate(others):
            db_session.add(GroupMember(group_id=group.id, individual_id=person.id,
                                       group_kind="household", role="spouse" if i == 0 else "child"))
        db_session.flush()
        db_session.refresh(group)
        return group

    return make


# --- uploads (the imports work) -----------------------------------------------------------------

UPLOAD_HEADER = "First name,Last name,Sex,Birth date,National ID,Village code,Household code,Role,Primary recipient\n"


def validated_upload(session, tmp_path, rows: str, *, policy: str = "error", uploader=None):
    """An upload of ``rows`` (CSV lines under ``UPLOAD_HEADER``) received from ``uploader``
    (else nobody, in an admin's scope) and validated in their scope, as the validation job
    would."""
    from portal.imports import services
    from portal.locations.services import Scope

    path = tmp_path / f"upload{next(_numbers)}.csv"
    path.write_text(UPLOAD_HEADER + rows, encoding="utf-8")
    upload = services.receive_upload(
        session, path=path, file_name="people.csv", duplicate_policy=policy, day_first=None,
        program_id=None, enrol_status=None, area_id=None,
        actor_id=uploader.id if uploader else None, max_rows=1000)
    scope = Scope.for_user(uploader) if uploader else Scope(everything=True)
    services.validate_upload(session, upload, scope=scope, progress=lambda *a, **k: None)
    return upload
