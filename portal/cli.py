"""Command-line tasks: ``flask setup``, ``flask demo-data``, ``flask serve``, ``flask worker``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import click
from flask import current_app
from sqlalchemy import select

from portal.extensions import db


def register(app) -> None:
    app.cli.add_command(setup)
    app.cli.add_command(demo_data)
    app.cli.add_command(create_admin)
    app.cli.add_command(serve)
    app.cli.add_command(worker)


def _create_admin(email, password) -> None:
    from portal.accounts.services import create_first_admin

    admin, generated = create_first_admin(db.session, email, password)
    db.session.commit()
    if generated:
        click.echo("=" * 64)
        click.echo("  First administrator created (shown once, write it down):")
        click.echo(f"    email:    {admin.email}")
        click.echo(f"    password: {generated}")
        click.echo("=" * 64)
    else:
        click.echo(f"Administrator: {admin.email}")


@click.command("create-admin")
@click.option("--email", envvar="PORTAL_ADMIN_EMAIL", default=None)
@click.option("--password", envvar="PORTAL_ADMIN_PASSWORD", default=None)
def create_admin(email, password):
    """Create the first administrator when there is none."""
    _create_admin(email, password)


@click.command("demo-data")
@click.option("--seed", default=42, show_default=True)
def demo_data(seed):
    """Load the demo country slice, people and programs into an empty database."""
    from portal.demo import build_demo

    click.echo("Building demo data…")
    summary = build_demo(db.session, seed=seed)
    db.session.commit()
    click.echo(f"Demo data: {summary}")


@click.command("setup")
@click.option("--demo/--no-demo", default=True, show_default=True)
def setup(demo):
    """Roles, the first admin, and demo data when the database is empty."""
    from portal.accounts.services import ensure_roles
    from portal.locations.models import Location

    ensure_roles(db.session)
    db.session.commit()
    _create_admin(os.environ.get("PORTAL_ADMIN_EMAIL"), os.environ.get("PORTAL_ADMIN_PASSWORD"))
    if demo and db.session.scalar(select(Location.id).limit(1)) is None:
        demo_data.callback(seed=42)


@click.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
def worker(burst):
    """Run one RQ worker for the portal queue."""
    from jobs.worker import main

    main(burst=burst)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True)
def serve(host, port):
    """Web server and one worker together (development and small offices). Ctrl-C stops both."""
    from portal.background.services import redis_url

    url = redis_url(current_app.config)  # starts the embedded Redis if REDIS_URL is unset
    env = dict(os.environ, REDIS_URL=url)
    worker_process = subprocess.Popen([sys.executable, "-m", "jobs.worker"], env=env)
    current_app.config["REDIS_URL"] = url
    click.echo(f"Portal on http://{host}:{port}  (worker pid {worker_process.pid}, Redis {url})")

    def stop(*_):
        worker_process.send_signal(signal.SIGTERM)
        try:
            worker_process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker_process.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        # app.run() refuses to start inside a `flask` command; werkzeug serves it directly.
        from werkzeug.serving import run_simple

        run_simple(host, port, current_app._get_current_object(), threaded=True, use_reloader=False)
    finally:
        if worker_process.poll() is None:
            stop()
