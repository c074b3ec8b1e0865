"""A staged row remembers that the user said it is no duplicate, for the name, birth date
and village they saw, so that fixing another cell does not bring the warning back.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("upload_row", sa.Column("not_duplicate", sa.String(length=16), nullable=True))


def downgrade():
    with op.batch_alter_table("upload_row") as batch:
        batch.drop_column("not_duplicate")
