"""``upload_row.upload_id`` keeps no foreign key: an upload is never deleted (its history and
file stay), and its rows are only ever written by the job that holds the upload.

The key's check was one lookup of the upload, locking it, for each row staged: 22 ms of
PostgreSQL's time for every 5,000 rows copied in, 0.4-0.5 s for a 100,000-row file, on the
connection that stages rows while the file is still being read (validation took 0.2-0.3 s
less in runs of ``python -m bench.upload`` alternating with and without it). Its ON DELETE
CASCADE never ran: nothing deletes an upload.

Revision ID: 0017
Revises: 0016
"""
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("upload_row") as batch:
        batch.drop_constraint("fk_upload_row_upload_id_upload", type_="foreignkey")


def downgrade():
    op.execute("DELETE FROM upload_row WHERE upload_id NOT IN (SELECT id FROM upload)")
    with op.batch_alter_table("upload_row") as batch:
        batch.create_foreign_key("fk_upload_row_upload_id_upload", "upload", ["upload_id"], ["id"],
                                 ondelete="CASCADE")
