"""The network as an explicit graph: a ``torch.fx`` trace with every node classified.

Why a traced graph rather than module hooks: residual additions (``out += identity``
in torchvision, ``x = self.drop_path(x) + shortcut`` in timm) and timm's functional
``batch_norm`` are not modules, so hooks cannot see them.  In the fx graph they are
ordinary nodes, which lets one engine apply a rule to each and record the relevance
at every node (what the Conservation page plots).

The graph is built once per model object (cached weakly) and shared read-only by every session.  It is
traced from a :func:`~explainers.guard.twin` of the model (its own module objects on the same tensors), so
the traced ``GraphModule`` never runs a hook someone registered on the model and tracing switches nothing
on the model itself.  ``torch.fx`` patches ``nn.Module.__call__`` and ``__getattr__`` *class-wide* while it
traces, which would hand fx Proxies to forwards running in other threads and interleave two traces
(``AssertionError: Unexpected key ...``); hence one process-wide trace lock and a tracer that lets every
other thread's module calls and attribute reads through untouched (:class:`_ThreadTracer`).
"""

from __future__ import annotations

import operator
import os
import threading
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedModel


class UnsupportedOperation(UnsupportedModel):
    """The propagation engine met an operation it has no rule for."""


# Module types and functions by the role they play in relevance propagation.
ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.ELU, nn.Tanh, nn.Sigmoid)
PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)
BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
AVGPOOL_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
ACT_FUNCTIONS = {F.relu, F.relu6, F.gelu, F.silu, F.hardtanh, F.leaky_relu, torch.relu, torch.tanh, torch.sigmoid}
PASS_FUNCTIONS = {F.dropout, F.dropout2d}
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
AVGPOOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.avg_pool2d}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
RESHAPE_METHODS = {"view", "reshape", "flatten"}
PASS_METHODS = {"contiguous", "clone"}
ACT_METHODS = {"relu", "sigmoid", "tanh"}
# Transformer operations (timm ViTs traced with fused attention off, see _trace).  CNN graphs never contain
# them, so none of this changes how a CNN is classified.
LAYERNORM_MODULES = (nn.LayerNorm,)
LAYERNORM_FUNCTIONS = {F.layer_norm}
SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax}
SOFTMAX_METHODS = {"softmax"}
MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm}
MUL_FUNCTIONS = {operator.mul, torch.mul}
# Index / permutation ops: each output element is one input element, so relevance is routed by the op's VJP.
SELECT_FUNCTIONS = {operator.getitem, torch.select, torch.transpose, torch.permute}
SELECT_METHODS = {"transpose", "permute", "select"}
CAT_FUNCTIONS = {torch.cat, torch.concat}
# Kinds whose node combines several data inputs (every other kind has exactly one).
MULTI_INPUT_KINDS = ("add", "matmul", "cat")


@dataclass
class Residual:
    """One residual junction ``h = h_s + h_m`` (skip + main branch)."""

    node: fx.Node  # the add
    name: str  # the block's name (common module prefix of its main branch)
    skip: fx.Node  # the add's input coming from the skip connection
    main: fx.Node  # the add's input coming from the residual branch
    block_input: fx.Node  # where skip and main branch split
    identity: bool  # True when the skip is the identity (no projection)
    index: int  # 0-based position among the network's residual blocks


