"""Strategy clustering (SpRAy): a planted watermark strategy is found as its own cluster."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from explainers.models import ModelBundle, Preprocessing
from explainers.registry import explain_batch
from explainers.spray import cluster, eigengaps, prepare

SIZE = 32


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 1 ("bird") is shown either by a central blob or, for the other half, only by a bright corner patch
    (the watermark); class 0 images have neither.  Returns images, labels and the watermark flag."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.3
    y = torch.zeros(n, dtype=torch.long)
    mark = torch.zeros(n, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    blob = (((yy - 16) ** 2 + (xx - 16) ** 2) < 25).float()
    for i in range(n):
        kind = i % 4  # 0, 1: class 0; 2: blob; 3: watermark
        if kind == 2:
            x[i] += 0.7 * blob
            y[i] = 1
        elif kind == 3:
            x[i, :, 1:7, 1:7] = 1.0
            y[i], mark[i] = 1, True
    return x.clamp(0, 1), y, mark


def _trained_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    x, y, _ = _images(256, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):  # about 2 s on the 2-core CPU
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_watermark_images_form_their_own_cluster():
    model = _trained_cnn()
    x, y, mark = _images(64, seed=2)
    assert (model(x).argmax(1) == y).float().mean() > 0.95  # the model relies on the patch and the blob
    bundle = ModelBundle(model=model, name="tiny", family="vgg", class_names=("other", "bird"),
                         device=torch.device("cpu"), trained=True, weights_source="trained in the test",
                         prep=Preprocessing(SIZE, SIZE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    birds = y == 1
    maps = [e.attribution for e in explain_batch(bundle, x[birds], "input-x-gradient", target=[1] * int(birds.sum()))]
    found = cluster(maps, size=16, seed=0)
    truth = mark[birds].numpy().astype(int)
    assert found.n_clusters == 2
    assert adjusted_rand_score(truth, found.labels) >= 0.8
    assert found.embedding.shape == (int(birds.sum()), 2) and np.isfinite(found.embedding).all()
    # the watermark cluster's mean map sits in the top-left corner
    means = found.mean_maps(16)
    wm = int(np.bincount(found.labels[truth == 1]).argmax())
    corner = means[wm][:4, :4].sum() / means[wm].sum()
    assert corner > 0.5 > means[1 - wm][:4, :4].sum() / means[1 - wm].sum()


def test_prepare_normalises_shape_only_and_eigengap_counts_components():
    a = torch.zeros(8, 8)
    a[:2, :2] = 5.0
    f = prepare([a, 3 * a, -a], size=4)
    assert np.allclose(f[0], f[1]) and np.isclose(f[0].sum(), 1.0) and f[2].sum() == 0  # scale-free; positive part
    # an affinity with three disconnected blocks has three zero eigenvalues: the largest gap is after the third
    blocks = np.kron(np.eye(3), np.ones((4, 4)))
    gaps = eigengaps(blocks, 5)
    assert int(np.argmax(gaps[1:]) + 2) == 3
