"""``upload.registry_checked_since``: when the oldest transaction still writing to the database
began, as an upload's validation began (PostgreSQL). A person that transaction registers has
an id below the highest one validation could see (``registry_checked_through``), and commits
after the search for look-alikes; the import looks again among the people created since
then, as it does among those with higher ids.

Revision ID: 0019
Revises: 0018
"""
import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("upload", sa.Column("registry_checked_since", sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table("upload") as batch:
        batch.drop_column("registry_checked_since")
