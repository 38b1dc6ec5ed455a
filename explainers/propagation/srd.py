"""Sharing Ratio Decomposition (Han, Kim, Kwak, ICLR 2024; shared/papers/srd.txt) as rules of the engine.

The unit is the pointwise feature vector (PFV): the channel vector at one spatial position.  Between two
consecutive non-linearities the network is affine, so the pre-activation PFV ``v_j`` of a non-linear layer
is a sum of contributions ``v_hat_(i->j)``, each a function of one post-activation PFV ``v_i`` of an
earlier non-linear layer (paper Eq. 5; several earlier layers when a residual connection lies in between,
Eq. 1).  The sharing ratio is ``mu_(i->j) = <v_hat_(i->j), v_j> / norm(v_j)^2`` (Eq. 6), so the ratios into
each ``v_j`` sum to one, and relevance moves as ``R_i = sum_j mu_(i->j) R_j`` (Eqs. 7-8); it passes a
non-linearity unchanged (one scalar per position: pre-activation relevance, paper Sec. 3.2 / App. F).

How it is computed here (no loop over kernel offsets, unlike the released code): with
``g_j = R_j v_j / norm(v_j)^2`` (a vector per position), the weight part of ``sum_j mu_(i->j) R_j`` is
``<v_i, W^T g>_i``: gradient x input with ``g`` as the upstream gradient, one transposed convolution
(DESIGN.md, "useful identity").  The walk therefore carries, between two non-linearities, a
*gradient-like* tensor ``g`` shaped like each node's value, with the invariant

    relevance of the PFV at position i of node n  =  <value_n[i], g_n[i]>,

and every affine node maps ``g`` of its output to ``g`` of its input so that this invariant and the
total are preserved.  Chains of affine nodes (conv -> BN -> residual add -> conv -> BN -> ... before the
next non-linearity) are thereby composed automatically (App. B Eq. 13), the skip and the main branch of
a residual block receive the same ``g`` (they share one ``v_j``), and max pooling routes each channel
to its winner (App. B Eq. 12), average pooling gives equal shares.

Biases (App. B Eq. 11): the bias ``b'`` of a conv (with its BatchNorm folded in: ``W' = diag(s) W``,
``b' = s (b - mean) + beta``) is shared among the contributors of each output PFV ``v_j`` in proportion
to ``norm(v_i)`` within the receptive field -- a box sum of the norm map, one tiny convolution.  The
relevance of that bias share (``<b' * share, g_j>``) is a scalar per input position; it is returned as
``share * v_i / norm(v_i)^2`` so the invariant holds.  When the conv input is itself an intermediate
(affine) value -- a max-pooled map (VGG, the ResNet stem) or a residual sum (EfficientNet's linear
bottlenecks) -- that share is decomposed further by the intermediate PFV's own sharing ratios: App. B's
composition (Eq. 13) applied to the bias too; the paper leaves this case open and the released code fuses
pool + conv and shares the bias over (conv, pool) offset pairs instead.  ``bias_share="contribution"``
shares by ``norm(W'_o v_i)`` as the released code does (shared/notes/released-code-srd.md Sec. 1).

The start (Eq. 4) is placed at the encoder output, the last non-linearity before the classifier head:
``Phi_i^c = sum_k alpha_k^c A_i^k`` with Grad-CAM weights ``alpha^c = mean_i dy_c/dA_i`` (for GAP +
linear heads that is CAM, ``<w_c, A_i>/HW``; for VGG's MLP head the Grad-CAM map at the last conv
layer's ReLU).  The head's nodes therefore get plain gradient rules.

Many starts at once (ERFs of many PFVs, App. C): relevance is linear in the start once the forward pass
is fixed, so a walk takes a batch of relevance maps over activations of batch 1 (:func:`walk`), and
:func:`compile_stencils` turns each segment into an explicit table of its sharing ratios (a
:class:`Stencil`), after which any number of ERFs are cheap folds of single-channel maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from .graph import PropGraph, UnsupportedOperation, batch_norm_params
from .linear import conv_transpose as _conv_transpose
from .linear import output_padding as _output_padding
from .rules import LRPRules
from .ruleset import OpContext

Tensor = torch.Tensor

STARTS = ("contrastive", "spatial-mean", "plain")
BIAS_SHARES = ("norm", "contribution")


# --------------------------------------------------------------------------- local steps (pure functions)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den > 0, else 0 (no inf/NaN, also not in the gradient: the ratio tests differentiate)."""
    ok = den > 0
    return num / torch.where(ok, den, torch.ones_like(den)) * ok


def sq_norm(v: Tensor) -> Tensor:
    """Squared channel norm of every PFV: [B, C, H, W] -> [B, 1, H, W] ([B, C] -> [B, 1])."""
    return v.pow(2).sum(1, keepdim=True)


def pfv_relevance(value: Tensor, g: Tensor) -> Tensor:
    """R_i = <value_i, g_i> per position (the invariant above): [P, 1, H, W]."""
    return (value * g).sum(1, keepdim=True)


