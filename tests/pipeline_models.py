"""Small objects shared by the pipeline, Ray and Dataset-page tests: a 3-class CNN at 32x32 (a factory
``tests.pipeline_models:build`` the model loader can import in a subprocess or a Ray worker) and a generated
ImageFolder of 24 images in 3 classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

SIZE = 32
CLASSES = ("circle", "stripes", "square")
SPEC = "tests.pipeline_models:build"


class VGG(nn.Module):  # the class name only makes it display as a plain CNN ("vgg" family label)
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, num_classes)
        # what load_source reads for the preprocessing: 32x32 input, no crop margin, identity normalisation
        self.pretrained_cfg = {"input_size": (3, SIZE, SIZE), "crop_pct": 1.0, "mean": (0.5, 0.5, 0.5),
                               "std": (0.25, 0.25, 0.25), "interpolation": "bilinear"}

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build(num_classes: int = 3) -> nn.Module:
    return VGG(num_classes)


def load(device: str = "cpu"):
    from explainers.models import load_model

    return load_model(SPEC, device=device, weights="untrained", num_classes=3, seed=0)


def make_dataset(root: Path, per_class: int = 8, seed: int = 0, size: tuple[int, int] = (40, 36)) -> Path:
    """ImageFolder ``root/<class>/<i>.png``: a disc, stripes or a square on noise, at random places."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.uniform(0, 80, (h, w, 3))
            cy, cx = rng.integers(10, h - 10), rng.integers(10, w - 10)
            colour = rng.uniform(150, 255, 3)
            if c == 0:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 49
            elif c == 1:
                mask = (xx // 3) % 2 == 0
            else:
                mask = (abs(yy - cy) < 6) & (abs(xx - cx) < 6)
            img[mask] = colour
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root