@dataclass
class PropGraph:
    """The traced model plus what the engine needs to know about each node."""

    module: fx.GraphModule
    model_name: str
    nodes: list[fx.Node]  # data nodes in topological order (placeholder first, output excluded)
    kind: dict[fx.Node, str]  # 'input' 'conv' 'linear' 'bn' 'act' 'pass' 'maxpool' 'avgpool' 'mean' 'reshape' 'add'
    #                           transformers also: 'layernorm' 'softmax' 'matmul' 'mul' 'select' 'cat'
    data_inputs: dict[fx.Node, list[fx.Node]]  # the data (activation) inputs of each node
    output: fx.Node  # the node whose value is the logits
    residuals: dict[fx.Node, Residual] = field(default_factory=dict)
    merged_bn: dict[fx.Node, fx.Node] = field(default_factory=dict)  # conv/linear -> the BN that directly follows it
    first_layer: fx.Node | None = None  # first conv/linear (input layer rules: flat, zbox)
    classifier_input: fx.Node | None = None  # input of the first linear layer
    names: dict[fx.Node, str] = field(default_factory=dict)  # readable name of each node
    nonneg: set[fx.Node] = field(default_factory=set)  # nodes whose value is >= 0 by construction (after ReLU)
    # ReLU nodes whose input feeds nothing else: the engine's forward may run them in place (no rule reads
    # that input), which saves an allocation per activation.
    inplace: set[fx.Node] = field(default_factory=set)
    # Values the LRP rules read in the backward walk (inputs of layers, pools, adds, reshapes); the forward may
    # drop every other value as soon as its consumers ran, so the allocator reuses that memory (page faults on
    # fresh memory otherwise make the forward about twice as slow on CPU).
    keep: set[fx.Node] = field(default_factory=set)
    remaining_users: dict[fx.Node, int] = field(default_factory=dict)
    # Nodes whose value does not have the batch first (inside attention, ``qkv.permute(2, 0, 3, 1, 4)`` puts it
    # second): node -> batch dimension.  Absent means 0.
    batch_dim: dict[fx.Node, int] = field(default_factory=dict)

    def checkpoints(self) -> list[fx.Node]:
        """Nodes through which the whole relevance must pass (paper Fig. 7 and the Conservation page)."""
        points = [self.output]
        if self.classifier_input is not None:
            points.append(self.classifier_input)
        for res in sorted(self.residuals.values(), key=lambda r: -r.index):
            points += [res.node, res.block_input]
        points.append(self.nodes[0])
        seen: list[fx.Node] = []
        for p in points:
            if p not in seen:
                seen.append(p)
        return seen

    def branches(self) -> dict[fx.Node, tuple[str, str]]:
        """Nodes strictly inside a residual block, each -> (block name, "main" or "skip").

        Relevance at such a node is only the share of its branch (the rest takes the other one), so its total
        is not comparable with the checkpoints' (the Conservation page marks them).  A node of nested blocks
        gets the innermost one.  Walks back from each branch's end to the block input.
        """
        out: dict[fx.Node, tuple[str, str]] = {}
        # outer blocks first, inner ones overwrite: the innermost block wins
        by_span = sorted(self.residuals.values(), key=lambda r: self._pos[r.block_input] - self._pos[r.node])
        for res in by_span:
            start = self._pos[res.block_input]
            for branch, end in (("main", res.main), ("skip", res.skip)):
                stack, seen = [end], set()
                while stack:
                    n = stack.pop()
                    if n in seen or n is res.block_input or n not in self._pos or self._pos[n] <= start:
                        continue
                    seen.add(n)
                    out[n] = (res.name, branch)
                    stack.extend(self.data_inputs.get(n, ()))
        return out

    def blocks_before(self, node: fx.Node) -> int:
        """How many residual blocks end before this node (for the paper's App. D.3 'mixture' composite)."""
        pos = self._pos[node]
        return sum(1 for r in self.residuals.values() if self._pos[r.node] < pos)

    @property
    def _pos(self) -> dict[fx.Node, int]:
        cached = getattr(self, "_pos_cache", None)
        if cached is None:
            cached = {n: i for i, n in enumerate(self.nodes)}
            self._pos_cache = cached
        return cached


_CACHE: weakref.WeakKeyDictionary[nn.Module, PropGraph] = weakref.WeakKeyDictionary()
_TRACE_LOCK = threading.Lock()  # one trace (and one graph build) at a time in the whole process


