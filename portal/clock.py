"""One notion of "now" for the whole portal: naive UTC, as the database stores it."""
from datetime import UTC, date, datetime


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def today() -> date:
    return now().date()


def years_ago(years: int, on: date) -> date:
    """The day ``years`` before ``on`` (28 February for a 29th); an age the calendar cannot
    hold counts as 0, or as born in year 1."""
    years = max(0, min(years, on.year - 1))
    try:
        return on.replace(year=on.year - years)
    except ValueError:  # 29 February
        return on.replace(year=on.year - years, day=28)
