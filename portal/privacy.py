"""Masking of personal identifiers for roles without ``individual.view_pii``."""
from __future__ import annotations

# Field names that hold identifiers, wherever they appear (pages, exports, audit log).
PII_FIELDS = frozenset({"national_id", "phone"})


def mask(value, *, visible: int = 4) -> str:
    """'123456789' -> '•••••6789'. Short values are masked entirely."""
    if value is None or value == "":
        return ""
    text = str(value)
    if len(text) <= visible:
        return "•" * len(text)
    return "•" * (len(text) - visible) + text[-visible:]
