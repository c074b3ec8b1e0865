"""registry search: covering search indexes on living people, default member roles

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-27 02:50:00

Name search is a prefix range on ``individual.name_key`` ordered by it. SQLite compares
text in binary order; PostgreSQL compares in the database collation, where a range is not
a prefix, so the registry queries ``name_key COLLATE "C"`` and these indexes are built that
way on PostgreSQL, whatever collation the database was created with.

A field officer's searches are limited to the villages of their area: indexes led by the
village let a search and its count seek into each village instead of walking the country.
All are partial (living people only), as every registry query is.
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0002'
branch_labels = None
depends_on = None

DEFAULT_MEMBER_ROLES = [
    ("head", "Head"), ("spouse", "Spouse"), ("child", "Child"), ("parent", "Parent"),
    ("grandparent", "Grandparent"), ("sibling", "Sibling"), ("other_relative", "Other relative"),
    ("not_related", "Not related"), ("member", "Member"),
]


# (name, columns): partial indexes on living people. ``name_key`` is binary-ordered ("C").
SEARCH_INDEXES = (
    # Name prefix search in name order; the filter columns ride along so a search that also
    # filters by village, age or sex is answered from the index without visiting the table.
    ("ix_individual_search_name", ("name_key", "location_id", "birth_date", "sex")),
    # A field officer's villages (or a location filter), then name, or birth date and sex.
    ("ix_individual_location_name", ("location_id", "name_key", "sex", "birth_date")),
    ("ix_individual_location_birth", ("location_id", "birth_date", "sex")),
    # Age and birth-date filters over all locations.
    ("ix_individual_birth_sex", ("birth_date", "sex", "location_id")),
)


def upgrade():
    postgres = op.get_bind().dialect.name == "postgresql"
    # Superseded by ix_individual_search_name (and useless to COLLATE "C" queries on PostgreSQL).
    op.drop_index("ix_individual_name_key", table_name="individual")
    for name, columns in SEARCH_INDEXES:
        cols = ", ".join('name_key COLLATE "C"' if postgres and c == "name_key" else c for c in columns)
        op.execute(f"CREATE INDEX {name} ON individual ({cols}) WHERE deleted_at IS NULL")
    member_role = sa.table("member_role", sa.column("code", sa.String), sa.column("label", sa.String),
                           sa.column("position", sa.Integer), sa.column("active", sa.Boolean))
    op.bulk_insert(member_role, [{"code": c, "label": label, "position": i, "active": True}
                                 for i, (c, label) in enumerate(DEFAULT_MEMBER_ROLES)])


def downgrade():
    op.execute(sa.text("DELETE FROM member_role"))
    for name, _ in SEARCH_INDEXES:
        op.execute(f"DROP INDEX {name}")
    op.create_index("ix_individual_name_key", "individual", ["name_key"])
