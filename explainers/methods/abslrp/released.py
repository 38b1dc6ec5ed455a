"""``preset="released-code"``: absLRP as the authors' released code computes it (repository
davor10105/relative-absolute-magnitude-propagation, HEAD 130e4e1; what it does is recorded in
shared/notes/released-code-abslrp-gae.md, Sec. 1).  Reproduced by tests/reference_abslrp.py, an independent
hook-free transcription of that code, to max|diff| / max|map| < 1e-6 in float64 (tests/test_abslrp_released.py).

The released code has one generic step for every leaf module: with an "abs copy" of the module (weights
``|w|``, bias ``|b|``) run on ``|x|``, ``R_x = x * grad(h + h_abs, x, R / (|h| + 1e-9))``, and each input's
relevance is then rescaled to unit L1 mass.  Written out per operation (the factor 2 every step produces is
removed by the rescaling, so it is left out):

- conv / linear: ``x (w + |w| sign x) = 2 (x w)^+``: abslrp-gae Eq. 12 itself, bias in ``|z|`` only.
- BatchNorm: **one** step, ``R_x = (x gamma / sigma)^+ / (|h| + eps) R`` with ``h`` the BN output (the paper's
  Sec. 3.1 and our ``preset="paper"`` split it into two affine steps; only the paper-time code @e78576c did).
- ReLU and identity-like modules (Identity, Dropout, Flatten): ``R_x = x^+ / (|h| + eps) R`` with ``h = x^+``
  (ReLU) or ``x`` (identity): relevance passes where ``x > 0`` and is dropped where ``x < 0`` (so an Identity
  zeroes it at negative inputs).  Other activations (ReLU6, GELU, SiLU): the generic step by autograd.
- max pool: the generic step, i.e. winner-take-all after a ReLU.  Average pool: ``x^+ J^T (R / (|h| + eps))``.
- residual add ``h = a + s``: ``R_a = a^+ R / (|h| + eps)`` and ``R_s = s^+ R / (|h| + eps)``, **each rescaled to
  unit mass**, so the ratio between the branches is lost (the paper's Eq. 12 and our ``preset="paper"`` keep it);
  at the block input the two unit masses are summed.
- start: two passes of non-negative relevance, one-hot at the target and ``1/(N-1)`` at every other class;
  the map is the target pass minus the other-classes pass, each of unit mass, scaled to max |value| 1
  (``MAX_TO_ONE``).  The paper's start (1 and ``-1/N`` in one signed pass) is ``preset="paper"``.

Every step is positively homogeneous in ``R``, so rescaling each node's inputs to unit mass (as the code rescales
each leaf module's inputs) is the code's arithmetic at every node, not an approximation of it.

Scope: the code supports timm ResNets and VGG-16 (and a ViT-Base with its own attention rules, not
reproduced here); VGG's max pool there keeps the activation (``divide_relevance=False``), which this preset
does not model.  On other CNNs the same generic steps are applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...propagation.graph import PropGraph, batch_norm_stats
from ...propagation.ruleset import OpContext, RuleSet
from .common import batch_view, eq12_layer, eq12_pool, layer_of, layer_output, pos
from .options import CONTRASTS

Tensor = torch.Tensor

# Nodes whose rule only moves relevance (a functional reshape / index): the code has no module there to rescale.
_MOVES_ONLY = frozenset({"select", "cat"})


def _is_relu(graph: PropGraph, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(graph.module.get_submodule(str(node.target))) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu)
    return node.op == "call_method" and node.target == "relu"


def unit_mass(t: Tensor, bd: int = 0) -> Tensor:
    """Each image's relevance scaled to L1 mass 1 (the code's SUM_TO_ONE); an all-zero image stays zero."""
    flat = t.movedim(bd, 0) if bd else t
    mass = flat.reshape(flat.shape[0], -1).abs().sum(1)
    scale = torch.where(mass > 0, 1.0 / torch.where(mass > 0, mass, torch.ones_like(mass)), torch.zeros_like(mass))
    return t * batch_view(scale, t.dim(), bd)


@dataclass
class ReleasedCodeRules(RuleSet):
    """The released code's absLRP (module docstring): a sibling of :class:`~.rules.AbsLRPRules` under RuleSet."""

    eps: float = 1e-9  # the code's 1e-9 in R / (|h| + 1e-9)
    contrast: str = "abslrp"  # 'abslrp' / 'clrp': the code's two passes; 'none': the target pass alone

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise ValueError(f"unknown contrast {self.contrast!r}; use one of {', '.join(CONTRASTS)}")

    @property
    def two_passes(self) -> bool:
        return self.contrast != "none"

    def start_relevance(self, logits: Tensor, targets: Tensor) -> Tensor:
        """One-hot at the target; with two passes the caller doubles the batch and the second half starts at
        ``1/(N-1)`` on every other class (relevancy_methods.py's negative start)."""
        n = logits.shape[-1]
        onehot = F.one_hot(targets.long(), n).to(logits.dtype)
        if not self.two_passes:
            return onehot
        half = logits.shape[0] // 2
        return torch.cat([onehot[:half], (1.0 - onehot[half:]) / (n - 1)])

    def keeps(self, graph: PropGraph) -> frozenset[fx.Node]:
        """Layer outputs (``|z|``), BatchNorm inputs, ReLU outputs, and the inputs of identity-like modules and
        other activations (their step reads the sign / value of the input, which an in-place ReLU overwrites)."""
        out = {n for n in graph.nodes if graph.kind[n] in ("conv", "linear")}
        for n in graph.nodes:
            kind = graph.kind[n]
            if kind in ("bn", "pass", "reshape", "maxpool") or (kind == "act" and not _is_relu(graph, n)):
                out |= set(graph.data_inputs[n][:1])
            elif kind == "act":
                out.add(n)  # a ReLU's own output x^+ (its input may be overwritten in place)
        return frozenset(out)

    def backward(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """The node's step, then each data input's relevance rescaled to unit mass per image (the code's
        SUM_TO_ONE on every input of every leaf module; at a residual add, on each branch separately)."""
        outs = RuleSet.backward(self, op, R)
        if op.kind in _MOVES_ONLY:
            return outs
        ins = op.graph.data_inputs[op.node]
        return [None if o is None else unit_mass(o, op.graph.batch_dim.get(i, 0)) for i, o in zip(ins, outs)]

    # -- layers: Eq. 12 -------------------------------------------------------------------------
    def rule_conv(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        layer = layer_of(op)
        z = layer_output(op, layer)
        return [eq12_layer(layer, op.x, z.abs().add_(self.eps).reciprocal_().mul_(R))]  # abslrp-gae Eq. 12

    rule_linear = rule_conv

    def rule_bn(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """One generic step through the whole BN: ``(x gamma / sigma)^+ / (|h| + eps)``, h the BN output."""
        mean, var, weight, bias, bn_eps = batch_norm_stats(op.graph, op.node, op.env)
        x = op.x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = (var.detach().to(x.dtype) + bn_eps).rsqrt().view(shape)
        if weight is not None:
            scale = scale * weight.detach().to(x.dtype).view(shape)
        xs = x * scale
        h = xs - mean.detach().to(x.dtype).view(shape) * scale
        if bias is not None:
            h = h + bias.detach().to(x.dtype).view(shape)
        return [xs.clamp_(min=0).div_(h.abs_().add_(self.eps)).mul_(R)]

    # -- weightless leaves ----------------------------------------------------------------------
    def _identity_like(self, x: Tensor, R: Tensor) -> Tensor:
        """``x (1 + sign x) / (|x| + eps) R``, i.e. ``x^+ / (|x| + eps) R`` (times 2): an identity module."""
        return pos(x).div_(x.abs().add_(self.eps)).mul_(R)

    def _generic(self, op: OpContext, R: Tensor) -> Tensor:
        """The code's step for any parameter-free leaf: ``x * grad(f(x) + f(|x|), x, R / (|f(x)| + eps))``."""
        with torch.enable_grad():
            x = op.x.detach().requires_grad_(True)
            h = op.rerun(x)
            (g,) = torch.autograd.grad(h + op.rerun(x.abs()), x, R / (h.detach().abs() + self.eps))
        return g.mul_(x.detach())

    def rule_act(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        if _is_relu(op.graph, op.node):
            x = op.env[op.node]  # the output x^+ (the input may have been overwritten in place)
            return [x.div(x + self.eps).mul_(R)]  # R is 0 wherever x <= 0 (every consumer's step is ~ x^+)
        return [self._generic(op, R)]

    def rule_pass(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        if op.node.op != "call_module":
            return [R]  # a functional no-op: no module, no step
        return [self._identity_like(op.x, R)]

    def rule_reshape(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        R = R.reshape(op.x.shape)
        return [self._identity_like(op.x, R) if op.node.op == "call_module" else R]  # nn.Flatten is a leaf

    def rule_maxpool(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [self._generic(op, R)]

    def rule_avgpool(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [eq12_pool(op, R, self.eps)]

    rule_mean = rule_avgpool

    def rule_add(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """``h = sum_t a_t``: ``R_t = a_t^+ R / (|h| + eps)`` (``backward`` then rescales each term to unit mass).
        Python scalars only enter ``h``."""
        h: Tensor | float = 0.0
        for a in op.node.args:
            h = h + (op.env[a] if isinstance(a, fx.Node) else a)  # type: ignore[operator]
        S = R / (torch.as_tensor(h).abs() + self.eps)
        ins = op.graph.data_inputs[op.node]
        outs: list[Tensor | None] = [None] * len(ins)
        for a in op.node.args:
            if isinstance(a, fx.Node) and a in ins:
                i = ins.index(a)
                r = (pos(op.env[a]) * S).sum_to_size(op.env[a].shape)
                outs[i] = r if outs[i] is None else outs[i] + r
        return outs
