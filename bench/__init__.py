"""Bench scripts: ``python -m bench.<name> [--database-url URL]`` print figures (``bench.run``
runs them all). Each defaults to a SQLite file under ``instance/bench/``."""
from __future__ import annotations

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "instance" / "bench"


def default_database_url(name: str) -> str:
    """A SQLite file under instance/bench/ for one bench (created on first use)."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{BENCH_DIR / (name + '.db')}"


def sqlalchemy_url(url: str) -> str:
    """postgresql:// (what people type) -> the psycopg 3 driver the portal uses."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return url
