"""A staged row flagged as looking like another row of its file names that row in a column
of its own, so that the warning is checked again when that row changes or is dropped.
(Indexed for the few rows that have one: an index of every row's birth date, to find a fixed
row's look-alikes, made validating 100,000 rows 0.8 s slower, more than scanning costs a fix.)

Revision ID: 0011
Revises: 0010
"""
import re

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


# The warning as portal.imports.duplicates.twin_warning writes it (copied: a migration keeps
# working whatever the code becomes).
_TWIN_ROW = re.compile(r"Probably the same person as row (\d+) ")


def upgrade():
    op.add_column("upload_row", sa.Column("twin_row", sa.Integer(), nullable=True))
    # Rows of uploads not yet imported that already carry such a warning name their row too.
    connection = op.get_bind()
    flagged = connection.execute(sa.text(
        "SELECT id, warning FROM upload_row WHERE warning LIKE 'Probably the same person as row %'")).all()
    twins = [{"id": row_id, "twin": int(found.group(1))} for row_id, warning in flagged
             if (found := _TWIN_ROW.match(warning))]
    if twins:
        connection.execute(sa.text("UPDATE upload_row SET twin_row = :twin WHERE id = :id"), twins)
    op.create_index("ix_upload_row_upload_id_twin_row", "upload_row", ["upload_id", "twin_row"],
                    sqlite_where=sa.text("twin_row IS NOT NULL"),
                    postgresql_where=sa.text("twin_row IS NOT NULL"))


def downgrade():
    op.drop_index("ix_upload_row_upload_id_twin_row", table_name="upload_row")
    with op.batch_alter_table("upload_row") as batch:
        batch.drop_column("twin_row")
