"""The Failure review page through AppTest: triage a set, label one image, and find the label again after a
restart (a fresh AppTest on the same SQLite file stands in for a new server process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explainers.images import GALLERY, image_hash

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEVANCE_EXPLORER_DB", str(tmp_path / "labels.sqlite"))
    return tmp_path / "labels.sqlite"


def uploads() -> dict[str, tuple[str, bytes]]:
    """Two gallery pictures as if uploaded in this session (keeps the triage to two maps)."""
    out = {}
    for key in ("coffee", "chelsea"):
        data = GALLERY[key].png_bytes()
        out[image_hash(data)] = (f"{key}.png", data)
    return out


def open_review(source: str = "Uploads in this session") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception, at.exception
    at.session_state["uploads"] = uploads()
    at.session_state["fr_method"] = "gradcam"
    at.session_state["fr_source"] = source
    at.switch_page("views/failure_review.py").run()
    assert not at.exception, at.exception
    return at


def widget(at: AppTest, kind: str, prefix: str):
    """The widget of this kind whose key starts with ``prefix`` (the label form's keys name the item)."""
    hits = [w for w in at.get(kind) if str(getattr(w, "key", "") or "").startswith(prefix)]
    assert len(hits) == 1, f"{len(hits)} {kind} widgets with key {prefix}*"
    return hits[0]


def test_review_label_and_persist(db):
    at = open_review()
    assert at.title[0].value == "Failure review"
    at.button(key="fr_run").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert sorted(table["name"]) == ["chelsea.png", "coffee.png"]
    assert list(table["id_score"]) == sorted(table["id_score"])  # ascending: worst first
    assert set(table["label"]) == {""}
    assert "maps fail" in at.subheader[0].value
    assert any("No labels yet" in c.value for c in at.caption)

    # label the first listed image as Wrongly Attended with a note
    first = table["name"].iloc[0]
    widget(at, "radio", "fr_label_choice_").set_value("WA")
    widget(at, "text_input", "fr_label_note_").input("background, not the object")
    widget(at, "text_input", "fr_label_who_").input("tester")
    widget(at, "button", "fr_label_save_").click().run()
    assert not at.exception, at.exception
    assert at.dataframe[0].value.set_index("name").loc[first, "label"] == "WA"
    assert any("WA: Wrongly Attended" in i.value and "tester" in i.value for i in at.info)
    summary = at.dataframe[1].value
    assert summary.loc["gradcam", "WA"] == 1

    # a new process on the same database: the label is still there
    again = open_review()
    again.button(key="fr_run").click().run()
    assert not again.exception, again.exception
    assert again.dataframe[0].value.set_index("name").loc[first, "label"] == "WA"
    assert any("background, not the object" in i.value for i in again.info)


def test_empty_upload_set_says_what_to_do(db):
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.session_state["fr_source"] = "Uploads in this session"
    at.switch_page("views/failure_review.py").run()
    assert not at.exception, at.exception
    assert any("No images in this set yet" in i.value for i in at.info)


def test_missing_folder_is_a_message_not_a_traceback(db, tmp_path, monkeypatch):
    monkeypatch.setenv("RELEVANCE_EXPLORER_ALLOW_SERVER_PATHS", "1")  # typed folders need the server's flag
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.session_state["fr_source"] = "Folder"
    at.session_state["fr_folder"] = str(tmp_path / "does-not-exist")
    at.switch_page("views/failure_review.py").run()
    assert not at.exception, at.exception
    assert at.error, "a missing folder should produce an error message"
