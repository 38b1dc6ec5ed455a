"""The backward relevance walker: one forward that keeps the values the rules read, then one walk over the
traced graph in reverse, applying the rule set's rule at each node (LRP, ResNet-LRP, absLRP and SRD).

:func:`walk` is the one backward loop.  It starts from relevance placed at any nodes (``seeds``: the logits for
LRP, the encoder output for SRD, one-hot PFVs at inner layers for SRD's ERFs and sub-concepts), may end early
(``until``: the walk ends once these nodes' relevance is complete; ``stop``: nodes whose relevance is recorded
but not propagated further) and reports what it passes to :class:`Recorder` observers: :class:`Totals` (the
relevance total of every node and each residual block's skip / main shares: the Conservation page, the
property tests, ``Explanation.layers``) and :class:`Maps` (per-position relevance maps of chosen nodes: SRD's
PFV maps).  What flows between nodes is relevance in every method.  :func:`propagate` is the usual entry
point: forward, the rule set's seeds, one walk with :class:`Totals`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import RelevanceNotPropagated
from .graph import PropGraph, Residual, build_graph, run_node
from .ruleset import OpContext, RuleSet

Tensor = torch.Tensor


@dataclass
class NodeTotal:
    name: str
    kind: str
    total: float
    checkpoint: bool
    # (block name, "main" | "skip") for a node inside a residual block: its total is that branch's share only
    branch: tuple[str, str] | None = None


@dataclass
class BlockShare:
    """Relevance a residual block sent through its skip connection and through its main branch."""

    name: str
    identity: bool
    skip: float
    main: float

    @property
    def skip_share(self) -> float:
        total = abs(self.skip) + abs(self.main)
        return abs(self.skip) / total if total else 0.0


@dataclass
class PropagationTrace:
    """Per-image record of one propagation (picklable: the app caches it)."""

    start: float  # relevance placed at the output
    nodes: list[NodeTotal] = field(default_factory=list)  # output -> input
    blocks: list[BlockShare] = field(default_factory=list)  # input -> output order

    @property
    def checkpoints(self) -> list[NodeTotal]:
        return [n for n in self.nodes if n.checkpoint]

    def checkpoint_errors(self) -> list[tuple[str, float, float]]:
        """(name, total, relative error vs the start value) at each checkpoint."""
        ref = self.start if self.start else 1.0
        return [(n.name, n.total, (n.total - self.start) / abs(ref)) for n in self.checkpoints]

    def total_at(self, which: str) -> float:
        """Total at 'input', 'first_block' (first residual block's input) or 'last_block' (last block's input)."""
        cps = [n for n in self.nodes if n.checkpoint]
        if which == "input":
            return cps[-1].total
        block_inputs = [n for n in self.nodes if n.kind == "block_input"]
        if not block_inputs:
            return float("nan")
        return block_inputs[-1].total if which == "first_block" else block_inputs[0].total


@dataclass
class Propagation:
    relevance: Tensor | None  # relevance of the input, shaped as x (None: an ``until`` walk ended before it)
    logits: Tensor
    start: Tensor  # [B] relevance placed at the output
    totals: Tensor  # [N, B] relevance total per recorded node
    node_names: list[str]
    node_kinds: list[str]
    node_checkpoint: list[bool]
    node_ids: list[fx.Node]
    block_names: list[str]
    block_identity: list[bool]
    block_skip: Tensor  # [K, B]
    block_main: Tensor  # [K, B]
    graph: PropGraph
    activations: dict[fx.Node, Tensor] | None = None
    # [B] float64 when the rule set rescales (``RuleSet.rescale_kinds``): the propagated relevance equals
    # ``relevance * exp(log_scale)``; the totals above are already in those true units.  None otherwise.
    log_scale: Tensor | None = None

    def traces(self) -> list[PropagationTrace]:
        totals = self.totals.detach().double().cpu().tolist()
        skip = self.block_skip.detach().double().cpu().tolist() if len(self.block_names) else []
        main = self.block_main.detach().double().cpu().tolist() if len(self.block_names) else []
        start = self.start.detach().double().cpu().tolist()
        branch = self.graph.branches() if self.graph is not None else {}
        out = []
        for b in range(len(start)):
            nodes = [NodeTotal(n, k, totals[i][b], c, branch.get(node)) for i, (n, k, c, node) in
                     enumerate(zip(self.node_names, self.node_kinds, self.node_checkpoint, self.node_ids))]
            blocks = [BlockShare(name, ident, skip[k][b], main[k][b]) for k, (name, ident) in
                      enumerate(zip(self.block_names, self.block_identity))]
            out.append(PropagationTrace(start=start[b], nodes=nodes, blocks=blocks))
        return out

    def layers(self) -> list[list[tuple[str, float]]]:
        """Per image: (node name, relevance total) from output to input (``Explanation.layers``)."""
        totals = self.totals.detach().double().cpu().tolist()
        return [[(n, totals[i][b]) for i, n in enumerate(self.node_names)] for b in range(self.totals.shape[1])]


def forward(graph: PropGraph, x: Tensor, inplace: bool = True,
            keep: frozenset[fx.Node] = frozenset()) -> dict[fx.Node, Any]:
    """Run the traced model keeping the values the LRP rules need.

    ``inplace`` (the fast path): ReLUs whose input nobody else reads overwrite it, and values no rule reads
    are dropped once consumed.  Pass False to keep every value intact (rules such as SRD's that read
    pre-activations or other nodes' values).  ``keep``: further values a rule set reads (``RuleSet.keeps``,
    e.g. absLRP's layer outputs); they are neither dropped nor overwritten in place."""
    env: dict[fx.Node, Any] = {}
    left = dict(graph.remaining_users)
    for node in graph.module.graph.nodes:
        if node.op == "output":
            break
        in_place = inplace and node in graph.inplace and not (keep and any(i in keep for i in graph.data_inputs[node]))
        env[node] = run_node(graph.module, node, env, x, in_place)
        if inplace:
            for i in graph.data_inputs.get(node, ()):
                left[i] -= 1
                if left[i] == 0 and i not in graph.keep and i not in keep:
                    env[i] = None  # no rule reads it: let the allocator reuse the memory
    return env


class Recorder:
    """Observer of one :func:`walk`: told every node that received relevance, every residual block's split and
    every constant that took relevance (a rule's ``op.sinks``).  ``wants_totals``: the walker computes per-image
    relevance totals (one reduction per node) only when some recorder reads them."""

    wants_totals = False

    def on_node(self, node: fx.Node, kind: str, R: Tensor, total: Tensor | None) -> None:
        """``R``: the node's complete relevance; ``total``: its per-image sum [B] in true units (or None)."""

    def on_block(self, res: Residual, skip: Tensor, main: Tensor) -> None:
        """Per-image relevance totals a residual add sent through its skip and its main branch."""

    def on_sink(self, node: fx.Node, label: str, total: Tensor) -> None:
        """Relevance a rule gave to a constant at ``node`` (a ViT's class token, position embedding)."""


class Totals(Recorder):
    """Relevance totals per node (output -> input) and per residual block: what :class:`Propagation` keeps."""

    wants_totals = True

    def __init__(self, graph: PropGraph) -> None:
        self.checkpoints = set(graph.checkpoints())
        self.block_inputs = {r.block_input for r in graph.residuals.values()}
        self.names_of = graph.names
        self.sums: list[Tensor] = []
        self.names: list[str] = []
        self.kinds: list[str] = []
        self.cps: list[bool] = []
        self.ids: list[fx.Node] = []
        self.blocks: list[tuple[int, str, bool, Tensor, Tensor]] = []

    def on_node(self, node: fx.Node, kind: str, R: Tensor, total: Tensor | None) -> None:
        assert total is not None
        self.sums.append(total)
        self.names.append(self.names_of[node])
        self.kinds.append("block_input" if node in self.block_inputs else kind)
        self.cps.append(node in self.checkpoints)
        self.ids.append(node)

    def on_block(self, res: Residual, skip: Tensor, main: Tensor) -> None:
        self.blocks.append((res.index, res.name, res.identity, skip, main))

    def on_sink(self, node: fx.Node, label: str, total: Tensor) -> None:
        self.sums.append(total)
        self.names.append(label)
        self.kinds.append("constant")
        self.cps.append(False)
        self.ids.append(node)


class Maps(Recorder):
    """Per-position relevance maps [B, h, w] (channel sums) of chosen nodes, default every non-linear layer:
    SRD's PFV relevance maps."""

    def __init__(self, nodes: Collection[fx.Node] | None = None, kinds: Collection[str] = ("act",)) -> None:
        self.nodes = nodes
        self.kinds = kinds
        self.maps: dict[fx.Node, Tensor] = {}

    def on_node(self, node: fx.Node, kind: str, R: Tensor, total: Tensor | None) -> None:
        if (node in self.nodes) if self.nodes is not None else (kind in self.kinds):
            self.maps[node] = R.sum(1) if R.dim() == 4 else R.reshape(R.shape[0], 1, 1)


def descendants(graph: PropGraph, nodes: Iterable[fx.Node]) -> frozenset[fx.Node]:
    """The nodes themselves and everything computed from them: where relevance must flow to reach them."""
    out = set(nodes)
    for n in graph.nodes:
        if any(i in out for i in graph.data_inputs[n]):
            out.add(n)
    return frozenset(out)


@dataclass
class Walked:
    """What one walk returns besides what its recorders kept."""

    relevance: Tensor | None  # relevance of the network input (None: the walk ended before it)
    log_scale: Tensor | None = None  # [B] float64 when the rule set rescales (see :class:`Propagation`)


def walk(graph: PropGraph, env: dict[fx.Node, Any], rules: RuleSet, seeds: dict[fx.Node, Tensor], *,
         until: Collection[fx.Node] | None = None, stop: Collection[fx.Node] = (),
         recorders: Sequence[Recorder] = (), release: bool = False) -> Walked:
    """The one backward walk: relevance placed at ``seeds`` (node -> relevance of that node's value) moves to
    the inputs of each node by ``rules.backward``, node by node in reverse topological order.

    ``until``: only these nodes' relevance is wanted; nodes that cannot pass relevance to them are skipped and
    the walk ends once the earliest of them is recorded.  None: walk to the network input, and raise
    :class:`RelevanceNotPropagated` when no relevance reaches it (unless ``stop`` cut the walk on purpose).
    ``stop``: nodes (other than seeds) that are recorded but propagate nothing.  ``release``: drop each
    forward value once its node is walked (single-use forward passes; kept passes set False).
    The activations in ``env`` may have batch 1 while the seeds have batch P (P starts over one forward).
    """
    pos = graph._pos
    for n in seeds:
        if n not in pos:
            raise RelevanceNotPropagated(f"cannot seed relevance at {n}: not a node of {graph.model_name}'s graph")
    first = max(pos[n] for n in seeds)
    needed = descendants(graph, until) if until is not None else None
    floor = min(pos[n] for n in until) if until else 0
    stop = frozenset(stop) - frozenset(seeds)
    R: dict[fx.Node, Tensor] = dict(seeds)
    wants = any(r.wants_totals for r in recorders)
    # Rules that are not conservative (absLRP) can grow or shrink relevance past float32's range over a deep
    # network.  Their rules are linear in R, so the walker may rescale the whole pending relevance of an image
    # by one factor; it keeps the log of the factors so that the recorded totals stay in true units.
    scaled = bool(rules.rescale_kinds)
    log_scale = None
    if scaled:
        n0, r0 = next(iter(seeds.items()))
        batch = r0.shape[graph.batch_dim.get(n0, 0)]
        log_scale = torch.zeros(batch, dtype=torch.float64, device=r0.device)

    def total(t: Tensor, bd: int = 0) -> Tensor:
        s = (t.movedim(bd, 0) if bd else t).flatten(1).sum(1)
        return s.double() * log_scale.exp() if log_scale is not None else s

    last: tuple[Tensor | None, Tensor | None] = (None, None)  # pass-through nodes hand on the same tensor
    relevance = None
    for node in reversed(graph.nodes[: first + 1]):
        if pos[node] < floor:
            break
        r = R.pop(node, None)
        if r is None:
            if release:
                env.pop(node, None)
            continue
        kind = graph.kind[node]
        node_total = None
        if wants:
            node_total = last[1] if r is last[0] else total(r, graph.batch_dim.get(node, 0))
            last = (r, node_total)
        for rec in recorders:
            rec.on_node(node, kind, r, node_total)
        if kind == "input":
            relevance = r
            continue
        if node in stop or (needed is not None and node not in needed):
            continue
        ins = graph.data_inputs[node]
        op = OpContext(graph=graph, node=node, kind=kind, inputs=[env.get(i) for i in ins], env=env,
                       name=f"{graph.names[node]} in {graph.model_name}")
        outs = rules.backward(op, r)
        for label, sink in op.sinks:
            for rec in recorders:
                rec.on_sink(node, label, sink.double() * log_scale.exp() if log_scale is not None else sink)
        res = graph.residuals.get(node)
        if res is not None and wants:
            r_skip = outs[ins.index(res.skip)]
            r_main = outs[ins.index(res.main)] if res.main is not res.skip else torch.zeros_like(r)
            zero = torch.zeros(r.shape[0], dtype=torch.float64 if scaled else r.dtype, device=r.device)
            for rec in recorders:
                rec.on_block(res, total(r_skip) if r_skip is not None else zero,
                             total(r_main) if r_main is not None else zero)
        if log_scale is not None and kind in rules.rescale_kinds:
            outs = _rescale(graph, R, ins, outs, log_scale)
        for i, ri in zip(ins, outs):
            if ri is None:
                continue
            prev = R.get(i)
            R[i] = ri if prev is None else prev + ri
        if release:
            env.pop(node, None)
    if relevance is None and until is None and not stop:
        where = ", ".join(graph.names[n] for n in seeds)
        raise RelevanceNotPropagated(f"no relevance placed at {where} reached the input of {graph.model_name}: "
                                     "every path to it carries zero (dead units, or a rule that stops)")
    return Walked(relevance=relevance, log_scale=log_scale)


@torch.no_grad()
def propagate(model: nn.Module, x: Tensor, targets: Tensor | None, rules: RuleSet, model_name: str = "",
              start: Tensor | None = None, keep_activations: bool = False,
              until: Collection[fx.Node] | None = None, recorders: Sequence[Recorder] = ()) -> Propagation:
    """Propagate relevance from the rule set's seeds back to ``x`` (batched: one target per row of ``x``).

    ``start`` overrides the rule set's start relevance at the logits (a [B, classes] tensor); otherwise
    ``rules.seeds`` places it (at ``targets``: argmax when None, or where a target is -1).  ``until`` and
    further ``recorders``: see :func:`walk`.  The model must be in eval mode; the caller holds the model lock
    (``model_guard``).
    """
    graph = build_graph(model, model_name, example=x)
    env = forward(graph, x, inplace=not keep_activations, keep=rules.keeps(graph))
    logits = env[graph.output]
    if targets is None:
        targets = logits.argmax(-1)
    elif bool((targets < 0).any()):  # -1: the predicted class (explain_batch's own_forward protocol)
        targets = torch.where(targets < 0, logits.argmax(-1), targets.to(logits.device))
    if start is not None:
        seeds = {graph.output: start.to(logits.dtype)}
    else:
        seeds = rules.seeds(graph, env, logits, targets.to(logits.device))
    start_total = sum(s.flatten(1).sum(1) for s in seeds.values())
    kept = dict(env) if keep_activations else None
    totals = Totals(graph)
    walked = walk(graph, env, rules, seeds, until=until, recorders=[totals, *recorders],
                  release=not keep_activations and rules.releases_values)
    blocks = sorted(totals.blocks, key=lambda b: b[0])
    empty = torch.zeros(0, x.shape[0], dtype=x.dtype, device=x.device)
    sums = totals.sums
    return Propagation(
        relevance=walked.relevance, logits=logits, start=start_total, totals=torch.stack(sums) if sums else empty,
        node_names=totals.names, node_kinds=totals.kinds, node_checkpoint=totals.cps, node_ids=totals.ids,
        block_names=[b[1] for b in blocks], block_identity=[b[2] for b in blocks],
        block_skip=torch.stack([b[3] for b in blocks]) if blocks else empty,
        block_main=torch.stack([b[4] for b in blocks]) if blocks else empty,
        graph=graph, activations=kept, log_scale=walked.log_scale,
    )


_RESCALE_ABOVE, _RESCALE_BELOW = 1e10, 1e-10  # far inside float32's range (1e-38 .. 3e38), with room for R / |z|


def _rescale(graph: PropGraph, R: dict[fx.Node, Tensor], ins: list[fx.Node], outs: list[Tensor | None],
             log_scale: Tensor) -> list[Tensor | None]:
    """When an image's relevance peak leaves [1e-10, 1e10], divide all its pending relevance by that peak."""
    def per_image(t: Tensor, node: fx.Node) -> tuple[Tensor, int]:
        bd = graph.batch_dim.get(node, 0)
        return (t.movedim(bd, 0) if bd else t).reshape(t.shape[bd], -1), bd

    peaks = []
    for i, o in zip(ins, outs):
        if o is not None:
            flat = per_image(o, i)[0]  # amax / amin: aminmax and vector_norm(inf) along a dim are ~20x slower on CPU
            peaks.append(torch.maximum(flat.amax(1), -flat.amin(1)))
    if not peaks:
        return outs
    peak = torch.stack(peaks).amax(0)
    need = (peak > _RESCALE_ABOVE) | ((peak < _RESCALE_BELOW) & (peak > 0))
    if not bool(need.any()):
        return outs
    factor = torch.where(need, 1.0 / peak, torch.ones_like(peak))

    def scale(t: Tensor, node: fx.Node) -> Tensor:
        bd = graph.batch_dim.get(node, 0)
        shape = [1] * t.dim()
        shape[bd] = -1
        return t * factor.to(t.dtype).view(shape)

    for n in list(R):
        R[n] = scale(R[n], n)
    log_scale -= factor.double().log()
    return [scale(o, i) if o is not None else None for i, o in zip(ins, outs)]
