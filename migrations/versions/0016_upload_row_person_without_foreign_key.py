"""``upload_row.individual_id`` keeps no foreign key: it records which person a row created or
updates, as the audit log records the objects it names.

The key's check was one lookup of the person for each row the import marks imported: 0.3 s of
PostgreSQL's time for 100,000 rows (``python -m bench.upload``), for a rule that nothing
needs. The portal never deletes a person outright (a delete is soft); a person removed by hand
in the database leaves the row naming a missing person, which every query of the rows already
reads as gone (outer joins: "deleted meanwhile"; inner joins: not listed), as it read the NULL
that ON DELETE SET NULL wrote.

Revision ID: 0016
Revises: 0015
"""
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("upload_row") as batch:
        batch.drop_constraint("fk_upload_row_individual_id_individual", type_="foreignkey")


def downgrade():
    op.execute("UPDATE upload_row SET individual_id = NULL "
               "WHERE individual_id NOT IN (SELECT id FROM individual)")
    with op.batch_alter_table("upload_row") as batch:
        batch.create_foreign_key("fk_upload_row_individual_id_individual", "individual",
                                 ["individual_id"], ["id"], ondelete="SET NULL")
