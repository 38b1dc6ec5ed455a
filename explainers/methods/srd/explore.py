"""SRD beyond one heatmap: maps at any layer, the ERF of any pointwise feature vector and sub-concepts
(Han, Kim, Kwak, ICLR 2024; Sec. 3, App. A and C), all through the one walker.

- :func:`srd_maps`: relevance maps at the encoder output (``low``), the stride-8 stage (``high``), the pixels
  (``input``) or any named non-linear layer, from one propagation (the ``srd`` method uses it).
- :class:`Pass` / :func:`forward_pass`: one kept forward pass, for repeated walks seeded at inner layers:
  :meth:`Pass.erf` (App. C: input relevance of PFVs started with relevance 1; sums to 1, zero outside the
  receptive field) and :meth:`Pass.subconcepts` (App. A, Fig. 5 bottom: the walk stops at the previous
  non-linear layer(s)).
- :func:`erf_view` / :func:`neighbour_views`: a PFV shown as the crop of its ERF's bounding box, enlarged
  (:func:`erf_crop` keeps the older ERF-weighted crop).
- :func:`grid_centres` / :func:`click_to_cell` / :func:`grid_click`: the clickable PFV grid of the page.

The PFVs compared are the *pre-activation* vectors ``v_j`` (Sec. 3.2 and App. F).  No Streamlit here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from ...errors import InvalidOption, UnsupportedModel
from ...guard import model_guard
from ...images import load_image
from ...models import ModelBundle
from ...propagation import build_graph, forward, propagate
from ...propagation.engine import Maps, walk
from ...propagation.graph import PropGraph
from .rules import BIAS_SHARES, STARTS, SRDGraph, SRDRules, srd_graph
from .stencils import Geometry, Stencil, compile_stencils, geometry, srd_sources

if TYPE_CHECKING:
    from .index import Neighbour

Tensor = torch.Tensor

RESOLUTIONS = ("input", "high", "low")


def check_supported(bundle: ModelBundle) -> None:
    """SRD decomposes pointwise feature vectors on a convolutional grid; transformers have none."""
    from ...capabilities import CONV_PROPAGATION, capabilities_of

    caps = capabilities_of(bundle)
    if not CONV_PROPAGATION.met(caps):
        raise UnsupportedModel(
            f"SRD {CONV_PROPAGATION.why_not(caps)}: it decomposes pointwise feature vectors on a convolutional "
            f"grid, which {bundle.label} does not offer. Pick a CNN, or use absLRP / Grad-CAM for this model.")


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class LayerInfo:
    """A non-linear layer of the encoder, whose PFVs SRD can start from or stop at."""

    name: str  # unique readable name (``layer1.0.relu:2`` when a module is called several times)
    channels: int
    size: tuple[int, int]  # grid at the bundle's input size
    stride: int
    alias: str = ""  # 'low' / 'high' when it is one of those

    @property
    def label(self) -> str:
        extra = f" [{self.alias}]" if self.alias else ""
        return f"{self.name} ({self.size[0]}x{self.size[1]}x{self.channels}){extra}"


def _graph(bundle: ModelBundle, x: Tensor | None = None) -> tuple[PropGraph, SRDGraph]:
    check_supported(bundle)
    graph = build_graph(bundle.model, bundle.label, example=x)
    return graph, srd_graph(graph)


def _high(info: SRDGraph, geo: dict[fx.Node, Geometry]) -> fx.Node:
    """The last non-linearity at stride <= 8 that all relevance passes (the 28x28 stage for 224x224 inputs:
    paper Sec. 4 'SRD-high'; for ResNet-50 the input of layer3, as in the released code)."""
    ok = [n for n in info.acts if n in geo and max(geo[n].jump) <= 8 and n in info.cuts]
    return ok[-1] if ok else info.acts[0]


def layers(bundle: ModelBundle, size: tuple[int, int] | None = None) -> list[LayerInfo]:
    """The encoder's non-linear layers, input -> output (what the Explorer's layer selector offers)."""
    graph, info = _graph(bundle)
    h, w = size or (bundle.input_size, bundle.input_size)
    geo = geometry(graph, h, w)
    high = _high(info, geo)
    channels = _channels(bundle, graph, info)
    out = []
    for n in info.acts:
        alias = "low" if n is info.encoder_output else ("high" if n is high else "")
        g = geo.get(n)
        out.append(LayerInfo(info.names[n], channels[n], g.size if g else (0, 0), g.jump[0] if g else 0, alias))
    return out


def _channels(bundle: ModelBundle, graph: PropGraph, info: SRDGraph) -> dict[fx.Node, int]:
    cached = getattr(graph, "_srd_channels", None)
    if cached is None:
        with model_guard(bundle, requires_grad=False):
            p = next(bundle.model.parameters())
            env = forward(graph, torch.zeros(1, 3, 32, 32, dtype=p.dtype, device=p.device), inplace=False)
        cached = {n: int(env[n].shape[1]) for n in info.acts}
        graph._srd_channels = cached  # type: ignore[attr-defined]
    return cached


def resolve_layer(graph: PropGraph, info: SRDGraph, layer: str, size: tuple[int, int]) -> fx.Node | None:
    """'low' | 'high' | 'input' (None) | a unique layer name | an fx node name -> the act node."""
    if layer == "input":
        return None
    if layer == "low":
        return info.encoder_output
    if layer == "high":
        return _high(info, geometry(graph, *size))
    by_name = {info.names[n]: n for n in info.acts}
    if layer in by_name:
        return by_name[layer]
    for n in info.acts:
        if n.name == layer or graph.names[n] == layer:
            return n
    examples = ", ".join(list(by_name)[-4:])
    raise InvalidOption(f"{graph.model_name} has no non-linear layer {layer!r} for SRD; use low, high, input or "
                        f"a layer name such as {examples} (the SRD Explorer lists them all).")


def _positions(position: tuple[int, int] | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    if len(position) == 2 and all(isinstance(v, (int, np.integer)) for v in position):  # type: ignore[arg-type]
        return [(int(position[0]), int(position[1]))]  # type: ignore[index]
    return [(int(r), int(c)) for r, c in position]  # type: ignore[misc]


# --------------------------------------------------------------------------- maps (the ``srd`` method)


@dataclass
class SRDMaps:
    """Relevance maps of a batch at the requested layers, plus what the method reports."""

    maps: dict[str, Tensor]  # requested name -> [B, h, w] (raw grid; 'input' is [B, H, W])
    layer_names: dict[str, str]  # requested name -> resolved layer name
    logits: Tensor
    targets: Tensor
    start_total: Tensor  # [B] sum of the start relevance (Eq. 4) at the encoder output
    totals: list[tuple[str, Tensor, bool]]  # (layer, [B] relevance total, is a cut) output -> input
    propagation: Any = None  # the walker's record (every node's relevance total: ``Explanation.layers``)

    def upsampled(self, name: str, size: tuple[int, int]) -> Tensor:
        """Bilinear to ``size`` for display (the raw grid stays in ``maps``)."""
        m = self.maps[name]
        if tuple(m.shape[-2:]) == tuple(size):
            return m
        return F.interpolate(m[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def srd_maps(bundle: ModelBundle, x: Tensor, target: Tensor | int | None = None, start: str = "contrastive",
             bias_share: str = "norm", layers: Sequence[str] = ("low", "high", "input")) -> SRDMaps:
    """SRD relevance at several layers from one propagation on the engine.

    ``target``: class per image, -1/None for the predicted class.  ``start``: Eq. 4 variant (``contrastive``:
    paper; ``spatial-mean``: released code; ``plain``).  ``bias_share``: ``norm`` (paper App. B) or
    ``contribution`` (released code).  The walk stops at the earliest requested layer.
    """
    if start not in STARTS:
        raise InvalidOption(f"start must be one of {', '.join(STARTS)}; got {start!r}.")
    if bias_share not in BIAS_SHARES:
        raise InvalidOption(f"bias_share must be one of {', '.join(BIAS_SHARES)}; got {bias_share!r}.")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    x = x.to(bundle.device)
    graph, info = _graph(bundle, x)
    size = (x.shape[-2], x.shape[-1])
    nodes = {name: resolve_layer(graph, info, name, size) for name in layers}
    if isinstance(target, int):
        target = torch.full((x.shape[0],), target, dtype=torch.long)
    targets = target.to(x.device) if target is not None else None
    to_input = any(n is None for n in nodes.values())
    until = None if to_input else [n for n in nodes.values() if n is not None]
    rules = SRDRules(info=info, srd_start=start, bias_share=bias_share)
    recorded = Maps()
    with model_guard(bundle, requires_grad=False) as model:
        prop = propagate(model, x, targets, rules, model_name=bundle.label, until=until, recorders=[recorded])
    if targets is None:
        targets = prop.logits.argmax(-1)
    targets = torch.where(targets < 0, prop.logits.argmax(-1), targets)
    maps: dict[str, Tensor] = {}
    for name, node in nodes.items():
        maps[name] = prop.relevance.sum(1) if node is None else recorded.maps[node]
    start_total = prop.start
    totals = [(info.names[n], recorded.maps[n].flatten(1).sum(1), n in info.cuts)
              for n in reversed(info.acts) if n in recorded.maps]
    if to_input:
        totals.append(("input", maps[next(k for k, v in nodes.items() if v is None)].flatten(1).sum(1), True))
    names = {k: ("input" if v is None else info.names[v]) for k, v in nodes.items()}
    return SRDMaps(maps=maps, layer_names=names, logits=prop.logits, targets=targets, start_total=start_total,
                   totals=totals, propagation=prop)


# --------------------------------------------------------------------------- one kept forward pass


@dataclass
class Pass:
    """One image's forward pass with every pre-/post-activation kept, for repeated SRD walks."""

    bundle: ModelBundle
    graph: PropGraph
    info: SRDGraph
    env: dict[fx.Node, Any]
    x: Tensor  # 1x3xHxW
    cache: dict = field(default_factory=dict)  # per-pass quantities the SRD rules reuse across walks
    stencils: dict[fx.Node, list[Stencil]] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.x.shape[-2], self.x.shape[-1]

    def node(self, layer: str) -> fx.Node:
        n = resolve_layer(self.graph, self.info, layer, self.size)
        if n is None:
            raise InvalidOption("Pick a non-linear layer, not the input, for a pointwise feature vector.")
        return n

    def grid(self, layer: str) -> tuple[int, int]:
        v = self.env[self.node(layer)]
        return int(v.shape[-2]), int(v.shape[-1])

    def vector(self, layer: str, position: tuple[int, int]) -> Tensor:
        """The pre-activation PFV v_j at ``position`` (what nearest-neighbour search compares)."""
        n = self.node(layer)
        v = self.env[self.graph.data_inputs[n][0]]
        r, c = self._check(n, position)
        return v[0, :, r, c]

    def vectors(self, layer: str) -> Tensor:
        """All pre-activation PFVs of a layer: [h*w, C] (row-major positions)."""
        n = self.node(layer)
        v = self.env[self.graph.data_inputs[n][0]][0]
        return v.flatten(1).T.contiguous()

    def _check(self, node: fx.Node, position: tuple[int, int]) -> tuple[int, int]:
        h, w = self.env[node].shape[-2:]
        r, c = int(position[0]), int(position[1])
        if not (0 <= r < h and 0 <= c < w):
            raise InvalidOption(f"Position ({r}, {c}) lies outside the {h}x{w} grid of {self.info.names[node]}.")
        return r, c

    def box(self, layer: str, position: tuple[int, int]) -> tuple[int, int, int, int]:
        """The theoretical receptive field of a PFV on the input: (row0, row1, col0, col1) inclusive."""
        n = self.node(layer)
        r, c = self._check(n, position)
        return geometry(self.graph, *self.size)[n].box(r, c, *self.size)

    def erf(self, layer: str, positions: Sequence[tuple[int, int]], bias_share: str = "norm",
            method: str = "auto") -> Tensor:
        """Input-level relevance [P, H, W] of P PFVs of one layer, each started alone with relevance 1.

        ``walk``: one backward walk with a batch of P one-hot starts (cost ~ P backward passes).
        ``stencils``: every sharing ratio of every layer below, compiled once per forward pass
        (:func:`~explainers.methods.srd.stencils.compile_stencils`, cost ~ a few backward passes), then P maps are
        folds of tiny single-channel maps.  ``auto``: stencils from 8 positions on, or when compiled."""
        n = self.node(layer)
        h, w = self.env[n].shape[-2:]
        seeds = torch.zeros(len(positions), 1, h, w, dtype=self.x.dtype, device=self.x.device)
        for k, pos in enumerate(positions):
            r, c = self._check(n, pos)
            seeds[k, 0, r, c] = 1.0
        if method == "auto":
            method = "stencils" if len(positions) >= 8 or (n in self.stencils and bias_share == "norm") else "walk"
        if method == "stencils":
            return self._erf_stencils(n, seeds[:, 0], bias_share)
        rules = SRDRules(info=self.info, bias_share=bias_share, cache=self._cache(bias_share))
        with torch.no_grad(), model_guard(self.bundle, requires_grad=False):
            walked = walk(self.graph, self.env, rules, {n: seeds})
        assert walked.relevance is not None  # the walker raises RelevanceNotPropagated otherwise
        return walked.relevance.sum(1)

    def _cache(self, bias_share: str) -> dict:
        return self.cache.setdefault(bias_share, {})

    def stencils_for(self, node: fx.Node, bias_share: str = "norm") -> list[Stencil]:
        """The sharing-ratio stencils into ``node`` (compiled on first use, kept for this pass)."""
        key = node if bias_share == "norm" else (node, bias_share)
        out = self.stencils.get(key)  # type: ignore[call-overload]
        if out is None:
            rules = SRDRules(info=self.info, bias_share=bias_share, cache=self._cache(bias_share))
            with torch.no_grad(), model_guard(self.bundle, requires_grad=False):
                out = compile_stencils(self.graph, self.env, rules, node, self.x)
            self.stencils[key] = out  # type: ignore[index]
        return out

    def _erf_stencils(self, node: fx.Node, R: Tensor, bias_share: str) -> Tensor:
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        maps: dict[fx.Node, Tensor] = {node: R}
        source = self.graph.nodes[0]
        while True:
            pending = [n for n in maps if n is not source]
            if not pending:
                break
            k = max(pending, key=lambda n: order[n])  # every sink below k has been applied: R_k is complete
            Rk = maps.pop(k)
            with torch.no_grad():
                for st in self.stencils_for(k, bias_share):
                    part = st.apply(Rk)
                    maps[st.source] = part if st.source not in maps else maps[st.source] + part
        return maps[source]

    def subconcepts(self, layer: str, position: tuple[int, int], top: int = 5,
                    bias_share: str = "norm") -> list[SubConcept]:
        """The PFVs that make up ``v_j`` at ``position``: every contributor in the previous non-linear
        layer(s) (or the pixels, for the first layer) with its sharing ratio mu_(i->j), largest first."""
        n = self.node(layer)
        h, w = self.env[n].shape[-2:]
        r, c = self._check(n, position)
        seed = torch.zeros(1, 1, h, w, dtype=self.x.dtype, device=self.x.device)
        seed[0, 0, r, c] = 1.0
        rules = SRDRules(info=self.info, bias_share=bias_share, cache=self._cache(bias_share))
        recorded = Maps()
        with torch.no_grad(), model_guard(self.bundle, requires_grad=False):
            walked = walk(self.graph, self.env, rules, {n: seed}, stop=srd_sources(self.graph, self.info, n),
                          recorders=[recorded])
        sources: list[tuple[str, Tensor]] = [(self.info.names[m], R[0]) for m, R in recorded.maps.items()
                                             if m is not n]
        if walked.relevance is not None:
            sources.append(("input", walked.relevance.sum(1)[0]))
        found = []
        for name, R in sources:
            flat = R.flatten()
            nz = torch.nonzero(flat).flatten()
            for i in nz.tolist():
                found.append(SubConcept(name, (i // R.shape[-1], i % R.shape[-1]), float(flat[i])))
        found.sort(key=lambda s: -s.mu)
        return found[:top] if top > 0 else found


@dataclass(frozen=True)
class SubConcept:
    """A contributor of a PFV: layer, grid position and its sharing ratio mu_(i->j) (Eq. 6)."""

    layer: str
    position: tuple[int, int]
    mu: float


@torch.no_grad()
def forward_pass(bundle: ModelBundle, x: Tensor) -> Pass:
    """Run one image forward keeping the values SRD walks read (under the model lock)."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.shape[0] != 1:
        raise ValueError("forward_pass takes one image (1x3xHxW)")
    x = x.to(bundle.device)
    graph, info = _graph(bundle, x)
    rules = SRDRules(info=info)
    with model_guard(bundle, requires_grad=False):
        env = forward(graph, x, inplace=True, keep=rules.keeps(graph))
    return Pass(bundle=bundle, graph=graph, info=info, env=env, x=x)


def erf(bundle: ModelBundle, x: Tensor, layer: str, position: tuple[int, int] | Sequence[tuple[int, int]],
        bias_share: str = "norm") -> Tensor:
    """The effective receptive field of the PFV(s) at ``position`` of ``layer``: input-level relevance when
    that PFV starts with relevance 1 and every other with 0 (App. C).  One position -> [H, W]; a list of
    P positions -> [P, H, W] from one batched walk over one forward pass."""
    single = len(position) == 2 and all(isinstance(v, (int, np.integer)) for v in position)  # type: ignore[arg-type]
    out = forward_pass(bundle, x).erf(layer, _positions(position), bias_share)
    return out[0] if single else out


def subconcepts(bundle: ModelBundle, x: Tensor, layer: str, position: tuple[int, int], top: int = 5,
                bias_share: str = "norm") -> list[SubConcept]:
    return forward_pass(bundle, x).subconcepts(layer, position, top, bias_share)



# --------------------------------------------------------------------------- showing an ERF


def erf_box(erf_map: Tensor, mass: float = 0.9, min_side: int = 32) -> tuple[int, int, int, int]:
    """The box (row0, row1, col0, col1 inclusive) holding the central ``mass`` of the ERF's positive part
    along each axis, at least ``min_side`` pixels wide (for crops)."""
    pos = erf_map.detach().float().cpu().clamp(min=0)
    H, W = pos.shape
    if float(pos.sum()) <= 0:
        pos = erf_map.detach().float().cpu().abs()
    if float(pos.sum()) <= 0:
        return 0, H - 1, 0, W - 1
    tail = (1 - mass) / 2

    def span(marginal: Tensor, n: int) -> tuple[int, int]:
        cum = marginal.cumsum(0) / marginal.sum()
        lo = int(torch.searchsorted(cum, torch.tensor(tail)))
        hi = int(torch.searchsorted(cum, torch.tensor(1 - tail)))
        lo, hi = min(lo, n - 1), min(hi, n - 1)
        if hi - lo + 1 < min_side:
            mid = (lo + hi) // 2
            lo = max(0, min(mid - min_side // 2, n - min_side))
            hi = min(n - 1, lo + min_side - 1)
        return lo, hi

    r0, r1 = span(pos.sum(1), H)
    c0, c1 = span(pos.sum(0), W)
    return r0, r1, c0, c1


def erf_weighted(image01: Tensor | np.ndarray, erf_map: Tensor, floor: float = 0.15) -> np.ndarray:
    """The image (3xHxW or HxWx3 in [0, 1]) weighted by its ERF: uint8 HxWx3.  Pixels outside the ERF fade
    to ``floor`` brightness; sqrt of the normalised positive ERF keeps the tails visible."""
    img = image01.detach().cpu().numpy() if isinstance(image01, Tensor) else np.asarray(image01, dtype=np.float32)
    if img.shape[0] == 3 and img.ndim == 3:
        img = img.transpose(1, 2, 0)
    if img.max() > 1.5:
        img = img / 255.0
    e = erf_map.detach().float().cpu().clamp(min=0)
    m = float(e.max())
    w = (e / m).sqrt().numpy() if m > 0 else np.zeros(e.shape, dtype=np.float32)
    out = img * (floor + (1 - floor) * w[..., None])
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def erf_crop(image01: Tensor | np.ndarray, erf_map: Tensor, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A PFV as its image crop weighted by its own ERF (App. A, Fig. 5 top)."""
    r0, r1, c0, c1 = box or erf_box(erf_map)
    return erf_weighted(image01, erf_map)[r0:r1 + 1, c0:c1 + 1]


def box_crop(image01: Tensor | np.ndarray, box: tuple[int, int, int, int], size: int | None = 192) -> np.ndarray:
    """The image (3xHxW or HxWx3 in [0, 1] or uint8) cut to ``box`` (row0, row1, col0, col1 inclusive), unweighted
    (an ERF-weighted full image is almost black at early layers), enlarged by the largest whole factor that keeps
    the longer side at most ``size`` (never shrunk; nearest neighbour, so every image pixel stays a crisp block).
    ``size=None``: not enlarged.  Returns uint8 hxwx3."""
    img = image01.detach().cpu().numpy() if isinstance(image01, Tensor) else np.asarray(image01)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    r0, r1, c0, c1 = box
    H, W = img.shape[:2]
    if not (0 <= r0 <= r1 < H and 0 <= c0 <= c1 < W):
        raise InvalidOption(f"Box {box} lies outside the {H}x{W} image.")
    out = img[r0:r1 + 1, c0:c1 + 1]
    if size is not None:
        f = max(1, size // max(out.shape[:2]))
        out = out.repeat(f, axis=0).repeat(f, axis=1)
    return np.ascontiguousarray(out)


def erf_view(image01: Tensor | np.ndarray, erf_map: Tensor, size: int | None = 192) -> np.ndarray:
    """A PFV shown as the image region of its ERF's bounding box (:func:`erf_box`), enlarged (:func:`box_crop`)."""
    return box_crop(image01, erf_box(erf_map), size)


# --------------------------------------------------------------------------- the clickable grid


def grid_centres(grid: tuple[int, int], display: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Plotly x, y of every cell centre (row-major) of a ``grid`` (rows, cols) drawn over an image of
    ``display`` (height, width) pixels with ``go.Image``: plotly puts pixel i's *centre* at i, so the image
    spans [-0.5, W - 0.5] and a cell's centre is at (c + 0.5) * W / w - 0.5."""
    h, w = grid
    H, W = display
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return (cc.flatten() + 0.5) * W / w - 0.5, (rr.flatten() + 0.5) * H / h - 0.5


def click_to_cell(x: float, y: float, grid: tuple[int, int], display: tuple[int, int]) -> tuple[int, int]:
    """The (row, col) of the grid cell under a click at plotly image coordinates (x, y) (the inverse of
    :func:`grid_centres`): cell c covers [c * W / w, (c + 1) * W / w) in pixel-edge coordinates x + 0.5;
    clicks on the outer border are clamped into the grid."""
    h, w = grid
    H, W = display
    col = int(np.floor((float(x) + 0.5) * w / W))
    row = int(np.floor((float(y) + 0.5) * h / H))
    return min(max(row, 0), h - 1), min(max(col, 0), w - 1)


def grid_click(points: Sequence[Mapping], layer: str, grid: tuple[int, int],
               display: tuple[int, int]) -> tuple[str, int, int] | None:
    """The PFV (layer, row, col) a plotly selection picks on the grid of the *shown* ``layer``: the first point
    that has image coordinates, mapped by :func:`click_to_cell` (not by trace indices or custom data, which
    outlive a change of layer or grid size).  None when nothing usable was clicked."""
    for pt in points or []:
        x, y = pt.get("x"), pt.get("y")
        if x is None or y is None:
            continue
        try:
            row, col = click_to_cell(float(x), float(y), grid, display)
        except (TypeError, ValueError):
            continue
        return layer, row, col
    return None


@dataclass
class NeighbourView:
    neighbour: Neighbour
    crop: np.ndarray  # uint8 hxwx3: the ERF's bounding box, enlarged
    erf: Tensor  # [H, W]


def neighbour_views(bundle: ModelBundle, neighbours: Sequence[Neighbour], images: dict[str, tuple[str, bytes]],
                    bias_share: str = "norm") -> list[NeighbourView]:
    """Each neighbour as the image region of its own ERF's bounding box, enlarged (:func:`erf_view`); one forward
    and one batched walk per image.
    ``images``: image hash -> (name, bytes) for every image the neighbours come from."""
    out: dict[int, NeighbourView] = {}
    by_image: dict[str, list[int]] = {}
    for k, nb in enumerate(neighbours):
        by_image.setdefault(nb.image_key, []).append(k)
    for key, ks in by_image.items():
        name, data = images[key]
        image = load_image(data, name=name)
        x = bundle.preprocess(image)
        erfs = forward_pass(bundle, x).erf(neighbours[ks[0]].layer, [neighbours[k].position for k in ks], bias_share)
        shown = bundle.to_tensor01(image)
        for k, e in zip(ks, erfs):
            out[k] = NeighbourView(neighbours[k], erf_view(shown, e), e.float().cpu())
    return [out[k] for k in range(len(neighbours))]

