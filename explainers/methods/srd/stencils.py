"""Receptive-field geometry and sharing-ratio stencils (SRD App. C): every mu of one affine segment as a
local operator, so that many ERFs are cheap folds of single-channel maps.

Relevance is linear in the start once the forward pass is fixed, so one walk takes a batch of relevance maps
over activations of batch 1; :func:`compile_stencils` turns each segment into an explicit table of its sharing
ratios (a :class:`Stencil`), read directly for a one-conv segment or probed through the walker otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...propagation.engine import Maps, walk
from ...propagation.graph import PropGraph, UnsupportedOperation
from ...propagation.ruleset import OpContext
from .rules import SRDRules, _pair, _safe_div, pool_params, sq_norm

Tensor = torch.Tensor

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


def srd_sources(graph: PropGraph, info: Any, sink: fx.Node) -> frozenset[fx.Node]:
    """Where a walk seeded at ``sink`` stops for sharing ratios into one layer only: every other
    non-linear layer (the walker records their relevance and propagates none of it further)."""
    return frozenset(n for n in info.acts if n is not sink)


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
    probe = SRDRules(info=rules.info, bias_share=rules.bias_share, cache=rules.cache)
    maps = Maps()
    walked = walk(graph, env, probe, {sink: seeds}, stop=srd_sources(graph, rules.info, sink), recorders=[maps])
    out = []
    for s in srcs:
        if graph.kind[s] == "input":
            R = walked.relevance.sum(1) if walked.relevance is not None else None
        else:
            R = maps.maps.get(s)
        if R is None:  # the segment's contributions from this source vanished (e.g. all-zero weights)
            R = torch.zeros(colors, *env[s].shape[-2:], dtype=x.dtype, device=x.device)
        gm = rel[s]
        win = (gm.hi[0] - gm.lo[0] + 1, gm.hi[1] - gm.lo[1] + 1)
        coef = _extract(R, gm.jump, gm.lo, win, (h, w), spacing)
        out.append(Stencil(source=s, stride=gm.jump, lo=gm.lo, win=win, src_size=tuple(R.shape[-2:]),
                           sink_size=(h, w), coef=coef))
    return out

