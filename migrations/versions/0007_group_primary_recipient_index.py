"""Index group.primary_recipient_id: removing a person must not scan every group.

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_group_primary_recipient_id", "group", ["primary_recipient_id"])


def downgrade():
    op.drop_index("ix_group_primary_recipient_id", table_name="group")
