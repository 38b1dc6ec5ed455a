"""Failure labels as files: export to / import from CSV or JSON, and spreadsheet-safe CSV cells.

An export holds the whole label history (every row, not only the current label), so a restore
loses nothing; an import merges: a row whose item (image hash + weights fingerprint + method +
options + target) already holds the same label, note, author and time is skipped, so importing
the same file twice, or a backup into the store it came from, never duplicates.

CSV cells are written for spreadsheets: a text cell that starts with ``= + - @``, a tab or a
carriage return would run as a formula (``=HYPERLINK(...)`` in a note), so it gets a leading
``'`` (OWASP's "CSV injection" advice); a cell that already starts with ``'`` gets one more, so
the import can strip exactly one and give back the text as typed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import StoreError

FORMAT = "relevance-explorer-labels"
FORMAT_VERSION = 1
COLUMNS = ("image_hash", "model", "method", "options", "target", "label", "note", "who", "created_at")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
MAX_IMPORT_ROWS = 1_000_000
MAX_IMPORT_BYTES = 200 * 2**20  # a label file is text; 200 MB of it is something else


def neutralise(cell: Any) -> Any:
    """A text cell a spreadsheet will show as text, never evaluate (numbers pass unchanged)."""
    if isinstance(cell, str) and cell.startswith(FORMULA_START):
        return "'" + cell
    return cell


def _unneutralise(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_START) else cell


def write_csv_rows(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with every text cell neutralised."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for row in rows:
        w.writerow([neutralise(c) for c in row])
    return buf.getvalue()


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "labels": list(rows)}, indent=1,
                      ensure_ascii=False)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    # created_at as repr(float): the exact time round-trips, which is what makes the merge exact.
    return write_csv_rows(COLUMNS, ([r[c] if c != "created_at" else repr(float(r[c])) for c in COLUMNS]
                                    for r in rows))


def _created_at(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise StoreError(f"{where}: created_at must be a time, got {value!r}.")
    if isinstance(value, int | float):
        t = float(value)
    else:
        text = str(value).strip()
        try:
            t = float(text)
        except ValueError:
            try:  # the metrics export (Store.labels_csv) writes ISO times
                t = float(time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone)
            except (ValueError, OverflowError):
                raise StoreError(f"{where}: created_at {text[:40]!r} is neither seconds nor an ISO time.") from None
    if not math.isfinite(t) or not 0 <= t < 1e11:
        raise StoreError(f"{where}: created_at {t!r} is not a plausible time.")
    return t


def parse(data: bytes | str, name: str, fmt: str | None = None) -> list[dict[str, Any]]:
    """Rows (dicts with :data:`COLUMNS`, not yet validated against the store's rules) of a label file."""
    if isinstance(data, bytes):
        if len(data) > MAX_IMPORT_BYTES:
            raise StoreError(f"{name} is {len(data) / 2**20:.0f} MB; a label file is at most "
                             f"{MAX_IMPORT_BYTES // 2**20} MB.")
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise StoreError(f"{name} is not UTF-8 text: not a label export.") from None
    fmt = fmt or ("json" if name.lower().endswith(".json") or data.lstrip().startswith("{") else "csv")
    if fmt == "json":
        return _parse_json(data, name)
    if fmt == "csv":
        return _parse_csv(data, name)
    raise StoreError(f"Unknown label file format {fmt!r}: use csv or json.")


def _parse_json(text: str, name: str) -> list[dict[str, Any]]:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        line = getattr(exc, "lineno", "?")
        raise StoreError(f"{name} is not valid JSON (line {line}).") from None
    rows = obj.get("labels") if isinstance(obj, dict) else obj
    if isinstance(obj, dict) and obj.get("format", FORMAT) != FORMAT:
        raise StoreError(f"{name} is a {str(obj.get('format'))[:40]!r} file, not a label export.")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise StoreError(f"{name}: expected {{\"labels\": [ {{...}}, ... ]}} (a list of label objects).")
    return rows


def _parse_csv(text: str, name: str) -> list[dict[str, Any]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise StoreError(f"{name} is not a label export: no column {', '.join(missing[:3])}.")
        rows = []
        for row in reader:
            if len(rows) >= MAX_IMPORT_ROWS:
                raise StoreError(f"{name} has over {MAX_IMPORT_ROWS} rows; split it.")
            rows.append({c: _unneutralise(row[c] or "") for c in COLUMNS})
        return rows
    except csv.Error as exc:
        raise StoreError(f"{name} is not valid CSV ({str(exc).splitlines()[0][:80]}).") from None


def validated(rows: Sequence[dict[str, Any]], name: str, check_row) -> list[tuple]:
    """Store rows ``(image_hash, model, method, options, target, label, note, who, created_at)``.

    ``check_row(values, where)`` applies the store's own rules (label set, fingerprint keys, text
    lengths) so an import can never write what :meth:`Store.add_label` would refuse.  The first bad
    row refuses the whole file (nothing is written), with its row number.
    """
    if len(rows) > MAX_IMPORT_ROWS:
        raise StoreError(f"{name} has over {MAX_IMPORT_ROWS} rows; split it.")
    out = []
    for n, row in enumerate(rows, start=1):
        where = f"{name}, row {n}"
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise StoreError(f"{where}: missing {', '.join(missing[:3])}.")
        text = {}
        for c in ("image_hash", "model", "method", "label", "note", "who"):
            v = row[c]
            if not isinstance(v, str):
                raise StoreError(f"{where}: {c} must be text, got {type(v).__name__}.")
            text[c] = v
        options = row["options"]
        try:
            options = json.loads(options) if isinstance(options, str) else options
        except (json.JSONDecodeError, RecursionError):
            raise StoreError(f"{where}: options must be a JSON object.") from None
        if not isinstance(options, dict):
            raise StoreError(f"{where}: options must be a JSON object.")
        target = row["target"]
        if isinstance(target, bool) or not isinstance(target, int | str):
            raise StoreError(f"{where}: target must be a class index, got {target!r:.40}.")
        try:
            target = int(target)
        except ValueError:
            raise StoreError(f"{where}: target must be a class index, got {target!r:.40}.") from None
        if not 0 <= target < 2**31:
            raise StoreError(f"{where}: target {target} is not a class index.")
        created = _created_at(row["created_at"], where)
        values = (text["image_hash"], text["model"], text["method"], options, target, text["label"], text["note"],
                  text["who"], created)
        check_row(values, where)
        out.append(values)
    return out
