"""registry search: a binary-ordered name index on PostgreSQL, default member roles

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-27 02:50:00

Name search is a prefix range on ``individual.name_key`` ordered by it. SQLite compares
text in binary order, so its plain index (from 0002) serves both. PostgreSQL compares in
the database collation, where a range is not a prefix and the plain index cannot serve
``COLLATE "C"`` queries: the registry queries ``name_key COLLATE "C"`` and this index
answers them, whatever collation the database was created with.
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


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute('CREATE INDEX ix_individual_name_key_c ON individual (name_key COLLATE "C") '
                   'WHERE deleted_at IS NULL')
    member_role = sa.table("member_role", sa.column("code", sa.String), sa.column("label", sa.String),
                           sa.column("position", sa.Integer), sa.column("active", sa.Boolean))
    op.bulk_insert(member_role, [{"code": c, "label": label, "position": i, "active": True}
                                 for i, (c, label) in enumerate(DEFAULT_MEMBER_ROLES)])


def downgrade():
    op.execute(sa.text("DELETE FROM member_role"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_individual_name_key_c")
