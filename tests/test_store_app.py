"""The Failure review page and the store (issue 17): a damaged store is one warning, no OS user as a default
name, labels export and import from the page."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from streamlit.testing.v1 import AppTest

from explainers.images import GALLERY, image_hash
from explainers.store import Store

APP = str(Path(__file__).resolve().parents[1] / "app.py")
FP = "efficientnet_lite0-0123456789abcdef"


def _review(tmp_path, monkeypatch) -> AppTest:
    monkeypatch.setenv("RELEVANCE_EXPLORER_DB", str(tmp_path / "labels.sqlite"))
    at = AppTest.from_file(APP, default_timeout=300).run()
    data = GALLERY["coffee"].png_bytes()
    at.session_state["uploads"] = {image_hash(data): ("coffee.png", data)}
    at.session_state["fr_method"] = "gradcam"
    at.session_state["fr_source"] = "Uploads in this session"
    at.switch_page("views/failure_review.py").run()
    at.button(key="fr_run").click().run()
    assert not at.exception, at.exception
    return at


def test_damaged_store_is_one_warning_and_the_page_works(tmp_path, monkeypatch):
    path = tmp_path / "labels.sqlite"
    Store(path).add_label("h", FP, "gradcam", 1, "IA")
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path.write_bytes(b"\0" * 16 + path.read_bytes()[16:])  # 'file is not a database'
    (tmp_path / "labels.backup.sqlite").unlink()
    at = _review(tmp_path, monkeypatch)
    warnings = [w.value for w in at.warning if "moved aside" in w.value]
    assert len(warnings) == 1 and "labels.sqlite" in warnings[0] and ".damaged-" in warnings[0]
    assert str(tmp_path) not in warnings[0]
    assert [p for p in tmp_path.iterdir() if ".damaged-" in p.name]


def test_no_os_user_as_default_name_and_labels_round_trip_through_the_page(tmp_path, monkeypatch):
    at = _review(tmp_path, monkeypatch)
    who = [w for w in at.text_input if str(w.key).startswith("fr_label_who_")]
    assert len(who) == 1 and who[0].value == ""
    assert who[0].proto.max_chars == 100
    export = [b for b in at.get("download_button") if b.key == "fr_export_json"]
    assert len(export) == 1

    # a label file from elsewhere (another server's export), imported twice: added once
    other = Store(tmp_path / "other.sqlite")
    other.add_label("abc", FP, "gradcam", 3, "OA", note="from elsewhere", when=100.0)
    text = other.export_labels(fmt="json").encode()
    for expected in ("1 label rows added, 0 already present", "0 label rows added, 1 already present"):
        at.get("file_uploader")[0].upload("labels.json", text, "application/json").run()
        at.button(key="fr_import_run").click().run()
        assert not at.exception, at.exception
        assert any(expected in s.value for s in at.success), [s.value for s in at.success]
    assert [lab.note for lab in Store(tmp_path / "labels.sqlite").labels()] == ["from elsewhere"]
    assert json.loads(text)["labels"][0]["who"] == ""
