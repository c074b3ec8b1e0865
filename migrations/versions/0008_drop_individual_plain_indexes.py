"""Drop individual's plain village and birth-date indexes: the search indexes cover them.

Revision ID: 0008
Revises: 0007

Every query on people reads living ones, which the partial search indexes of 0005 serve
(ix_individual_location_birth leads with the village, ix_individual_birth_sex with the birth
date). The plain indexes only cost: each person an upload adds meant two more random index
inserts, a fifth of the import's time. Locations are never deleted, so the foreign key from
``individual.location_id`` needs no index of its own.
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_index("ix_individual_location_id", table_name="individual")
    op.drop_index("ix_individual_birth_date", table_name="individual")


def downgrade():
    op.create_index("ix_individual_birth_date", "individual", ["birth_date"])
    op.create_index("ix_individual_location_id", "individual", ["location_id"])
