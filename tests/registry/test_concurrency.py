"""Two people saving the same person at the same moment, on separate connections."""
from datetime import date

import pytest
from sqlalchemy.orm import Session

from portal.extensions import db
from portal.locations.services import Scope
from portal.registry import services
from portal.registry.models import Individual

pytestmark = pytest.mark.live

RAW = {"first_name": "Chikondi", "last_name": "Banda", "sex": "F", "birth_date": "1990-01-01",
       "national_id": "MW4444444", "location": "NV1"}


def test_the_later_of_two_simultaneous_saves_is_refused_by_the_version_check(country, make_individual, db_session):
    person = make_individual("Chikondi", "Banda", location=country["NV1"], birth_date=date(1990, 1, 1),
                             national_id="MW4444444")
    db_session.commit()
    everything = Scope(everything=True)
    with Session(db.engine, expire_on_commit=False) as first, Session(db.engine, expire_on_commit=False) as second:
        mine = first.get(Individual, person.id)
        theirs = second.get(Individual, person.id)
        first.commit()
        second.commit()  # both opened version 1 and now edit it at the same time
        services.update_individual(second, theirs, {**RAW, "phone": "0882000222"}, scope=everything,
                                   expected_version=1, actor_id=None)
        second.commit()
        with pytest.raises(services.ConflictError, match="changed by someone else"):
            services.update_individual(first, mine, {**RAW, "phone": "0991000111"}, scope=everything,
                                       expected_version=1, actor_id=None)
        first.rollback()
    db_session.commit()  # end the read transaction: SQLite would keep showing its snapshot
    saved = db_session.get(Individual, person.id)
    assert saved.phone == "0882000222" and saved.version == 2
