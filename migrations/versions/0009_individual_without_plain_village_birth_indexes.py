"""Living people's village and birth-date lookups use the partial search indexes of
migration 0005, which begin with the same column: the plain indexes on
``individual.location_id`` and ``individual.birth_date`` only cost every new or moved
person two more index entries (an upload of 100,000 people 0.5-1 s).

Every query of the app on these columns is on living people (``deleted_at IS NULL``), which
the partial indexes serve. Nothing deletes a location, so the foreign key from a person's
village never has to look people up by village.

Revision ID: 0009
Revises: 0008
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_index("ix_individual_location_id", table_name="individual")
    op.drop_index("ix_individual_birth_date", table_name="individual")


def downgrade():
    op.create_index("ix_individual_birth_date", "individual", ["birth_date"])
    op.create_index("ix_individual_location_id", "individual", ["location_id"])
