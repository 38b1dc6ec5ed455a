"""Datasets: ImageFolder, manifests and plain folders listed once, decoded lazily, bad files reported and skipped."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from explainers.datasets import open_dataset
from explainers.errors import InvalidDataset, InvalidLabels
from explainers.labels import check_count, default_names, read_labels

CLASSES = ("cat", "dog", "fish")


def _png(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def image_folder(tmp_path):
    """3 class folders x 3 images (one in a nested folder), one corrupt file, a hidden file and a text file."""
    root = tmp_path / "set"
    for c, cls in enumerate(CLASSES):
        for i in range(3):
            _png(root / cls / ("deep" if i == 2 else "") / f"{cls}{i}.png", 40 * c + i)
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "cat" / ".hidden.png").write_bytes(b"x")
    (root / "fish" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_lists_labels_and_skips_what_cannot_be_decoded(image_folder):
    ds = open_dataset(image_folder)
    assert ds.kind == "imagefolder" and ds.classes == CLASSES
    assert len(ds) == 10  # 9 images + the corrupt one; hidden and .txt files are not listed
    assert {s.label for s in ds.samples} == set(CLASSES)
    assert "cat/deep/cat2.png" in {s.name for s in ds.samples}
    decoded, failures = [], []
    for batch in ds.batches(size=4):
        assert len(batch.images) == len(batch.samples) <= 4
        decoded += batch.samples
        failures += batch.failures
    assert len(decoded) == 9
    assert [name for name, _ in failures] == ["dog/broken.jpg"]
    reason = failures[0][1]
    assert "dog/broken.jpg" in reason and str(image_folder) not in reason  # no server path in a message


def test_limit_sample_and_filter(image_folder):
    assert len(open_dataset(image_folder, limit=4)) == 4 and open_dataset(image_folder, limit=4).truncated
    a = open_dataset(image_folder, sample=5, seed=1)
    b = open_dataset(image_folder, sample=5, seed=1)
    assert [s.name for s in a.samples] == [s.name for s in b.samples] and len(a) == 5
    assert [s.name for s in open_dataset(image_folder, sample=5, seed=2).samples] != [s.name for s in a.samples]
    dogs = open_dataset(image_folder).filter("dog")
    assert {s.label for s in dogs.samples} == {"dog"} and len(dogs) == 4
    full = open_dataset(image_folder)
    assert [s.name for s in full.page(2, 3)] == [s.name for s in full.samples[2:5]]
    with pytest.raises(InvalidDataset, match="limit must be at least 1"):
        open_dataset(image_folder, limit=0)


def test_labels_match_model_classes_by_name_synonym_or_mapping(image_folder):
    ds = open_dataset(image_folder)
    names = ("goldfish, Carassius auratus", "Cat", "dog, domestic dog", "fish")  # case, first synonym, exact
    assert ds.targets(names) == {"cat": 1, "dog": 2, "fish": 3}
    with pytest.raises(InvalidDataset, match=r"1 true label\(s\) match no class of the model: 'cat'"):
        ds.targets(("dog", "fish"))
    mapped = open_dataset(image_folder, classes={"cat": "tabby", "dog": 0, "fish": "fish"})
    assert mapped.targets(("dog", "tabby, tabby cat", "fish")) == {"cat": 1, "dog": 0, "fish": 2}
    with pytest.raises(InvalidDataset, match="maps to index 7"):
        open_dataset(image_folder, classes={"dog": 7}).targets(("dog", "cat", "fish"))


def test_csv_and_parquet_manifests(image_folder):
    rows = [{"path": f"{c}/{c}0.png", "label": c} for c in CLASSES] + [{"path": "dog/broken.jpg", "label": "dog"}]
    csv = image_folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    ds = open_dataset(csv)
    assert ds.kind == "manifest" and len(ds) == 4 and ds.classes == CLASSES
    assert sum(len(b.images) for b in ds.batches(8)) == 3
    pq = image_folder / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    assert [s.name for s in open_dataset(pq).samples] == [s.name for s in ds.samples]
    unlabeled = image_folder / "nolabel.csv"
    pd.DataFrame({"path": ["cat/cat0.png"]}).to_csv(unlabeled, index=False)
    assert not open_dataset(unlabeled).labelled


def test_manifest_cannot_reach_outside_its_folder(tmp_path):
    (tmp_path / "inner").mkdir()
    bad = tmp_path / "inner" / "m.csv"
    bad.write_text("path,label\n../../etc/passwd,x\n")
    with pytest.raises(InvalidDataset, match="row 2 points outside"):
        open_dataset(bad)
    (tmp_path / "inner" / "nopath.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(InvalidDataset, match="needs a 'path' column"):
        open_dataset(tmp_path / "inner" / "nopath.csv")


def test_plain_folder_and_empty_or_missing_sources(tmp_path):
    for i in range(3):
        _png(tmp_path / "loose" / f"{i}.png", i)
    _png(tmp_path / "loose" / "sub" / "x.png", 9)
    ds = open_dataset(tmp_path / "loose")
    assert ds.kind == "folder" and len(ds) == 4 and not ds.labelled
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidDataset, match="has no images"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(InvalidDataset, match="nothing at that location"):
        open_dataset(tmp_path / "missing")


def test_labels_files(tmp_path):
    txt = tmp_path / "labels.txt"
    txt.write_text("sparrow\nfinch\n\n")
    assert read_labels(txt) == ("sparrow", "finch")
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    with pytest.raises(InvalidLabels, match="blank line at line 2"):
        read_labels(tmp_path / "gap.txt")
    (tmp_path / "l.json").write_text(json.dumps(["a", "b", "c"]))
    assert read_labels(tmp_path / "l.json") == ("a", "b", "c")
    (tmp_path / "d.json").write_text(json.dumps({"1": "b", "0": "a"}))
    assert read_labels(tmp_path / "d.json") == ("a", "b")
    (tmp_path / "hole.json").write_text(json.dumps({"0": "a", "2": "c"}))
    with pytest.raises(InvalidLabels, match=r"0..1 without gaps \(missing \[1\]\)"):
        read_labels(tmp_path / "hole.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidLabels, match="not valid JSON"):
        read_labels(tmp_path / "bad.json")
    with pytest.raises(InvalidLabels, match="name 2 classes but the model has 200 outputs"):
        check_count(read_labels(txt), 200, "birds")
    assert default_names(3) == ("class 0", "class 1", "class 2")
