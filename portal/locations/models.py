"""The location hierarchy Region > District > Ward > Village.

Each row stores its materialised path of ids ("/3/41/310/") so that "at or below" is an
indexed prefix match, whatever the depth.
"""
from __future__ import annotations

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.audit.models import Audited
from portal.extensions import db

KINDS = ("region", "district", "ward", "village")


class Location(Audited, db.Model):
    __table_args__ = (
        CheckConstraint("kind IN ('region', 'district', 'ward', 'village')", name="kind"),
        Index("ix_location_path", "path"),
        Index("ix_location_parent_id", "parent_id"),
    )
    __audit_exclude__ = {"path"}

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(10))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("location.id", ondelete="RESTRICT"))
    path: Mapped[str] = mapped_column(String(120), default="")

    parent: Mapped["Location | None"] = relationship(remote_side=[id], lazy="joined", innerjoin=False)

    @property
    def depth(self) -> int:
        return KINDS.index(self.kind)

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"
