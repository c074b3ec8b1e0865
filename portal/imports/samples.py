"""The first row's value of each file column, shown beside it on the mapping page so that
a header like "Col3" can be told apart by what it holds."""
from __future__ import annotations

from portal.imports.models import Upload
from portal.imports.reading import FileProblem, first_row
from portal.privacy import PII_FIELDS, mask

# Fields whose values hold digits without identifying anyone. Without the right to see
# identifiers, any other column's value with a digit is masked, whatever its header says:
# "Téléphone", "N.R.C." or "Col7" may hold an ID or a phone as well as "National ID" does.
DIGITS_SHOWN = frozenset({"birth_date", "location", "household_code"})


def _hidden(value: str, *fields: str) -> bool:
    """Whether a sample is masked from a role that may not see identifiers."""
    if any(f in PII_FIELDS for f in fields):
        return True
    return not any(f in DIGITS_SHOWN for f in fields) and any(c.isdigit() for c in value)


def mapping_samples(upload: Upload, proposed: dict[str, str], *, show_pii: bool,
                    max_rows: int) -> dict[str, str]:
    """header -> its value in the first row; identifiers (``_hidden``) masked unless
    ``show_pii``. Empty when the stored file can no longer be read: the samples are a help,
    not a step."""
    try:
        cells = first_row(upload.stored_path, max_rows=max_rows)
    except (FileProblem, OSError):
        return {}
    samples = {}
    for header, value in zip(upload.headers, cells):
        if not header:
            continue
        hidden = not show_pii and _hidden(value, (upload.mapping or {}).get(header, ""),
                                          proposed.get(header, ""))
        samples[header] = mask(value) if hidden else value
    return samples
