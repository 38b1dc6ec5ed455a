"""2x2 mosaics for Focus (abslrp-gae Sec. 2.3) and GAE contrastiveness (Sec. 3.2).

A mosaic is four images, each resized + centre-cropped as the model expects
and then downsized to half the input size, placed TL, TR, BL, BR, so the
mosaic itself has the model's input size (as the released GAE code does; it
also keeps ViTs, which need exactly 224x224, usable).  Each quadrant keeps the
prediction of its image on its own (the class c_i and the softmax s used by
the contrastiveness scoring map) and the prediction of the mosaic is stored too.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ExplainerError
from .images import GALLERY, load_image
from .metrics.gae import contrastiveness, focus, quadrant_masks, scoring_map
from .models import ModelBundle

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class Mosaic:
    """Four images in a 2x2 grid, with what the model says about each of them and about the whole."""

    names: list[str]
    x: torch.Tensor  # 1x3xHxW normalised, on the bundle's device
    pixels: torch.Tensor  # 3xHxW in [0, 1] on the CPU (what is shown)
    classes: list[int]  # predicted class of each quadrant's image on its own
    probs: torch.Tensor  # [4, num_classes] softmax of each image on its own (CPU)
    mosaic_top5: list[tuple[int, str, float]] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.x.shape[-2:])  # type: ignore[return-value]

    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels.permute(1, 2, 0).mul(255).round().byte().numpy())

    def quadrant_labels(self, class_names: Sequence[str]) -> list[str]:
        return [f"{q}: {n} -> {class_names[c]} ({float(p[c]):.1%})"
                for q, n, c, p in zip(QUADRANTS, self.names, self.classes, self.probs)]

    def target_quadrants(self, target: int) -> tuple[bool, bool, bool, bool]:
        """Quadrants whose image is predicted as ``target`` (Focus's positives)."""
        return tuple(c == target for c in self.classes)  # type: ignore[return-value]

    def scoring(self, positive: int) -> torch.Tensor:
        """The contrastiveness scoring map S for ``positive`` as the positive quadrant (abslrp-gae Sec. 3.2)."""
        h, w = self.size
        return scoring_map(h, w, positive, self.classes, self.probs[positive])

    def focus(self, attribution: torch.Tensor, target: int) -> float:
        """Focus of a map of this mosaic for class ``target`` (abslrp-gae Eq. 11)."""
        flags = self.target_quadrants(target)
        if not any(flags):
            raise ExplainerError("No quadrant of this mosaic is predicted as the explained class; Focus is undefined.")
        return float(focus(attribution[None], flags)[0])

    def contrastiveness(self, attribution: torch.Tensor, positive: int) -> float:
        """Contrastiveness of a map explaining quadrant ``positive``'s class (abslrp-gae Eq. 17)."""
        return float(contrastiveness(attribution[None], self.scoring(positive))[0])


def build_mosaic(bundle: ModelBundle, images: Sequence[Image.Image | torch.Tensor],
                 names: Sequence[str] | None = None) -> Mosaic:
    """Place four images TL, TR, BL, BR and predict each image alone and the whole mosaic."""
    if len(images) != 4:
        raise ExplainerError(f"A mosaic needs exactly four images; got {len(images)}.")
    names = list(names) if names is not None else [f"image {i + 1}" for i in range(4)]
    size = bundle.input_size
    full = [bundle.to_tensor01(im) if isinstance(im, Image.Image) else im.detach().float().cpu() for im in images]
    pixels = torch.zeros(3, size, size)
    for q, m in enumerate(quadrant_masks(size, size)):
        rows = m.any(1).nonzero()[:, 0]
        cols = m.any(0).nonzero()[:, 0]
        h, w = len(rows), len(cols)
        small = F.interpolate(full[q][None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
        pixels[:, rows[0]:rows[0] + h, cols[0]:cols[0] + w] = small.clamp(0, 1)
    mean = torch.tensor(bundle.prep.mean).view(3, 1, 1)
    std = torch.tensor(bundle.prep.std).view(3, 1, 1)
    singles = torch.stack([F.interpolate(f[None], size=(size, size), mode="bilinear", align_corners=False)[0]
                           if tuple(f.shape[-2:]) != (size, size) else f for f in full])
    probs = bundle.predict(((singles - mean) / std).to(bundle.device))
    x = ((pixels - mean) / std)[None].to(bundle.device)
    mosaic = Mosaic(names=names, x=x, pixels=pixels, classes=[int(c) for c in probs.argmax(1)], probs=probs)
    mosaic.mosaic_top5 = bundle.topk(x, 5)
    return mosaic


def load_folder(path: str | Path, limit: int = 200) -> dict[str, Image.Image]:
    """Images of a folder by file name (sorted; unreadable files are skipped, not fatal)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ExplainerError(f"{str(folder)!r} is not a folder.")
    out: dict[str, Image.Image] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and len(out) < limit:
            try:
                out[p.name] = load_image(p, name=p.name)
            except ExplainerError:
                continue
    if not out:
        raise ExplainerError(f"No readable images in {str(folder)!r}.")
    return out


def gallery_pool() -> dict[str, Image.Image]:
    return {k: g.image() for k, g in GALLERY.items()}


def predicted_classes(bundle: ModelBundle, pool: Mapping[str, Image.Image], batch: int = 16) -> dict[str, int]:
    """Each image's top-1 class on its own (batched)."""
    names = list(pool)
    out: dict[str, int] = {}
    for i in range(0, len(names), batch):
        chunk = names[i:i + batch]
        x = torch.cat([bundle.preprocess(pool[n]) for n in chunk])
        for n, c in zip(chunk, bundle.predict(x).argmax(1).tolist()):
            out[n] = int(c)
    return out


def random_selection(classes: Mapping[str, int], k: int = 4, seed: int | None = None,
                     distinct: bool = True) -> list[str]:
    """``k`` image names, by default with pairwise distinct predicted classes (GAE's negatives must differ)."""
    rng = random.Random(seed)
    names = list(classes)
    rng.shuffle(names)
    if not distinct:
        if len(names) < k:
            raise ExplainerError(f"Need {k} images, have {len(names)}.")
        return names[:k]
    chosen, seen = [], set()
    for n in names:
        if classes[n] not in seen:
            chosen.append(n)
            seen.add(classes[n])
        if len(chosen) == k:
            return chosen
    raise ExplainerError(f"Need {k} images with distinct predicted classes; only {len(chosen)} classes are present.")


def explain_quadrant(bundle: ModelBundle, mosaic: Mosaic, quadrant: int, method: str,
                     **options: Any):
    """Explain the mosaic for the class of quadrant ``quadrant``'s image (its own prediction)."""
    from .registry import explain

    return explain(bundle, mosaic.x, method, target=mosaic.classes[quadrant], **options)


@dataclass
class GAEScore:
    """GAE of one method for one mosaic positive (abslrp-gae Eq. 18) with its parts."""

    local_consistency: float
    robustness: float
    faithfulness: float
    contrastiveness: float
    focus: float

    @property
    def gae(self) -> float:
        return self.local_consistency * self.contrastiveness


def gae_score(bundle: ModelBundle, mosaic: Mosaic, images: Sequence[Image.Image], positive: int, method: str,
              options: Mapping[str, Any] | None = None, steps: int = 10) -> GAEScore:
    """GAE = LC x C (abslrp-gae Sec. 3.2): LC on the positive image alone, C on the mosaic, both for c_p.

    ``images`` are the mosaic's four source images (LC needs the positive at full size).
    Maps are scored as displayed (the method's display post-processing applied).
    """
    from .metrics import local_consistency, method_explain_fn
    from .registry import explain, get_method

    opts = get_method(method).resolve_options(dict(options or {}))
    spec = get_method(method)
    target = mosaic.classes[positive]
    fn = method_explain_fn(bundle, method, opts, display=True)

    def model(batch: torch.Tensor) -> torch.Tensor:
        with bundle.lock:
            return bundle.model(batch)

    x = bundle.preprocess(images[positive])
    lc = local_consistency(model, fn, x, [target], steps=steps)
    res = explain(bundle, mosaic.x, method, target=target, **opts)
    shown = spec.display_map(res.attribution, opts)
    return GAEScore(local_consistency=float(lc.score[0]), robustness=float(lc.robustness[0]),
                    faithfulness=float(lc.faithfulness[0]), contrastiveness=mosaic.contrastiveness(shown, positive),
                    focus=mosaic.focus(shown, target))
