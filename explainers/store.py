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

Labels are never lost (issue 17).  Opening checks the file (SQLite header,
``PRAGMA quick_check``, our schema, its version); a damaged or foreign file is never
written to: it is moved aside with a timestamp (nothing is deleted), a fresh store
starts (from the latest good backup when there is one) and :attr:`Store.notice` says
so in one line naming both files (also logged, so the CLI prints it).  After every
``backup_every`` labels or ``backup_minutes`` a rolling backup is written with
SQLite's online backup API (checked, then swapped in; the last 3 are kept).  Labels
export to and import from CSV / JSON (:mod:`explainers.store_io`; the import merges).
Every store failure a user can meet is a :class:`~explainers.errors.StoreError` with
one line; messages name files, never absolute server paths.

Default database: ``data/relevance_explorer.sqlite`` under the repository,
overridable with the environment variable ``RELEVANCE_EXPLORER_DB``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import store_io
from .errors import ExplainerError, StoreError

DB_ENV = "RELEVANCE_EXPLORER_DB"
LABELS = ("IA", "OA", "WA", "none")  # resnet-lrp App. D.4 failure categories, or no failure
SCHEMA_VERSION = 2  # 2: the model column holds weights fingerprints (``<name>-<16 hex>``)
_FINGERPRINT = re.compile(r"^.+-[0-9a-f]{16}$")
MAX_NOTE = 2000  # characters: a note is a sentence or a paragraph (the old store took 5 MB notes)
MAX_WHO = 100
SQLITE_HEADER = b"SQLite format 3\x00"
# Our two tables and the columns every version had ('options' of labels came later: added on open).
_COLUMNS = {"results": {"image_hash", "model", "method", "options", "metric", "settings", "value", "extra",
                        "image_name", "created_at"},
            "labels": {"id", "image_hash", "model", "method", "target", "label", "note", "who", "created_at"}}
log = logging.getLogger(__name__)


class OutdatedStore(StoreError):
    """The database keys results by model name (written before weights fingerprints)."""


class _Unusable(Exception):
    """Internal: the file at the store's path is not a store we may write to (why: the message)."""

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


def _check_label(image_hash: str, model: str, method: str, label: str, note: str, who: str) -> None:
    """The rules every stored label obeys, whether typed in the app or imported from a file."""
    _check_model_key(model)
    if label not in LABELS:
        raise ExplainerError(f"Label must be one of {', '.join(LABELS)}; got {label!r:.40}.")
    if len(note) > MAX_NOTE:
        raise StoreError(f"A note is at most {MAX_NOTE} characters; this one has {len(note)}.")
    if len(who) > MAX_WHO:
        raise StoreError(f"A name is at most {MAX_WHO} characters; this one has {len(who)}.")
    if not image_hash or len(image_hash) > 128 or not method or len(method) > 128:
        raise StoreError("A label needs an image hash and a method id (each at most 128 characters).")


def _check_row(values: tuple, where: str) -> None:
    image_hash, model, method, _options, _target, label, note, who, _created = values
    try:
        _check_label(image_hash, model, method, label, note, who)
    except ExplainerError as exc:
        raise StoreError(f"{where}: {exc}") from None


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
                raise OutdatedStore(f"{Path(path).name}: labels of {', '.join(missing)} need a fingerprint in "
                                    "the mapping; nothing was changed.")
            for name in legacy:
                if name in fingerprints:
                    con.execute("UPDATE OR REPLACE results SET model=? WHERE model=?", (fingerprints[name], name))
                    con.execute("UPDATE labels SET model=? WHERE model=?", (fingerprints[name], name))
                else:
                    con.execute("DELETE FROM results WHERE model=?", (name,))
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    finally:
        con.close()


def _read_only(path: Path) -> str:
    """An SQLite URI that opens ``path`` read-only (quoted: a '?' or '#' in a folder name stays a name)."""
    from urllib.parse import quote

    return f"file:{quote(str(path.resolve()))}?mode=ro"


