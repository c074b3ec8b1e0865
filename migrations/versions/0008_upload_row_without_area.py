"""Staged upload rows lose their area: the probable-duplicate search has its own temporary
tables since the search moved to a connection of its own, and nothing read the column.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("upload_row") as batch:
        batch.drop_column("area")


def downgrade():
    with op.batch_alter_table("upload_row") as batch:
        batch.add_column(sa.Column("area", sa.String(length=120), nullable=True))
