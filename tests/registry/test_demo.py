import random

from sqlalchemy import func, select

from portal.locations.services import Scope
from portal.registry import demo, services
from portal.registry.models import Group, GroupMember, Individual


def test_demo_people_live_in_valid_households_with_unique_ids(db_session, country, make_individual):
    villages = [country[c].id for c in ("NV1", "NV2", "SV1", "SV2")]
    summary = demo.build(db_session, random.Random(7), villages, households=60, people=270)
    assert summary == {"individuals": 270, "households": 60, "cooperatives": 2}
    households = db_session.scalars(select(Group).where(Group.kind == "household")).all()
    assert all(services.check_household(db_session, g) == [] for g in households)
    ids = db_session.scalars(select(Individual.national_id).where(Individual.national_id.is_not(None))).all()
    assert len(ids) == len(set(ids)) > 100
    heads = db_session.scalar(select(func.count()).where(GroupMember.role == "head"))
    assert heads == 60
    make_individual(location=country["NV1"])  # the id sequences moved past the bulk rows
    assert services.search_individuals(db_session, scope=Scope(everything=True), filters={"q": "banda"}).count > 0


def test_demo_names_are_the_same_for_the_same_seed():
    sizes = demo.household_sizes(random.Random(1), 10, 50)
    assert sum(sizes) == 50
    first = [p["name_key"] for people, _, _ in demo.generate(random.Random(3), sizes, [1],
                                                             first_individual_id=1, first_group_id=1)
             for p in people]
    again = [p["name_key"] for people, _, _ in demo.generate(random.Random(3), sizes, [1],
                                                             first_individual_id=1, first_group_id=1)
             for p in people]
    assert first == again and len(first) == 50