def to_pre_activation(R: Tensor, v: Tensor) -> Tensor:
    """g_j = R_j v_j / norm(v_j)^2: then <v_hat_(i->j), g_j> = mu_(i->j) R_j (Eq. 6-7).  A PFV that is
    exactly zero has no contributions to share by, so its relevance (if any) stops there."""
    return _safe_div(R, sq_norm(v)) * v


def bias_shares(x: Tensor, beta: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int], groups: int, mode: str = "norm", n2: Tensor | None = None) -> Tensor:
    """Relevance of the bias, ``beta_j = <b', g_j>`` per output position [P, 1, Ho, Wo], shared onto the
    input positions of each receptive field: [P, 1, H, W].

    ``norm`` (paper App. B Eq. 11): in proportion to norm(x_i) within RF_j:
        share_i = norm(x_i) * sum_{j: i in RF_j} beta_j / S_j,  S_j = sum_{k in RF_j} norm(x_k)  (box sums).
    ``contribution`` (released code, util.py cal_simmap_cr): in proportion to norm(W'_o x_(sj+o-p)) over the
    kernel offsets o; zero padding gets nothing in both.
    Where a whole receptive field is zero there is nothing to share by and the bias relevance is dropped.
    ``n2``: the squared channel norms of ``x`` when the caller has them.
    """
    kernel = (weight.shape[-2], weight.shape[-1])
    size = (int(x.shape[-2]), int(x.shape[-1]))
    if mode == "norm":
        n2 = sq_norm(x) if n2 is None else n2
        if kernel == (1, 1) and padding == (0, 0):  # one contributor per output: it takes the whole bias
            alive = (n2 > 0).to(beta.dtype)
            return _conv_transpose(beta, torch.ones(1, 1, 1, 1, dtype=beta.dtype, device=beta.device), stride,
                                   padding, dilation, 1, size) * alive
        n = n2.sqrt()
        ones = torch.ones(1, 1, *kernel, dtype=x.dtype, device=x.device)
        S = F.conv2d(n, ones, None, stride, padding, dilation)
        t = _safe_div(beta, S)
        pad = _output_padding(size, tuple(beta.shape[-2:]), kernel, stride, padding, dilation)
        return n * F.conv_transpose2d(t, ones, None, stride, padding, pad, 1, dilation)
    if mode == "contribution":
        B, C = x.shape[:2]
        K = kernel[0] * kernel[1]
        cols = F.unfold(x, kernel, dilation, padding, stride)  # [B, C*K, L]
        L = cols.shape[-1]
        cols = cols.view(B, groups, C // groups, K, L)
        w = weight.reshape(groups, weight.shape[0] // groups, C // groups, K)
        contrib = torch.einsum("bgckl,gock->bgokl", cols, w)  # W'_o x_i for every (offset, output)
        n = contrib.pow(2).sum((1, 2)).sqrt()  # [B, K, L]
        frac = _safe_div(n, n.sum(1, keepdim=True))
        r = beta.flatten(2) * frac  # [P, K, L]
        return F.fold(r, size, kernel, dilation, padding, stride)
    raise ValueError(f"unknown bias_share {mode!r}; choose one of {', '.join(BIAS_SHARES)}")


def conv_backward(x: Tensor, g: Tensor, weight: Tensor, bias: Tensor | None, stride: Any = 1, padding: Any = 0,
                  dilation: Any = 1, groups: int = 1, bias_share: str = "norm", n2: Tensor | None = None,
                  weight_t: Tensor | None = None) -> Tensor:
    """``g`` of a conv's input from ``g`` of its output (BN already folded into weight/bias).

    <x_i, result_i> = sum_j <v_hat_(i->j), g_j> with v_hat_(i->j) = W'_(i->j) x_i + (bias share of i in j)
    (paper Eq. 5-6 and App. B Eq. 11).  ``x`` may have batch 1 while ``g`` has batch P (many one-hot starts
    over one forward pass): everything broadcasts.  Depthwise convs (groups = channels) use each channel's
    own kernel through ``groups``.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    gx = _conv_transpose(g, weight, stride, padding, dilation, groups, size, weight_t)  # weight part: one VJP
    if bias is None:
        return gx
    n2 = sq_norm(x) if n2 is None else n2
    beta = F.conv2d(g, bias.view(1, -1, 1, 1))  # <b', g_j> per output position, without a temporary
    share = bias_shares(x, beta, weight, stride, padding, dilation, groups, bias_share, n2)
    return gx.addcmul_(_safe_div(share, n2), x)


def linear_backward(x: Tensor, g: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A dense layer inside the encoder: the whole vector is one PFV, so the bias goes to it entirely."""
    gx = g @ weight
    if bias is None:
        return gx
    return gx + to_pre_activation((g * bias).sum(1, keepdim=True), x)


def pool_params(graph: PropGraph, node: fx.Node) -> dict[str, Any]:
    """kernel_size/stride/padding/dilation/ceil_mode of a max-pool node (module or functional)."""
    if node.op == "call_module":
        m = graph.module.get_submodule(str(node.target))
        return {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding, "dilation": m.dilation,
                "ceil_mode": m.ceil_mode}
    names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"]
    vals = dict(zip(names, node.args, strict=False))
    vals.update(node.kwargs)
    return {"kernel_size": vals["kernel_size"], "stride": vals.get("stride") or vals["kernel_size"],
            "padding": vals.get("padding", 0), "dilation": vals.get("dilation", 1),
            "ceil_mode": vals.get("ceil_mode", False)}


def maxpool_backward(x: Tensor, g: Tensor, params: dict[str, Any]) -> Tensor:
    """Per-channel winners (App. B Eq. 12): each output channel's g goes to its arg-max input, accumulated
    where overlapping windows share a winner.  Uses the forward's indices, so ``g`` may have a larger batch."""
    _, idx = F.max_pool2d(x, return_indices=True, **params)
    P, C = g.shape[:2]
    idx = idx.expand(P, -1, -1, -1).flatten(2)
    out = torch.zeros(P, C, x.shape[-2] * x.shape[-1], dtype=g.dtype, device=g.device)
    return out.scatter_add(2, idx, g.flatten(2)).view(P, C, *x.shape[-2:])


# --------------------------------------------------------------------------- graph analysis


@dataclass
class SRDGraph:
    """What SRD needs to know about a traced network (cached per graph)."""

    encoder_output: fx.Node  # the last non-linearity before the classifier head (start of Eq. 4)
    head: frozenset[fx.Node]  # nodes after it (gradient rules: they only produce the Grad-CAM weights)
    acts: list[fx.Node]  # non-linear layers of the encoder, input -> output order
    names: dict[fx.Node, str]  # unique readable name of each act node
    cuts: frozenset[fx.Node]  # act nodes every input->output path passes (relevance totals conserve there)


def _reaches(graph: PropGraph, src: fx.Node, dst: fx.Node, removed: fx.Node | None = None) -> bool:
    users: dict[fx.Node, list[fx.Node]] = {n: [] for n in graph.nodes}
    for n in graph.nodes:
        for i in graph.data_inputs[n]:
            users[i].append(n)
    stack, seen = [src], {src}
    while stack:
        n = stack.pop()
        if n is dst:
            return True
        for u in users[n]:
            if u not in seen and u is not removed:
                seen.add(u)
                stack.append(u)
    return False


def srd_graph(graph: PropGraph) -> SRDGraph:
    cached = getattr(graph, "_srd_info", None)  # the graph is cached per model; so is this
    if cached is not None:
        return cached
    end = graph.classifier_input or graph.output
    ancestors: set[fx.Node] = set()
    stack = [end]
    while stack:
        n = stack.pop()
        if n in ancestors:
            continue
        ancestors.add(n)
        stack.extend(graph.data_inputs[n])
    acts = [n for n in graph.nodes if graph.kind[n] == "act" and n in ancestors]
    if not acts:
        raise UnsupportedOperation(f"{graph.model_name}: SRD needs non-linear layers in the encoder; found none.")
    last = acts[-1]
    head: set[fx.Node] = set()
    for n in graph.nodes:
        if any(i is last or i in head for i in graph.data_inputs[n]):
            head.add(n)
    counts: dict[str, int] = {}
    for n in acts:
        counts[graph.names[n]] = counts.get(graph.names[n], 0) + 1
    seen: dict[str, int] = {}
    names = {}
    for n in acts:
        base = graph.names[n]
        if counts[base] > 1:
            seen[base] = seen.get(base, 0) + 1
            names[n] = f"{base}:{seen[base]}"
        else:
            names[n] = base
    source = graph.nodes[0]
    cuts = frozenset(n for n in acts if n is last or not _reaches(graph, source, last, removed=n))
    info = SRDGraph(encoder_output=last, head=frozenset(head), acts=acts, names=names, cuts=cuts)
    graph._srd_info = info  # type: ignore[attr-defined]
    return info


# --------------------------------------------------------------------------- the rule set

_FOLDED = WeakTensorKeyDictionary()  # conv weight -> (version key, (W', b', conv params)); dies with the model


def _unused_composite(graph: PropGraph, node: fx.Node):  # RuleSet wants one; SRD has its own conv step
    raise AssertionError("SRD does not use LRP layer rules")


@dataclass
class SRDRules(LRPRules):
    """SRD as a :class:`RuleSet`: what flows between nodes is ``g`` (see the module docstring), and each
    non-linearity converts it into its PFV relevance map, records the map and starts the next segment.

    ``maps`` collects the relevance map [P, h, w] of every non-linear layer passed (and ``'input'``
    comes from the engine's ``relevance``: ``(x * g).sum(1)``).  ``needed``: only these nodes are walked
    (the descendants of the layers whose maps are wanted: a low-resolution map needs no propagation to
    the pixels).  ``stop_at_sources``: do not continue past any non-linearity other than the seeds
    (sharing ratios into one layer only).
    """

    layer: Any = _unused_composite
    bn: str = "merge"  # BN is folded into its conv: W' and b' (App. B "batch normalization layer")
    srd_start: str = "contrastive"
    bias_share: str = "norm"
    info: SRDGraph | None = None
    needed: frozenset[fx.Node] | None = None
    stop_at_sources: bool = False
    seeds: frozenset[fx.Node] = frozenset()
    maps: dict[fx.Node, Tensor] = field(default_factory=dict)
    start_maps: Tensor | None = None  # R at the encoder output (Eq. 4/9), [B, h, w]
    # Per-forward-pass quantities (v / norm(v)^2 of pre-activations, squared norms of conv inputs), shared
    # by every walk over the same kept forward pass.
    cache: dict[tuple[fx.Node, str], Tensor] = field(default_factory=dict)

    def _cached(self, node: fx.Node, what: str, value: Tensor) -> Tensor:
        key = (node, what)
        out = self.cache.get(key)
        if out is None:
            n2 = sq_norm(value)
            out = n2 if what == "n2" else _safe_div(value, n2)
            self.cache[key] = out
        return out

    def __post_init__(self) -> None:
        if self.srd_start not in STARTS:
            raise ValueError(f"unknown SRD start {self.srd_start!r}; choose one of {', '.join(STARTS)}")
        if self.bias_share not in BIAS_SHARES:
            raise ValueError(f"unknown bias_share {self.bias_share!r}; choose one of {', '.join(BIAS_SHARES)}")

    def keeps(self, graph: PropGraph) -> frozenset[fx.Node]:
        """Pre- and post-activation values of every non-linearity (v_j and v_i), the network input, the input
        of a BatchNorm that is not folded into a conv and non-residual adds (their constant is a bias)."""
        out: set[fx.Node] = {graph.nodes[0]}
        for n in graph.nodes:
            kind = graph.kind[n]
            if kind == "act":
                out.add(n)
                out.update(graph.data_inputs[n])
            elif kind == "add" and n not in graph.residuals:
                out.add(n)
                out.update(graph.data_inputs[n])
            elif kind == "bn" and graph.merged_bn.get(graph.data_inputs[n][0]) is not n:
                out.update(graph.data_inputs[n])
        return frozenset(out)

    # -- start (paper Eq. 4 and 9) -----------------------------------------------------------
    def start_relevance(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The cotangent placed on the logits.  Phi is linear in it (for fixed activations), so
        ``contrastive``'s Phi^c - mean_k Phi^k comes from one backward of y_c - mean_k y_k."""
        onehot = F.one_hot(targets.long(), logits.shape[-1]).to(logits.dtype)
        if self.srd_start == "contrastive":
            return onehot - 1.0 / logits.shape[-1]
        return onehot

    def start_map(self, A: Tensor, grad: Tensor) -> Tensor:
        """mu^(L->O) per encoder-output PFV, [B, 1, h, w] (Eq. 4).

        ``contrastive`` (paper): max(Phi^c - mean_k Phi^k, 0); ``grad`` is already that of y_c - mean y.
        ``spatial-mean`` (released code's "contrastive SRD"): Phi^c minus its spatial mean, not clamped.
        ``plain``: Phi^c (CAM / Grad-CAM without ReLU)."""
        alpha = grad.mean((2, 3), keepdim=True)  # Grad-CAM weights alpha_k^c
        phi = (alpha * A).sum(1, keepdim=True)
        if self.srd_start == "contrastive":
            return phi.clamp(min=0)
        if self.srd_start == "spatial-mean":
            return phi - phi.mean((2, 3), keepdim=True)
        return phi

    # -- dispatch ------------------------------------------------------------------------------
    def backward(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        if self.needed is not None and op.node not in self.needed:
            return [None for _ in op.inputs]
        if self.info is not None and op.node in self.info.head:
            return self.gradient(op, R)
        return super().backward(op, R)

    def gradient(self, op: OpContext, g: Tensor) -> list[Tensor | None]:
        """Plain VJP through the classifier head (only the Grad-CAM weights come from there)."""
        with torch.enable_grad():
            x = op.x.detach().requires_grad_(True)
            (gx,) = torch.autograd.grad(op.rerun(x), x, g)
        return [gx]

    # -- per kind ------------------------------------------------------------------------------
    def rule_act(self, op: OpContext, g: Tensor) -> list[Tensor | None]:
        a = op.env[op.node]
        if self.info is not None and op.node is self.info.encoder_output and op.node not in self.seeds:
            R = self.start_map(a, g)
            self.start_maps = R[:, 0]
        else:
            R = pfv_relevance(a, g)
        return self.act_from_relevance(op, R)

    def act_from_relevance(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """Record the layer's relevance map and hand it to the pre-activation PFVs (pass-through at PFV level)."""
        if R.dim() == 2:  # a dense non-linearity: one PFV
            R = R.unsqueeze(-1).unsqueeze(-1)
        node = op.node
        prev = self.maps.get(node)
        self.maps[node] = R[:, 0] if prev is None else prev + R[:, 0]
        if self.stop_at_sources and node not in self.seeds:
            return [None]
        u = self._cached(node, "u", op.x)  # v_j / norm(v_j)^2
        if u.dim() == 2:
            return [R[:, :, 0, 0] * u]
        return [R * u]

    def folded(self, op: OpContext) -> tuple[Tensor, Tensor | None, dict[str, Any] | None, Tensor | None]:
        """(W', b', conv params, W'^T for 1x1 convs) with the following BN folded in, cached per weight
        tensor and the versions of the BN tensors: folding (and transposing) every weight of a ResNet-50
        on each call would cost about half a forward pass."""
        m = op.module
        bn = op.graph.merged_bn.get(op.node)
        tensors: list[Tensor] = []
        if bn is not None and bn.op == "call_module":
            bm = op.graph.module.get_submodule(str(bn.target))
            tensors = [t for t in (bm.running_mean, bm.running_var, bm.weight, bm.bias) if t is not None]
        elif bn is not None:  # functional batch_norm (timm): its tensors are get_attr values in env
            args = list(bn.args[1:5]) + list(bn.kwargs.values())
            tensors = [op.env[a] for a in args if isinstance(a, fx.Node) and isinstance(op.env.get(a), Tensor)]
        key = (m.weight._version, tuple((id(t), t._version) for t in tensors), op.x.dtype)
        hit = _FOLDED.get(m.weight)
        if hit is not None and hit[0] == key:
            return hit[1]
        layer = self.layer_context(op)
        w = layer.weight.detach()
        wt = None
        if layer.conv is not None and tuple(w.shape[-2:]) == (1, 1) and layer.conv["groups"] == 1:
            wt = w.transpose(0, 1).contiguous()
        out = (w, layer.bias.detach() if layer.bias is not None else None, layer.conv, wt)
        _FOLDED[m.weight] = (key, out)
        return out

    def rule_conv(self, op: OpContext, g: Tensor) -> list[Tensor | None]:
        weight, bias, c, wt = self.folded(op)
        x = op.x
        if c is None:
            return [linear_backward(x, g, weight, bias)]
        n2 = self._cached(op.node, "n2", x) if bias is not None else None
        return [conv_backward(x, g, weight, bias, c["stride"], c["padding"], c["dilation"], c["groups"],
                              self.bias_share, n2, wt)]

    rule_linear = rule_conv

    def rule_bn(self, op: OpContext, g: Tensor) -> list[Tensor | None]:
        """Folded into the preceding conv (pass); a BN without one is a per-channel affine map whose shift
        belongs wholly to the PFV at the same position."""
        src = op.graph.data_inputs[op.node][0]
        if op.graph.merged_bn.get(src) is op.node:
            return [g]
        scale, shift = batch_norm_params(op.graph, op.node, op.env)
        shape = (1, -1) + (1,) * (g.dim() - 2)
        gx = g * scale.to(g).view(shape)
        beta = (g * shift.to(g).view(shape)).sum(1, keepdim=True)
        return [gx + to_pre_activation(beta, op.x)]

    def rule_pass(self, op: OpContext, g: Tensor) -> list[Tensor | None]:
        return [g]

    def rule_reshape(self, op: OpContext, g: Tensor) -> list[Tensor | None]:
        return [g.reshape(g.shape[0], *op.x.shape[1:])]

    def rule_maxpool(self, op: OpContext, g: Tensor) -> list[Tensor | None]:
        return [maxpool_backward(op.x, g, pool_params(op.graph, op.node))]

    def rule_avgpool(self, op: OpContext, g: Tensor) -> list[Tensor | None]:
        """Equal shares (App. B "pooling layer"): the VJP of the average."""
        with torch.enable_grad():
            x = op.x.detach().expand(g.shape[0], *op.x.shape[1:]).requires_grad_(True)
            (gx,) = torch.autograd.grad(op.rerun(x), x, g)
        return [gx]

    rule_mean = rule_avgpool

    def rule_add(self, op: OpContext, g: Tensor) -> list[Tensor | None]:
        """Residual add: both branches get the same g, so their contributions share one v_j (Eq. 1).
        An add of a constant treats the constant as a bias of the data input's PFV."""
        if len(op.inputs) == 2:
            return [g, g]
        const = op.env[op.node] - op.x
        return [g + to_pre_activation((g * const).sum(1, keepdim=True), op.x)]


def descendants(graph: PropGraph, nodes: list[fx.Node]) -> frozenset[fx.Node]:
    """The nodes themselves and everything computed from them: where relevance must flow to reach them."""
    out = set(nodes)
    for n in graph.nodes:
        if any(i in out for i in graph.data_inputs[n]):
            out.add(n)
    return frozenset(out)


def walk(graph: PropGraph, env: dict[fx.Node, Any], rules: SRDRules, seeds: dict[fx.Node, Tensor]) -> Tensor | None:
    """SRD backward from relevance maps placed at non-linear layers, over one kept forward pass.

    ``seeds``: act node -> R [P, 1, h, w] (e.g. P one-hot maps: the ERFs of P PFVs, App. C, in one pass).
    The activations in ``env`` may have batch 1 while the seeds have batch P.  Returns ``g`` at the network
    input (its PFV relevance is ``(x * g).sum(1)``), or None when the walk stopped earlier; the maps of the
    non-linear layers passed are in ``rules.maps``.  Not under ``no_grad``, so a test can differentiate the
    result with respect to the seeds (sharing-ratio sums).
    """
    rules.seeds = frozenset(seeds)
    pos = {n: i for i, n in enumerate(graph.nodes)}
    last = max(pos[n] for n in seeds)
    for n in seeds:
        if graph.kind[n] != "act":
            raise UnsupportedOperation(f"SRD seeds sit at non-linear layers; {graph.names[n]} is a {graph.kind[n]}")
    G: dict[fx.Node, Tensor] = {}
    for node in reversed(graph.nodes[: last + 1]):
        g = G.pop(node, None)
        seed = seeds.get(node)
        if g is None and seed is None:
            continue
        kind = graph.kind[node]
        if kind == "input":
            return g
        ins = graph.data_inputs[node]
        op = OpContext(graph=graph, node=node, kind=kind, inputs=[env.get(i) for i in ins], env=env,
                       name=f"{graph.names[node]} in {graph.model_name}")
        if kind == "act":
            R = pfv_relevance(env[node], g) if g is not None else None
            if seed is not None:
                R = seed if R is None else R + seed
            assert R is not None
            outs = rules.act_from_relevance(op, R)
        else:
            assert g is not None
            outs = rules.backward(op, g)
        for i, gi in zip(ins, outs):
            if gi is not None:
                G[i] = gi if i not in G else G[i] + gi
    return None


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """Where a node's grid lies on the input: position p covers input rows/cols [jump*p + lo, jump*p + hi]
    (the theoretical receptive field, before clipping to the image); ``size`` is the grid size."""

    jump: tuple[int, int]
    lo: tuple[int, int]
    hi: tuple[int, int]
    size: tuple[int, int]

    def box(self, r: int, c: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1), inclusive and clipped to the image."""
        r0, r1 = self.jump[0] * r + self.lo[0], self.jump[0] * r + self.hi[0]
        c0, c1 = self.jump[1] * c + self.lo[1], self.jump[1] * c + self.hi[1]
        return max(r0, 0), min(r1, height - 1), max(c0, 0), min(c1, width - 1)


def _window(g: Geometry, k: Any, s: Any, p: Any, d: Any, ceil: bool = False) -> Geometry:
    k, s, p, d = _pair(k), _pair(s), _pair(p), _pair(d)
    jump, lo, hi, size = [], [], [], []
    for a in range(2):
        span = d[a] * (k[a] - 1)
        num = g.size[a] + 2 * p[a] - span - 1
        out = (-(-num // s[a]) if ceil else num // s[a]) + 1
        if ceil and (out - 1) * s[a] >= g.size[a] + p[a]:
            out -= 1
        jump.append(g.jump[a] * s[a])
        lo.append(g.lo[a] - g.jump[a] * p[a])
        hi.append(g.hi[a] + g.jump[a] * (span - p[a]))
        size.append(out)
    return Geometry((jump[0], jump[1]), (lo[0], lo[1]), (hi[0], hi[1]), (size[0], size[1]))


def geometry(graph: PropGraph, height: int, width: int, origin: fx.Node | None = None) -> dict[fx.Node, Geometry]:
    """Receptive-field arithmetic over the encoder (conv, pools, element-wise ops, residual unions).

    ``origin``: measure relative to this node's grid (of size height x width) instead of the input's, within
    one affine segment: other non-linearities are barriers, and a residual add keeps the branches that come
    from ``origin`` (what a sharing-ratio stencil from that source spans)."""
    out: dict[fx.Node, Geometry] = {}
    start = origin if origin is not None else graph.nodes[0]
    for node in graph.nodes:
        if node is start:
            out[node] = Geometry((1, 1), (0, 0), (0, 0), (height, width))
            continue
        kind = graph.kind[node]
        ins = [out[i] for i in graph.data_inputs[node] if i in out]
        if not ins or (origin is None and len(ins) != len(graph.data_inputs[node])):
            continue
        if origin is not None and kind == "act":
            continue
        g = ins[0]
        m = graph.module.get_submodule(str(node.target)) if node.op == "call_module" else None
        if kind == "conv" and isinstance(m, nn.Conv2d):
            out[node] = _window(g, m.kernel_size, m.stride, m.padding, m.dilation)
        elif kind == "maxpool":
            pp = pool_params(graph, node)
            out[node] = _window(g, pp["kernel_size"], pp["stride"], pp["padding"], pp["dilation"], pp["ceil_mode"])
        elif kind == "avgpool" and isinstance(m, nn.AvgPool2d):
            out[node] = _window(g, m.kernel_size, m.stride or m.kernel_size, m.padding, 1, m.ceil_mode)
        elif kind in ("act", "bn", "pass"):
            out[node] = g
        elif kind == "add":
            out[node] = Geometry(g.jump, (min(i.lo[0] for i in ins), min(i.lo[1] for i in ins)),
                                 (max(i.hi[0] for i in ins), max(i.hi[1] for i in ins)), g.size)
    return out


# --------------------------------------------------------------------------- sharing-ratio stencils


@dataclass
class Stencil:
    """Every sharing ratio from one source layer into one non-linear layer, as a local operator.

    ``coef[o, j] = mu_(i -> j)`` for the source PFV ``i = stride * j + lo + o`` (o runs over the
    ``win[0] x win[1]`` window in row-major order, j over the sink grid, row-major).  Applying it to a
    batch of relevance maps is a fold: P ERFs then cost almost nothing beyond the stencils themselves."""

    source: fx.Node  # an act node, or the input placeholder (pixels)
    stride: tuple[int, int]
    lo: tuple[int, int]
    win: tuple[int, int]
    src_size: tuple[int, int]
    sink_size: tuple[int, int]
    coef: Tensor  # [win0 * win1, h * w]

    def apply(self, R: Tensor) -> Tensor:
        """R_i = sum_j mu_(i->j) R_j (Eqs. 7-8) for a batch of sink maps [P, h, w] -> [P, Hs, Ws].

        One strided multiply-add per window offset (at most 49 for a 7x7 stem) into a canvas whose index is
        the source index minus ``lo``; nothing of size P x window x grid is materialised."""
        P = R.shape[0]
        h, w = self.sink_size
        s0, s1 = self.stride
        ch, cw = s0 * (h - 1) + self.win[0], s1 * (w - 1) + self.win[1]
        canvas = R.new_zeros(P, ch, cw)
        coef = self.coef.view(self.win[0], self.win[1], h, w)
        for a in range(self.win[0]):
            for b in range(self.win[1]):
                c = coef[a, b]
                if bool((c != 0).any()):
                    canvas[:, a:a + s0 * (h - 1) + 1:s0, b:b + s1 * (w - 1) + 1:s1].addcmul_(R, c)
        Hs, Ws = self.src_size
        out = R.new_zeros(P, Hs, Ws)
        r0, r1 = max(0, self.lo[0]), min(Hs, ch + self.lo[0])
        c0, c1 = max(0, self.lo[1]), min(Ws, cw + self.lo[1])
        if r1 > r0 and c1 > c0:
            out[:, r0:r1, c0:c1] = canvas[:, r0 - self.lo[0]:r1 - self.lo[0], c0 - self.lo[1]:c1 - self.lo[1]]
        return out

    def ratios(self, position: tuple[int, int]) -> list[tuple[tuple[int, int], float]]:
        """(source position, mu) for every non-zero ratio into the sink PFV at ``position``."""
        h, w = self.sink_size
        col = self.coef[:, position[0] * w + position[1]]
        out = []
        for o in torch.nonzero(col).flatten().tolist():
            r = self.stride[0] * position[0] + self.lo[0] + o // self.win[1]
            c = self.stride[1] * position[1] + self.lo[1] + o % self.win[1]
            out.append(((r, c), float(col[o])))
        return out


def segment_sources(graph: PropGraph, sink: fx.Node) -> list[fx.Node]:
    """The non-linear layers (or the input) whose PFVs contribute to the pre-activation of ``sink``."""
    found: list[fx.Node] = []
    stack, seen = list(graph.data_inputs[sink]), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if graph.kind[n] in ("act", "input"):
            found.append(n)
        else:
            stack.extend(graph.data_inputs[n])
    pos = {n: i for i, n in enumerate(graph.nodes)}
    return sorted(found, key=lambda n: pos[n])


def _extract(R: Tensor, stride: tuple[int, int], lo: tuple[int, int], win: tuple[int, int],
             sink: tuple[int, int], spacing: tuple[int, int]) -> Tensor:
    """Read the stencil out of comb-probe responses R [colors, Hs, Ws] (see :func:`compile_stencils`)."""
    h, w = sink
    dev = R.device
    jr, jc = torch.arange(h, device=dev), torch.arange(w, device=dev)
    color = (jr % spacing[0])[:, None] * spacing[1] + (jc % spacing[1])[None, :]
    rows = stride[0] * jr[:, None] + lo[0] + torch.arange(win[0], device=dev)[None, :]
    cols = stride[1] * jc[:, None] + lo[1] + torch.arange(win[1], device=dev)[None, :]
    Hs, Ws = R.shape[-2:]
    top, left = max(0, -int(rows.min())), max(0, -int(cols.min()))
    bottom, right = max(0, int(rows.max()) - (Hs - 1)), max(0, int(cols.max()) - (Ws - 1))
    Rp = F.pad(R, (left, right, top, bottom))
    vals = Rp[color[:, :, None, None], (rows + top)[:, None, :, None], (cols + left)[None, :, None, :]]
    return vals.permute(2, 3, 0, 1).reshape(win[0] * win[1], h * w)


def _single_conv(graph: PropGraph, sink: fx.Node) -> fx.Node | None:
    """The conv when the segment into ``sink`` is just source -> conv (-> its folded BN, pass-throughs)."""
    n = graph.data_inputs[sink][0]
    while graph.kind[n] in ("bn", "pass"):
        if graph.kind[n] == "bn" and graph.merged_bn.get(graph.data_inputs[n][0]) is not n:
            return None
        n = graph.data_inputs[n][0]
    if graph.kind[n] != "conv" or graph.kind[graph.data_inputs[n][0]] not in ("act", "input"):
        return None
    m = graph.module.get_submodule(str(n.target))
    if not isinstance(m, nn.Conv2d) or _pair(m.dilation) != (1, 1):
        return None
    return n


def _conv_stencil(graph: PropGraph, env: dict[fx.Node, Any], rules: SRDRules, sink: fx.Node,
                  conv: fx.Node) -> Stencil:
    """Eq. 5-6 and App. B Eq. 11 evaluated directly for a one-conv segment, every (offset, output) pair at
    once: mu[o, j] = <W'_o x_(sj+o-p), u_j> + share[o, j] <b', u_j>, u_j = v_j / norm(v_j)^2.  The weight part
    is one GEMM (W'^T u) and an unfold of x; no probing walk is needed."""
    src = graph.data_inputs[conv][0]
    x = env[src]
    op = OpContext(graph=graph, node=conv, kind="conv", inputs=[x], env=env, name=graph.names[conv])
    weight, bias, c, _ = rules.folded(op)
    assert c is not None
    pre = graph.data_inputs[sink][0]
    u = rules._cached(sink, "u", env[pre])  # [1, Co, h, w]
    kernel, stride, padding = (weight.shape[-2], weight.shape[-1]), _pair(c["stride"]), _pair(c["padding"])
    groups = c["groups"]
    Co, Cg = weight.shape[:2]
    C = x.shape[1]
    K = kernel[0] * kernel[1]
    h, w = u.shape[-2:]
    L = h * w
    cols = F.unfold(x, kernel, 1, padding, stride)[0].view(C, K, L)
    q = torch.einsum("gok,gol->gkl", weight.reshape(groups, Co // groups, Cg * K),
                     u[0].reshape(groups, Co // groups, L))
    mu = (cols * q.reshape(C, K, L)).sum(0)  # weight part, [K, L]
    if bias is not None:
        beta = (bias.view(-1, 1) * u[0].reshape(Co, L)).sum(0)  # <b', u_j>
        if rules.bias_share == "norm":
            n = F.unfold(sq_norm(x).sqrt(), kernel, 1, padding, stride)[0]  # [K, L]
        else:
            contrib = torch.einsum("gckl,gock->gokl", cols.view(groups, C // groups, K, L),
                                   weight.reshape(groups, Co // groups, Cg, K))
            n = contrib.pow(2).sum((0, 1)).sqrt()
        mu = mu + _safe_div(n, n.sum(0, keepdim=True)) * beta
    return Stencil(source=src, stride=stride, lo=(-padding[0], -padding[1]), win=kernel,
                   src_size=(int(x.shape[-2]), int(x.shape[-1])), sink_size=(int(h), int(w)), coef=mu)


def compile_stencils(graph: PropGraph, env: dict[fx.Node, Any], rules: SRDRules, sink: fx.Node,
                     x: Tensor) -> list[Stencil]:
    """All sharing ratios into the PFVs of ``sink``, one :class:`Stencil` per source layer.

    A one-conv segment is evaluated directly (:func:`_conv_stencil`).  Any other segment (max pool, residual
    sums, chains of 1x1 convs) is read off the rule code itself: one segment walk with a batch of "comb"
    starts, each a one-hot at every D-th sink position, D chosen so that the combs' receptive fields never
    overlap (D = stencil span / stride + 1 per axis); D0 * D1 starts then give every mu exactly."""
    conv = _single_conv(graph, sink)
    if conv is not None:
        return [_conv_stencil(graph, env, rules, sink, conv)]
    return probe_stencils(graph, env, rules, sink, x)


def probe_stencils(graph: PropGraph, env: dict[fx.Node, Any], rules: SRDRules, sink: fx.Node,
                   x: Tensor) -> list[Stencil]:
    """Stencils of any segment by comb probing (see :func:`compile_stencils`)."""
    srcs = segment_sources(graph, sink)
    h, w = env[sink].shape[-2:]
    pre = graph.data_inputs[sink][0]
    rel = {}
    for s in srcs:
        size = tuple(env[s].shape[-2:])
        g = geometry(graph, size[0], size[1], origin=s).get(pre)
        if g is None:
            raise UnsupportedOperation(f"no receptive-field arithmetic from {graph.names[s]} to {graph.names[sink]}")
        rel[s] = g
    spacing = tuple(max((rel[s].hi[a] - rel[s].lo[a]) // rel[s].jump[a] + 1 for s in srcs) for a in range(2))
    colors = spacing[0] * spacing[1]
    seeds = torch.zeros(colors, 1, h, w, dtype=x.dtype, device=x.device)
    for a in range(spacing[0]):
        for b in range(spacing[1]):
            seeds[a * spacing[1] + b, 0, a::spacing[0], b::spacing[1]] = 1.0
    probe = SRDRules(info=rules.info, bias_share=rules.bias_share, stop_at_sources=True, cache=rules.cache)
    g_in = walk(graph, env, probe, {sink: seeds})
    out = []
    for s in srcs:
        R = (x * g_in).sum(1) if graph.kind[s] == "input" and g_in is not None else probe.maps.get(s)
        if R is None:  # the segment's contributions from this source vanished (e.g. all-zero weights)
            R = torch.zeros(colors, *env[s].shape[-2:], dtype=x.dtype, device=x.device)
        gm = rel[s]
        win = (gm.hi[0] - gm.lo[0] + 1, gm.hi[1] - gm.lo[1] + 1)
        coef = _extract(R, gm.jump, gm.lo, win, (h, w), spacing)
        out.append(Stencil(source=s, stride=gm.jump, lo=gm.lo, win=win, src_size=tuple(R.shape[-2:]),
                           sink_size=(h, w), coef=coef))
    return out
