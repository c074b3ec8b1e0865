"""Factories for program tests (the shared tests/factories.py belongs to the registry work)."""
from __future__ import annotations

import itertools
from datetime import date

import pytest

_n = itertools.count(1)


@pytest.fixture
def person(db_session, country):
    """person(village="NV1", **fields) -> a living Individual."""
    from portal.registry.models import Individual

    def make(village="NV1", *, first_name=None, last_name="Banda", **fields) -> Individual:
        n = next(_n)
        first_name = first_name or f"Person{n}"
        values = {"sex": "F" if n % 2 else "M", "birth_date": date(1980, 1, 1),
                  "national_id": f"P5-{n:07d}", "phone": f"+26588{n:07d}", "custom": {}}
        values.update(fields)
        individual = Individual(first_name=first_name, last_name=last_name,
                                name_key=f"{last_name} {first_name}".lower(),
                                location_id=country[village].id, **values)
        db_session.add(individual)
        db_session.flush()
        return individual

    return make


@pytest.fixture
def household(db_session, person, country):
    """household(size=3, village="NV1") -> a household whose head is the primary recipient."""
    from portal.registry.models import Group, GroupMember

    def make(size=3, village="NV1", *, head=None, members=()) -> "Group":
        n = next(_n)
        head = head or person(village)
        others = list(members) or [person(village) for _ in range(size - 1)]
        group = Group(code=f"HH5-{n:05d}", name=f"{head.last_name} household {n}",
                      kind="household", location_id=country[village].id,
                      primary_recipient_id=head.id)
        db_session.add(group)
        db_session.flush()
        db_session.add(GroupMember(group_id=group.id, individual_id=head.id,
                                   group_kind="household", role="head"))
        for other in others:
            db_session.add(GroupMember(group_id=group.id, individual_id=other.id,
                                       group_kind="household", role="child"))
        db_session.flush()
        return group

    return make


@pytest.fixture
def program(db_session):
    """program(**fields) -> an active individual program without a cap."""
    from portal.locations.services import Scope
    from portal.programs import services

    def make(*, status="active", **fields):
        n = next(_n)
        values = {"code": f"PRG{n}", "name": f"Program {n}", "beneficiary_kind": "individual"}
        values.update(fields)
        created = services.save_program(db_session, None, **values)
        if status in ("active", "closed"):
            services.activate_program(db_session, created)
        if status == "closed":
            services.close_program(db_session, created.id, scope=Scope(everything=True),
                                   actor_id=None)
        return created

    return make


@pytest.fixture
def everything():
    from portal.locations.services import Scope

    return Scope(everything=True)