class _ThreadTracer(fx.Tracer):
    """An fx tracer that traces only in the thread that started it.

    While ``trace`` runs, fx's class-wide patches route *every* thread's ``nn.Module.__call__`` and
    ``__getattr__`` through the tracer; for other threads we hand back the plain call and the plain
    attribute, so their forwards (a Grad-CAM in another session) see real tensors, run their hooks and
    leave nothing in this graph."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        if not isinstance(attr_val, torch.Tensor):
            return attr_val
        # fx's own lookup walks ``root.named_parameters()`` (then ``named_buffers()``) until it meets
        # ``attr_val``, on every parameter read: O(parameters) per read, 14,700 generator steps and about
        # 0.1 s of EfficientNet-Lite0's 0.3 s first trace.  The same first-name-wins lookup from one table.
        names = self._names()
        name = names[0].get(id(attr_val)) if isinstance(attr_val, nn.Parameter) else None
        if name is None and self.proxy_buffer_attributes:
            name = names[1].get(id(attr_val))
        if name is None:
            return attr_val
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def _names(self) -> tuple[dict[int, str], dict[int, str]]:
        """{id: name} of the root's parameters and of its buffers, in fx's order (the first name wins)."""
        if getattr(self, "_name_tables", None) is None or self._name_tables[0] is not self.root:
            params: dict[int, str] = {}
            buffers: dict[int, str] = {}
            for n, p in self.root.named_parameters():
                params.setdefault(id(p), n)
            for n, b in self.root.named_buffers():
                buffers.setdefault(id(b), n)
            self._name_tables = (self.root, params, buffers)
        return self._name_tables[1], self._name_tables[2]


def _is_tracing_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the model cannot be traced symbolically (as opposed to a bug)."""
    if isinstance(exc, fx.proxy.TraceError):
        return True
    text = str(exc)
    return "Proxy" in text or "symbolic" in text.lower() or "symbolically traced" in text


def _failing_operation(exc: BaseException) -> str:
    """The model's own source line where tracing failed (the innermost frame outside torch)."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not f.filename.startswith(torch_dir)] or frames
    f = own[-1]
    return f"`{(f.line or '').strip()}` ({os.path.basename(f.filename)}:{f.lineno})"


def _classify(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The node's role, or None when it is not a propagation op (raised by the caller if it carries data)."""
    if node.op == "placeholder":
        return "input"
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, nn.Conv2d):
            return "conv"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, BN_MODULES):
            return "bn"
        if isinstance(m, ACT_MODULES):
            return "act"
        if isinstance(m, PASS_MODULES) or type(m).__name__ in ("DropPath", "Identity"):
            return "pass"
        if isinstance(m, nn.MaxPool2d):
            return "maxpool"
        if isinstance(m, AVGPOOL_MODULES):
            return "avgpool"
        if isinstance(m, nn.Flatten):
            return "reshape"
        if isinstance(m, LAYERNORM_MODULES):
            return "layernorm"
        return None
    if node.op == "call_function":
        t = node.target
        if t in ADD_FUNCTIONS:
            return "add"
        if t is F.batch_norm:
            return "bn"
        if t in ACT_FUNCTIONS:
            return "act"
        if t in PASS_FUNCTIONS:
            return "pass"
        if t in RESHAPE_FUNCTIONS:
            return "reshape"
        if t in AVGPOOL_FUNCTIONS:
            return "avgpool"
        if t is F.max_pool2d:
            return "maxpool"
        if t is torch.mean:
            return "mean"
        if t in LAYERNORM_FUNCTIONS:
            return "layernorm"
        if t in SOFTMAX_FUNCTIONS:
            return "softmax"
        if t in MATMUL_FUNCTIONS:
            return "matmul"
        if t in MUL_FUNCTIONS:
            return "mul"
        if t in SELECT_FUNCTIONS:
            return "select"
        if t in CAT_FUNCTIONS:
            return "cat"
        return None
    if node.op == "call_method":
        if node.target in RESHAPE_METHODS:
            return "reshape"
        if node.target in PASS_METHODS:
            return "pass"
        if node.target in ACT_METHODS:
            return "act"
        if node.target == "mean":
            return "mean"
        if node.target in SOFTMAX_METHODS:
            return "softmax"
        if node.target == "mul":
            return "mul"
        if node.target in SELECT_METHODS:
            return "select"
        return None
    return None


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{type(gm.get_submodule(str(node.target))).__name__} ({node.target})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target} ({node.name})"


