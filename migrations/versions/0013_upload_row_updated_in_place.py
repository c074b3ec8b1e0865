"""Marking a staged row imported rewrites it in place (PostgreSQL's HOT update): no index of
``upload_row`` holds ``status`` or ``individual_id`` any more, and on PostgreSQL half of each
page is left free for the new versions of its rows.

Each of 100,000 rows marked imported wrote an entry into all seven of the table's indexes, and
the two connections that create a large import's people waited on each other's index pages:
the import took 10.9-11.6 s, and 7.6-8.7 s without (``python -m bench.upload`` on PostgreSQL).
The rows of an upload are found by ``(upload_id, row_number)`` and their status read there; no
query looks rows up by person, and the portal never deletes a person outright (a delete is
soft), so the foreign key's ON DELETE SET NULL does not need an index of its own.

Revision ID: 0013
Revises: 0012
"""
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_index("ix_upload_row_upload_id_status", table_name="upload_row")
    op.drop_index("ix_upload_row_individual_id", table_name="upload_row")
    if op.get_bind().dialect.name == "postgresql":
        # (Pages written from now on; rows staged before keep their pages.)
        op.execute("ALTER TABLE upload_row SET (fillfactor = 50)")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE upload_row RESET (fillfactor)")
    op.create_index("ix_upload_row_individual_id", "upload_row", ["individual_id"])
    op.create_index("ix_upload_row_upload_id_status", "upload_row", ["upload_id", "status"])
