"""Record ids as users type or send them ("12", "#12", " 12 ")."""
from __future__ import annotations

from werkzeug.routing import IntegerConverter

ID_MAX = 2**31 - 1  # the largest id an integer column holds (PostgreSQL's; SQLite's is larger)


def parse_id(value) -> int | None:
    """The id ``value`` names, or None when it is no whole number a record could have: a
    digit string too long for the column would otherwise fail the whole query."""
    text = str(value if value is not None else "").strip().lstrip("#")
    if not (text.isascii() and text.isdigit()) or len(text) > 10:  # not "²", which int() refuses
        return None
    number = int(text)
    return number if number <= ID_MAX else None


def form_version(value, *, editing: bool) -> int | None:
    """The version of the record an edit form was made from (None for a new record). An
    edit without one cannot be told from a stale form, so it is refused as one would be;
    the pages always send it."""
    version = parse_id(value)
    if editing and version is None:
        from portal.errors import ConflictError

        raise ConflictError("This form did not say which version of the record it was made from, "
                            "so it may be out of date. Nothing was saved: reload the page and "
                            "make the change again.")
    return version


class RecordIdConverter(IntegerConverter):
    """``<int:...>`` in every route: a number too large for an id column matches no route
    (404), instead of reaching a query that PostgreSQL refuses (500)."""

    def __init__(self, url_map, *args, **kwargs):
        kwargs.setdefault("max", ID_MAX)
        super().__init__(url_map, *args, **kwargs)
