"""Labels are never lost (issue 17): damaged stores are moved aside, backups, export / import that merges."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explainers.errors import ExplainerError, StoreError
from explainers.store import MAX_NOTE, SCHEMA_VERSION, Store

FP = "efficientnet_lite0-0123456789abcdef"
FP2 = "resnet18-fedcba9876543210"
ROOT = Path(__file__).resolve().parents[1]


def _labelled(path: Path, n: int = 6, **kw) -> Store:
    store = Store(path, **kw)
    for i in range(n):
        store.add_label(f"h{i}", FP if i % 2 else FP2, "gradcam" if i % 3 else "resnet-lrp", 280 + i,
                        ("IA", "OA", "WA", "none")[i % 4], note=f"note {i}", who="ana", options={"bins": i % 2},
                        when=1000.0 + i)
    return store


def _history(store: Store) -> list[tuple]:
    return sorted((lab.image_hash, lab.model, lab.method, lab.options, lab.target, lab.label, lab.note, lab.who,
                   lab.created_at) for lab in store.labels())


# --------------------------------------------------------------------------- damaged files


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) >= 3 * page  # header page intact, the others overwritten
    data[page:] = bytes((i * 37 + 11) % 256 for i in range(len(data) - page))
    path.write_bytes(bytes(data))


def _not_sqlite(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:16] = b"\0" * 16  # header zeroed: 'file is not a database'
    path.write_bytes(bytes(data))


def _foreign_schema(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE labels (id INTEGER PRIMARY KEY, name TEXT, colour TEXT)")
        con.execute("INSERT INTO labels (name, colour) VALUES ('x', 'red')")


def _other_programs_tables(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")


def _newer_version(path: Path) -> None:
    with sqlite3.connect(path) as con:
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside.txt").write_text("keep me")


DAMAGE = {"truncated": _truncated, "garbage-pages": _garbage_pages, "not-sqlite": _not_sqlite,
          "foreign-schema": _foreign_schema, "other-tables": _other_programs_tables, "newer-version": _newer_version,
          "directory": _directory}


def _checkpointed(path: Path) -> None:
    """Fold the WAL into the main file, so damaging the main file damages the labels."""
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode=DELETE")


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_store_is_moved_aside_with_one_line_and_a_fresh_store_starts(tmp_path, how):
    path = tmp_path / "labels.sqlite"
    store = _labelled(path, n=40, backup_every=10**6)  # no backup: the fresh store is empty
    for b in store.backup_paths():
        b.unlink(missing_ok=True)
    _checkpointed(path)
    DAMAGE[how](path)
    before = path.read_bytes() if path.is_file() else None

    fresh = Store(path)
    notice = fresh.notice
    assert notice and "\n" not in notice, notice
    aside = [p for p in tmp_path.iterdir() if ".damaged-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1
    assert path.name in notice and aside[0].name in notice  # names both files ...
    assert str(tmp_path) not in notice  # ... by name, not by server path
    if before is not None:
        assert aside[0].read_bytes() == before  # moved aside untouched: never written to
    else:
        assert (aside[0] / "inside.txt").read_text() == "keep me"
    assert fresh.labels() == [] and fresh.count_results() == 0
    fresh.add_label("h", FP, "gradcam", 1, "IA")  # and it works
    assert len(Store(path).labels()) == 1 and Store(path).notice is None


def test_damaged_store_restarts_from_the_latest_backup(tmp_path):
    path = tmp_path / "labels.sqlite"
    store = _labelled(path, n=18, backup_every=5)
    # backups after labels 1 (none existed yet), 6, 11 and 16: the newest holds the first 16
    backed_up = sorted(_history(store), key=lambda r: r[-1])[:16]
    assert store.backup_paths()[0].is_file()
    _checkpointed(path)
    _garbage_pages(path)
    fresh = Store(path)
    assert "from the backup labels.backup.sqlite" in fresh.notice
    assert sorted(_history(fresh), key=lambda r: r[-1]) == backed_up


def test_cli_names_both_files_in_one_line_and_exits_0_after_recovery(tmp_path):
    path = tmp_path / "labels.sqlite"
    _labelled(path, n=3)
    _checkpointed(path)
    _not_sqlite(path)
    out = subprocess.run([sys.executable, "-m", "explainers", "labels", "export", str(tmp_path / "x.json"),
                          "--db", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 0, out.stderr
    assert len(lines) == 1 and "labels.sqlite" in lines[0] and ".damaged-" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_locked_store_is_a_typed_error_and_is_not_moved(tmp_path):
    path = tmp_path / "labels.sqlite"
    _labelled(path, n=2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.perf_counter()
        with pytest.raises(StoreError, match="locked") as err:
            Store(path, timeout=0.2).add_label("h", FP, "gradcam", 1, "IA")
        assert time.perf_counter() - t0 < 5 and "\n" not in str(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not [p for p in tmp_path.iterdir() if ".damaged-" in p.name]
    assert len(Store(path).labels()) == 2


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write a read-only file")
def test_read_only_store_is_a_typed_error_and_is_not_moved(tmp_path):
    path = tmp_path / "labels.sqlite"
    _labelled(path, n=2)
    _checkpointed(path)
    path.chmod(0o444)
    try:
        with pytest.raises(StoreError, match="read-only"):
            Store(path)
    finally:
        path.chmod(0o644)
    assert not [p for p in tmp_path.iterdir() if ".damaged-" in p.name]


def test_sqlite_errors_during_use_are_one_line_store_errors(tmp_path):
    path = tmp_path / "labels.sqlite"
    store = _labelled(path, n=2)
    _checkpointed(path)
    _garbage_pages(path)  # damaged while open (another program, a disk fault)
    with pytest.raises(StoreError) as err:
        store.labels()
    assert "\n" not in str(err.value) and "labels.sqlite" in str(err.value) and str(tmp_path) not in str(err.value)


# --------------------------------------------------------------------------- backups


def test_backup_exists_after_labelling_and_rolls(tmp_path):
    path = tmp_path / "labels.sqlite"
    store = Store(path, backup_every=3, backups=3)
    newest, second, third = store.backup_paths()
    store.add_label("h0", FP, "gradcam", 1, "IA")  # the first label: no backup yet, so one is written
    assert newest.is_file() and not second.exists()
    for i in range(1, 7):
        store.add_label(f"h{i}", FP, "gradcam", 1, "OA")
    assert second.is_file() and third.is_file()
    counts = [len(Store(p, backup_every=10**6).labels()) for p in (newest, second, third)]
    assert counts == [7, 4, 1]  # after labels 1, 4, 7: newest first
    assert not list(tmp_path.glob("*.tmp-*"))


def test_backup_after_minutes(tmp_path):
    path = tmp_path / "labels.sqlite"
    store = Store(path, backup_every=10**6, backup_minutes=1.0)
    store.add_label("h0", FP, "gradcam", 1, "IA")
    newest = store.backup_paths()[0]
    store.add_label("h1", FP, "gradcam", 1, "IA")
    assert len(Store(newest).labels()) == 1  # not due yet
    old = time.time() - 120
    os.utime(newest, (old, old))
    store.add_label("h2", FP, "gradcam", 1, "IA")
    assert len(Store(newest).labels()) == 3


# --------------------------------------------------------------------------- export / import


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_delete_import_brings_back_every_label_and_never_duplicates(tmp_path, fmt):
    path = tmp_path / "labels.sqlite"
    store = _labelled(path, n=12)
    store.add_label("h0", FP2, "resnet-lrp", 280, "WA", note='=HYPERLINK("http://x","y")', who="@bo",
                    options={"bins": 0}, when=5000.25)
    store.add_label("h9", FP, "lrp", 1, "none", note="'quoted\ttab\r\nnew line, comma \"q\"", who="-", when=6000.5)
    everything = _history(store)
    export = tmp_path / f"labels.{fmt}"
    store.export_labels(export)
    for p in tmp_path.glob("labels.*sqlite*"):
        p.unlink()
    restored = Store(path)
    assert restored.labels() == []
    assert restored.import_labels(export) == (len(everything), 0)
    assert _history(restored) == everything  # every label, exactly (times included)
    assert restored.import_labels(export) == (0, len(everything))  # a second restore adds nothing
    assert _history(restored) == everything
    restored.add_label("new", FP, "gradcam", 3, "IA", when=7000.0)
    assert restored.import_labels(export) == (0, len(everything))
    assert len(restored.labels()) == len(everything) + 1


def test_import_from_a_backup_file_merges(tmp_path):
    a = _labelled(tmp_path / "a.sqlite", n=5)
    b = Store(tmp_path / "b.sqlite")
    b.add_label("other", FP, "gradcam", 3, "IA", when=1.0)
    assert b.import_labels(a.backup()) == (5, 0)
    assert b.import_labels(a.path) == (0, 5)
    assert len(b.labels()) == 6


def test_bad_import_file_refused_whole_with_row_number(tmp_path):
    store = _labelled(tmp_path / "s.sqlite", n=2)
    rows = json.loads(store.export_labels())
    rows["labels"][1]["label"] = "XX"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows))
    with pytest.raises(StoreError, match=r"bad.json, row 2") as err:
        Store(tmp_path / "t.sqlite").import_labels(bad)
    assert "\n" not in str(err.value)
    assert Store(tmp_path / "t.sqlite").labels() == []  # nothing of the file was added


def test_csv_exports_neutralise_formulas(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    evil = ['=HYPERLINK("http://evil","click")', "+1+2", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "'=1"]
    for i, note in enumerate(evil):
        store.add_label(f"h{i}", FP, "gradcam", 1, "IA", note=note, who=note[:10])
    for text in (store.labels_csv(), store.export_labels(fmt="csv")):
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == len(evil)
        for row in rows:
            for cell in (row["note"], row["who"]):
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
        assert sorted(r["note"] for r in rows) == sorted("'" + n for n in evil)


def test_note_and_name_lengths_are_bounded(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.add_label("h", FP, "gradcam", 1, "IA", note="x" * MAX_NOTE)
    with pytest.raises(ExplainerError, match="at most"):
        store.add_label("h", FP, "gradcam", 1, "IA", note="x" * (5 * 2**20))
    with pytest.raises(ExplainerError, match="at most"):
        store.add_label("h", FP, "gradcam", 1, "IA", who="y" * 101)
    assert len(store.labels()) == 1


def test_cli_export_import_backup_and_a_bad_file_is_one_line_exit_2(tmp_path):
    db, db2 = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    _labelled(db, n=4)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "explainers", "labels", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)

    assert cli("export", str(tmp_path / "l.csv"), "--db", str(db)).returncode == 0
    out = cli("import", str(tmp_path / "l.csv"), "--db", str(db2))
    assert out.returncode == 0 and "4 label rows added" in out.stdout, out.stderr
    assert "0 label rows added, 4 already present" in cli("import", str(tmp_path / "l.csv"), "--db", str(db2)).stdout
    assert cli("backup", "--db", str(db2)).returncode == 0 and (tmp_path / "b.backup.sqlite").is_file()
    (tmp_path / "bad.csv").write_text("image_hash,model\nx,y\n")
    out = cli("import", str(tmp_path / "bad.csv"), "--db", str(db2))
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr
