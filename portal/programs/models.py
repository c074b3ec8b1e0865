"""Programs (benefit plans), the institutions and schemes they belong to, and beneficiaries.

Invariants the database holds itself: one program code (and one institution or scheme code)
whatever its capitals, one beneficiary record per (program,
person) and per (program, group), a beneficiary is either a person or a group, statuses are
known values. The cap (``max_beneficiaries``) is enforced in ``services.enrol`` and
``services.change_status`` under a lock on the program row.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (JSON, CheckConstraint, Date, DateTime, ForeignKey, Index, Integer,
                        Numeric, String, Text, func, or_, text)
from sqlalchemy.ext.hybrid import hybrid_method
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.audit.models import Audited
from portal.extensions import db

PROGRAM_STATUSES = {"draft": "Draft", "active": "Active", "closed": "Closed"}
BENEFICIARY_KINDS = {"individual": "Individuals", "group": "Groups (households)"}
INSTITUTION_KINDS = {"ministry": "Ministry", "agency": "Agency", "partner": "Partner",
                     "other": "Other"}
BENEFICIARY_STATUSES = {"potential": "Potential", "active": "Active", "suspended": "Suspended",
                        "graduated": "Graduated"}
# The statuses that take a place under the program's cap.
CAPPED_STATUSES = ("potential", "active", "suspended")
# from -> allowed targets; "removed" deletes the record (the audit log keeps it).
TRANSITIONS = {
    "potential": ("active", "removed"),
    "active": ("suspended", "graduated"),
    "suspended": ("active", "graduated"),
    "graduated": (),
}


class Institution(Audited, db.Model):
    """A ministry, agency or partner that runs programs."""

    __table_args__ = (
        CheckConstraint("kind IN ('ministry', 'agency', 'partner', 'other')", name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(160))
    kind: Mapped[str] = mapped_column(String(10), default="ministry")
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    def __str__(self) -> str:
        return self.name


class Scheme(Audited, db.Model):
    """A national social-protection scheme that groups programs."""

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(160))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    def __str__(self) -> str:
        return self.name


class Program(Audited, db.Model):
    __table_args__ = (
        CheckConstraint("beneficiary_kind IN ('individual', 'group')", name="beneficiary_kind"),
        CheckConstraint("status IN ('draft', 'active', 'closed')", name="status"),
        CheckConstraint("max_beneficiaries IS NULL OR max_beneficiaries >= 0",
                        name="max_beneficiaries"),
        CheckConstraint("date_to IS NULL OR date_from IS NULL OR date_to >= date_from",
                        name="period"),
        Index("ix_program_institution_id", "institution_id"),
        Index("ix_program_scheme_id", "scheme_id"),
    )
    __audit_exclude__ = {"version", "created_at"}

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(160))
    description: Mapped[str] = mapped_column(Text, default="")
    beneficiary_kind: Mapped[str] = mapped_column(String(10), default="individual")
    date_from: Mapped[date | None] = mapped_column(Date)
    date_to: Mapped[date | None] = mapped_column(Date)
    # None: no cap. Counts potential + active + suspended beneficiaries.
    max_beneficiaries: Mapped[int | None] = mapped_column(Integer)
    institution_id: Mapped[int | None] = mapped_column(
        ForeignKey("institution.id", ondelete="SET NULL"))
    scheme_id: Mapped[int | None] = mapped_column(ForeignKey("scheme.id", ondelete="SET NULL"))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3), default="")
    status: Mapped[str] = mapped_column(String(10), default="draft")
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)

    institution = relationship("Institution", lazy="joined")
    scheme = relationship("Scheme", lazy="joined")

    __mapper_args__ = {"version_id_col": version}

    @property
    def is_group(self) -> bool:
        return self.beneficiary_kind == "group"

    @property
    def is_closed(self) -> bool:
        return self.status == "closed"

    @hybrid_method
    def covers(self, day: date) -> bool:
        """Its coverage has not ended by ``day`` (a program without an end never ends); in a
        query, the same rule as a condition."""
        return self.date_to is None or self.date_to >= day

    @covers.expression
    def covers(cls, day: date):
        return or_(cls.date_to.is_(None), cls.date_to >= day)

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


# A code is unique whatever its capitals (migration 0018): the services' check refuses "ct1"
# beside "CT1", and these indexes refuse the second of two saved at the same moment.
for _model in (Institution, Scheme, Program):
    Index(f"uq_{_model.__tablename__}_code_folded", func.lower(_model.code), unique=True)


class Beneficiary(Audited, db.Model):
    __tablename__ = "beneficiary"
    __table_args__ = (
        # One record per (program, person) and per (program, group). Partial unique indexes
        # led by the subject: they also serve "programs of this person" and the cascades,
        # and an individual beneficiary never touches the group index (fewer index writes
        # when enrolling a hundred thousand people at once).
        Index("uq_beneficiary_individual_program", "individual_id", "program_id", unique=True,
              sqlite_where=text("individual_id IS NOT NULL"),
              postgresql_where=text("individual_id IS NOT NULL")),
        Index("uq_beneficiary_group_program", "group_id", "program_id", unique=True,
              sqlite_where=text("group_id IS NOT NULL"),
              postgresql_where=text("group_id IS NOT NULL")),
        CheckConstraint("(individual_id IS NULL) <> (group_id IS NULL)", name="one_subject"),
        CheckConstraint("status IN ('potential', 'active', 'suspended', 'graduated')",
                        name="status"),
        Index("ix_beneficiary_program_id_status", "program_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("program.id", ondelete="CASCADE"))
    individual_id: Mapped[int | None] = mapped_column(
        ForeignKey("individual.id", ondelete="CASCADE"))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("group.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(10), default="potential")
    custom: Mapped[dict] = mapped_column(JSON, default=dict)
    enrolled_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    program = relationship("Program")
    individual = relationship("Individual")
    group = relationship("Group")
    changes: Mapped[list["BeneficiaryStatusChange"]] = relationship(
        back_populates="beneficiary", cascade="all, delete-orphan", passive_deletes=True,
        order_by="BeneficiaryStatusChange.id")

    def __str__(self) -> str:
        who = f"individual {self.individual_id}" if self.individual_id else f"group {self.group_id}"
        return f"{who} in program {self.program_id} ({self.status})"


class BeneficiaryStatusChange(db.Model):
    """One status change in a beneficiary's timeline. The enrolment itself is the
    beneficiary's ``enrolled_at`` with the audit entry written at that instant (who, how),
    so enrolling 100,000 people writes 100,000 rows, not 200,000."""

    __tablename__ = "beneficiary_status_change"
    __table_args__ = (Index("ix_beneficiary_status_change_beneficiary_id", "beneficiary_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    beneficiary_id: Mapped[int] = mapped_column(ForeignKey("beneficiary.id", ondelete="CASCADE"))
    from_status: Mapped[str | None] = mapped_column(String(10))
    to_status: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(String(500), default="")
    effective_date: Mapped[date] = mapped_column(Date)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    beneficiary: Mapped[Beneficiary] = relationship(back_populates="changes")
    actor = relationship("User", lazy="joined")
