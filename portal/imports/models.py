"""An upload and its staged rows.

A file is read into ``UploadRow``s (raw text as read, cleaned values, errors by field) so the
user can fix them in place before anything touches the registry. Importing moves a row to
``imported`` in the same transaction that creates its person, so an import can be re-run or
resumed after a crash without duplicating or losing anyone.
"""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (JSON, Boolean, Date, DateTime, Float, ForeignKey, Index, Integer, String,
                        UniqueConstraint, func, text)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db

UPLOAD_STATUSES = ("uploaded", "mapping", "validating", "validated", "fixing", "importing",
                   "imported", "failed")
ROW_STATUSES = ("valid", "error", "duplicate", "dropped", "imported", "skipped")
DUPLICATE_POLICIES = {"update": "Update the existing person",
                      "skip": "Skip the row",
                      "error": "Treat it as an error"}


class Upload(db.Model):
    __table_args__ = (Index("ix_upload_sha256", "sha256"),
                      Index("ix_upload_created_by_id", "created_by_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    file_name: Mapped[str] = mapped_column(String(255))
    stored_path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(4))  # csv | xlsx
    status: Mapped[str] = mapped_column(String(12), default="uploaded")
    message: Mapped[str] = mapped_column(String(2000), default="")
    # The area of the upload: the uploader's single location, or none (seen by the uploader
    # and by users who see everything).
    location_id: Mapped[int | None] = mapped_column(ForeignKey("location.id", ondelete="SET NULL"))
    duplicate_policy: Mapped[str] = mapped_column(String(6), default="error")
    day_first: Mapped[bool | None] = mapped_column(Boolean)
    program_id: Mapped[int | None] = mapped_column(Integer)
    enrol_status: Mapped[str | None] = mapped_column(String(12))
    headers: Mapped[list] = mapped_column(JSON, default=list)
    # file header -> field name ("" ignores the column)
    mapping: Mapped[dict] = mapped_column(JSON, default=dict)
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    # The registry's highest person id when validation began looking for probable
    # duplicates: the import looks again among the people registered after it.
    registry_checked_through: Mapped[int | None] = mapped_column(Integer)
    # ... and when the oldest transaction then still writing began (PostgreSQL): the people
    # it registered have lower ids, and the import looks again among those created since.
    registry_checked_since: Mapped[datetime | None] = mapped_column(DateTime)
    validate_seconds: Mapped[float | None] = mapped_column(Float)
    import_seconds: Mapped[float | None] = mapped_column(Float)
    job_run_id: Mapped[int | None] = mapped_column(ForeignKey("job_run.id", ondelete="SET NULL"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    imported_at: Mapped[datetime | None] = mapped_column(DateTime)

    created_by = relationship("User", lazy="joined")
    job_run = relationship("JobRun", lazy="joined")

    @property
    def busy(self) -> bool:
        return self.status in ("validating", "fixing", "importing")

    def __str__(self) -> str:
        return f"Upload #{self.id} {self.file_name}"


class UploadRow(db.Model):
    __tablename__ = "upload_row"
    __table_args__ = (
        # Rows of an upload are read by row number. No index holds status or individual_id,
        # so marking a row imported rewrites it in place (migration 0013).
        UniqueConstraint("upload_id", "row_number"),
        Index("ix_upload_row_upload_id_national_id", "upload_id", "national_id"),
        Index("ix_upload_row_upload_id_household_code", "upload_id", "household_code"),
        # The rows flagged as looking like a row that changed are found again.
        Index("ix_upload_row_upload_id_twin_row", "upload_id", "twin_row",
              sqlite_where=text("twin_row IS NOT NULL"), postgresql_where=text("twin_row IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # No foreign key (migration 0017): its check cost every staged row a lookup of the upload,
    # and uploads are never deleted.
    upload_id: Mapped[int] = mapped_column(Integer)
    row_number: Mapped[int] = mapped_column(Integer)  # the line or sheet row in the file
    raw: Mapped[dict] = mapped_column(JSON, default=dict)  # field -> text as read
    cleaned: Mapped[dict | None] = mapped_column(JSON)  # values ready for Individual(**)
    errors: Mapped[dict] = mapped_column(JSON, default=dict)  # field -> message
    warning: Mapped[str | None] = mapped_column(String(500))  # probable duplicate of ...
    status: Mapped[str] = mapped_column(String(10))
    action: Mapped[str | None] = mapped_column(String(6))  # new | update
    national_id: Mapped[str | None] = mapped_column(String(40))
    household_code: Mapped[str | None] = mapped_column(String(40))
    role: Mapped[str | None] = mapped_column(String(30))  # in the household, as checked
    primary: Mapped[bool] = mapped_column(Boolean, default=False)  # the primary recipient
    birth_date: Mapped[date | None] = mapped_column(Date)  # as checked, for the import
    # The person the row created or updates. No foreign key (migration 0016): like the audit
    # log's, the record names a person, and a person is never deleted outright.
    individual_id: Mapped[int | None] = mapped_column(Integer)
    # Confirmed "not a duplicate": the identity_key of the row the user saw when they said so.
    not_duplicate: Mapped[str | None] = mapped_column(String(16))
    # The row of the same file this row's warning says it looks like (duplicates.twin_warning).
    twin_row: Mapped[int | None] = mapped_column(Integer)


class SavedMapping(db.Model):
    """Column mapping kept for the next file with the same headers."""

    __tablename__ = "saved_mapping"
    __table_args__ = (UniqueConstraint("signature"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    signature: Mapped[str] = mapped_column(String(64))  # hash of the normalised headers
    mapping: Mapped[dict] = mapped_column(JSON, default=dict)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
