"""Writes tests/fixtures/srd_reference.pt: SRD maps, totals, ERFs and sharing-ratio sums of the code as it was
before SRD moved onto the one walker (issue #12 points 1 and 8), so tests/test_srd_walker.py can show the maps
are unchanged.  Run once from the repository root: ``python tests/make_srd_reference.py``.

Models: float64 twins (seeded BN statistics, affine parameters and conv biases, so every bias share is
exercised) of seeded untrained torchvision ResNet-18, ResNet-50 and VGG-16 at 64x64 and of the embedded
EfficientNet-Lite0 at 96x96; and the float32 Lite0 on the gallery's chelsea at 224x224 (the app's path).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RELEVANCE_EXPLORER_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from explainers import load_model  # noqa: E402
from explainers.images import GALLERY  # noqa: E402
from tests.test_srd import _double  # noqa: E402

SIZES = {"resnet18": 64, "resnet50": 64, "vgg16": 64, "efficientnet_lite0": 96}
VARIANTS = (("contrastive", "norm"), ("spatial-mean", "contribution"), ("plain", "norm"))
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "srd_reference.pt")


def double(bundle):
    """A float64 twin with seeded non-trivial BN statistics and biases: tests/test_srd.py's own."""
    return _double(bundle, random_biases=True)


def bundles():
    out = {}
    for name in ("resnet18", "resnet50", "vgg16"):
        out[name] = double(load_model(name, device="cpu", weights="untrained"))
    out["efficientnet_lite0"] = double(load_model("efficientnet_lite0", device="cpu"))
    return out


def image(size: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64)


def record(srd, bundle, size: int) -> dict:
    x = image(size)
    infos = srd.layers(bundle, (size, size))
    names = ["input", "low", "high"] + [i.name for i in infos]
    rec: dict = {"layers": [i.name for i in infos], "aliases": {i.alias: i.name for i in infos if i.alias},
                 "maps": {}, "totals": {}, "start_total": {}}
    for start, share in VARIANTS:
        res = srd.srd_maps(bundle, x, None, start=start, bias_share=share, layers=names)
        key = f"{start}/{share}"
        rec["maps"][key] = {n: res.maps[n].clone() for n in names}
        rec["totals"][key] = [(n, t.clone(), cut) for n, t, cut in res.totals]
        rec["start_total"][key] = res.start_total.clone()
        rec.setdefault("targets", res.targets.clone())
    p = srd.forward_pass(bundle, x[:1])
    picks = [i.name for i in infos if i.alias] + [infos[len(infos) // 2].name, infos[0].name]
    rec["erf"], rec["subconcepts"] = {}, {}
    for layer in dict.fromkeys(picks):
        h, w = p.grid(layer)
        positions = [(0, 0), (h // 2, w // 2), (h - 1, w // 3)]
        for share in ("norm", "contribution"):
            rec["erf"][(layer, share)] = (positions, p.erf(layer, positions, share, method="walk").clone())
            subs = p.subconcepts(layer, positions[1], top=0, bias_share=share)
            rec["subconcepts"][(layer, share)] = (positions[1], [(s.layer, s.position, s.mu) for s in subs])
    return trim(rec)


def trim(rec: dict) -> dict:
    """Keep the file small (~3.5 MB): the inputs are regenerated from their seed (:func:`image`); ERFs of two
    PFVs at the encoder output, one elsewhere, the released code's bias share only at 'low' and the first layer;
    the 'plain' start on one image at input / low / high."""
    low, first = rec["aliases"]["low"], rec["layers"][0]
    erf = {}
    for (layer, share), (pos, e) in rec["erf"].items():
        if share == "contribution" and layer not in (low, first):
            continue
        keep = slice(1, 3) if layer == low else slice(1, 2)
        erf[(layer, share)] = (pos[keep], e[keep].clone())
    rec["erf"] = erf
    rec["maps"]["plain/norm"] = {k: v[:1].clone() for k, v in rec["maps"]["plain/norm"].items()
                                 if k in ("input", "low", "high")}
    return rec


def main() -> None:
    from explainers import srd

    torch.set_num_threads(max(1, torch.get_num_threads()))
    ref = {"models": {}}
    for name, bundle in bundles().items():
        print("recording", name, flush=True)
        rec = record(srd, bundle, SIZES[name])
        rec["size"] = SIZES[name]
        ref["models"][name] = rec
    lite0 = load_model("efficientnet_lite0", device="cpu")
    x = lite0.preprocess(GALLERY["chelsea"].image())
    res = srd.srd_maps(lite0, x, None, layers=("low", "high", "input"))
    ref["lite0_float32"] = {"maps": {k: v.clone() for k, v in res.maps.items()}, "target": int(res.targets[0])}
    torch.save(ref, OUT)
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
