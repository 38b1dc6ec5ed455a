"""Labelled image sets: an ImageFolder, a CSV/Parquet manifest, or a plain folder, streamed.

A dataset is listed once (file names and true labels only: thousands of files cost milliseconds) and
decoded lazily, a batch at a time, so a page can show page 40 of 10,000 images without touching the
other 9,990.  Files that cannot be decoded are reported (file name and reason) and skipped; the rest of
the work goes on.  Messages name files relative to the dataset root, never the server's absolute paths.

Layouts (DESIGN.md, "Datasets and scale"):

- **ImageFolder**: ``root/<class>/.../*.png``; the class sub-folder is the true label.
- **manifest**: a ``.csv`` or ``.parquet`` file with columns ``path,label`` (``label`` optional); paths are
  relative to the manifest's folder (absolute paths must still lie inside it).
- **folder**: images anywhere below ``root``, no labels.

True labels are matched to a model's class names by name (case-insensitive, also against the first synonym of
an ImageNet description such as "tabby, tabby cat"), or through an explicit ``classes`` mapping
(folder/label -> model class name or index) from the project file.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .errors import InvalidDataset, InvalidImage
from .images import load_image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
MAX_LIST = 2_000_000  # files listed at most when sampling: beyond this a dataset needs a manifest


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: where it is and its true label (None when unlabeled)."""

    path: Path
    label: str | None
    name: str  # path relative to the dataset root (what messages and tables show)


@dataclass
class Batch:
    """Decoded images of one batch, and the files of that batch that could not be decoded."""

    samples: list[Sample]
    images: list[Image.Image]
    failures: list[tuple[str, str]]  # (file name relative to the root, reason)


@dataclass
class Dataset:
    name: str
    root: Path
    kind: str  # 'imagefolder' | 'manifest' | 'folder'
    samples: list[Sample]
    truncated: bool = False  # a limit cut the listing short
    mapping: dict[str, str | int] = field(default_factory=dict)  # label -> model class (name or index)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labelled(self) -> bool:
        return any(s.label is not None for s in self.samples)

    @property
    def classes(self) -> tuple[str, ...]:
        """The true labels present, sorted."""
        return tuple(sorted({s.label for s in self.samples if s.label is not None}))

    def page(self, start: int, count: int) -> list[Sample]:
        return self.samples[max(start, 0):max(start, 0) + max(count, 0)]

    def filter(self, label: str | None = None) -> Dataset:
        """The samples of one true class (None: all)."""
        if label is None:
            return self
        return Dataset(self.name, self.root, self.kind, [s for s in self.samples if s.label == label],
                       self.truncated, self.mapping)

    def batches(self, size: int = 16, samples: Sequence[Sample] | None = None) -> Iterator[Batch]:
        """Decode lazily, ``size`` files at a time; undecodable files go to ``Batch.failures``."""
        if size < 1:
            raise InvalidDataset(f"Batch size must be at least 1, not {size}.")
        todo = list(self.samples if samples is None else samples)
        for start in range(0, len(todo), size):
            ok, images, failures = [], [], []
            for s in todo[start:start + size]:
                try:
                    images.append(load_image(s.path, name=s.name))
                    ok.append(s)
                except InvalidImage as exc:
                    failures.append((s.name, str(exc)))
                except OSError as exc:  # vanished or unreadable between listing and decoding
                    failures.append((s.name, f"{s.name} could not be read ({type(exc).__name__})."))
            yield Batch(ok, images, failures)

    def read(self, samples: Sequence[Sample] | None = None) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
        """The raw bytes of ``samples`` (default: all) as ``(name, bytes)``, without decoding; files that cannot be
        read are returned as ``(name, reason)`` and skipped."""
        out, failures = [], []
        for s in (self.samples if samples is None else samples):
            try:
                out.append((s.name, s.path.read_bytes()))
            except OSError as exc:
                failures.append((s.name, f"{s.name} could not be read ({type(exc).__name__})."))
        return out, failures

    def label_of(self, name: str) -> str | None:
        """The true label of the sample called ``name`` (its path relative to the root)."""
        if not hasattr(self, "_labels"):
            self._labels = {s.name: s.label for s in self.samples}
        return self._labels.get(name)

    def targets(self, class_names: Sequence[str]) -> dict[str, int]:
        """True label -> model class index, for every label present; unknown labels are one error naming them."""
        lookup = _name_index(class_names)
        out, unknown = {}, []
        for label in self.classes:
            target = self.mapping.get(label, label)
            if isinstance(target, int):
                if not 0 <= target < len(class_names):
                    raise InvalidDataset(f"Dataset {self.name!r}: class {label!r} maps to index {target}, but the "
                                         f"model has classes 0 to {len(class_names) - 1}.")
                out[label] = target
            elif (idx := lookup.get(str(target).strip().lower())) is not None:
                out[label] = idx
            else:
                unknown.append(label)
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            shown = ", ".join(repr(u) for u in unknown[:5]) + more
            raise InvalidDataset(f"Dataset {self.name!r}: {len(unknown)} true label(s) match no class of the model: "
                                 f"{shown}. Add a 'classes' mapping for them in relevance-explorer.toml.")
        return out


def _name_index(class_names: Sequence[str]) -> dict[str, int]:
    """Lower-cased full names and first synonyms -> index (full names win over synonyms)."""
    out: dict[str, int] = {}
    for i, n in enumerate(class_names):
        short = n.split(",")[0].strip().lower()
        out.setdefault(short, i)
        out.setdefault(short.replace(" ", "_"), i)
    for i, n in enumerate(class_names):
        out[n.strip().lower()] = i
    return out


# --------------------------------------------------------------------------- listing


def _walk(root: Path, limit: int | None) -> Iterator[Path]:
    """Image files below ``root`` in a stable (sorted) order; hidden entries skipped; links not followed."""
    stack = [root]
    count = 0
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                subdirs.append(Path(e.path))
            elif e.is_file(follow_symlinks=False) and Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(e.path)
                count += 1
                if limit is not None and count >= limit:
                    return
        stack.extend(reversed(subdirs))


def _finish(name: str, root: Path, kind: str, samples: list[Sample], limit: int | None, sample: int | None,
            seed: int, mapping: Mapping[str, str | int] | None, cut: bool) -> Dataset:
    if not samples:
        raise InvalidDataset(f"Dataset {name!r} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    if sample is not None and sample < len(samples):
        picked = sorted(random.Random(seed).sample(range(len(samples)), sample))
        samples, cut = [samples[i] for i in picked], True
    elif limit is not None and len(samples) > limit:
        samples, cut = samples[:limit], True
    return Dataset(name, root, kind, samples, cut, dict(mapping or {}))


def open_dataset(source: str | Path, name: str | None = None, limit: int | None = None, sample: int | None = None,
                 seed: int = 0, classes: Mapping[str, str | int] | None = None, layout: str = "auto") -> Dataset:
    """List a dataset (no image is decoded here).

    ``limit``: the first N files in sorted order; ``sample``: N files drawn at random (``seed``) from the whole
    listing.  ``layout``: 'auto' (a manifest by its suffix, an ImageFolder when the root holds class folders with
    images, else a plain folder), or 'imagefolder' / 'folder' / 'manifest' to insist.
    """
    for what, v in (("limit", limit), ("sample", sample)):
        if v is not None and v < 1:
            raise InvalidDataset(f"{what} must be at least 1, not {v}.")
    path = Path(source)
    name = name or path.name or str(path)
    if not path.exists():
        raise InvalidDataset(f"Dataset {name!r}: nothing at that location.")
    if path.is_file() or layout == "manifest":
        return _manifest(path, name, limit, sample, seed, classes)
    cap = None if sample is not None else (limit + 1 if limit is not None else None)
    cap = MAX_LIST if cap is None and sample is not None else cap
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    as_folders = layout == "imagefolder" or (layout == "auto" and subdirs and not loose)
    samples: list[Sample] = []
    if as_folders:
        for d in subdirs:
            left = None if cap is None else cap - len(samples)
            if left is not None and left <= 0:
                break
            samples += [Sample(p, d.name, p.relative_to(path).as_posix()) for p in _walk(d, left)]
        kind = "imagefolder"
    else:
        samples = [Sample(p, None, p.relative_to(path).as_posix()) for p in _walk(path, cap)]
        kind = "folder"
    cut = cap is not None and len(samples) >= cap and sample is None
    return _finish(name, path, kind, samples, limit, sample, seed, classes, cut)


def _manifest(path: Path, name: str, limit: int | None, sample: int | None, seed: int,
              classes: Mapping[str, str | int] | None) -> Dataset:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            raise InvalidDataset(f"Dataset {name!r}: a manifest must be a .csv or .parquet file, "
                                 f"not {suffix or path.name!r}.")
    except InvalidDataset:
        raise
    except Exception as exc:  # noqa: BLE001 - parser errors of either format
        raise InvalidDataset(f"Dataset {name!r}: the manifest could not be read ({type(exc).__name__}).") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    if "path" not in table.columns:
        raise InvalidDataset(f"Dataset {name!r}: the manifest needs a 'path' column (has {', '.join(table.columns)}).")
    root = path.parent.resolve()
    labels = table["label"] if "label" in table.columns else [None] * len(table)
    samples = []
    for row, (p, label) in enumerate(zip(table["path"], labels), start=2):
        rel = Path(str(p).strip())
        full = (rel if rel.is_absolute() else root / rel).resolve()
        if not full.is_relative_to(root):  # a manifest cannot reach outside its own folder
            raise InvalidDataset(f"Dataset {name!r}: manifest row {row} points outside the manifest's folder.")
        text = None if label is None or str(label).strip() in ("", "nan", "None") else str(label).strip()
        samples.append(Sample(full, text, full.relative_to(root).as_posix()))
    return _finish(name, root, "manifest", samples, limit, sample, seed, classes, False)


def registered_datasets() -> list[str]:
    """The dataset names of relevance-explorer.toml (empty without one)."""
    from .config import load_config

    return list(load_config().datasets)


def open_registered(name: str) -> Dataset:
    """List the dataset registered as ``name`` in relevance-explorer.toml."""
    from .config import load_config

    entry = load_config().datasets.get(name)
    if entry is None:
        known = ", ".join(registered_datasets()) or "none"
        raise InvalidDataset(f"No dataset {name!r} in relevance-explorer.toml (registered: {known}).")
    return open_dataset(entry.path, name=name, limit=entry.limit, sample=entry.sample, seed=entry.seed,
                        classes=entry.classes, layout=entry.layout)


def resolve_dataset(source: str | Path) -> Dataset:
    """A registered dataset name, or a folder / manifest path (trusted callers only: the CLI, never the browser)."""
    if isinstance(source, str) and source in registered_datasets():
        return open_registered(source)
    return open_dataset(source)
