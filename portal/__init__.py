"""The Cash Transfer Portal: ``create_app`` builds it; ``wsgi.py`` serves it."""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from flask import Flask

import config
from portal.extensions import compress, csrf, db, htmx, login_manager, migrate

ROOT = Path(__file__).resolve().parent.parent

# Every domain package; each has a blueprint ``bp`` in __init__.py and routes in views.py.
DOMAINS = ("accounts", "locations", "audit", "background", "home", "registry", "programs",
           "imports")


def create_app(overrides: dict | None = None) -> Flask:
    from portal import web

    app = web.PortalFlask(__name__, template_folder=str(ROOT / "templates"),
                static_folder=str(ROOT / "static"), static_url_path="/static",
                instance_path=config.INSTANCE_DIR.as_posix())
    app.config.from_mapping(config.load())
    app.config.update(overrides or {})
    from portal.ids import RecordIdConverter

    app.url_map.converters["int"] = RecordIdConverter  # before any route is added
    Path(app.config["INSTANCE_DIR"]).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO)

    _import_models()
    db.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"), render_as_batch=True,
                     compare_type=True)
    login_manager.init_app(app)
    login_manager.login_view = "accounts.login"
    login_manager.login_message = "Please sign in to continue."
    login_manager.session_protection = "basic"
    login_manager.unauthorized_handler(web.sign_in_first)
    app.session_interface = web.PortalSessionInterface()
    app.url_defaults(web.static_version)
    csrf.init_app(app)
    htmx.init_app(app)
    compress.init_app(app)

    for name in _present(DOMAINS):
        if not (ROOT / "portal" / name / "views.py").exists():
            continue
        importlib.import_module(f"portal.{name}.views")  # routes attach to the blueprint
        app.register_blueprint(importlib.import_module(f"portal.{name}").bp)
    web.register_error_handlers(app)
    web.register_hooks(app)

    from portal.cli import register as register_cli

    register_cli(app)
    return app


def _present(names) -> list[str]:
    return [n for n in names if (ROOT / "portal" / n / "__init__.py").exists()]


def _import_models() -> None:
    """Every model module, so migrations and relationships see the whole schema."""
    import portal.audit.services  # noqa: F401  (installs the audit flush hook)

    for name in _present(DOMAINS):
        if (ROOT / "portal" / name / "models.py").exists():
            importlib.import_module(f"portal.{name}.models")