def _is_data(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1


def build_graph(model: nn.Module, model_name: str = "", example: torch.Tensor | None = None) -> PropGraph:
    """Trace and classify ``model`` once (cached per model object).

    ``example``: an input to probe which nodes carry tensors (default: a random 1x3x64x64; give the real
    input for models with a fixed input size, such as ViTs)."""
    cached = _CACHE.get(model)
    if cached is not None:
        return cached
    with _TRACE_LOCK:
        cached = _CACHE.get(model)  # another thread may have built it while we waited
        if cached is None:
            cached = _build_graph(model, model_name, example)
            _CACHE[model] = cached
    return cached


def _build_graph(model: nn.Module, model_name: str, example: torch.Tensor | None) -> PropGraph:
    """Trace, probe and classify (under the trace lock).  Only symbolic-tracing failures become
    :class:`UnsupportedOperation` (naming the operation); any other exception is a bug and propagates."""
    try:
        gm = _trace(model)
    except Exception as exc:
        if not _is_tracing_failure(exc):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UnsupportedOperation(f"{model_name or type(model).__name__} cannot be traced for relevance "
                                   f"propagation: {_failing_operation(exc)} ({type(exc).__name__}: {first})") \
            from exc
    # Which nodes carry activations: run a tiny probe forward (shapes only matter for classification).
    probe = _probe_values(gm, model, example)
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    data: set[fx.Node] = {placeholder}
    kinds: dict[fx.Node, str] = {}
    nodes: list[fx.Node] = []
    data_inputs: dict[fx.Node, list[fx.Node]] = {}
    output = None
    for node in gm.graph.nodes:
        if node.op == "output":
            output = node.args[0]
            continue
        if node is not placeholder:
            ins = [a for a in node.all_input_nodes if a in data]
            if not ins or not _is_data(probe.get(node)):
                continue
            data.add(node)
            data_inputs[node] = ins
        else:
            data_inputs[node] = []
        kind = _classify(gm, node)
        if kind is None and len(data_inputs[node]) == 1 and probe.get(node) is probe.get(data_inputs[node][0]):
            # An op that hands back its input object untouched (timm's ``maybe_add_mask`` without a mask).
            kind = "pass"
        if kind is None:
            raise UnsupportedOperation(
                f"Relevance propagation has no rule for {_describe(gm, node)} in {model_name or type(model).__name__}."
            )
        if kind not in MULTI_INPUT_KINDS and len(data_inputs[node]) > 1:
            raise UnsupportedOperation(f"{_describe(gm, node)} in {model_name} combines several activations; "
                                       "no propagation rule covers that.")
        kinds[node] = kind
        nodes.append(node)
    if not isinstance(output, fx.Node) or output not in data:
        raise UnsupportedOperation(f"{model_name}: the model output is not a single tensor.")
    graph = PropGraph(module=gm, model_name=model_name or type(model).__name__, nodes=nodes, kind=kinds,
                      data_inputs=data_inputs, output=output)
    for node in nodes:
        if kinds[node] == "select":
            src = data_inputs[node][0]
            bd = _moved_batch_dim(node, graph.batch_dim.get(src, 0), probe[src].dim())
            if bd:
                graph.batch_dim[node] = bd
    _analyse(graph)
    return graph


def _moved_batch_dim(node: fx.Node, bd: int, ndim: int) -> int:
    """Where a permute / transpose / select puts the batch dimension ``bd`` of its ``ndim``-dim input."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    args = node.args[1:]
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return [int(d) % ndim for d in dims].index(bd)
    if name == "transpose":
        d0, d1 = (int(d) % ndim for d in args[:2])
        return d1 if bd == d0 else d0 if bd == d1 else bd
    if name == "select":
        dim = int(args[0]) % ndim
        return bd - 1 if dim < bd else bd
    return bd  # indexing (x[:, 0]) keeps the leading batch dimension


def _trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace of ``model`` in the form the rules need.

    - The trace runs on a twin of ``model`` (see the module docstring); the graph module keeps the twin's
      module objects, which share the model's parameters and buffers.
    - Attention modules with a ``fused_attn`` switch (timm) are traced with it off, so q k^T, the softmax and
      attention x values are explicit nodes (absLRP's attention rules, abslrp-gae Sec. 3.1).  The switch is
      turned off on the twin only: the shared model keeps its fast kernel and never changes.
    - Extra forward arguments with defaults (timm ViT's ``attn_mask=None``, ``is_causal=False``) are
      specialised to those defaults, which removes the mask branches from the graph.
    - ``a, b, c = x.unbind(d)`` is rewritten as three ``torch.select(x, d, i)`` nodes, so every data node
      holds one tensor (the engine keeps one relevance tensor per node).
    """
    import inspect

    from ..guard import twin

    root = twin(model)
    for m in root.modules():
        if isinstance(getattr(m, "fused_attn", None), bool):
            m.fused_attn = False
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    tracer = _ThreadTracer()
    graph = tracer.trace(root, concrete_args=concrete or None)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    _split_unbind(gm)
    return gm


def _split_unbind(gm: fx.GraphModule) -> None:
    """Replace ``getitem(unbind(x, d), i)`` with ``select(x, d, i)`` (see :func:`_trace`)."""
    changed = False
    for node in list(gm.graph.nodes):
        is_unbind = (node.op == "call_method" and node.target == "unbind") or \
            (node.op == "call_function" and node.target is torch.unbind)
        if not is_unbind or not all(u.op == "call_function" and u.target is operator.getitem
                                    and isinstance(u.args[1], int) for u in node.users):
            continue
        src = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        for user in list(node.users):
            with gm.graph.inserting_before(user):
                sel = gm.graph.call_function(torch.select, (src, dim, user.args[1]))
            user.replace_all_uses_with(sel)
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.recompile()


@torch.no_grad()
def _probe_values(gm: fx.GraphModule, model: nn.Module, example: torch.Tensor | None) -> dict[fx.Node, Any]:
    """Evaluate every node on a small input, to know which nodes carry tensors."""
    p = next(model.parameters())
    was_training = [(m, m.training) for m in gm.modules()]
    gm.eval()
    try:
        # a private generator: building a graph never moves the global RNG other code may rely on
        x = example[:1] if example is not None else torch.randn(
            1, 3, 64, 64, dtype=p.dtype, generator=torch.Generator().manual_seed(0)).to(p.device)
        values: dict[fx.Node, Any] = {}
        for node in gm.graph.nodes:
            if node.op == "output":
                break
            values[node] = run_node(gm, node, values, x)
    finally:
        for m, t in was_training:
            m.training = t
    return values


def run_node(gm: fx.GraphModule, node: fx.Node, env: dict[fx.Node, Any], x: torch.Tensor,
             inplace: bool = False) -> Any:
    """Evaluate one node from the values of its inputs; in-place activations run out of place so
    the engine keeps every pre-activation tensor intact, unless ``inplace`` says nobody needs it."""
    if node.op == "placeholder":
        return node.args[0] if node.args else x  # extra inputs specialised to their defaults (see _trace)
    if node.op == "get_attr":
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj
    args = fx.node.map_arg(node.args, lambda n: env[n])
    kwargs = dict(fx.node.map_arg(node.kwargs, lambda n: env[n]))
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, nn.ReLU):
            return torch.relu_(args[0]) if inplace else torch.relu(args[0])
        if isinstance(m, nn.ReLU6):
            return F.hardtanh_(args[0], 0.0, 6.0) if inplace else F.relu6(args[0])
        return m(*args, **kwargs)
    if node.op == "call_function":
        if "inplace" in kwargs:
            kwargs["inplace"] = False
        if node.target is operator.iadd:
            return operator.add(*args)
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, str(node.target))(*rest, **kwargs)
    raise UnsupportedOperation(f"unexpected fx node {node.op}")


