"""The migrations build exactly the schema the models describe."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from portal.extensions import db
from portal.registry.models import SEARCH_INDEXES


def test_the_migrated_database_matches_the_models(db_session):
    context = MigrationContext.configure(db_session.connection(), opts={"compare_type": True})
    differences = [d for d in compare_metadata(context, db.metadata)
                   if not (d[0] == "remove_index" and d[1].name in SEARCH_INDEXES)]
    assert differences == []
