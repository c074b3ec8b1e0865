"""Users and roles. Users are disabled, never deleted, so history keeps its actors."""
from __future__ import annotations

from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Integer, String, Table, func
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from portal.extensions import db
from portal.audit.models import Audited

# scrypt: memory-hard, Werkzeug's default. Tests lower the cost; production never does.
PASSWORD_HASH_METHOD = "scrypt"

user_role = Table(
    "user_role", db.metadata,
    Column("user_id", ForeignKey("user.id", ondelete="CASCADE"), primary_key=True),
    Column("role_id", ForeignKey("role.id", ondelete="CASCADE"), primary_key=True),
)

user_location = Table(
    "user_location", db.metadata,
    Column("user_id", ForeignKey("user.id", ondelete="CASCADE"), primary_key=True),
    Column("location_id", ForeignKey("location.id", ondelete="CASCADE"), primary_key=True),
)


class Role(Audited, db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    label: Mapped[str] = mapped_column(String(80))
    grants: Mapped[list["RolePermission"]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="RolePermission.permission")

    @property
    def permissions(self) -> set[str]:
        return {g.permission for g in self.grants}

    def __str__(self) -> str:
        return self.label


class RolePermission(db.Model):
    role_id: Mapped[int] = mapped_column(ForeignKey("role.id", ondelete="CASCADE"), primary_key=True)
    permission: Mapped[str] = mapped_column(String(40), primary_key=True)

    def __str__(self) -> str:  # how the audit log names a grant added to or removed from a role
        return self.permission


class User(Audited, UserMixin, db.Model):
    __audit_exclude__ = {"password_hash", "failed_logins", "last_login_at", "session_version"}

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    all_locations: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Bumped on password change or disable: every older session stops working.
    session_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    roles: Mapped[list[Role]] = relationship(secondary=user_role, lazy="selectin", order_by=Role.name)
    locations: Mapped[list["Location"]] = relationship(  # noqa: F821
        secondary=user_location, lazy="selectin", order_by="Location.code")

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password, method=PASSWORD_HASH_METHOD)
        self.session_version = (self.session_version or 0) + 1

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return self.active

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"

    # What ``load_user`` read for the signed-in user in the same statement as the user,
    # so that a request need not load roles and grants to check a permission.
    granted_permissions = None  # frozenset[str] once loaded

    @property
    def permissions(self) -> frozenset[str]:
        if self.granted_permissions is not None and "roles" not in self.__dict__:
            return self.granted_permissions
        # Roles loaded (say, being edited): they are the truth.
        return frozenset(p for role in self.roles for p in role.permissions)

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    def __str__(self) -> str:
        return self.name


class SignIn(db.Model):
    """One signed-in session, known to the server so that signing out ends it there too: a
    copy of the cookie taken before (a shared tablet's browser profile, a proxy's log) signs
    nobody in afterwards. The cookie holds the token; this table only its hash. Signing in
    and out is in the audit log as entries on the user (``start_sign_in``, ``end_sign_in``)."""
    __tablename__ = "sign_in"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
