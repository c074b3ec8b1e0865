"""People's village-and-name and birth-date indexes cover deleted people too, and replace the
plain village and birth-date indexes.

Migration 0005 made them partial (living people only) for registry search. Beneficiary lists
include people deleted since their enrolment, so they needed the plain ``location_id`` and
``birth_date`` indexes as well: seven secondary indexes that every new person writes (the
insert of an upload's 100,000 people took 2.3-3.3 s with them, 1.9-2.4 s without). With ``deleted_at`` as
their last column the two indexes answer both: search's ``deleted_at IS NULL`` is read from
the index, which stays covering, and a list that includes deleted people has the same
leading columns the plain indexes gave it.

Revision ID: 0009
Revises: 0008
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# (name, columns): "name_key" is binary-ordered on PostgreSQL (see migration 0005).
BOTH = (
    ("ix_individual_location_name", ("location_id", "name_key", "sex", "birth_date")),
    ("ix_individual_birth_sex", ("birth_date", "sex", "location_id")),
)
PLAIN = (("ix_individual_location_id", "location_id"), ("ix_individual_birth_date", "birth_date"))


def _columns(columns) -> str:
    postgres = op.get_bind().dialect.name == "postgresql"
    return ", ".join('name_key COLLATE "C"' if postgres and c == "name_key" else c for c in columns)


def upgrade():
    for name, columns in BOTH:
        op.execute(f"DROP INDEX {name}")
        op.execute(f"CREATE INDEX {name} ON individual ({_columns(columns + ('deleted_at',))})")
    for name, _column in PLAIN:
        op.drop_index(name, table_name="individual")
    _analyze()


def downgrade():
    for name, column in PLAIN:
        op.create_index(name, "individual", [column])
    for name, columns in BOTH:
        op.execute(f"DROP INDEX {name}")
        op.execute(f"CREATE INDEX {name} ON individual ({_columns(columns)}) WHERE deleted_at IS NULL")
    _analyze()


def _analyze():
    """SQLite keeps no statistics for a new index until ANALYZE, and without them it chose the
    wrong index for some searches (a p95 of 43-47 ms instead of 8-9 ms over a million people)."""
    op.execute("ANALYZE individual")
