"""Settings read from the environment."""
import config


def test_an_operator_who_set_the_old_name_of_the_inline_fix_limit_keeps_their_limit(monkeypatch):
    monkeypatch.delenv("UPLOAD_FIX_INLINE_ROWS", raising=False)
    monkeypatch.setenv("UPLOAD_FIX_MAX_ROWS", "777")
    assert config.load()["UPLOAD_FIX_INLINE_ROWS"] == 777


def test_the_new_name_of_the_inline_fix_limit_wins_over_the_old(monkeypatch):
    monkeypatch.setenv("UPLOAD_FIX_MAX_ROWS", "777")
    monkeypatch.setenv("UPLOAD_FIX_INLINE_ROWS", "900")
    assert config.load()["UPLOAD_FIX_INLINE_ROWS"] == 900


def test_without_either_name_fixes_of_up_to_5000_rows_are_made_while_the_page_waits(monkeypatch):
    monkeypatch.delenv("UPLOAD_FIX_INLINE_ROWS", raising=False)
    monkeypatch.delenv("UPLOAD_FIX_MAX_ROWS", raising=False)
    assert config.load()["UPLOAD_FIX_INLINE_ROWS"] == 5000


def test_a_postgresql_connection_keeps_time_in_utc_whatever_zone_the_server_was_given():
    """A ministry's server set to its local zone: ``now()`` defaults (created_at) must still be
    the naive UTC that the portal's own times are."""
    import os
    from datetime import timedelta

    import pytest
    from sqlalchemy import create_engine, text

    from portal import extensions  # noqa: F401  (the connection settings it installs)
    from portal.clock import now

    url = os.environ.get("TEST_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: set TEST_DATABASE_URL")
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1),
                           connect_args={"options": "-c timezone=Pacific/Auckland"})
    try:
        with engine.connect() as connection:
            assert connection.scalar(text("SHOW TimeZone")) == "UTC"
            assert abs(connection.scalar(text("SELECT CAST(now() AS timestamp)")) - now()) < timedelta(minutes=1)
    finally:
        engine.dispose()
