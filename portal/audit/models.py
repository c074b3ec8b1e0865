"""The audit log: one row per created, changed or deleted entity, written by a flush hook
so no service can forget it."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from portal.extensions import db


class Audited:
    """Mixin: changes to these models are written to the audit log on flush."""

    __audit_exclude__: set[str] = set()
    # Fields shown masked in the audit log to users without individual.view_pii.
    __pii__: set[str] = set()


class AuditEntry(db.Model):
    __tablename__ = "audit_entry"
    __table_args__ = (
        Index("ix_audit_entry_entity", "entity_type", "entity_id"),
        Index("ix_audit_entry_at", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(10))  # create, update, delete, or a verb
    entity_type: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str] = mapped_column(String(40))
    summary: Mapped[str] = mapped_column(String(255), default="")
    changes: Mapped[dict] = mapped_column(JSON, default=dict)
