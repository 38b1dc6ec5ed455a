"""The SQLite store: results keyed by image + model + method + options + settings; label history."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from explainers.errors import ExplainerError
from explainers.store import DB_ENV, LABELS, OutdatedStore, Store, canonical, default_db_path, migrate

LITE0 = "efficientnet_lite0-0123456789abcdef"  # keys are weights fingerprints: <name>-<16 hex>
M = "m-fedcba9876543210"


def test_results_round_trip_and_keys(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    assert store.get_result("h1", LITE0, "gradcam", {"layer": ""}, "id") is None
    store.put_result("h1", LITE0, "gradcam", {"layer": "", "aug_smooth": False}, "id", 0.42,
                     settings={"pixels_per_step": 500}, extra={"target": 285}, image_name="cat.png")
    # option order does not matter; settings and options are part of the key
    assert store.get_result("h1", LITE0, "gradcam", {"aug_smooth": False, "layer": ""}, "id",
                            {"pixels_per_step": 500}) == (0.42, {"target": 285})
    assert store.get_result("h1", LITE0, "gradcam", {"aug_smooth": True, "layer": ""}, "id",
                            {"pixels_per_step": 500}) is None
    assert store.get_result("h1", LITE0, "gradcam", {"aug_smooth": False, "layer": ""}, "id",
                            {"pixels_per_step": 1000}) is None
    store.put_results("h1", LITE0, "gradcam", {}, {"insertion": 0.5, "deletion": float("nan")})
    assert store.get_result("h1", LITE0, "gradcam", {}, "deletion") == (None, {})
    assert store.count_results() == 3
    assert {r["metric"] for r in store.results(method="gradcam")} == {"id", "insertion", "deletion"}
    assert canonical({"b": 1, "a": 2}) == '{"a":2,"b":1}'


def test_wal_mode_and_concurrent_writers(tmp_path):
    path = tmp_path / "w.sqlite"
    store = Store(path)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def write(i: int) -> None:
        s = Store(path)
        for j in range(20):
            s.put_result(f"h{i}", M, "gradcam", {}, f"metric{j}", float(j))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count_results() == 80


def test_labels_history_and_current(tmp_path):
    store = Store(tmp_path / "l.sqlite")
    first = store.add_label("h1", LITE0, "resnet-lrp", 285, "OA", note="background wins", who="ana", when=1.0)
    store.add_label("h1", LITE0, "resnet-lrp", 285, "IA", note="on second look", who="bo", when=2.0)
    store.add_label("h2", LITE0, "resnet-lrp", 967, "none", who="ana", when=3.0)
    history = store.labels("h1", LITE0, "resnet-lrp", 285)
    assert [lab.label for lab in history] == ["OA", "IA"] and history[0].who == "ana"
    current = store.current_label("h1", LITE0, "resnet-lrp", 285)
    assert current.label == "IA" and current.note == "on second look" and current.created_at == 2.0
    assert store.current_label("h1", LITE0, "gradcam", 285) is None
    assert store.label_counts() == {"IA": 1, "OA": 0, "WA": 0, "none": 1}
    assert len(store.current_labels(method="resnet-lrp")) == 2
    assert store.delete_label(first) and not store.delete_label(first)
    with pytest.raises(ExplainerError):
        store.add_label("h1", LITE0, "resnet-lrp", 285, "XX")
    assert LABELS == ("IA", "OA", "WA", "none")


def test_default_path_env_override(tmp_path, monkeypatch):
    monkeypatch.delenv(DB_ENV, raising=False)
    assert default_db_path().parts[-2:] == ("data", "relevance_explorer.sqlite")
    monkeypatch.setenv(DB_ENV, str(tmp_path / "x.sqlite"))
    assert default_db_path() == tmp_path / "x.sqlite"
    assert Store().path == tmp_path / "x.sqlite"


def test_labels_carry_method_options_and_export_with_metrics(tmp_path):
    store = Store(tmp_path / "o.sqlite")
    store.add_label("h1", LITE0, "lrp", 285, "WA", options={"bins": 8}, when=1.0)
    store.add_label("h1", LITE0, "lrp", 285, "none", options={"bins": 0}, when=2.0)
    assert len(store.current_labels()) == 2  # other options, another map: two items
    assert store.current_label("h1", LITE0, "lrp", 285, options={"bins": 8}).label == "WA"
    assert store.current_label("h1", LITE0, "lrp", 285).label == "none"  # latest of any options
    assert store.current_labels()[0].options == canonical({"bins": 8})
    store.put_results("h1", LITE0, "lrp", {"bins": 8}, {"id": 0.25, "insertion": 0.5})
    text = store.labels_csv(model=LITE0)
    lines = text.strip().splitlines()
    assert lines[0].endswith("id,insertion") and len(lines) == 3
    assert ",WA," in lines[1] and lines[1].endswith(",0.25,0.5")
    assert ",none," in lines[2] and lines[2].endswith(",,")  # no metrics stored for bins=0


def _old_database(path):
    """A database as written before labels carried options and before fingerprints: keyed by names."""
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE labels (id INTEGER PRIMARY KEY AUTOINCREMENT, image_hash TEXT NOT NULL, "
                    "model TEXT NOT NULL, method TEXT NOT NULL, target INTEGER NOT NULL, label TEXT NOT NULL, "
                    "note TEXT NOT NULL DEFAULT '', who TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL)")
        con.execute("INSERT INTO labels (image_hash, model, method, target, label, created_at) "
                    "VALUES ('h', 'm', 'gradcam', 1, 'IA', 0)")
        con.executescript("CREATE TABLE results (image_hash TEXT NOT NULL, model TEXT NOT NULL, method TEXT NOT NULL, "
                          "options TEXT NOT NULL, metric TEXT NOT NULL, settings TEXT NOT NULL, value REAL, "
                          "extra TEXT NOT NULL DEFAULT '{}', image_name TEXT NOT NULL DEFAULT '', "
                          "created_at REAL NOT NULL, PRIMARY KEY (image_hash, model, method, options, metric, "
                          "settings));"
                          "INSERT INTO results VALUES ('h', 'm', 'gradcam', '{}', 'id', '{}', 0.3, '{}', '', 0);"
                          "INSERT INTO results VALUES ('h', 'other', 'gradcam', '{}', 'id', '{}', 0.4, '{}', '', 0);")


def test_name_keyed_database_is_refused_until_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    _old_database(path)
    with pytest.raises(OutdatedStore) as err:
        Store(path)
    assert "\n" not in str(err.value) and "migrate" in str(err.value)  # one line that says what to do
    with pytest.raises(OutdatedStore):  # labels of 'm' would be orphaned: refused, nothing changed
        migrate(path, {"other": "other-0000000000000000"})
    with pytest.raises(OutdatedStore):
        Store(path)
    migrate(path, {"m": M})
    store = Store(path)
    assert store.current_label("h", M, "gradcam", 1).options == "{}"  # the old options column was added too
    assert store.get_result("h", M, "gradcam", {}, "id") == (0.3, {})
    assert store.results(model="other") == [] and store.count_results() == 1  # unclaimed results dropped


def test_store_refuses_display_names_as_keys(tmp_path):
    store = Store(tmp_path / "k.sqlite")
    for call in (lambda: store.put_result("h", "resnet18 (untrained)", "gradcam", {}, "id", 0.1),
                 lambda: store.put_results("h", "efficientnet_lite0", "gradcam", {}, {"id": 0.1}),
                 lambda: store.add_label("h", "efficientnet_lite0", "gradcam", 1, "IA")):
        with pytest.raises(ExplainerError, match="fingerprint"):
            call()
    assert store.count_results() == 0 and store.labels() == []
