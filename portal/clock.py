"""One notion of "now" for the whole portal: naive UTC, as the database stores it."""
from datetime import UTC, date, datetime


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def today() -> date:
    return now().date()