def _inspect(path: Path, timeout: float) -> str | None:
    """What is wrong with an SQLite file as a store of ours (a phrase after its name), or None.

    Read-only: a damaged file is never written to.  ``quick_check`` reads every page (milliseconds
    for a label store; about a second per 100 MB), so garbage in the middle pages is found on open
    rather than when someone next reads the labels.
    """
    try:
        con = sqlite3.connect(_read_only(path), uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        return f"could not be opened ({' '.join(str(exc).split())[:80]})"
    try:
        rows = [r[0] for r in con.execute("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            found = " ".join(str(r) for r in rows).replace("*** in database main ***", "")
            return f"is damaged (quick_check: {' '.join(found.split())[:100]})"
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            return f"was written by a newer version of this program (schema {version}; this one reads {SCHEMA_VERSION})"
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if not r[0].startswith("sqlite_")}
        ours = tables & set(_COLUMNS)
        if tables and not ours:
            return f"holds another program's tables ({', '.join(sorted(tables)[:3])}), not labels"
        for table in ours:
            cols = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
            missing = _COLUMNS[table] - cols
            if missing:
                return f"has a foreign '{table}' table (no column {', '.join(sorted(missing)[:3])})"
        return None
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreError(f"The store {path.name} is locked by another program (waited {timeout:g} s); "
                             "try again when it has finished.") from None
        return f"is damaged ({' '.join(str(exc).split())[:80]})"
    except sqlite3.DatabaseError as exc:
        return f"is damaged ({' '.join(str(exc).split())[:80]})"
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
    """Results and labels in one SQLite file (created on first use, WAL journal), checked on open."""

    def __init__(self, path: str | Path | None = None, *, backup_every: int = 10, backup_minutes: float = 10.0,
                 backups: int = 3, timeout: float = 30.0):
        self.path = Path(path) if path is not None else default_db_path()
        self.backup_every, self.backup_minutes, self.backups, self.timeout = backup_every, backup_minutes, backups, \
            timeout
        self.notice: str | None = None  # set when a damaged file was moved aside on open
        self._lock = threading.Lock()
        self._since_backup = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the folder of the store {self.path.name} ({exc.strerror}).") from None
        try:
            self._check_file()
        except _Unusable as why:
            self._quarantine(str(why))
        self._init_schema()

    # ----------------------------------------------------------------- opening

    def _error(self, exc: BaseException) -> StoreError:
        """A sqlite/OS error as one line a person can act on."""
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        name = self.path.name
        if "locked" in msg or "busy" in msg:
            return StoreError(f"The store {name} is locked by another program (waited {self.timeout:g} s); "
                              "try again when it has finished.")
        if "readonly" in msg or "read-only" in msg or isinstance(exc, PermissionError):
            return StoreError(f"The store {name} is read-only: labels cannot be saved. Make it writable, or point "
                              "RELEVANCE_EXPLORER_DB (--db) at another file.")
        if "disk" in msg and "full" in msg:
            return StoreError(f"The disk holding the store {name} is full: nothing was saved.")
        return StoreError(f"The store {name} failed: {msg}.")

    def _check_file(self) -> None:
        """Raise :class:`_Unusable` when the file is not a healthy store of ours (never writes to it)."""
        p = self.path
        if not p.exists():
            return
        if not p.is_file():
            raise _Unusable("is not a file")
        if not os.access(p, os.W_OK):
            raise StoreError(f"The store {p.name} is read-only: labels cannot be saved. Make it writable, or point "
                             "RELEVANCE_EXPLORER_DB (--db) at another file.")
        try:
            with open(p, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise self._error(exc) from None
        if not head:
            return  # an empty file: SQLite makes a database of it
        if head != SQLITE_HEADER:
            raise _Unusable("is not an SQLite database")
        problem = _inspect(p, self.timeout)
        if problem:
            raise _Unusable(problem)

    def _quarantine(self, why: str) -> None:
        """Move the unusable file (and its -wal/-shm) aside, start fresh (from the latest good backup)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.stem}.damaged-{stamp}{self.path.suffix}")
        k = 1
        while aside.exists() or aside.with_name(aside.name + "-wal").exists():
            aside = self.path.with_name(f"{self.path.stem}.damaged-{stamp}-{k}{self.path.suffix}")
            k += 1
        try:
            for extra in ("-wal", "-shm"):  # the journal belongs to the damaged file: it goes with it
                side = self.path.with_name(self.path.name + extra)
                if side.exists():
                    os.replace(side, aside.with_name(aside.name + extra))
            os.replace(self.path, aside)
        except FileNotFoundError:  # another process moved it first: check what is there now
            self._check_file()
            return
        except OSError as exc:
            raise StoreError(f"The store {self.path.name} {why} and could not be moved aside ({exc.strerror}); "
                             "nothing was written to it. Move it away by hand.") from None
        restored = self._restore_latest_backup()
        self.notice = (f"The store {self.path.name} {why}: it was moved aside to {aside.name} (same folder, nothing "
                       "deleted) and a fresh store was started"
                       + (f" from the backup {restored.name}." if restored else "."))
        log.warning(self.notice)

    def _init_schema(self) -> None:
        with self._connect() as con:
            con.executescript(_SCHEMA)
            cols = {r[1] for r in con.execute("PRAGMA table_info(labels)")}
            if "options" not in cols:  # a database from before labels carried options
                con.execute("ALTER TABLE labels ADD COLUMN options TEXT NOT NULL DEFAULT '{}'")
            if con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                names = _legacy_names(con)
                if names:
                    raise OutdatedStore(
                        f"{self.path.name} keys results by model name ({', '.join(sorted(names)[:3])}), not by "
                        "weights fingerprint; move it aside, or adopt it with explainers.store.migrate(path, "
                        "{name: bundle.fingerprint}).")
                con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=self.timeout)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            with con:  # commit on success, roll back on error
                yield con
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        finally:
            con.close()

    # ----------------------------------------------------------------- backups

    def backup_paths(self) -> list[Path]:
        """The rolling backups, newest first: ``<stem>.backup<suffix>``, ``<stem>.backup-1<suffix>``, ..."""
        names = [f"{self.path.stem}.backup{self.path.suffix}"] + [
            f"{self.path.stem}.backup-{k}{self.path.suffix}" for k in range(1, self.backups)]
        return [self.path.with_name(n) for n in names]

    def backup(self) -> Path:
        """Write a backup now (SQLite's online backup API: a consistent copy while others write).

        The copy is checked (``quick_check`` and our schema) before it replaces the newest backup, so a
        damaged store never overwrites a good backup; older generations shift down.
        """
        newest = self.backup_paths()[0]
        tmp = newest.with_name(f"{newest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            with self._connect() as src:
                dst = sqlite3.connect(tmp)
                try:
                    src.backup(dst)
                    dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
                finally:
                    dst.close()
            problem = _inspect(tmp, self.timeout)
            if problem:
                raise StoreError(f"The backup of {self.path.name} {problem}; the older backups were kept.")
            paths = self.backup_paths()
            for older, newer in zip(reversed(paths[1:]), reversed(paths[:-1])):
                if newer.exists():
                    os.replace(newer, older)
            os.replace(tmp, newest)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        except OSError as exc:
            raise StoreError(f"The backup of {self.path.name} could not be written ({exc.strerror}).") from None
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._since_backup = 0
        return newest

    def _maybe_backup(self) -> None:
        """After every ``backup_every`` labels, or when the newest backup is older than ``backup_minutes``."""
        with self._lock:
            self._since_backup += 1
            newest = self.backup_paths()[0]
            due = (self._since_backup >= self.backup_every or not newest.exists()
                   or time.time() - newest.stat().st_mtime >= 60 * self.backup_minutes)
        if due:
            try:
                self.backup()
            except StoreError as exc:  # the label itself is saved; say why the backup is not
                self.notice = str(exc)
                log.warning(str(exc))

    def _restore_latest_backup(self) -> Path | None:
        """Copy the newest backup that passes the checks into the (now free) store path."""
        for candidate in self.backup_paths():
            if candidate.is_file() and candidate.stat().st_size and _inspect(candidate, self.timeout) is None:
                try:
                    src = sqlite3.connect(_read_only(candidate), uri=True)
                    dst = sqlite3.connect(self.path)
                    try:
                        src.backup(dst)
                    finally:
                        src.close()
                        dst.close()
                    return candidate
                except sqlite3.Error:
                    self.path.unlink(missing_ok=True)  # our own half-written copy, nothing of the user's
        return None

    # ----------------------------------------------------------------- results

    def get_result(self, image_hash: str, model: str, method: str, options: Mapping[str, Any] | None,
                   metric: str, settings: Mapping[str, Any] | None = None) -> tuple[float | None, dict] | None:
        """(value, extra) of a stored metric, or ``None`` when it was never computed."""
        with self._connect() as con:
            row = con.execute(
                "SELECT value, extra FROM results WHERE image_hash=? AND model=? AND method=? AND options=? "
                "AND metric=? AND settings=?",
                (image_hash, model, method, canonical(options), metric, canonical(settings))).fetchone()
        if row is None:
            return None
        try:
            extra = json.loads(row[1])
        except (ValueError, TypeError):  # a hand-edited row: the value still counts
            extra = {}
        return row[0], extra

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
        _check_label(image_hash, model, method, label, note, who)
        with self._connect() as con:
            cur = con.execute(
                "INSERT INTO labels (image_hash, model, method, target, label, note, who, created_at, options) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (image_hash, model, method, int(target), label, note, who, time.time() if when is None else when,
                 canonical(options)))
            row = int(cur.lastrowid)
        self._maybe_backup()
        return row

    # ----------------------------------------------------------------- export / import

    def export_labels(self, dest: str | Path | None = None, fmt: str | None = None) -> str:
        """The whole label history as CSV or JSON text (``fmt`` from ``dest``'s suffix; default JSON);
        written to ``dest`` when given."""
        fmt = fmt or ("csv" if dest is not None and str(dest).lower().endswith(".csv") else "json")
        rows = [{"image_hash": lab.image_hash, "model": lab.model, "method": lab.method, "options": lab.options,
                 "target": lab.target, "label": lab.label, "note": lab.note, "who": lab.who,
                 "created_at": lab.created_at} for lab in self.labels()]
        if fmt == "csv":
            text = store_io.to_csv(rows)
        elif fmt == "json":
            text = store_io.to_json(rows)
        else:
            raise StoreError(f"Unknown export format {fmt!r}: use csv or json.")
        if dest is not None:
            try:
                Path(dest).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise StoreError(f"Cannot write {Path(dest).name} ({exc.strerror}).") from None
        return text

    def import_labels(self, source: str | Path | bytes, name: str | None = None,
                      fmt: str | None = None) -> tuple[int, int]:
        """Merge a label export (CSV / JSON file, its bytes, or a store/backup ``.sqlite`` file) into this store.

        Returns (added, already present).  A row is already present when its item (image hash + weights
        fingerprint + method + options + target) holds a row with the same label, note, author and time, so
        a restore never duplicates.  Every row is checked first; one bad row refuses the file (nothing added).
        """
        if isinstance(source, bytes):
            data, name = source, name or "the upload"
            if data.startswith(SQLITE_HEADER):
                raise StoreError(f"{name} is an SQLite file: import it from a path (labels import FILE).")
        else:
            path = Path(source)
            name = name or path.name
            if not path.is_file():
                raise StoreError(f"No label file {name!r}.")
            with open(path, "rb") as f:
                is_sqlite = f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
            if is_sqlite:
                return self._import_store(path, name)
            if path.stat().st_size > store_io.MAX_IMPORT_BYTES:
                raise StoreError(f"{name} is over {store_io.MAX_IMPORT_BYTES // 2**20} MB: not a label export.")
            data = path.read_bytes()
        rows = store_io.validated(store_io.parse(data, name, fmt), name, _check_row)
        return self._merge(rows)

    def _import_store(self, path: Path, name: str) -> tuple[int, int]:
        problem = _inspect(path, self.timeout)
        if problem:
            raise StoreError(f"{name} {problem}: nothing was imported.")
        try:
            other = sqlite3.connect(_read_only(path), uri=True)
            try:
                cols = {r[1] for r in other.execute("PRAGMA table_info(labels)")}
                opt = "options" if "options" in cols else "'{}'"
                rows = [dict(zip(store_io.COLUMNS, r)) for r in other.execute(
                    f"SELECT image_hash, model, method, {opt}, target, label, note, who, created_at FROM labels")] \
                    if cols else []
            finally:
                other.close()
        except sqlite3.Error as exc:
            raise StoreError(f"{name} could not be read ({str(exc)[:80]}): nothing was imported.") from None
        return self._merge(store_io.validated(rows, name, _check_row))

    def _merge(self, rows: list[tuple]) -> tuple[int, int]:
        added = 0
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # one writer from the check to the insert: no duplicate by a race
            for image_hash, model, method, options, target, label, note, who, created in rows:
                opts = canonical(options)
                hit = con.execute(
                    "SELECT 1 FROM labels WHERE image_hash=? AND model=? AND method=? AND options=? AND target=? "
                    "AND label=? AND note=? AND who=? AND created_at=? LIMIT 1",
                    (image_hash, model, method, opts, target, label, note, who, created)).fetchone()
                if hit is None:
                    con.execute(
                        "INSERT INTO labels (image_hash, model, method, target, label, note, who, created_at, "
                        "options) VALUES (?,?,?,?,?,?,?,?,?)",
                        (image_hash, model, method, target, label, note, who, created, opts))
                    added += 1
        if added:
            self.backup()
        return added, len(rows) - added

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
        labels = self.current_labels(model, method)
        metrics: dict[tuple, dict[str, float | None]] = {}
        for r in self.results(model=model, method=method):
            metrics.setdefault((r["image_hash"], r["model"], r["method"], r["options"]), {})[r["metric"]] = r["value"]
        names = sorted({m for lab in labels for m in metrics.get(
            (lab.image_hash, lab.model, lab.method, lab.options), {})})
        rows = []
        for lab in labels:
            vals = metrics.get((lab.image_hash, lab.model, lab.method, lab.options), {})
            rows.append([lab.image_hash, lab.model, lab.method, lab.options, lab.target, lab.label, lab.note, lab.who,
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(lab.created_at)),
                         *("" if vals.get(n) is None else float(f"{vals[n]:.6g}") for n in names)])
        # text cells that a spreadsheet would evaluate (=HYPERLINK(...) in a note) are neutralised
        return store_io.write_csv_rows(
            ["image_hash", "model", "method", "options", "target", "label", "note", "who", "created_at", *names], rows)

    def label_counts(self, model: str | None = None, method: str | None = None) -> dict[str, int]:
        """How many items currently carry each label (for a summary)."""
        counts = dict.fromkeys(LABELS, 0)
        for lab in self.current_labels(model, method):
            counts[lab.label] += 1
        return counts

    def delete_label(self, label_id: int) -> bool:
        with self._connect() as con:
            return con.execute("DELETE FROM labels WHERE id=?", (int(label_id),)).rowcount > 0
