"""A user's project built in the test: a factory module with a small residual CNN (two blocks, one with a
projection skip), its labels, an ImageFolder dataset of generated images in 3 class folders with one corrupt
file, a CSV manifest of the same files, and the relevance-explorer.toml that registers them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

USER_CNN = '''
import torch
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.skip = None if (cin == cout and stride == 1) else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(h + (x if self.skip is None else self.skip(x)))


class SmallResNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.block1 = ResBlock(8, 8, 1)
        self.block2 = ResBlock(8, 16, 2)  # the projection skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(self.stem(x)))), 1))


def build(num_classes=3):
    torch.manual_seed(0)
    return SmallResNet(num_classes)


def not_a_model():
    return "hello"
'''

CLASSES = ("apple", "banana", "cherry")
PER_CLASS = 4
COLOURS = {"apple": (200, 30, 30), "banana": (230, 210, 40), "cherry": (120, 0, 40)}


def make_project(root: Path) -> Path:
    """Write the project under ``root``; returns the path of its relevance-explorer.toml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "mymodels.py").write_text(USER_CNN)
    (root / "fruit.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for c in CLASSES:
        folder = root / "data" / "fruit" / c
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            pixels = (rng.normal(0, 25, (48, 64, 3)) + COLOURS[c]).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{c}_{i}.png")
            rows.append(f"fruit/{c}/{c}_{i}.png,{c}")
    (root / "data" / "fruit" / "banana" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "data" / "manifest.csv").write_text("\n".join(rows) + "\n")
    toml = root / "relevance-explorer.toml"
    toml.write_text(textwrap.dedent("""
        [models.fruitnet]
        source = "mymodels:build"
        labels = "fruit.txt"
        seed = 3
        description = "a small residual CNN of our own"

        [models.fruitnet.preprocessing]
        resize = 64
        crop = 64

        [datasets.fruit]
        path = "data/fruit"

        [datasets.fruit-csv]
        path = "data/manifest.csv"
    """))
    return toml
