"""Results keyed by what computed them: the weights fingerprint, never the display name."""

from __future__ import annotations

import torch

from explainers import load_model, quality
from explainers.images import GALLERY
from explainers.store import Store

FAST = quality.Settings(pixels_per_step=5000, batch_size=16)


def test_untrained_fingerprint_is_reproducible_per_seed():
    a = load_model("resnet18", device="cpu", weights="untrained")
    b = load_model("resnet18", device="cpu", weights="untrained")  # seed 0 by default
    c = load_model("resnet18", device="cpu", weights="untrained", seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert a.fingerprint.startswith("resnet18-") and a.label == "resnet18 (untrained)"
    assert "seed 1" in c.label


def test_second_checkpoint_never_receives_the_first_ones_stored_results(tmp_path):
    paths = []
    for seed in (0, 1):  # two checkpoints of one architecture: the same name, different weights
        path = tmp_path / f"ckpt{seed}.pt"
        torch.save(load_model("resnet18", device="cpu", weights="untrained", seed=seed).model.state_dict(), path)
        paths.append(path)
    first, second = (load_model("resnet18", device="cpu", weights=str(p)) for p in paths)
    assert first.label == second.label and first.fingerprint != second.fingerprint
    store = Store(tmp_path / "q.sqlite")
    images = [("coffee.png", GALLERY["coffee"].png_bytes())]
    [a] = quality.run_quality(first, images, ["gradcam"], ["sparseness"], FAST, store)
    [b] = quality.run_quality(second, images, ["gradcam"], ["sparseness"], FAST, store)
    assert not a.cached and not b.cached  # computed for the second checkpoint, not read from the first's
    fresh, _ = quality.evaluate(second, second.preprocess(GALLERY["coffee"].image()), "gradcam", {}, ["sparseness"],
                                FAST)
    assert b.values["sparseness"] == fresh["sparseness"] != a.values["sparseness"]
    # the same weights loaded again (another path, same bytes) do read their own results back
    copy = tmp_path / "copy.pt"
    copy.write_bytes(paths[0].read_bytes())
    [again] = quality.run_quality(load_model("resnet18", device="cpu", weights=str(copy)), images, ["gradcam"],
                                  ["sparseness"], FAST, store)
    assert again.cached and again.values == a.values
    assert {r["model"] for r in store.results()} == {first.fingerprint, second.fingerprint}
