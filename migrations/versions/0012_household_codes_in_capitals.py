"""Household codes in capitals, as the registry writes and looks them up: an import kept a
code as its file spelled it ("hh-12"), which no search, move or filter typed in the portal
then found, and beside which "HH-12" could be created.

Groups whose code in capitals is free take it (one that is taken keeps its code, to be
renamed by hand), and so do the staged rows of uploads not yet imported, which would
otherwise not match their household and create it again.

Revision ID: 0012
Revises: 0011
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# portal.imports.services.OPEN_STATUSES, copied: a migration keeps working whatever the code becomes.
_OPEN = "('valid', 'error', 'duplicate', 'skipped')"


def upgrade():
    connection = op.get_bind()
    taken = set(connection.execute(sa.text('SELECT code FROM "group"')).scalars())
    for group_id, code in connection.execute(sa.text(
            'SELECT id, code FROM "group" WHERE code <> UPPER(code) ORDER BY id')).all():
        if code.upper() not in taken and len(code.upper()) <= 40:
            connection.execute(sa.text('UPDATE "group" SET code = :code WHERE id = :id'),
                               {"code": code.upper(), "id": group_id})
            taken.add(code.upper())
    json_value = "CAST(:cleaned AS json)" if connection.dialect.name == "postgresql" else ":cleaned"
    for row_id, code, cleaned in connection.execute(sa.text(
            "SELECT id, household_code, cleaned FROM upload_row WHERE household_code <> "
            f"UPPER(household_code) AND status IN {_OPEN}")).all():
        values = json.loads(cleaned) if isinstance(cleaned, str) else dict(cleaned or {})
        values["household_code"] = code.upper()[:40]
        connection.execute(sa.text(
            f"UPDATE upload_row SET household_code = :code, cleaned = {json_value} WHERE id = :id"),
            {"code": code.upper()[:40], "cleaned": json.dumps(values), "id": row_id})


def downgrade():
    pass  # which codes were written in small letters is not kept
