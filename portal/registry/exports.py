"""CSV and XLSX downloads that a spreadsheet cannot turn into formulas.

Callers mask what the user may not see before the rows get here; every cell then passes
through ``inert`` so a name like ``=HYPERLINK(...)`` stays text in Excel or LibreOffice.
"""
from __future__ import annotations

import csv
import io
import re
import tempfile
from datetime import date, datetime
from decimal import Decimal
from typing import Iterable

from flask import Response, stream_with_context

from portal.registry.validation import CONTROL

# Excel also starts a formula at the full-width ＝ ＋ － ＠ an East Asian input method types.
DANGEROUS_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_BATCH = 500


def inert(value) -> str:
    """The cell as text, with a leading ' when it would start a formula.

    Real numbers stay as they are (-5 is a number, not a formula); text such as "-5+A1",
    "=1+1", "@SUM(..)" or one starting with a tab or carriage return gets the prefix.
    Invisible control characters are left out: a workbook cannot hold them, and a record
    saved before the forms refused them must still export."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    text = CONTROL.sub("", str(value))
    if text.startswith(DANGEROUS_START):
        return "'" + text
    return text


def without_guard(text: str) -> str:
    """A cell of one of our downloads as it was before ``inert`` guarded it, so that a file
    downloaded, fixed and uploaded back does not gain an apostrophe each time."""
    if text.startswith("'") and text[1:].startswith(DANGEROUS_START):
        return text[1:]
    return text


def _safe_filename(filename: str, ext: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", filename).strip("-.") or "export"
    if not stem.lower().endswith("." + ext):
        stem += "." + ext
    return stem


def _csv_stream(header: list[str], rows: Iterable[list]):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    buffer.write("\ufeff")  # Excel opens UTF-8 correctly only with a BOM
    writer.writerow([inert(h) for h in header])
    for n, row in enumerate(rows, start=1):
        writer.writerow([inert(v) for v in row])
        if n % CSV_BATCH == 0:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def _xlsx_file(header: list[str], rows: Iterable[list]):
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("Export")
    sheet.append([inert(h) for h in header])
    for row in rows:
        sheet.append([inert(v) for v in row])
    spool = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)
    workbook.save(spool)
    spool.seek(0)
    return spool


def _chunks(spool, size=64 * 1024):
    try:
        while True:
            chunk = spool.read(size)
            if not chunk:
                break
            yield chunk
    finally:
        spool.close()


def export_response(fmt: str, filename: str, header: list[str], rows: Iterable[list]) -> Response:
    """A download of ``rows`` as CSV (streamed, UTF-8 with BOM) or XLSX (write-only openpyxl)."""
    if fmt == "csv":
        response = Response(stream_with_context(_csv_stream(header, rows)),
                            mimetype="text/csv", content_type="text/csv; charset=utf-8")
        name = _safe_filename(filename, "csv")
    elif fmt == "xlsx":
        spool = _xlsx_file(header, rows)
        response = Response(_chunks(spool), mimetype=XLSX_MIME)
        name = _safe_filename(filename, "xlsx")
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    return response
