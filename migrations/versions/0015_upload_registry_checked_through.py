"""``upload.registry_checked_through``: the registry's highest person id when the upload's
validation began looking for probable duplicates, so that its import can look again among
the people registered since (uploads validated before this migration are not looked at
again).

Revision ID: 0015
Revises: 0014
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("upload", sa.Column("registry_checked_through", sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table("upload") as batch:
        batch.drop_column("registry_checked_through")
