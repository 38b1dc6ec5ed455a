"""A small SQLite store for metric results and (later) failure-review labels.

Why SQLite: the quality benchmark must resume after an interruption and a
rerun must be instant, from the CLI and from the app, with several processes
writing at once; stdlib ``sqlite3`` in WAL mode gives that with no server.
Every call opens its own short connection, so one :class:`Store` can be shared
across Streamlit sessions and threads.

Results are keyed by image hash + model + method + method options + metric
name + metric settings (so changing e.g. the step size never reuses a stale
value).  "Model" is the weights fingerprint (``bundle.fingerprint``), never a
display name: a second checkpoint of one architecture must not receive the
first one's values.  Databases written before (schema version < 2, keyed by
names) are refused with :class:`OutdatedStore` until :func:`migrate` says
which weights each name meant.  Labels (failure categories of resnet-lrp App. D.4: IA / OA / WA, or
none) are an append-only history per image + model + method + method options
+ target; the latest row is the current label.

Default database: ``data/relevance_explorer.sqlite`` under the repository,
overridable with the environment variable ``RELEVANCE_EXPLORER_DB``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExplainerError

DB_ENV = "RELEVANCE_EXPLORER_DB"
LABELS = ("IA", "OA", "WA", "none")  # resnet-lrp App. D.4 failure categories, or no failure
SCHEMA_VERSION = 2  # 2: the model column holds weights fingerprints (``<name>-<16 hex>``)
_FINGERPRINT = re.compile(r"^.+-[0-9a-f]{16}$")


class OutdatedStore(ExplainerError):
    """The database keys results by model name (written before weights fingerprints)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    image_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    options TEXT NOT NULL,
    metric TEXT NOT NULL,
    settings TEXT NOT NULL,
    value REAL,
    extra TEXT NOT NULL DEFAULT '{}',
    image_name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    PRIMARY KEY (image_hash, model, method, options, metric, settings)
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    target INTEGER NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('IA', 'OA', 'WA', 'none')),
    note TEXT NOT NULL DEFAULT '',
    who TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    options TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS labels_key ON labels (image_hash, model, method, target, created_at);
