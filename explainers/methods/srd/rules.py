"""Sharing Ratio Decomposition (Han, Kim, Kwak, ICLR 2024; docs/papers srd) as a rule set of the one walker.

The unit is the pointwise feature vector (PFV): the channel vector at one spatial position.  Between two
consecutive non-linearities the network is affine, so the pre-activation PFV ``v_j`` of a non-linear layer
is a sum of contributions ``v_hat_(i->j)``, each a function of one post-activation PFV ``v_i`` of an
earlier non-linear layer (paper Eq. 5; several earlier layers when a residual connection lies in between,
Eq. 1).  The sharing ratio is ``mu_(i->j) = <v_hat_(i->j), v_j> / norm(v_j)^2`` (Eq. 6), so the ratios into
each ``v_j`` sum to one, and relevance moves as ``R_i = sum_j mu_(i->j) R_j`` (Eqs. 7-8); it passes a
non-linearity unchanged (one scalar per position: pre-activation relevance, paper Sec. 3.2 / App. F).

What flows through the walker is relevance, as in every other method:

- at a non-linear layer (and where it feeds another node) one scalar per PFV, ``[B, 1, h, w]``;
- at the affine nodes in between, one number per neuron, ``R_n = value_n * g_n`` (shaped like the value),
  whose channel sum is the PFV's relevance.  Each rule divides it by the node's value to get ``g_n`` (zero
  where the value is: a zero neuron carries nothing), takes one local step on ``g`` and multiplies by the
  input's value.  With ``g_j = R_j v_j / norm(v_j)^2`` at a pre-activation, the weight part of
  ``sum_j mu_(i->j) R_j`` is ``<v_i, W^T g>_i``: gradient x input, one transposed convolution (no loop over
  kernel offsets, unlike the released code).  Chains of affine nodes (conv -> BN -> residual add -> ...)
  compose (App. B Eq. 13); both branches of a residual add share one ``v_j``; max pooling routes each
  channel to its winner (App. B Eq. 12), average pooling gives equal shares.

Biases (App. B Eq. 11): the bias ``b'`` of a conv (with its BatchNorm folded in: ``W' = diag(s) W``,
``b' = s (b - mean) + beta``) is shared among the contributors of each output PFV ``v_j`` in proportion to
``norm(v_i)`` within the receptive field (a box sum of the norm map, one tiny convolution), or with
``bias_share="contribution"`` by ``norm(W'_o v_i)`` as the released code does (docs/notes released-code-srd).
When the conv input is itself an intermediate (affine) value -- a max-pooled map or a residual sum -- that
share is decomposed further by the intermediate's own sharing ratios (App. B Eq. 13 applied to the bias).

The start (Eq. 4) is placed at the encoder output, the last non-linearity before the classifier head, as the
walk's seed (:meth:`SRDRules.seeds`): ``Phi_i^c = sum_k alpha_k^c A_i^k`` with Grad-CAM weights
``alpha^c = mean_i dy_c/dA_i`` (one autograd pass through the head; the head itself carries no relevance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.utils.weak import WeakTensorKeyDictionary

from ...propagation.graph import PropGraph, UnsupportedOperation, batch_norm_params, run_node
from ...propagation.linear import conv_transpose as _conv_transpose
from ...propagation.linear import output_padding as _output_padding
from ...propagation.ruleset import OpContext, RuleSet, layer_params

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

_FOLDED = WeakTensorKeyDictionary()  # conv weight -> (version key, (W', b', conv params, W'^T)); dies with the model
RELEVANCE_KINDS = ("conv", "linear", "bn", "add", "maxpool", "avgpool", "mean")  # affine nodes dividing R by a value


def over(R: Tensor, value: Tensor) -> Tensor:
    """g = R / value per neuron, 0 where the value is 0 (a zero neuron has no relevance to pass on)."""
    nz = value != 0
    return torch.where(nz, R / torch.where(nz, value, torch.ones_like(value)), torch.zeros_like(R))


def head_gradient(graph: PropGraph, info: SRDGraph, env: dict[fx.Node, Any], cotangent: Tensor) -> Tensor:
    """d<cotangent, logits>/dA at the encoder output A, through the classifier head only (one autograd pass)."""
    enc = info.encoder_output
    with torch.enable_grad():
        A = env[enc].detach().requires_grad_(True)
        local = dict(env)
        local[enc] = A
        for n in graph.nodes:
            if n in info.head:
                for i in graph.data_inputs[n]:
                    if i is not enc and i not in info.head and local.get(i) is None:
                        raise UnsupportedOperation(f"{graph.names[n]} in {graph.model_name}: the classifier head "
                                                   "reads a value from before the encoder output")
                local[n] = run_node(graph.module, n, local, A)
        out = local[graph.output]
        (grad,) = torch.autograd.grad(out, A, cotangent.to(out.dtype))
    return grad


@dataclass
class SRDRules(RuleSet):
    """SRD's rule set: a sibling of the LRP and absLRP rule sets under :class:`RuleSet`.

    ``seeds``: the Eq. 4 start map at the encoder output; per node kind a ``rule_<kind>`` (see the module
    docstring); ``keeps``: the pre- and post-activation values and every value relevance is expressed in.
    ``cache``: per-forward-pass quantities (v / norm(v)^2 of pre-activations, squared norms of conv inputs),
    shared by every walk over the same kept forward pass.
    """

    info: SRDGraph
    srd_start: str = "contrastive"
    bias_share: str = "norm"
    cache: dict[tuple[fx.Node, str], Tensor] = field(default_factory=dict)
    start_maps: Tensor | None = None  # the last seeds' start map [B, h, w] (Eq. 4/9)
    releases_values = False  # a conv's relevance is divided by its folded BN's output, walked just before

    def __post_init__(self) -> None:
        if self.srd_start not in STARTS:
            raise ValueError(f"unknown SRD start {self.srd_start!r}; choose one of {', '.join(STARTS)}")
        if self.bias_share not in BIAS_SHARES:
            raise ValueError(f"unknown bias_share {self.bias_share!r}; choose one of {', '.join(BIAS_SHARES)}")

    def _cached(self, node: fx.Node, what: str, value: Tensor) -> Tensor:
        key = (node, what)
        out = self.cache.get(key)
        if out is None:
            n2 = sq_norm(value)
            out = n2 if what == "n2" else _safe_div(value, n2)
            self.cache[key] = out
        return out

    @staticmethod
    def carrier(graph: PropGraph, node: fx.Node) -> fx.Node:
        """The node whose value a node's relevance is expressed in: a conv with a folded BN carries the BN's."""
        return graph.merged_bn.get(node, node) if graph.kind[node] in ("conv", "linear") else node

    def keeps(self, graph: PropGraph) -> frozenset[fx.Node]:
        """Pre- and post-activation values of every non-linearity (v_j and v_i), the network input, the input
        of a BatchNorm that is not folded into a conv, non-residual adds (their constant is a bias), and the
        value of every affine node whose relevance a rule divides by it."""
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
            if kind in RELEVANCE_KINDS and n not in self.info.head:
                out.add(self.carrier(graph, n))
        return frozenset(out)

    # -- start (paper Eq. 4 and 9) -----------------------------------------------------------
    def start_relevance(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The cotangent placed on the logits for the Grad-CAM weights.  Phi is linear in it (for fixed
        activations), so ``contrastive``'s Phi^c - mean_k Phi^k comes from one backward of y_c - mean_k y_k."""
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

    def seeds(self, graph: PropGraph, env: dict[fx.Node, Any], logits: Tensor,
              targets: Tensor) -> dict[fx.Node, Tensor]:
        """The start map (Eq. 4) at the encoder output: SRD's walk begins there, not at the logits."""
        enc = self.info.encoder_output
        A = env[enc]
        if A.dim() != 4:
            raise UnsupportedOperation(f"{graph.model_name}: SRD's start needs a spatial encoder output; "
                                       f"{graph.names[enc]} has shape {tuple(A.shape)}")
        R = self.start_map(A, head_gradient(graph, self.info, env, self.start_relevance(logits, targets)))
        self.start_maps = R[:, 0]
        return {enc: R}

    # -- relevance <-> g ---------------------------------------------------------------------
    def _g(self, op: OpContext, R: Tensor) -> Tensor:
        return over(R, op.env[self.carrier(op.graph, op.node)])

    def _to_input(self, op: OpContext, k: int, g: Tensor) -> Tensor:
        """Relevance of the k-th data input from its g: value * g per neuron, summed to one scalar per PFV
        where the input is a non-linear layer."""
        i = op.graph.data_inputs[op.node][k]
        R = op.inputs[k] * g
        return R.sum(1, keepdim=True) if op.graph.kind[i] == "act" else R

    def _pass_on(self, op: OpContext, R: Tensor) -> Tensor:
        i = op.graph.data_inputs[op.node][0]
        return R.sum(1, keepdim=True) if op.graph.kind[i] == "act" and R.shape[1] != 1 else R

    # -- per kind ------------------------------------------------------------------------------
    def rule_act(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """PFV relevance R [B, 1, h, w] handed to the pre-activation PFV v_j: R v_j^2 / norm(v_j)^2 per neuron
        (pass-through at PFV level).  A PFV that is exactly zero has nothing to share by: its relevance stops."""
        u = self._cached(op.node, "u", op.x)  # v_j / norm(v_j)^2
        g = R.reshape(R.shape[0], 1) * u if u.dim() == 2 else R * u
        return [self._to_input(op, 0, g)]

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
        weight, bias, conv = layer_params(op)
        if bn is not None:  # BN folded into its conv: W' and b' (App. B "batch normalization layer")
            scale, shift = batch_norm_params(op.graph, bn, op.env)
            scale, shift = scale.detach().to(weight), shift.detach().to(weight)
            weight = weight * scale.view((-1,) + (1,) * (weight.dim() - 1))
            bias = shift if bias is None else bias * scale + shift
        w = weight.detach()
        wt = None
        if conv is not None and tuple(w.shape[-2:]) == (1, 1) and conv["groups"] == 1:
            wt = w.transpose(0, 1).contiguous()
        out = (w, bias.detach() if bias is not None else None, conv, wt)
        _FOLDED[m.weight] = (key, out)
        return out

    def rule_conv(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        weight, bias, c, wt = self.folded(op)
        x = op.x
        g = self._g(op, R)
        if c is None:
            return [self._to_input(op, 0, linear_backward(x, g, weight, bias))]
        n2 = self._cached(op.node, "n2", x) if bias is not None else None
        gx = conv_backward(x, g, weight, bias, c["stride"], c["padding"], c["dilation"], c["groups"],
                           self.bias_share, n2, wt)
        return [self._to_input(op, 0, gx)]

    rule_linear = rule_conv

    def rule_bn(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """Folded into the preceding conv (its relevance passes on unchanged); a BN without one is a
        per-channel affine map whose shift belongs wholly to the PFV at the same position."""
        src = op.graph.data_inputs[op.node][0]
        if op.graph.merged_bn.get(src) is op.node:
            return [R]
        g = self._g(op, R)
        scale, shift = batch_norm_params(op.graph, op.node, op.env)
        shape = (1, -1) + (1,) * (g.dim() - 2)
        gx = g * scale.to(g).view(shape)
        beta = (g * shift.to(g).view(shape)).sum(1, keepdim=True)
        return [self._to_input(op, 0, gx + to_pre_activation(beta, op.x))]

    def rule_pass(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [self._pass_on(op, R)]

    def rule_reshape(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        if R.shape[1] == 1 and op.graph.kind[op.node] == "act":
            return [R]
        return [self._pass_on(op, R.reshape(R.shape[0], *op.x.shape[1:]))]

    def rule_maxpool(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [self._to_input(op, 0, maxpool_backward(op.x, self._g(op, R), pool_params(op.graph, op.node)))]

    def rule_avgpool(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """Equal shares (App. B "pooling layer"): the VJP of the average."""
        g = self._g(op, R)
        with torch.enable_grad():
            x = op.x.detach().expand(g.shape[0], *op.x.shape[1:]).requires_grad_(True)
            (gx,) = torch.autograd.grad(op.rerun(x), x, g)
        return [self._to_input(op, 0, gx)]

    rule_mean = rule_avgpool

    def rule_add(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """Residual add: both branches get the same g, so their contributions share one v_j (Eq. 1).
        An add of a constant treats the constant as a bias of the data input's PFV."""
        g = self._g(op, R)
        if len(op.inputs) == 2:
            return [self._to_input(op, 0, g), self._to_input(op, 1, g)]
        const = op.env[op.node] - op.x
        return [self._to_input(op, 0, g + to_pre_activation((g * const).sum(1, keepdim=True), op.x))]
