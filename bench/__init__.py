"""Bench scripts: ``python -m bench.<name> [--database-url URL]`` print figures (``bench.run``
runs them all). Each defaults to a SQLite file under ``instance/bench/``."""
from __future__ import annotations

import os
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "instance" / "bench"


def default_database_url(name: str) -> str:
    """A SQLite file under instance/bench/ for one bench (created on first use)."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{BENCH_DIR / (name + '.db')}"


# The server settings that move bulk figures most: a figure is only comparable with another
# measured under the same ones (the README states the bench's).
_POSTGRESQL_SETTINGS = ("shared_buffers", "max_wal_size", "work_mem", "wal_compression")


def measured_on(connection) -> str:
    """What a run's figures were measured on, printed beside them: the database and, for
    PostgreSQL, its version and settings, and the machine's load average (other processes
    inflate wall-clock times)."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy import text

        settings = ", ".join(f"{name} {connection.execute(text(f'SHOW {name}')).scalar()}"
                             for name in _POSTGRESQL_SETTINGS)
        database = f"PostgreSQL {connection.execute(text('SHOW server_version')).scalar().split()[0]} ({settings})"
    else:
        import sqlite3

        database = f"SQLite {sqlite3.sqlite_version}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    machine = f"; load average {load:.2f} on {os.cpu_count()} cores" if load is not None else ""
    return f"measured on {database}{machine}"


def sqlalchemy_url(url: str) -> str:
    """postgresql:// (what people type) -> the psycopg 3 driver the portal uses."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return url


def remove_upload(session, upload_id: int, *, audit_after: int) -> None:
    """Take a bench's upload out again with its staged rows, its jobs and the audit entries
    written since ``audit_after`` (an entry id), so that every run starts the same."""
    from sqlalchemy import delete

    from portal.audit.models import AuditEntry
    from portal.background.models import JobRun
    from portal.imports.models import Upload, UploadRow

    session.execute(delete(AuditEntry).where(AuditEntry.id > audit_after))
    session.execute(delete(UploadRow).where(UploadRow.upload_id == upload_id))
    session.execute(delete(JobRun).where(JobRun.lock_key == f"upload:{upload_id}"))
    session.execute(delete(Upload).where(Upload.id == upload_id))
    session.commit()


def received_upload(session, path: Path, *, file_name: str, policy: str):
    """A bench's file received as the upload page receives it, and marked validating as
    starting its validation job would (the bench then validates it in its own process)."""
    from portal.imports import services

    upload = services.receive_upload(
        session, path=path, file_name=file_name, duplicate_policy=policy, day_first=None,
        program_id=None, enrol_status=None, area_id=None, actor_id=None, max_rows=500_000)
    upload.status = "validating"
    session.commit()
    return upload
