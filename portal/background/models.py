"""The durable mirror of an RQ job: Redis forgets results in minutes, this row does not."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db

STATUSES = ("queued", "running", "succeeded", "failed")


class JobRun(db.Model):
    __tablename__ = "job_run"
    __table_args__ = (Index("ix_job_run_status", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(10), default="queued")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[dict] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    rq_id: Mapped[str | None] = mapped_column(String(64))
    # Only one unfinished job per key (e.g. "upload:12"): a second run is refused.
    lock_key: Mapped[str | None] = mapped_column(String(80))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)

    created_by = relationship("User", lazy="joined")

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")

    @property
    def percent(self) -> int:
        if self.status == "succeeded":
            return 100
        return int(100 * self.done / self.total) if self.total else 0
