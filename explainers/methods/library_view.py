"""Copies of a model in the module vocabulary that pytorch-grad-cam and captum recognise.

Both libraries find the layers they treat specially by *exact module type*:

- pytorch-grad-cam's FullGrad takes bias gradients of ``type(m) in [Conv2d, BatchNorm2d]``;
- captum's GuidedBackprop guides ``nn.ReLU`` modules and pytorch-grad-cam's guided backprop swaps modules
  whose class is named ``ReLU``;
- captum's DeepLift applies its Rescale rule to ``type(m)`` in a fixed table (ReLU, ELU, Sigmoid, ...; not
  ReLU6) and passes anything else as if linear.

timm's EfficientNet-Lite (our default model) is built from ``BatchNormAct2d`` (BatchNorm2d, dropout and
activation fused into one BatchNorm2d subclass) with ``ReLU6`` activations and bias-free convs.  Run on it
as is, FullGrad found no bias layer (only its input-gradient term was left), guided backprop guided
nothing (it was the plain gradient), and DeepLift passed ReLU6 as if linear (its attributions did not sum
to f(x) - f(baseline)).  None of these raise; the maps were silently a different method.

:func:`library_view` returns a private copy with the same function and parameters in which each fused
norm+act layer is ``Sequential(BatchNorm2d, drop, act)`` (the BN bias gradient is then taken at the BN
output, before the nonlinearity, as FullGrad defines it) and each ``ReLU6`` is written with ``nn.ReLU``
modules in one of two forms, because the two rules need different ones:

- ``"guided"``: ``Sequential(ReLU(), Hardtanh(0, 6))``.  Guided backprop of the ReLU then passes
  ``relu(g) * [0 < x < 6]``, the guided ReLU6.  (A form with a subtracted ReLU branch would let negative
  signals through the subtracted branch.)
- ``"rescale"``: ``6 - relu(6 - relu(x))`` (:class:`ReLU6AsReLUs`).  Each ReLU gets DeepLift's Rescale
  multiplier and multipliers compose exactly along a chain, so the attributions again sum to
  f(x) - f(baseline).  (Hardtanh would be passed as linear.)

Models without such layers (torchvision ResNets and VGGs) need no rewrite.  A view is built on
:func:`~explainers.guard.twin` with private ``Parameter`` objects on the model's own weight storage, so it
costs module objects, not a second set of weights; the rewritten BatchNorms share the fused layers'
tensors too.  The guard (:func:`explainers.guard.view`) caches one view per method and form, each with its
own lock; :func:`library_view` is the lock-free, per-model cached variant for tests and notebooks.
"""

from __future__ import annotations

import weakref

from torch import Tensor, nn

from ..guard import twin

FORMS = ("guided", "rescale")


class ReLU6AsReLUs(nn.Module):
    """``min(max(x, 0), 6)`` as ``6 - relu(6 - relu(x))``: two chained ``nn.ReLU`` modules, each used once,
    each on a tensor nothing else reads (captum hooks a module's input tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.ReLU()
        self.cap = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return 6.0 - self.cap(6.0 - self.pos(x))


def _relu6(form: str) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Hardtanh(0.0, 6.0)) if form == "guided" else ReLU6AsReLUs()


def _is_fused_norm_act(m: nn.Module) -> bool:
    return (isinstance(m, nn.BatchNorm2d) and type(m) is not nn.BatchNorm2d
            and isinstance(getattr(m, "act", None), nn.Module) and isinstance(getattr(m, "drop", None), nn.Module))


def _needs_view(model: nn.Module) -> bool:
    return any(_is_fused_norm_act(m) or type(m) is nn.ReLU6 for m in model.modules())


def _plain_batchnorm(fused: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """A plain ``BatchNorm2d`` on the fused layer's own parameter and buffer tensors (no copy)."""
    plain = nn.BatchNorm2d(fused.num_features, eps=fused.eps, momentum=fused.momentum, affine=fused.affine,
                           track_running_stats=fused.track_running_stats)
    for name in list(plain._parameters):
        plain._parameters[name] = fused._parameters.get(name)
    for name in list(plain._buffers):
        plain._buffers[name] = fused._buffers.get(name)
    return plain.train(fused.training)


def _rewrite(module: nn.Module, form: str) -> None:
    for name, child in list(module.named_children()):
        if _is_fused_norm_act(child):
            unfused = nn.Sequential(_plain_batchnorm(child), child.drop, child.act)
            _rewrite(unfused, form)  # its activation may be a ReLU6
            setattr(module, name, unfused)
        elif type(child) is nn.ReLU6:
            setattr(module, name, _relu6(form))
        else:
            _rewrite(child, form)


def make_view(model: nn.Module, form: str = "guided") -> nn.Module:
    """A new private view of ``model`` (eval mode, parameters without gradients) with ReLU6 in the given
    ``form``; a plain twin when the model needs no rewrite (see the module docstring)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    view = twin(model, private_parameters=True)
    if _needs_view(view):
        _rewrite(view, form)
    view.eval()
    for p in view.parameters():  # the methods need input and activation gradients only
        p.requires_grad_(False)
    return view


_VIEWS: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def library_view(model: nn.Module, form: str = "guided") -> nn.Module:
    """``model`` itself when the libraries see it correctly, else its cached library-friendly view
    (:func:`make_view`).  No lock: shared-model code goes through ``guard.model_guard(..., form=...)``."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if not _needs_view(model):
        return model
    views = _VIEWS.setdefault(model, {})
    if form not in views:
        views[form] = make_view(model, form)
    return views[form]
