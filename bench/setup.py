"""A migrated database with the demo data, for bench scripts that need real pages."""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

os.environ.setdefault("PORTAL_ENV", "development")


def demo_app(database_url: str):
    """The app on ``database_url``, migrated, with roles, an admin (admin@example.org /
    admin-password) and the demo data loaded once."""
    from flask_migrate import upgrade

    from portal import create_app
    from portal.accounts.services import create_first_admin, ensure_roles
    from portal.demo import build_demo
    from portal.extensions import db
    from portal.locations.models import Location

    if database_url.startswith("sqlite:///"):
        Path(database_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://"):]
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "WTF_CSRF_ENABLED": True})
    with app.app_context():
        upgrade(revision="heads")
        ensure_roles(db.session)
        create_first_admin(db.session, "admin@example.org", "admin-password")
        if db.session.scalar(select(Location.id).limit(1)) is None:
            build_demo(db.session, seed=42)
        db.session.commit()
    return app
