"""The guard's parts: views that share storage but nothing else, a graph build that disturbs no other
thread, tracing failures told apart from bugs, and a failed download that keeps its cause."""

from __future__ import annotations

import threading

import pytest
import torch
import torchvision
from torch import nn

from explainers import load_model
from explainers.errors import UnsupportedModel, WeightsUnavailable
from explainers.guard import count_hooks, model_guard, twin
from explainers.propagation import build_graph


def test_twin_shares_storage_but_not_modules_hooks_or_flags(untrained):
    model = untrained("resnet18").model
    v = twin(model, private_parameters=True)
    for (name, p), q in zip(model.named_parameters(), v.parameters(), strict=True):
        assert q is not p and q.data_ptr() == p.data_ptr(), name  # own Parameter, same weights
    assert all(a is not b for a, b in zip(model.modules(), v.modules(), strict=True))
    v.layer1.register_forward_hook(lambda *a: None)
    v.train()
    for q in v.parameters():
        q.requires_grad_(False)
    assert count_hooks(model) == 0 and not model.training
    assert all(p.requires_grad for p in model.parameters())
    # torchvision's BasicBlock calls one ReLU module twice: the twin keeps that sharing
    assert v.layer1[0].relu is v.layer1[0].relu and len(list(v.modules())) == len(list(model.modules()))


def test_read_only_guard_is_the_shared_model_and_views_are_private(untrained):
    bundle = untrained("resnet18")
    with model_guard(bundle, requires_grad=False) as shared:
        assert shared is bundle.model
    with model_guard(bundle, view_key="test") as mine:
        assert mine is not bundle.model
        mine.register_forward_hook(lambda *a: None)
        assert all(p.requires_grad for p in mine.parameters())
    assert count_hooks(mine) == 0 and count_hooks(bundle.model) == 0


def test_graph_build_disturbs_no_forward_in_another_thread():
    """fx patches nn.Module.__call__ for every thread while it traces; another thread's forwards (with
    a hook, as a Grad-CAM has) must still see tensors and compute the same logits."""
    other = load_model("resnet18", device="cpu", weights="untrained", seed=1).model
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    seen: list[type] = []
    handle = other.layer1.register_forward_hook(lambda m, i, o: seen.append(type(o)))
    with torch.no_grad():
        ref = other(x)
    outs, errors, stop = [], [], threading.Event()

    def forwards() -> None:
        try:
            while not stop.is_set():
                with torch.no_grad():
                    outs.append(other(x))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=forwards)
    t.start()
    try:
        graphs = [build_graph(torchvision.models.resnet18().eval(), "resnet18") for _ in range(4)]
    finally:
        stop.set()
        t.join()
        handle.remove()
    assert not errors, errors[0]
    assert set(seen) == {torch.Tensor} and len(outs) > 1
    assert all(torch.equal(o, ref) for o in outs)
    assert all(len(g.residuals) == 8 for g in graphs)  # the traces themselves are whole


def test_one_graph_per_model_under_concurrent_builds():
    model = torchvision.models.resnet18().eval()
    got, errors = [], []

    def build() -> None:
        try:
            got.append(build_graph(model, "resnet18"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(got) == 8 and all(g is got[0] for g in got)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: fx cannot trace this
            return y.flatten(1)
        return -y.flatten(1)


class _Buggy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).flatten(1) * self.scale  # a bug: there is no such attribute


def test_tracing_failure_names_the_operation_and_bugs_propagate():
    with pytest.raises(UnsupportedModel) as err:
        build_graph(_Branchy(), "branchy")
    assert "if y.sum() > 0:" in str(err.value) and "test_guard.py" in str(err.value)
    with pytest.raises(AttributeError, match="scale"):  # not dressed up as "model not supported"
        build_graph(_Buggy(), "buggy")


def test_failed_download_keeps_its_cause(monkeypatch):
    from explainers import models

    def fail(*args, **kwargs):
        raise ConnectionResetError("peer reset the connection")

    monkeypatch.setattr(models, "weights_location", lambda spec: (False, "/nowhere/resnet18.pth"))
    monkeypatch.setattr(models, "_can_reach", lambda host, timeout=2.0: True)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    with pytest.raises(WeightsUnavailable) as err:
        load_model("resnet18", device="cpu")
    assert "ConnectionResetError: peer reset the connection" in str(err.value)
    assert isinstance(err.value.__cause__, ConnectionResetError)
