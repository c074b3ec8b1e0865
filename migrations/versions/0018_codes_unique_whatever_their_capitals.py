"""Program, institution and scheme codes are unique whatever their capitals, in the database
too: the form's check refuses "ct1" when "CT1" exists, but two people saving "CT1" and "ct1"
at the same moment both passed it, and the unique index on the code as typed let both in.
An index on the lower-case code now refuses the second (the portal's answer to any such
race: "someone else saved the same code at the same moment").

A database that already holds two codes differing only in capitals stops the upgrade with
their names, to be renamed first: which of the two is the real one is not the migration's
to decide.

Revision ID: 0018
Revises: 0017
"""
import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TABLES = ("institution", "scheme", "program")


def upgrade():
    connection = op.get_bind()
    for table in TABLES:
        clashes = connection.execute(sa.text(
            f"SELECT min(code), max(code) FROM {table} GROUP BY lower(code) HAVING count(*) > 1 "
            "ORDER BY 1")).all()
        if clashes:
            pairs = "; ".join(f"{first} and {last}" for first, last in clashes)
            raise RuntimeError(f"These {table} codes differ only in capitals: {pairs}. Rename one "
                               "of each, then upgrade again.")
        op.create_index(f"uq_{table}_code_folded", table, [sa.text("lower(code)")], unique=True)


def downgrade():
    for table in TABLES:
        op.drop_index(f"uq_{table}_code_folded", table_name=table)