def _ancestors(graph: PropGraph) -> dict[fx.Node, set[fx.Node]]:
    anc: dict[fx.Node, set[fx.Node]] = {}
    for node in graph.nodes:
        s = {node}
        for i in graph.data_inputs[node]:
            s |= anc[i]
        anc[node] = s
    return anc


def _analyse(graph: PropGraph) -> None:
    """Find residual junctions (skip vs main), BN-after-linear pairs, the first layer and the classifier input."""
    gm = graph.module
    users = {n: [u for u in n.users if u in graph.kind] for n in graph.nodes}
    for n in graph.nodes:
        if n.op == "call_module":
            graph.names[n] = str(n.target)
        else:
            graph.names[n] = n.name
    pos = {n: i for i, n in enumerate(graph.nodes)}
    anc = _ancestors(graph)
    adds = [n for n in graph.nodes if graph.kind[n] == "add" and len(graph.data_inputs[n]) == 2]
    for index, node in enumerate(adds):
        a, b = graph.data_inputs[node]
        common = anc[a] & anc[b]
        block_in = max(common, key=lambda n: pos[n])
        only_a, only_b = anc[a] - anc[block_in], anc[b] - anc[block_in]
        skip, main, skip_nodes, main_nodes = (a, b, only_a, only_b) if len(only_a) <= len(only_b) else \
            (b, a, only_b, only_a)
        identity = all(graph.kind[n] == "pass" for n in skip_nodes)
        prefixes = [str(n.target).split(".") for n in main_nodes if n.op == "call_module"]
        common_prefix: list[str] = []
        if prefixes:
            for parts in zip(*prefixes):
                if len(set(parts)) != 1:
                    break
                common_prefix.append(parts[0])
        name = ".".join(common_prefix) or node.name
        graph.residuals[node] = Residual(node=node, name=name, skip=skip, main=main, block_input=block_in,
                                         identity=identity, index=index)
        graph.names[node] = f"{name} (add)"
    relu_modules = (nn.ReLU, nn.ReLU6)
    # The classifier is the first linear layer after the last residual junction / attention product (for a
    # CNN simply its first linear layer; a ViT's qkv and MLP layers come before its last junction).
    last_mixing = max((pos[n] for n in graph.nodes if n in graph.residuals or graph.kind[n] == "matmul"),
                      default=-1)
    for node in graph.nodes:
        graph.remaining_users[node] = len(users[node])
        if graph.kind[node] in ("conv", "linear", "add", "maxpool", "avgpool", "mean", "reshape",
                                "layernorm", "matmul", "mul", "select", "cat"):
            graph.keep.update(graph.data_inputs[node])
    graph.keep.add(graph.output)
    for node in graph.nodes:
        kind = graph.kind[node]
        ins = graph.data_inputs[node]
        relu = (node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), relu_modules)) or \
            (node.op == "call_function" and node.target in (F.relu, F.relu6, torch.relu)) or \
            (node.op == "call_method" and node.target == "relu")
        if relu and node.op == "call_module" and ins and users[ins[0]] == [node] and \
                graph.kind[ins[0]] in ("bn", "conv", "linear") and ins[0].op == "call_module":
            graph.inplace.add(node)
        keeps_sign = kind in ("pass", "reshape", "maxpool", "avgpool", "mean", "select")
        if relu or kind == "softmax" or (keeps_sign and ins and ins[0] in graph.nonneg):
            graph.nonneg.add(node)
        if kind == "bn":
            src = graph.data_inputs[node][0]
            if graph.kind[src] in ("conv", "linear") and users[src] == [node]:
                graph.merged_bn[src] = node
        if kind in ("conv", "linear") and graph.first_layer is None:
            graph.first_layer = node
        if kind == "linear" and graph.classifier_input is None and pos[node] > last_mixing:
            graph.classifier_input = graph.data_inputs[node][0]
    del gm


def batch_norm_stats(graph: PropGraph, node: fx.Node, env: dict[fx.Node, Any]) -> tuple[Any, Any, Any, Any, float]:
    """(running mean, running var, weight, bias, eps) of a BatchNorm node, module or functional
    (weight / bias None when the BN has no affine part)."""
    if node.op == "call_module":
        m = graph.module.get_submodule(str(node.target))
        return m.running_mean, m.running_var, m.weight, m.bias, m.eps
    names = ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"]
    vals = dict(zip(names, fx.node.map_arg(node.args, lambda n: env.get(n)), strict=False))
    vals.update(fx.node.map_arg(node.kwargs, lambda n: env.get(n)))
    return vals["running_mean"], vals["running_var"], vals.get("weight"), vals.get("bias"), vals.get("eps", 1e-5)


def batch_norm_params(graph: PropGraph, node: fx.Node, env: dict[fx.Node, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm node, module or functional: y = x * scale + shift."""
    mean, var, weight, bias, eps = batch_norm_stats(graph, node, env)
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift
