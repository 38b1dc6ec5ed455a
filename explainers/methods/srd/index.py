"""The nearest-PFV index of SRD (App. A, Fig. 5 top): the pre-activation PFVs of one layer over a set of
images (the gallery and uploads, or a registered dataset), cached on disk per weights fingerprint + layer +
image, searched by cosine similarity."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...datasets import Dataset
from ...errors import InvalidOption
from ...images import GALLERY, image_hash, load_image
from ...models import ModelBundle
from ...progress import report
from .explore import _graph, check_supported, forward_pass, resolve_layer

Tensor = torch.Tensor

CACHE_ENV = "RELEVANCE_EXPLORER_CACHE"


def cache_dir() -> Path:
    """``$RELEVANCE_EXPLORER_CACHE``, else ``$XDG_CACHE_HOME/relevance-explorer`` (``~/.cache/...``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relevance-explorer"


def model_fingerprint(bundle: ModelBundle) -> str:
    """The weights fingerprint (a hash of the state dict): a second checkpoint never reads another's index."""
    return bundle.fingerprint


def gallery_items() -> list[tuple[str, bytes]]:
    """The built-in gallery as (file name, PNG bytes)."""
    return [(f"{k}.png", item.png_bytes()) for k, item in GALLERY.items()]


@dataclass(frozen=True)
class Neighbour:
    """One indexed PFV near a query."""

    image_key: str  # image hash
    image_name: str
    layer: str
    position: tuple[int, int]
    similarity: float  # cosine


@dataclass
class PFVIndex:
    """Unit-normalised pre-activation PFVs of one layer over a set of images."""

    layer: str
    vectors: Tensor  # [N, C] float32, unit norm
    image: Tensor  # [N] index into image_keys
    position: Tensor  # [N, 2] (row, col)
    image_keys: list[str]
    image_names: list[str]
    grids: list[tuple[int, int]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason): skipped, not indexed

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def nearest_pfvs(self, query: Tensor, k: int = 3, exclude_image: str | None = None) -> list[Neighbour]:
        """The k indexed PFVs most cosine-similar to ``query`` (a [C] vector), best first; optionally
        leaving out one image (App. A looks at *other* samples' PFVs)."""
        q = query.detach().float().cpu().flatten()
        if q.shape[0] != self.vectors.shape[1]:
            raise InvalidOption(f"query has {q.shape[0]} channels, the {self.layer} index {self.vectors.shape[1]}")
        sims = self.vectors @ (q / q.norm().clamp_min(1e-12))
        if exclude_image is not None and exclude_image in self.image_keys:
            sims = sims.masked_fill(self.image == self.image_keys.index(exclude_image), float("-inf"))
        k = min(k, int(torch.isfinite(sims).sum()))
        vals, idx = sims.topk(k) if k > 0 else (sims[:0], sims[:0].long())
        out = []
        for s, i in zip(vals.tolist(), idx.tolist()):
            img = int(self.image[i])
            out.append(Neighbour(self.image_keys[img], self.image_names[img], self.layer,
                                 (int(self.position[i, 0]), int(self.position[i, 1])), float(s)))
        return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def build_index(bundle: ModelBundle, layer: str, images: Sequence[tuple[str, bytes]] | None = None,
                cache: Path | str | None = None, progress: Callable[[float, str], None] | None = None) -> PFVIndex:
    """The PFVs of ``layer`` for every image ((name, bytes); default: the gallery), each image's vectors
    read from / written to ``<cache>/srd-index/<model fingerprint>/<layer>/<image hash>.pt``."""
    check_supported(bundle)
    items = list(images) if images is not None else gallery_items()
    root = Path(cache) if cache is not None else cache_dir()
    graph, info = _graph(bundle)
    size = (bundle.input_size, bundle.input_size)
    node = resolve_layer(graph, info, layer, size)
    if node is None:
        raise InvalidOption("The PFV index needs a non-linear layer, not the input.")
    name = info.names[node]
    folder = root / "srd-index" / model_fingerprint(bundle) / _safe(name)
    vecs, imgs, poss, keys, names, grids = [], [], [], [], [], []
    for k, (img_name, data) in enumerate(items):
        key = image_hash(data)
        if key in keys:
            continue
        fraction = k / max(len(items), 1)
        (progress or report)(fraction, f"indexing {img_name}")
        path = folder / f"{key}.pt"
        stored = None
        if path.is_file():
            try:
                stored = torch.load(path, weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
                stored = None
        if stored is None:
            x = bundle.preprocess(load_image(data, name=img_name))
            p = forward_pass(bundle, x)
            stored = {"pfv": p.vectors(name).float().cpu(), "grid": torch.tensor(p.grid(name))}
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(stored, tmp)
            os.replace(tmp, path)
        pfv, grid = stored["pfv"], tuple(int(v) for v in stored["grid"])
        idx = len(keys)
        keys.append(key)
        names.append(img_name)
        grids.append(grid)
        vecs.append(pfv)
        imgs.append(torch.full((pfv.shape[0],), idx, dtype=torch.long))
        rr, cc = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        poss.append(torch.stack([rr.flatten(), cc.flatten()], 1))
    (progress or report)(1.0, "index ready")
    vectors = torch.cat(vecs) if vecs else torch.zeros(0, 1)
    vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return PFVIndex(layer=name, vectors=vectors, image=torch.cat(imgs) if imgs else torch.zeros(0, dtype=torch.long),
                    position=torch.cat(poss) if poss else torch.zeros(0, 2, dtype=torch.long), image_keys=keys,
                    image_names=names, grids=grids)




# --------------------------------------------------------------------------- over a registered dataset


def file_list_key(dataset: Dataset) -> str:
    """A hash of the dataset's file list (relative names, sizes, modification times): an added, removed,
    replaced or touched file gives a new key, so a stale index is never read."""
    h = hashlib.sha256()
    for s in dataset.samples:
        try:
            st = s.path.stat()
            meta = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            meta = "missing"
        h.update(f"{s.name}\0{meta}\n".encode())
    return h.hexdigest()[:20]


def dataset_index_path(bundle: ModelBundle, layer_name: str, dataset: Dataset, cache: Path | str | None = None) -> Path:
    """``<cache>/srd-index/<weights fingerprint>/<layer>/dataset-<file list hash>.pt``."""
    root = Path(cache) if cache is not None else cache_dir()
    return root / "srd-index" / model_fingerprint(bundle) / _safe(layer_name) / f"dataset-{file_list_key(dataset)}.pt"


def build_dataset_index(bundle: ModelBundle, layer: str, dataset: Dataset, cache: Path | str | None = None,
                        progress: Callable[[float, str], None] | None = None, batch_size: int = 16) -> PFVIndex:
    """The PFVs of ``layer`` over every file of a registered dataset, decoded lazily ``batch_size`` at a time;
    undecodable files are skipped and listed in ``PFVIndex.failures``.  The whole index is one file on disk
    keyed by weights fingerprint + layer + file list (:func:`file_list_key`); a second build only loads it."""
    check_supported(bundle)
    graph, info = _graph(bundle)
    node = resolve_layer(graph, info, layer, (bundle.input_size, bundle.input_size))
    if node is None:
        raise InvalidOption("The PFV index needs a non-linear layer, not the input.")
    name = info.names[node]
    path = dataset_index_path(bundle, name, dataset, cache)
    say = progress or report
    if path.is_file():
        try:
            d = torch.load(path, weights_only=True)
            say(1.0, f"index of {len(d['names'])} images loaded from the cache")
            return PFVIndex(layer=name, vectors=d["vectors"], image=d["image"], position=d["position"],
                            image_keys=list(d["keys"]), image_names=list(d["names"]),
                            grids=[tuple(g) for g in d["grids"]], failures=[tuple(f) for f in d["failures"]])
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt
            pass
    vecs, imgs, poss, keys, names, grids, failures = [], [], [], [], [], [], []
    total, done = len(dataset), 0
    for batch in dataset.batches(batch_size):
        failures.extend(batch.failures)
        for sample, image in zip(batch.samples, batch.images):
            try:
                key = image_hash(sample.path.read_bytes())
            except OSError as exc:
                failures.append((sample.name, f"{sample.name} could not be read ({type(exc).__name__})."))
                continue
            if key in keys:  # the same bytes twice: index once
                continue
            fp = forward_pass(bundle, bundle.preprocess(image))
            pfv, grid = fp.vectors(name).float().cpu(), tuple(int(v) for v in fp.grid(name))
            idx = len(keys)
            keys.append(key)
            names.append(sample.name)
            grids.append(grid)
            vecs.append(pfv)
            imgs.append(torch.full((pfv.shape[0],), idx, dtype=torch.long))
            rr, cc = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
            poss.append(torch.stack([rr.flatten(), cc.flatten()], 1))
        done += len(batch.samples) + len(batch.failures)
        say(done / max(total, 1), f"indexed {done} of {total} images of {dataset.name}")
    vectors = torch.cat(vecs) if vecs else torch.zeros(0, 1)
    vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    index = PFVIndex(layer=name, vectors=vectors,
                     image=torch.cat(imgs) if imgs else torch.zeros(0, dtype=torch.long),
                     position=torch.cat(poss) if poss else torch.zeros(0, 2, dtype=torch.long),
                     image_keys=keys, image_names=names, grids=grids, failures=failures)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"vectors": index.vectors, "image": index.image, "position": index.position, "keys": keys,
                "names": names, "grids": [list(g) for g in grids], "failures": [list(f) for f in failures]}, tmp)
    os.replace(tmp, path)
    say(1.0, "index ready")
    return index


def dataset_images(dataset: Dataset, neighbours: Sequence[Neighbour]) -> dict[str, tuple[str, bytes]]:
    """image key -> (name, bytes) for the dataset files the neighbours come from (only those are read)."""
    wanted = {nb.image_name: nb.image_key for nb in neighbours}
    samples = [s for s in dataset.samples if s.name in wanted]
    data, _ = dataset.read(samples)
    return {wanted[n]: (n, b) for n, b in data}
