"""absLRP: Relative Absolute Magnitude LRP (Vukadin et al., abslrp-gae Sec. 3.1) as a rule set of the engine.

The rule (abslrp-gae Eq. 12) for a unit ``z_j = sum_k x_k w_kj + b_j``::

    R_i = sum_j (x_i w_ij)^+ / (|z_j| + eps) * R_j

Only positive contributions receive relevance (as in LRP-alpha1beta0), but they are measured against the
*absolute* pre-activation ``|z_j|`` (bias included) instead of the sum of the positive parts, so a unit whose
positive and negative contributions nearly cancel passes on more relevance per unit of contribution (the
paper's Fig. 1).  The rule is linear in ``R``; the denominators depend on the activations only.

This module is ``preset="paper"`` (the default): the paper's Eq. 12 and its per-operation rules, reproducing
the paper's Fig. 1 toy networks (tests/test_abslrp.py).  ``preset="released-code"`` is :mod:`.released`, which
equals tests/reference_abslrp.py (a transcription of the authors' code, HEAD 130e4e1) to 3e-13 in float64.
Where this preset differs from that code (seeded timm ResNet-50, float64; Pearson correlation of the signed
map / of its positive part with the code's, README "absLRP" for the table):

1. BatchNorm: two affine steps here (paper Sec. 3.1), one generic step there (only the paper-time code split it).
2. Residual add: Eq. 12 shares kept here; there each branch is rescaled to unit mass (ratio lost).
3. Start: one signed pass (1, -1/N) with per-sign renormalisation here; two non-negative passes (one-hot, and
   1/(N-1) on the others), each of unit mass, subtracted at the end there.
4. Identity-like modules (Identity, Dropout, Flatten) pass relevance here; there they drop it at negative
   inputs (no effect on ResNets: a ReLU follows).  5. The code's map is scaled to max |value| 1.

Before (this preset vs the code): 0.9896 / 0.9905 on ``chelsea`` at 224 px, 0.813 / 0.863 on a 64 px noise
image; the released-code preset: 1.0000 / 1.0000 on both (max|diff| / max|map| 1.3e-13 and 3.4e-13).

How it is computed: ``(x w)^+ = x^+ w^+ + x^- w^-``, so with ``S = R / (|z| + eps)``::

    R_in = x^+ * (W+^T S) + x^- * (W-^T S)

two transposed products (one where the layer input is known to be >= 0, i.e. after a ReLU), no forward
re-run: ``z`` is the layer output kept from the forward pass.  The paper's Algorithm 1 gets the same
numbers (times 2) as ``x * grad(h + h_abs)`` with an ``|w|, |x|`` copy of the layer, which costs an extra
forward of that copy per layer.

Per operation (abslrp-gae Sec. 3.1, "Residual Connection", "Batch Normalization", "Layer Normalization",
"Self-Attention Block"):

- conv / linear: Eq. 12.  Average pools and means: Eq. 12 with their (positive) averaging weights.
- BatchNorm: two affine layers, ``h1 = (x - mu) / sigma`` then ``h2 = gamma h1 + beta``, Eq. 12 at each
  (``-mu / sigma`` and ``beta`` act as biases: in the denominators, never given relevance).
- LayerNorm: the same two steps with the mean and variance of the token treated as constants.
- element-wise activations (ReLU, ReLU6, GELU, ...): relevance passes unchanged; max pool: winner-take-all.
- residual add ``h = a + b``: Eq. 12 applied to each input ("two passes"), ``R_a = a^+ R / (|h| + eps)``;
  the two branches' relevance is summed where they split (the engine sums at every fan-out).
- q k^T and attention x values: Eq. 12 for a bilinear product, one pass per factor, e.g. for ``o = A v``:
  ``R_A = sum_d (A_ij v_jd)^+ S_id`` and ``R_v = sum_i (A_ij v_jd)^+ S_id``; q, k and v meet again at the
  qkv linear layer, where their relevance is summed.
- softmax with its denominator treated as a constant is an element-wise ``exp`` times a constant, so (like
  every element-wise activation above) it passes relevance to the attention logits.  This is our reading
  of "our established rule is once again employed ... the denominator of softmax ... is detached"; the
  released code instead applies its generic ``grad(h + h_abs)`` step to the softmax leaf.
- multiplication by a Python scalar (timm scales q by ``head_dim ** -0.5`` before q k^T) passes: the scale
  belongs to the q k^T product, where it cancels between numerator and denominator of Eq. 12.
  Multiplication by a parameter tensor (LayerScale) is an affine layer under Eq. 12.
- the class token (``cat``) and the position embedding (``add`` of a parameter) are terms like any other;
  the relevance Eq. 12 gives them is recorded in the trace (node kind ``constant``), not silently dropped.
- index / permutation ops (``x[:, 0]``, transpose, permute, the q/k/v split): relevance follows the element.

Start (abslrp-gae Sec. 3.1, after Gu et al.): ``contrast="abslrp"`` puts 1 on the target logit and -1/N on
every other (N = number of classes) and propagates that signed vector in one pass.  ``"none"``: one-hot
target.  ``"clrp"`` (contrastive LRP, Gu et al. 2019): target map minus the map of all other classes, each
normalised to unit mass; the caller doubles the batch (see :meth:`AbsLRPRules.start_relevance`).

Renormalisation (``renormalise``), where we follow the authors' code rather than the printed equation:
Eq. 12 is not conservative (a unit multiplies what it receives by sum_i (x_i w_ij)^+ / |z_j|, without
bound as z_j -> 0).  With the contrastive start that is fatal: the -1/N share flows through the classes
whose logits are near 0 and is amplified by orders of magnitude more than the target's share, so the map
is negative everywhere (measured on EfficientNet-Lite0 mosaics: no positive relevance left at all).

- ``"sign"`` (default): at every node the positive and the negative relevance are propagated separately
  and each is scaled back to its own mass, jointly over the node's inputs, then added, in the spirit of
  the paper-time released code ("R+ and R- propagated separately, each renormalised to its own mass"; its
  HEAD renormalises each input of a node to unit mass instead, which loses the ratio between residual
  branches, so we scale jointly; that code is ``preset="released-code"``).  Within a node the shares are
  exactly Eq. 12's; each sign's total is conserved, so the map sums to the start's total (1 - (N-1)/N for
  the contrastive start, 1 for one-hot), and the target's evidence and the other classes' evidence cancel
  where they meet.
- ``"off"``: Eq. 12 exactly as printed.  The engine then rescales all pending relevance of an image by one
  common factor when it nears float32's limits (``rescale_kinds``; over an untrained ViT-Base the totals
  reach 1e50), which leaves every ratio intact; the trace's totals stay in true units.

Numerics: units whose contributions nearly cancel (|z| or |x - mean| near 0) amplify float32 rounding; maps
agree with float64 to ~2e-4 (L1) on the trained Lite0 and ~1 % on a random-weight ViT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...propagation.graph import PropGraph, UnsupportedOperation, batch_norm_stats
from ...propagation.rules import clamped
from ...propagation.ruleset import OpContext, RuleSet
from .common import batch_view, eq12_layer, eq12_pool, image_sums, layer_of, layer_output, pos, ratio, winner_take_all
from .options import CONTRASTS, RENORMALISE

Tensor = torch.Tensor

# Node kinds whose rule only moves relevance (each output element to one input element): they conserve it.
_MASS_PRESERVING = frozenset({"pass", "act", "reshape", "select", "softmax", "maxpool", "cat"})
_ELEMENTWISE = frozenset({"bn", "layernorm", "add", "mul"})  # rules of the form R_t = c_t * R


def affine_two_step(x: Tensor, mean: Tensor, std: Tensor, gamma: Tensor | None, beta: Tensor | None,
                    eps: float) -> Tensor:
    """Coefficient ``c`` with ``R_x = c * R`` for Eq. 12 through ``h1 = (x - mean) / std`` and then
    ``h2 = gamma * h1 + beta`` (abslrp-gae Sec. 3.1, "Batch Normalization" / "Layer Normalization"; mean and
    std are constants).  Element-wise, so each unit has one input: ``R_h1 = (gamma h1)^+ / (|h2| + eps) R`` and
    ``R_x = (x / std)^+ / (|h1| + eps) R_h1``."""
    # In-place where possible: on a CPU each fresh activation-sized tensor costs page faults.
    centred = x - mean
    c = torch.relu(x)
    if gamma is not None:
        g_h1 = centred * (gamma / std)
        den = (g_h1 + beta if beta is not None else g_h1.clone()).abs_().add_(eps)  # |h2| + eps
        c.mul_(g_h1.clamp_(min=0)).div_(den)  # (gamma h1)^+ / (|h2| + eps)
    return c.div_(centred.abs_().add_(eps * std))  # (x / std)^+ / (|h1| + eps), multiplied through by std > 0


def _bilinear(a: Tensor, b: Tensor, S: Tensor, a_nonneg: bool, b_nonneg: bool) -> tuple[Tensor, Tensor]:
    """Eq. 12 for ``z = a @ b`` (one pass per factor): ``R_a[i,k] = sum_j (a_ik b_kj)^+ S_ij`` and
    ``R_b[k,j] = sum_i (a_ik b_kj)^+ S_ij`` with ``S = R / (|z| + eps)``; ``(ab)^+ = a^+ b^+ + a^- b^-``.
    A factor known to be >= 0 (the softmax output) saves the products of its negative part."""
    bt = b.transpose(-1, -2)
    at = a.transpose(-1, -2)
    if a_nonneg:
        r_a = a * (S @ (bt if b_nonneg else pos(bt)))
    elif b_nonneg:
        r_a = pos(a) * (S @ bt)
    else:
        r_a = torch.where(a > 0, a * (S @ pos(bt)), a * (S @ bt.clamp(max=0)))
    if b_nonneg:
        r_b = b * ((at if a_nonneg else pos(at)) @ S)
    elif a_nonneg:
        r_b = pos(b) * (at @ S)
    else:
        r_b = torch.where(b > 0, b * (pos(at) @ S), b * (at.clamp(max=0) @ S))
    return r_a.sum_to_size(a.shape), r_b.sum_to_size(b.shape)


def _times(c: Tensor, R: Tensor) -> Tensor:
    """``c * R`` in place in ``c`` when shapes allow (the rules' coefficient tensors are fresh)."""
    return c.mul_(R) if c.shape == R.shape and c.dtype == R.dtype else c * R


def _constant_label(node: fx.Node) -> str:
    """A readable name for a constant term: the parameter it comes from (``cls_token``, ``pos_embed``)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if n.op == "get_attr":
            return str(n.target)
        todo.extend(n.all_input_nodes)
    return node.name


def _per_image(t: Tensor, batch: int) -> Tensor:
    """Total of a relevance tensor per image (a constant's relevance has the batch as its first dim)."""
    return t.reshape(batch, -1).sum(1)


@dataclass
class AbsLRPRules(RuleSet):
    """absLRP's rules for every node kind of the engine, as the paper prints them (``preset="paper"``; see
    the module docstring).  A sibling of the LRP and SRD rule sets: every rule below is absLRP's own."""

    eps: float = 1e-9  # Algorithm 1's stabiliser
    contrast: str = "abslrp"
    renormalise: str = "sign"  # 'sign': each node keeps the mass of each sign; 'off': Eq. 12 alone
    rescale_kinds: frozenset[str] = frozenset({"conv", "linear", "bn", "layernorm", "matmul", "add", "avgpool",
                                               "mean", "mul"})  # Eq. 12 is linear in R, not conservative

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise ValueError(f"unknown contrast {self.contrast!r}; use one of {', '.join(CONTRASTS)}")
        if self.renormalise not in RENORMALISE:
            raise ValueError(f"unknown renormalise {self.renormalise!r}; use one of {', '.join(RENORMALISE)}")
        if self.renormalise == "sign":
            self.rescale_kinds = frozenset()  # masses are conserved: nothing can leave float32's range

    # -- per-sign mass conservation -------------------------------------------------------------
    def backward(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """With ``renormalise="sign"``: the node's rule applied to the positive and to the negative part of ``R``
        separately, each result scaled (jointly over the node's inputs and constants) back to the mass of its
        part, then added: the released code's "R+ and R- propagated separately, each renormalised to its own
        mass", here at every node, so branch ratios at residual adds and in attention products are kept.
        Structural ops (pass-through, reshape, index, max pool, softmax) move relevance unchanged: left alone.

        Cost: element-wise rules compute their coefficients once; conv / linear layers and attention products
        get each sign's output mass from one extra forward-type product (``_sign_by_contribution``) and then
        run once; the rest (average pools) run once per sign."""
        if self.renormalise != "sign" or op.kind in _MASS_PRESERVING or \
                (op.kind == "mul" and self._mul_constant(op) is None):
            return RuleSet.backward(self, op, R)
        bd = op.graph.batch_dim.get(op.node, 0)
        m_pos = image_sums(pos(R), bd)
        m_in = torch.stack([m_pos, image_sums(R, bd) - m_pos])  # [2, B]: mass of R+ and of R-
        if op.kind in _ELEMENTWISE:
            return self._sign_elementwise(op, R, m_in)
        if not bool(m_in[1].any()):  # one sign only (contrast none / clrp): one pass, one scale
            return self._sign_generic(op, R, m_in)
        if op.kind in ("conv", "linear", "matmul"):
            return self._sign_by_contribution(op, R, m_in)
        return self._sign_generic(op, R, m_in)

    def _sign_by_contribution(self, op: OpContext, R: Tensor, m_in: Tensor) -> list[Tensor | None]:
        """Both signs at the price of one rule application: under Eq. 12 the relevance a unit j sends down totals
        ``S_j P_j`` with ``P_j = sum_i (x_i w_ij)^+ = (z_j - b_j + sum_i |x_i w_ij|) / 2`` (one product with |W|),
        so each sign's output mass is known before propagating, and the rule runs once on the rescaled
        ``S' = f_+ S^+ + f_- S^-`` (the rule is linear in S)."""
        bd = op.graph.batch_dim.get(op.node, 0)
        if op.kind == "matmul":
            args, a, b, z = self._matmul_setup(op)
            nonneg = op.graph.nonneg
            P2 = ((a if args[0] in nonneg else a.abs()) @ (b if args[1] in nonneg else b.abs())).add_(z)
            operands = 2  # one pass per factor: each carries the unit's whole share
        else:
            layer, x, z = self._layer_setup(op)
            a_w = clamped(layer.weight, positive=True) - clamped(layer.weight, positive=False)
            neg_bias = -layer.bias if layer.bias is not None else None
            P2 = layer.apply(x if layer.nonneg else x.abs(), a_w, neg_bias).add_(z)
            operands = 1
        # P2 = 2 P: z_j - b_j + sum_i |x_i w_ij|.  Per-image dot products, no temporaries.
        S = z.abs().add_(self.eps).reciprocal_().mul_(R)  # R / (|z| + eps)
        S_pos = pos(S)
        n = S.shape[bd]

        def dot(u: Tensor) -> Tensor:
            u, v = (u.movedim(bd, 0), P2.movedim(bd, 0)) if bd else (u, P2)
            return torch.einsum("bi,bi->b", u.reshape(n, -1), v.reshape(n, -1))

        m_pos, m_all = dot(S_pos), dot(S)
        m_out = torch.stack([m_pos, m_all - m_pos]) * (0.5 * operands)
        f = ratio(m_in, m_out)
        S = S.mul_(batch_view(f[1], S.dim(), bd)).addcmul_(S_pos, batch_view(f[0] - f[1], S.dim(), bd))
        if op.kind == "matmul":
            return self._matmul_from_S(op, args, a, b, S)
        return [self._layer_from_S(layer, x, S)]

    def _sign_elementwise(self, op: OpContext, R: Tensor, m_in: Tensor) -> list[Tensor | None]:
        """``R_t = c_t * R`` per term: masses of each sign from ``c_t * R`` (c >= 0 keeps R's sign)."""
        b = R.shape[0]
        m_out = torch.zeros_like(m_in)
        pieces = []
        for t, c in self._coefficients(op):
            y = _times(c, R)
            y_pos = pos(y)
            p = y_pos.reshape(b, -1).sum(1)
            m_out = m_out + torch.stack([p, y.reshape(b, -1).sum(1) - p])
            pieces.append((t, y, y_pos))
        f = ratio(m_in, m_out)  # [2, B]
        view = (-1,) + (1,) * (R.dim() - 1)
        f_neg, f_diff = f[1].view(view), (f[0] - f[1]).view(view)
        # f_+ y^+ + f_- y^-  =  f_- y + (f_+ - f_-) y^+
        return self._collect(op, [(t, y.mul_(f_neg).addcmul_(y_pos, f_diff)) for t, y, y_pos in pieces])

    def _sign_generic(self, op: OpContext, R: Tensor, m_in: Tensor) -> list[Tensor | None]:
        """Any rule, run once per sign."""
        ins = op.graph.data_inputs[op.node]
        total: list[Tensor | None] = [None] * len(ins)
        sinks: dict[str, Tensor] = {}
        for k in (0, 1):
            if not bool(m_in[k].any()):
                continue
            other = m_in[1 - k].any()
            part = R if not bool(other) else pos(R) if k == 0 else R.clamp(max=0)
            sub = OpContext(graph=op.graph, node=op.node, kind=op.kind, inputs=op.inputs, env=op.env, name=op.name)
            outs = RuleSet.backward(self, sub, part)
            m_out = sum((t for _, t in sub.sinks), torch.zeros_like(m_in[k]))
            for i, o in zip(ins, outs):
                if o is not None:
                    b = op.graph.batch_dim.get(i, 0)
                    m_out = m_out + (o.movedim(b, 0) if b else o).reshape(o.shape[b], -1).sum(1)
            f = ratio(m_in[k], m_out)
            for j, (i, o) in enumerate(zip(ins, outs)):
                if o is not None:
                    shape = [1] * o.dim()
                    shape[op.graph.batch_dim.get(i, 0)] = -1
                    o = o * f.view(shape)
                    total[j] = o if total[j] is None else total[j] + o
            for label, t in sub.sinks:
                sinks[label] = sinks[label] + t * f if label in sinks else t * f
        op.sinks.extend(sinks.items())
        return total

    # -- start and what the forward must keep ---------------------------------------------------
    def start_relevance(self, logits: Tensor, targets: Tensor) -> Tensor:
        """1 at the target and -1/N elsewhere (``abslrp``), one-hot (``none``), or for ``clrp`` a doubled batch:
        the first half one-hot, the second half 1 at every class except the target (its dual)."""
        n = logits.shape[-1]
        onehot = F.one_hot(targets.long(), n).to(logits.dtype)
        if self.contrast == "abslrp":
            return onehot * (1.0 + 1.0 / n) - 1.0 / n  # abslrp-gae Sec. 3.1: 1 target, -1/N the others
        if self.contrast == "none":
            return onehot
        half = logits.shape[0] // 2
        return torch.cat([onehot[:half], 1.0 - onehot[half:]])

    def keeps(self, graph: PropGraph) -> frozenset[fx.Node]:
        """Layer outputs (the ``|z|`` of Eq. 12) and BatchNorm inputs."""
        out = {n for n in graph.nodes if graph.kind[n] in ("conv", "linear", "matmul")}
        out |= {graph.data_inputs[n][0] for n in graph.nodes if graph.kind[n] == "bn"}
        return frozenset(out)

    # -- layers ---------------------------------------------------------------------------------
    def _layer_setup(self, op: OpContext):
        layer = layer_of(op)
        return layer, op.x, layer_output(op, layer)

    def _layer_from_S(self, layer, x: Tensor, S: Tensor) -> Tensor:
        return eq12_layer(layer, x, S)  # abslrp-gae Eq. 12 as transposed products (common.eq12_layer)

    def rule_conv(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        layer, x, z = self._layer_setup(op)
        return [eq12_layer(layer, x, z.abs().add_(self.eps).reciprocal_().mul_(R))]  # S = R / (|z| + eps)

    rule_linear = rule_conv

    # -- element-wise rules: R_t = c_t * R for each term t (a data input or a constant) -------------
    def _coefficients(self, op: OpContext) -> list[tuple[fx.Node, Tensor]]:
        return getattr(self, f"_coef_{op.kind}")(op)

    def _collect(self, op: OpContext, pieces: list[tuple[fx.Node, Tensor]]) -> list[Tensor | None]:
        outs: list[Tensor | None] = [None] * len(op.graph.data_inputs[op.node])
        for node, r in pieces:
            self._route(op, node, op.env[node], r, outs)
        return outs

    def _elementwise(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return self._collect(op, [(t, _times(c, R)) for t, c in self._coefficients(op)])

    rule_bn = rule_layernorm = rule_add = _elementwise

    def _coef_bn(self, op: OpContext) -> list[tuple[fx.Node, Tensor]]:
        mean, var, weight, bias, bn_eps = batch_norm_stats(op.graph, op.node, op.env)
        x = op.x
        shape = (1, -1) + (1,) * (x.dim() - 2)

        def c(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().to(x.dtype).view(shape)

        std = (c(var) + bn_eps).sqrt()  # type: ignore[operator]
        src = op.graph.data_inputs[op.node][0]
        return [(src, affine_two_step(x, c(mean), std, c(weight), c(bias), self.eps))]  # type: ignore[arg-type]

    def _coef_layernorm(self, op: OpContext) -> list[tuple[fx.Node, Tensor]]:
        x = op.x
        if op.node.op == "call_module":
            m = op.module
            assert isinstance(m, nn.LayerNorm)
            shape, weight, bias, ln_eps = m.normalized_shape, m.weight, m.bias, m.eps
        else:
            names = ["input", "normalized_shape", "weight", "bias", "eps"]
            vals = dict(zip(names, fx.node.map_arg(op.node.args, lambda n: op.env.get(n)), strict=False))
            vals.update(fx.node.map_arg(op.node.kwargs, lambda n: op.env.get(n)))
            shape, weight, bias, ln_eps = vals["normalized_shape"], vals.get("weight"), vals.get("bias"), \
                vals.get("eps", 1e-5)
        dims = tuple(range(-len(tuple(shape)), 0))
        mean = x.mean(dims, keepdim=True)  # treated as constants (abslrp-gae Sec. 3.1, "Layer Normalization")
        std = (x.var(dims, unbiased=False, keepdim=True) + ln_eps).sqrt()
        w = weight.detach().to(x.dtype) if weight is not None else None
        b = bias.detach().to(x.dtype) if bias is not None else None
        return [(op.graph.data_inputs[op.node][0], affine_two_step(x, mean, std, w, b, self.eps))]

    def _coef_add(self, op: OpContext) -> list[tuple[fx.Node, Tensor]]:
        """``h = sum_t a_t``: Eq. 12 with unit weights for each term, ``c_t = a_t^+ / (|h| + eps)``.  Python
        scalars act as biases (denominator only); tensor constants (a position embedding) are reported."""
        terms = [(a, op.env[a]) for a in op.node.args if isinstance(a, fx.Node)]
        h: Tensor | float = 0.0
        for a in op.node.args:
            h = h + (op.env[a] if isinstance(a, fx.Node) else a)  # type: ignore[operator]
        inv = 1.0 / (torch.as_tensor(h).abs() + self.eps)
        return [(node, pos(v) * inv) for node, v in terms if isinstance(v, torch.Tensor)]

    def _pool(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [eq12_pool(op, R, self.eps)]  # Eq. 12 with the pool's positive averaging weights

    rule_avgpool = _pool
    rule_mean = _pool

    def rule_softmax(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [R]  # denominator constant: element-wise, passes like an activation (module docstring)

    # -- structure ------------------------------------------------------------------------------
    def rule_act(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [R]  # element-wise activations pass relevance unchanged (DESIGN.md rule table)

    def rule_pass(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [R]

    def rule_reshape(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [R.reshape(op.x.shape)]

    def rule_maxpool(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [winner_take_all(op, R)]

    def rule_select(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """Index / permutation: each output element is one input element; the VJP routes R back to it
        (transpose / permute / select inverted directly, anything else through autograd)."""
        node, x = op.node, op.x
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        args = node.args[1:]
        if name == "transpose" and len(args) == 2:
            return [R.transpose(*args)]
        if name == "permute":
            dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
            inverse = [0] * len(dims)
            for i, d in enumerate(dims):
                inverse[int(d) % len(dims)] = i
            return [R.permute(inverse)]
        if name == "select" and len(args) == 2:
            return [torch.select_scatter(R.new_zeros(x.shape), R, *args)]
        with torch.enable_grad():
            x = op.x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(op.rerun(x), x, R)
        return [g]

    def _route(self, op: OpContext, node: fx.Node, value: Tensor | float, r: Tensor,
               outs: list[Tensor | None]) -> None:
        """Give ``r`` to a data input (summed if it appears twice) or record it as a constant's relevance."""
        ins = op.graph.data_inputs[op.node]
        if node in ins:
            i = ins.index(node)
            r = r.sum_to_size(value.shape) if isinstance(value, torch.Tensor) else r
            outs[i] = r if outs[i] is None else outs[i] + r
        else:
            op.sinks.append((f"{_constant_label(node)} (constant)", _per_image(r, r.shape[0])))

    def rule_cat(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """Concatenation: each part gets its slice; a constant part (the class token) is reported."""
        parts = op.node.args[0]
        dim = op.node.args[1] if len(op.node.args) > 1 else op.node.kwargs.get("dim", 0)
        values = [op.env[p] for p in parts]
        outs: list[Tensor | None] = [None] * len(op.graph.data_inputs[op.node])
        for p, v, r in zip(parts, values, R.split([v.shape[dim] for v in values], dim=dim)):
            self._route(op, p, v, r, outs)
        return outs

    def _mul_constant(self, op: OpContext) -> Tensor | None:
        consts = [op.env[a] if isinstance(a, fx.Node) else a for a in op.node.args
                  if not (isinstance(a, fx.Node) and a in op.graph.data_inputs[op.node])]
        c = consts[0] if consts else 1.0
        return c if isinstance(c, torch.Tensor) and c.numel() > 1 else None

    def _coef_mul(self, op: OpContext) -> list[tuple[fx.Node, Tensor]]:
        """By a constant tensor (LayerScale): an element-wise affine layer, ``c = (x c)^+ / (|x c| + eps)``; by a
        Python scalar: 1 (the scale belongs to the following product, see the module docstring)."""
        src = op.graph.data_inputs[op.node][0]
        c = self._mul_constant(op)
        if c is None:
            return [(src, torch.ones((), dtype=op.x.dtype, device=op.x.device))]
        xc = op.x * c
        return [(src, pos(xc) / (xc.abs() + self.eps))]

    def rule_mul(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        if self._mul_constant(op) is None:
            return [R]
        return self._elementwise(op, R)

    def _matmul_setup(self, op: OpContext):
        args = op.node.args[:2]
        if len(args) != 2 or len(set(args)) != 2 or not all(isinstance(n, fx.Node) for n in args):
            raise UnsupportedOperation(f"{op.name}: only a @ b with two different tensor operands is supported")
        a, b = op.env[args[0]], op.env[args[1]]
        return args, a, b, op.env[op.node] if isinstance(op.env.get(op.node), torch.Tensor) else a @ b

    def _matmul_from_S(self, op: OpContext, args, a: Tensor, b: Tensor, S: Tensor) -> list[Tensor | None]:
        nonneg = op.graph.nonneg
        r_a, r_b = _bilinear(a, b, S, args[0] in nonneg, args[1] in nonneg)
        outs: list[Tensor | None] = [None] * len(op.graph.data_inputs[op.node])
        for n, v, r in ((args[0], a, r_a), (args[1], b, r_b)):
            self._route(op, n, v, r, outs)
        return outs

    def rule_matmul(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """``z = a @ b`` (q k^T, attention x values): Eq. 12, one pass per factor (abslrp-gae Sec. 3.1)."""
        args, a, b, z = self._matmul_setup(op)
        return self._matmul_from_S(op, args, a, b, R / (z.abs() + self.eps))
