"""Record ids as users type or send them ("12", "#12", " 12 ")."""
from __future__ import annotations

ID_MAX = 2**31 - 1  # the largest id an integer column holds (PostgreSQL's; SQLite's is larger)


def parse_id(value) -> int | None:
    """The id ``value`` names, or None when it is no whole number a record could have: a
    digit string too long for the column would otherwise fail the whole query."""
    text = str(value if value is not None else "").strip().lstrip("#")
    if not (text.isascii() and text.isdigit()) or len(text) > 10:  # not "²", which int() refuses
        return None
    number = int(text)
    return number if number <= ID_MAX else None
