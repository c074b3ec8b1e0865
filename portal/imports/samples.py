"""The first row's value of each file column, shown beside it on the mapping page so that
a header like "Col3" can be told apart by what it holds."""
from __future__ import annotations

from portal.imports.models import Upload
from portal.imports.reading import FileProblem, first_row, normalise_header
from portal.privacy import PII_FIELDS, mask

# Words of a header that may hold an identifier although it is not mapped to one yet
# ("NRC no", "Cell"): its sample is masked too, as the grid masks identifiers.
IDENTIFIER_WORDS = frozenset({"id", "nid", "nrc", "national", "identity", "passport", "phone",
                              "mobile", "cell", "tel", "telephone", "msisdn"})


def _identifier_like(header: str, *fields: str) -> bool:
    return any(f in PII_FIELDS for f in fields) or bool(
        IDENTIFIER_WORDS & set(normalise_header(header).split()))


def mapping_samples(upload: Upload, proposed: dict[str, str], *, show_pii: bool,
                    max_rows: int) -> dict[str, str]:
    """header -> its value in the first row; identifiers masked unless ``show_pii``. Empty
    when the stored file can no longer be read: the samples are a help, not a step."""
    try:
        cells = first_row(upload.stored_path, max_rows=max_rows)
    except (FileProblem, OSError):
        return {}
    samples = {}
    for header, value in zip(upload.headers, cells):
        if not header:
            continue
        hidden = not show_pii and _identifier_like(header, (upload.mapping or {}).get(header, ""),
                                                   proposed.get(header, ""))
        samples[header] = mask(value) if hidden else value
    return samples