"""


def default_db_path() -> Path:
    """``$RELEVANCE_EXPLORER_DB`` or ``<repo>/data/relevance_explorer.sqlite`` (data/ is git-ignored)."""
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "data" / "relevance_explorer.sqlite"


def canonical(obj: Mapping[str, Any] | None) -> str:
    """Stable JSON for a key (sorted keys, no spaces): the same options always give the same key."""
    return json.dumps(dict(obj or {}), sort_keys=True, separators=(",", ":"), default=str)


def _check_model_key(model: str) -> None:
    if not _FINGERPRINT.match(model):
        raise ExplainerError(f"Store keys are weights fingerprints (bundle.fingerprint), not names like {model!r}.")


def _legacy_names(con: sqlite3.Connection) -> set[str]:
    """Model keys that are not weights fingerprints (display names from before schema version 2)."""
    names = {r[0] for r in con.execute("SELECT DISTINCT model FROM results UNION SELECT DISTINCT model FROM labels")}
    return {n for n in names if not _FINGERPRINT.match(n)}


def migrate(path: str | Path, fingerprints: Mapping[str, str]) -> None:
    """Adopt a database keyed by model names: ``fingerprints`` says which weights each name meant
    (e.g. ``{"efficientnet_lite0": load_model("efficientnet_lite0").fingerprint}``).

    Results of names not in the mapping are deleted (they are recomputable; under a name they could be
    anyone's).  Labels are human work and are never dropped: a labelled name missing from the mapping is
    refused (:class:`OutdatedStore`) and nothing changes."""
    bad = [f for f in fingerprints.values() if not _FINGERPRINT.match(f)]
    if bad:
        raise OutdatedStore(f"{bad[0]!r} is not a weights fingerprint (use bundle.fingerprint).")
    con = sqlite3.connect(path, timeout=30)
    try:
        with con:
            con.executescript(_SCHEMA)
            cols = {r[1] for r in con.execute("PRAGMA table_info(labels)")}
            if "options" not in cols:
                con.execute("ALTER TABLE labels ADD COLUMN options TEXT NOT NULL DEFAULT '{}'")
            legacy = _legacy_names(con)
            labelled = {r[0] for r in con.execute("SELECT DISTINCT model FROM labels")} & legacy
            missing = sorted(labelled - set(fingerprints))
            if missing:
                raise OutdatedStore(f"{path}: labels of {', '.join(missing)} need a fingerprint in the mapping; "
                                    "nothing was changed.")
            for name in legacy:
                if name in fingerprints:
                    con.execute("UPDATE OR REPLACE results SET model=? WHERE model=?", (fingerprints[name], name))
                    con.execute("UPDATE labels SET model=? WHERE model=?", (fingerprints[name], name))
                else:
                    con.execute("DELETE FROM results WHERE model=?", (name,))
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    finally:
        con.close()


@dataclass(frozen=True)
class Label:
    id: int
    image_hash: str
    model: str
    method: str
    target: int
    label: str
    note: str
    who: str
    created_at: float
    options: str = "{}"  # canonical JSON of the method's compute options


class Store:
    """Results and labels in one SQLite file (created on first use, WAL journal)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)
            cols = {r[1] for r in con.execute("PRAGMA table_info(labels)")}
            if "options" not in cols:  # a database from before labels carried options
                con.execute("ALTER TABLE labels ADD COLUMN options TEXT NOT NULL DEFAULT '{}'")
            if con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                names = _legacy_names(con)
                if names:
                    raise OutdatedStore(
                        f"{self.path} keys results by model name ({', '.join(sorted(names)[:3])}), not by weights "
                        "fingerprint; move it aside, or adopt it with explainers.store.migrate(path, "
                        "{name: bundle.fingerprint}).")
                con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            with con:  # commit on success, roll back on error
                yield con
        finally:
            con.close()

    # ----------------------------------------------------------------- results

    def get_result(self, image_hash: str, model: str, method: str, options: Mapping[str, Any] | None,
                   metric: str, settings: Mapping[str, Any] | None = None) -> tuple[float | None, dict] | None:
        """(value, extra) of a stored metric, or ``None`` when it was never computed."""
        with self._connect() as con:
            row = con.execute(
                "SELECT value, extra FROM results WHERE image_hash=? AND model=? AND method=? AND options=? "
                "AND metric=? AND settings=?",
                (image_hash, model, method, canonical(options), metric, canonical(settings))).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def put_result(self, image_hash: str, model: str, method: str, options: Mapping[str, Any] | None,
                   metric: str, value: float | None, settings: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None, image_name: str = "") -> None:
        """Insert or replace one metric value (NaN is stored as NULL)."""
        _check_model_key(model)
        if value is not None and value != value:
            value = None
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?)",
                (image_hash, model, method, canonical(options), metric, canonical(settings),
                 None if value is None else float(value), json.dumps(dict(extra or {}), default=str), image_name,
                 time.time()))

    def put_results(self, image_hash: str, model: str, method: str, options: Mapping[str, Any] | None,
                    values: Mapping[str, float | None], settings: Mapping[str, Any] | None = None,
                    image_name: str = "") -> None:
        """Several metrics of one item in one transaction (an interruption never leaves half an item)."""
        _check_model_key(model)
        now = time.time()
        rows = [(image_hash, model, method, canonical(options), metric, canonical(settings),
                 None if v is None or v != v else float(v), "{}", image_name, now) for metric, v in values.items()]
        with self._connect() as con:
            con.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def put_many(self, rows: list[tuple[str, str, str, Mapping[str, Any] | None, str, float | None,
                                       Mapping[str, Any] | None, Mapping[str, Any] | None, str]]) -> None:
        """Many results in ONE transaction: (image_hash, model, method, options, metric, value, settings, extra,
        image_name) each.  The dataset pipeline writes a whole batch this way (one commit per batch, not per item)."""
        now = time.time()
        out = []
        for image_hash, model, method, options, metric, value, settings, extra, image_name in rows:
            _check_model_key(model)
            out.append((image_hash, model, method, canonical(options), metric, canonical(settings),
                        None if value is None or value != value else float(value),
                        json.dumps(dict(extra or {}), default=str), image_name, now))
        with self._connect() as con:
            con.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?)", out)

    def get_many(self, image_hashes: list[str], model: str, method: str,
                 options: Mapping[str, Any] | None) -> dict[tuple[str, str, str], tuple[float | None, dict]]:
        """Every stored result of these images for one model, method and options, in one query:
        (image_hash, metric, canonical settings) -> (value, extra)."""
        out: dict[tuple[str, str, str], tuple[float | None, dict]] = {}
        if not image_hashes:
            return out
        with self._connect() as con:
            for start in range(0, len(image_hashes), 500):  # SQLite's bound-parameter limit
                chunk = list(image_hashes[start:start + 500])
                sql = ("SELECT image_hash, metric, settings, value, extra FROM results WHERE model=? AND method=? "
                       f"AND options=? AND image_hash IN ({','.join('?' * len(chunk))})")
                for h, metric, settings, value, extra in con.execute(sql, (model, method, canonical(options),
                                                                           *chunk)):
                    out[(h, metric, settings)] = (value, json.loads(extra))
        return out

    def results(self, model: str | None = None, method: str | None = None,
                image_hash: str | None = None) -> list[dict[str, Any]]:
        """Stored rows as dicts, optionally filtered."""
        where, args = [], []
        for col, val in (("model", model), ("method", method), ("image_hash", image_hash)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = "SELECT image_hash, model, method, options, metric, settings, value, image_name, created_at FROM results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql + " ORDER BY created_at", args)]

    def count_results(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    # ----------------------------------------------------------------- labels

    def add_label(self, image_hash: str, model: str, method: str, target: int, label: str,
                  note: str = "", who: str = "", when: float | None = None,
                  options: Mapping[str, Any] | None = None) -> int:
        """Record a failure label (IA / OA / WA / none); earlier labels stay as history. Returns the row id.

        ``options`` are the method's compute options: the same method with other
        options draws another map, which may fail differently.
        """
        _check_model_key(model)
        if label not in LABELS:
            raise ExplainerError(f"Label must be one of {', '.join(LABELS)}; got {label!r}.")
        with self._connect() as con:
            cur = con.execute(
                "INSERT INTO labels (image_hash, model, method, target, label, note, who, created_at, options) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (image_hash, model, method, int(target), label, note, who, time.time() if when is None else when,
                 canonical(options)))
            return int(cur.lastrowid)

    def labels(self, image_hash: str | None = None, model: str | None = None, method: str | None = None,
               target: int | None = None, label: str | None = None,
               options: Mapping[str, Any] | None = None) -> list[Label]:
        """Label history, oldest first, optionally filtered (``options``: only labels of those method options)."""
        where, args = [], []
        for col, val in (("image_hash", image_hash), ("model", model), ("method", method), ("target", target),
                         ("label", label), ("options", None if options is None else canonical(options))):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = "SELECT id, image_hash, model, method, target, label, note, who, created_at, options FROM labels"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._connect() as con:
            return [Label(*r) for r in con.execute(sql + " ORDER BY created_at, id", args)]

    def current_label(self, image_hash: str, model: str, method: str, target: int,
                      options: Mapping[str, Any] | None = None) -> Label | None:
        """The latest label of one item (of any options when ``options`` is None), or ``None``."""
        rows = self.labels(image_hash, model, method, target, options=options)
        return rows[-1] if rows else None

    def current_labels(self, model: str | None = None, method: str | None = None) -> list[Label]:
        """The latest label of every labelled item (image, model, method, options, target): what a review page lists."""
        latest: dict[tuple, Label] = {}
        for lab in self.labels(model=model, method=method):
            latest[(lab.image_hash, lab.model, lab.method, lab.options, lab.target)] = lab
        return list(latest.values())

    def labels_csv(self, model: str | None = None, method: str | None = None) -> str:
        """Current labels as CSV text, each with the metric values stored for its image, model, method and options.

        Metric columns come from the results table (the latest value per metric
        name, whatever its settings), so an export carries e.g. the ID score next to the label.
        """
        import csv
        import io

        labels = self.current_labels(model, method)
        metrics: dict[tuple, dict[str, float | None]] = {}
        for r in self.results(model=model, method=method):
            metrics.setdefault((r["image_hash"], r["model"], r["method"], r["options"]), {})[r["metric"]] = r["value"]
        names = sorted({m for lab in labels for m in metrics.get(
            (lab.image_hash, lab.model, lab.method, lab.options), {})})
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["image_hash", "model", "method", "options", "target", "label", "note", "who", "created_at",
                    *names])
        for lab in labels:
            vals = metrics.get((lab.image_hash, lab.model, lab.method, lab.options), {})
            w.writerow([lab.image_hash, lab.model, lab.method, lab.options, lab.target, lab.label, lab.note, lab.who,
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(lab.created_at)),
                        *("" if vals.get(n) is None else f"{vals[n]:.6g}" for n in names)])
        return buf.getvalue()

    def label_counts(self, model: str | None = None, method: str | None = None) -> dict[str, int]:
        """How many items currently carry each label (for a summary)."""
        counts = dict.fromkeys(LABELS, 0)
        for lab in self.current_labels(model, method):
            counts[lab.label] += 1
        return counts

    def delete_label(self, label_id: int) -> bool:
        with self._connect() as con:
            return con.execute("DELETE FROM labels WHERE id=?", (int(label_id),)).rowcount > 0
