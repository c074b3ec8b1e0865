"""Flask extensions, created here and bound to the app in ``create_app``."""
from __future__ import annotations

from flask_compress import Compress
from flask_htmx import HTMX
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

# Named constraints make migrations reviewable and let SQLite batch-alter tables.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
htmx = HTMX()
compress = Compress()


@event.listens_for(Engine, "connect")
def _session_settings(dbapi_connection, _record):
    """PostgreSQL: times in UTC, as the portal's own are (``portal.clock``): a column's
    ``now()`` default and a transaction's start would otherwise be the server's local time,
    whatever zone it was installed with.

    SQLite: WAL so the worker writes while pages read, a busy wait instead of instant
    'database is locked', foreign keys on, and SQLAlchemy (not pysqlite) owning transactions."""
    if type(dbapi_connection).__module__.startswith("psycopg"):
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
        dbapi_connection.commit()
        return
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


# Set by the worker: a job's transactions all write.
sqlite_immediate_everywhere = False


@event.listens_for(Engine, "begin")
def _begin(conn):
    """SQLite: a transaction that will write takes the write lock when it starts (BEGIN
    IMMEDIATE), so it waits its turn (busy_timeout) instead of failing with 'database is
    locked' when its read turns into a write after another process committed. Page reads
    (GET) stay deferred: under WAL they never block and are never blocked.

    PostgreSQL: a page's transaction waits at most ``DB_LOCK_TIMEOUT_SECONDS`` for a row
    another save or job holds, then is refused with a message (see web.py), instead of
    hanging until the web server kills it. Jobs wait as long as they must."""
    from flask import current_app, has_request_context, request

    if conn.dialect.name == "postgresql":
        if has_request_context():
            milliseconds = int(current_app.config["DB_LOCK_TIMEOUT_SECONDS"] * 1000)
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {milliseconds}")
        return
    if conn.dialect.name != "sqlite":
        return
    writes = sqlite_immediate_everywhere or (
        has_request_context() and request.method not in ("GET", "HEAD", "OPTIONS"))
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")
