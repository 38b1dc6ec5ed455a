"""Shared fixtures.  Tests run on the CPU with no network: downloads are switched off."""

from __future__ import annotations

import os

os.environ.setdefault("RELEVANCE_EXPLORER_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from explainers import load_model  # noqa: E402
from explainers.images import GALLERY  # noqa: E402


@pytest.fixture(scope="session")
def lite0():
    """The real, trained EfficientNet-Lite0 (embedded weights) on the CPU."""
    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def untrained():
    """Random-weight models by name, cached for the session (seeded for repeatability)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = load_model(name, device="cpu", weights="untrained")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def gallery_x(lite0):
    """Preprocessed gallery images for the real model: key -> 1x3x224x224."""
    return {k: lite0.preprocess(item.image()) for k, item in GALLERY.items()}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's project (tests/project.py) registered through $RELEVANCE_EXPLORER_CONFIG, with its own store and
    no server-path flag."""
    from tests.project import make_project

    toml = make_project(tmp_path / "project")
    monkeypatch.setenv("RELEVANCE_EXPLORER_CONFIG", str(toml))
    monkeypatch.setenv("RELEVANCE_EXPLORER_DB", str(tmp_path / "labels.sqlite"))
    monkeypatch.delenv("RELEVANCE_EXPLORER_ALLOW_SERVER_PATHS", raising=False)
    return toml
