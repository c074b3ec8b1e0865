"""WSGI entry point: ``gunicorn wsgi:app`` or ``flask --app wsgi ...``."""
import gc

from portal import create_app

app = create_app()
# What start-up made lives as long as the process: frozen, the collector's full passes skip
# it (about 1 ms off the search's p95 on PostgreSQL) and forked gunicorn workers keep
# sharing its pages.
gc.freeze()
