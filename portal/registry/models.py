"""The registry: individuals, groups (households, cooperatives) and their members.

Invariants the database holds itself: one national ID per living person, a person in at
most one household, one head per household, one membership per (group, person).
"""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (JSON, Boolean, CheckConstraint, Date, DateTime, ForeignKey, Index,
                        Integer, String, UniqueConstraint, func, text)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.audit.models import Audited
from portal.extensions import db

SEXES = {"F": "Female", "M": "Male", "O": "Other"}
GROUP_KINDS = {"household": "Household", "cooperative": "Cooperative", "other": "Other group"}
FIELD_TYPES = ("text", "integer", "decimal", "boolean", "date", "choice")


# Search indexes with a per-dialect collation, created by migrations 0005 and 0009 only:
# search_name and location_birth are partial (living people); location_name and birth_sex
# also hold deleted people, with deleted_at as their last column.
SEARCH_INDEXES = frozenset({"ix_individual_search_name", "ix_individual_location_name",
                            "ix_individual_location_birth", "ix_individual_birth_sex"})


def full_name(first: str | None, middle: str | None, last: str | None) -> str:
    """A person's name as shown (and as their audit entries' summary)."""
    return " ".join(p for p in (first, middle, last) if p)


class Individual(Audited, db.Model):
    __pii__ = {"national_id", "phone"}
    __audit_exclude__ = {"version", "name_key", "created_at", "updated_at"}
    __table_args__ = (
        CheckConstraint("sex IN ('F', 'M', 'O')", name="sex"),
        # A national ID belongs to one living person; deleted people keep theirs for history.
        Index("uq_individual_national_id_live", "national_id", unique=True,
              sqlite_where=text("deleted_at IS NULL AND national_id IS NOT NULL"),
              postgresql_where=text("deleted_at IS NULL AND national_id IS NOT NULL")),
        # Searches and lists by name, village or birth date use the indexes of migrations
        # 0005 and 0009 (ix_individual_search_name and friends, name_key in binary order),
        # which replace plain name_key, location_id and birth_date indexes.
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    first_name: Mapped[str] = mapped_column(String(80))
    middle_name: Mapped[str | None] = mapped_column(String(80))
    last_name: Mapped[str] = mapped_column(String(80))
    # Lower-cased, accent-free "last first middle", for indexed prefix search.
    name_key: Mapped[str] = mapped_column(String(250), default="")
    sex: Mapped[str] = mapped_column(String(1))
    birth_date: Mapped[date] = mapped_column(Date)
    national_id_type: Mapped[str | None] = mapped_column(String(30))
    national_id: Mapped[str | None] = mapped_column(String(40))
    phone: Mapped[str | None] = mapped_column(String(30))
    location_id: Mapped[int] = mapped_column(ForeignKey("location.id", ondelete="RESTRICT"))
    custom: Mapped[dict] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, onupdate=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime)

    location = relationship("Location", lazy="joined")
    memberships: Mapped[list["GroupMember"]] = relationship(back_populates="individual")

    __mapper_args__ = {"version_id_col": version}

    @property
    def full_name(self) -> str:
        return full_name(self.first_name, self.middle_name, self.last_name)

    def __str__(self) -> str:
        return self.full_name


class Group(Audited, db.Model):
    __tablename__ = "group"
    __audit_exclude__ = {"version", "created_at"}
    __table_args__ = (
        CheckConstraint("kind IN ('household', 'cooperative', 'other')", name="kind"),
        Index("ix_group_location_id", "location_id"),
        Index("ix_group_primary_recipient_id", "primary_recipient_id"),  # deleting a person looks here
        Index("ix_group_name", "name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(12))
    location_id: Mapped[int] = mapped_column(ForeignKey("location.id", ondelete="RESTRICT"))
    primary_recipient_id: Mapped[int | None] = mapped_column(
        ForeignKey("individual.id", ondelete="SET NULL", use_alter=True))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime)

    location = relationship("Location", lazy="joined")
    primary_recipient = relationship("Individual", foreign_keys=[primary_recipient_id])
    members: Mapped[list["GroupMember"]] = relationship(
        back_populates="group", cascade="all, delete-orphan", order_by="GroupMember.id")

    __mapper_args__ = {"version_id_col": version}

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class GroupMember(Audited, db.Model):
    __tablename__ = "group_member"
    __table_args__ = (
        UniqueConstraint("group_id", "individual_id"),
        # At most one household per person (cooperatives are not limited).
        Index("uq_group_member_one_household", "individual_id", unique=True,
              sqlite_where=text("group_kind = 'household'"),
              postgresql_where=text("group_kind = 'household'")),
        # One head per household.
        Index("uq_group_member_one_head", "group_id", unique=True,
              sqlite_where=text("role = 'head' AND group_kind = 'household'"),
              postgresql_where=text("role = 'head' AND group_kind = 'household'")),
        Index("ix_group_member_individual_id", "individual_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("group.id", ondelete="CASCADE"))
    individual_id: Mapped[int] = mapped_column(ForeignKey("individual.id", ondelete="CASCADE"))
    # Copied from the group so the database can hold the one-household rule.
    group_kind: Mapped[str] = mapped_column(String(12))
    role: Mapped[str] = mapped_column(String(30))

    group: Mapped[Group] = relationship(back_populates="members")
    individual: Mapped[Individual] = relationship(back_populates="memberships", lazy="joined")

    def __str__(self) -> str:
        return f"{self.individual_id} as {self.role} in group {self.group_id}"


class MemberRole(Audited, db.Model):
    """The roles a member can hold in a group; admins edit the list."""

    __tablename__ = "member_role"
    code: Mapped[str] = mapped_column(String(30), primary_key=True)
    label: Mapped[str] = mapped_column(String(60))
    position: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    def __str__(self) -> str:
        return self.label


DEFAULT_MEMBER_ROLES = [
    ("head", "Head"), ("spouse", "Spouse"), ("child", "Child"), ("parent", "Parent"),
    ("grandparent", "Grandparent"), ("sibling", "Sibling"), ("other_relative", "Other relative"),
    ("not_related", "Not related"), ("member", "Member"),
]


class CustomField(Audited, db.Model):
    """An extra field defined by an admin, for individuals (program_id empty) or for the
    beneficiaries of one program. Values live in the owner's ``custom`` JSON."""

    __tablename__ = "custom_field"
    __table_args__ = (
        UniqueConstraint("program_id", "name"),
        CheckConstraint("type IN ('text', 'integer', 'decimal', 'boolean', 'date', 'choice')", name="type"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    program_id: Mapped[int | None] = mapped_column(
        ForeignKey("program.id", ondelete="CASCADE"))  # created by migration 0003
    name: Mapped[str] = mapped_column(String(40))
    label: Mapped[str] = mapped_column(String(80))
    type: Mapped[str] = mapped_column(String(10))
    required: Mapped[bool] = mapped_column(Boolean, default=False)
    unique: Mapped[bool] = mapped_column(Boolean, default=False)
    pattern: Mapped[str | None] = mapped_column(String(200))
    choices: Mapped[list] = mapped_column(JSON, default=list)
    position: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    def __str__(self) -> str:
        return self.label
