"""Keep ``import timm`` / ``import torchvision`` from importing what no page needs at start (issue 15: the cold start).

**TorchDynamo** (1-2 s of a 6 s cold start).  Nothing in this project compiles a model (the methods hook modules and
run their own backward passes, eagerly), yet two module-level lines made every process that builds a model import
``torch._dynamo`` and what it pulls in (torch.distributed.tensor, fsdp, the symbolic-shapes machinery; ~860 modules):

* torchvision 0.29's ``torchvision/ops/roi_align.py``: ``from torch._dynamo.utils import is_compile_supported``,
  run by ``import torchvision`` (timm imports torchvision).  The same file has a ``lazy_compile`` helper written so
  that eager-mode users do not import TorchDynamo ("importing dynamo has undesirable side effects for eager mode
  only users", pytorch/vision#8436); the top-level import undoes that.
* timm 1.0.31's ``timm/layers/typing.py``: ``disable_compiler = torch.compiler.disable``, which naflexvit applies as
  a decorator while ``timm.models`` is imported; ``torch.compiler.disable`` imports TorchDynamo on every call.

``python -X importtime -c 'import timm'`` on this 2-core CPU: 3.3-3.5 s with them, ~1.3 s without.

**huggingface_hub's API** (0.17 s of ~0.35 s for ``import timm``, session 10).  ``timm/models/_hub.py`` runs
``from huggingface_hub import HfApi, hf_hub_download, model_info`` (and two error classes from
``huggingface_hub.utils``) at import; the package itself is lazy, but those names import its HTTP client stack
(httpx, the inference-endpoint types, auth).  Only downloads from the Hub and ``push_to_hf_hub`` use them.

:func:`install` adds one finder to ``sys.meta_path`` that wraps the loading of exactly these three modules, once each:

* while ``roi_align.py`` runs, the name ``torch._dynamo.utils`` resolves to a stand-in whose
  ``is_compile_supported`` imports the real one on its first call (only ``roi_align()`` calls it); the stand-in is
  removed as soon as that module has run, and ``roi_align.py``'s other imports are done before it exists;
* after ``typing.py`` has run, its ``disable_compiler`` becomes :func:`lazy_disable`, which applies the real
  ``torch.compiler.disable`` to a function on that function's first call.  Eagerly the two are the same call
  (TorchDynamo's disable only matters while a frame is being compiled);
* while ``_hub.py`` runs (its other imports done first), the five names it takes from ``huggingface_hub`` and
  ``huggingface_hub.utils`` resolve, for the importing thread only, to stand-ins: both packages are lazy (a name
  is imported when first asked for, through the package's ``__getattr__``), and that ``__getattr__`` is wrapped
  for the duration, so another thread asking meanwhile gets the real name.  The stand-ins ``HfApi``,
  ``hf_hub_download`` and ``model_info`` import the real API on their first call and then put the real five names
  into ``timm.models._hub`` (its ``partial(hf_hub_download, ...)`` included) before that call goes on: every
  ``except EntryNotFoundError`` in that file follows one of these calls, so it meets the real class.  Should a
  later timm import a name without a stand-in (its ``_has_hf_hub`` comes out False), the file is run again.

**torch's Python meta kernels** (0.22 s of ~1.25 s for ``import torch``, session 11; opt-in, the app's warm-up
only).  The last lines of ``torch/__init__.py`` import ``torch._meta_registrations``, which imports ``torch._decomp``
and ``torch._refs`` (11 modules) to register shape functions for tensors on the ``meta`` device, and ``torch._prims``,
which stays: its ``rng_prims`` registers ``torch.Generator`` as an opaque class, without which ``torch.Generator()``
raises, so the stand-in imports it at the same point of torch's import.
Eager computation on a CPU or a GPU never dispatches to them; tracing with fake tensors and ``torch.compile`` import
``torch._decomp`` themselves, which imports them.  :func:`defer_meta_registrations` (called by ``views/warmup.py``
before it imports torch) lets torch's import skip that one import: while ``torch/__init__.py`` runs,
``torch._meta_registrations`` is an empty stand-in, removed from ``sys.modules`` and from torch's namespace as soon as
torch's import is done, so that the next import of it (``torch._decomp``'s, or :func:`import_meta_registrations`,
which the warm-up calls a few seconds after the first map is ready) is the real one; a first import of one of the
modules they import (:data:`META_ENTRIES`) imports them first.  Until then an operator on a ``meta`` or fake
tensor whose shape function is written in Python (``torch.histc``, for one) fails with "no Meta kernel": fake
tensors and ``make_fx`` are imported by torch itself, so only TorchDynamo's import (``torch.compile``) brings the
kernels in by itself; no method of this project uses either.

Nothing changes when TorchDynamo, torchvision, timm or huggingface_hub's API is already imported, or when a release
no longer has these lines; ``RELEVANCE_EXPLORER_EAGER_IMPORTS=1`` turns all of it off.  ``tests/test_defer_imports.py``
checks that timm, torchvision and a model's forward and backward leave ``torch._dynamo`` and huggingface_hub's API
unimported, that ``roi_align``, a decorated timm function and a Hub download (offline: the same error as without the
stand-ins) still work, and that ``torch._dynamo`` imported afterwards is the real one and still compiles.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Callable

ROI_ALIGN = "torchvision.ops.roi_align"
TIMM_TYPING = "timm.layers.typing"
DYNAMO = "torch._dynamo"
DYNAMO_UTILS = "torch._dynamo.utils"
TIMM_HUB = "timm.models._hub"
TORCH, TORCH_META = "torch", "torch._meta_registrations"
# what torch._meta_registrations imports that torch's import then does not (torch 2.14), at the top of each import
# chain: while the kernels are deferred, a first import of one of these imports them first, in torch's own order
# (importing them in another order can meet circular imports: torch.utils._content_store <-> torch._prims did, before
# torch._prims was kept in torch's import)
META_ENTRIES = frozenset({"torch._decomp", "torch._refs", "torch.testing._internal.common_dtype"})
TORCH_PRIMS = "torch._prims"  # imported in any case (see _run_torch_meta)
HUB, HUB_UTILS = "huggingface_hub", "huggingface_hub.utils"
HUB_API = "huggingface_hub.hf_api"  # in sys.modules once the package's API has been imported
_HUB_LINES = ("from huggingface_hub import HfApi, hf_hub_download, model_info",
              "from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError")
# _hub.py's other imports, imported before the stand-ins exist
_TIMM_HUB_IMPORTS = ("torch.hub", "safetensors.torch", "timm.models._helpers", "timm.models._input",
                     "timm.models._pretrained")
# roi_align.py's other imports, imported before the stand-in exists so that none of them can meet it
_ROI_ALIGN_IMPORTS = ("torch.fx", "torch.jit.annotations", "torch.nn.modules.utils", "torchvision.extension",
                      "torchvision.utils", "torchvision.ops._utils")


def is_compile_supported(device_type):  # noqa: ANN001, ANN201 - torch._dynamo.utils' own signature
    from torch._dynamo.utils import is_compile_supported as real

    return real(device_type)


def lazy_disable(fn: Callable | None = None, recursive: bool = True, *, reason: str | None = None):  # noqa: ANN201
    """``torch.compiler.disable`` applied on the decorated function's first call instead of at decoration."""
    if fn is None:
        return functools.partial(lazy_disable, recursive=recursive, reason=reason)
    disabled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal disabled
        if disabled is None:
            import torch

            disabled = torch.compiler.disable(fn, recursive, reason=reason)
        return disabled(*args, **kwargs)

    return call


def _run_roi_align(loader: importlib.abc.Loader, module: types.ModuleType) -> None:
    if DYNAMO in sys.modules or DYNAMO_UTILS in sys.modules:
        loader.exec_module(module)
        return
    for name in _ROI_ALIGN_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    stand_in = types.ModuleType(DYNAMO_UTILS, "stand-in while torchvision.ops.roi_align is imported (explainers)")
    stand_in.is_compile_supported = is_compile_supported
    sys.modules[DYNAMO_UTILS] = stand_in
    try:
        loader.exec_module(module)
    finally:
        if sys.modules.get(DYNAMO_UTILS) is stand_in:
            del sys.modules[DYNAMO_UTILS]


def _run_timm_typing(loader: importlib.abc.Loader, module: types.ModuleType) -> None:
    loader.exec_module(module)
    import torch

    if DYNAMO not in sys.modules and getattr(module, "disable_compiler", None) is torch.compiler.disable:
        module.disable_compiler = lazy_disable


def _hub_stand_ins(module: types.ModuleType) -> dict[str, object]:
    """Stand-ins for the five names timm's ``module`` (_hub.py) imports from huggingface_hub."""
    names: dict[str, object] = {}

    def real() -> types.ModuleType:
        hub = importlib.import_module(HUB)
        utils = importlib.import_module(HUB_UTILS)
        for name, value in names.items():  # only where timm still holds the stand-in
            if name == "hf_hub_download":
                current = getattr(module, name, None)
                if isinstance(current, functools.partial) and current.func is value:
                    setattr(module, name, functools.partial(hub.hf_hub_download, *current.args, **current.keywords))
            elif getattr(module, name, None) is value:
                setattr(module, name, getattr(utils if name.endswith("Error") else hub, name))
        return hub

    def hf_hub_download(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return real().hf_hub_download(*args, **kwargs)

    def model_info(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return real().model_info(*args, **kwargs)

    def HfApi(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202, N802 - the class it stands in for
        return real().HfApi(*args, **kwargs)

    class EntryNotFoundError(Exception):
        """Stand-in: replaced by huggingface_hub's class before any call that can raise it."""

    class RepositoryNotFoundError(Exception):
        """Stand-in: replaced by huggingface_hub's class before any call that can raise it."""

    names.update(HfApi=HfApi, hf_hub_download=hf_hub_download, model_info=model_info,
                 EntryNotFoundError=EntryNotFoundError, RepositoryNotFoundError=RepositoryNotFoundError)
    return names


def _lazy_getattr(package: types.ModuleType, stand_ins: dict[str, object]) -> Callable | None:
    """A module ``__getattr__`` for ``package`` (huggingface_hub or its ``utils``, both lazy: a name is imported
    when first asked for) that answers ``stand_ins`` to this thread only; every other thread meets the package's
    own.  None when the package is not lazy in that way, or has one of those names already."""
    own = package.__dict__.get("__getattr__")
    if not callable(own) or any(name in package.__dict__ for name in stand_ins):
        return None
    thread = threading.get_ident()

    def lookup(name: str):  # noqa: ANN202
        if name in stand_ins and threading.get_ident() == thread:
            return stand_ins[name]
        return own(name)

    lookup.own = own  # type: ignore[attr-defined]
    return lookup


def _run_timm_hub(loader: importlib.abc.Loader, module: types.ModuleType) -> None:
    try:
        source = loader.get_source(TIMM_HUB) or ""  # type: ignore[attr-defined]
    except (AttributeError, ImportError, OSError):
        source = ""
    if HUB_API in sys.modules or not all(line in source for line in _HUB_LINES) \
            or importlib.util.find_spec(HUB) is None:
        loader.exec_module(module)
        return
    for name in _TIMM_HUB_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    try:  # both lazy: importing them costs ~16 ms; their API names import the HTTP stack
        packages = [importlib.import_module(HUB), importlib.import_module(HUB_UTILS)]
    except ImportError:
        loader.exec_module(module)
        return
    stand_ins = _hub_stand_ins(module)
    lookups = [_lazy_getattr(pkg, {n: v for n, v in stand_ins.items() if n.endswith("Error") == (i == 1)})
               for i, pkg in enumerate(packages)]
    if None in lookups:
        loader.exec_module(module)
        return
    for pkg, lookup in zip(packages, lookups):
        pkg.__getattr__ = lookup
    try:
        loader.exec_module(module)
    finally:
        for pkg, lookup in zip(packages, lookups):
            if pkg.__dict__.get("__getattr__") is lookup:
                pkg.__getattr__ = lookup.own
    if getattr(module, "_has_hf_hub", None) is not True:  # a name this timm imports had no stand-in
        loader.exec_module(module)


_META_STAND_IN = "stand-in while torch is imported (explainers.defer_imports.defer_meta_registrations)"
_torch_running = threading.local()  # True in the thread running torch/__init__.py under _run_torch


def _run_torch(loader: importlib.abc.Loader, module: types.ModuleType) -> None:
    _torch_running.on = True
    try:
        loader.exec_module(module)
    finally:
        _torch_running.on = False
        stand_in = sys.modules.get(TORCH_META)
        if stand_in is not None and stand_in.__doc__ == _META_STAND_IN:  # forget it: the next import is the real one
            del sys.modules[TORCH_META]
            if module.__dict__.get("_meta_registrations") is stand_in:
                del module.__dict__["_meta_registrations"]
            _FINDER.pending |= META_ENTRIES - sys.modules.keys()
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)


def _run_torch_meta(loader: importlib.abc.Loader, module: types.ModuleType) -> None:
    if getattr(_torch_running, "on", False):
        module.__doc__ = _META_STAND_IN
        # what eager code needs of the kernels' imports, at the point of torch's import where they ran: prims'
        # rng_prims registers torch.Generator as an opaque class, and torch.Generator() refuses to run before
        importlib.import_module(TORCH_PRIMS)
    else:  # imported by something other than torch's own import: the real thing
        loader.exec_module(module)


_RUNNERS = {ROI_ALIGN: _run_roi_align, TIMM_TYPING: _run_timm_typing, TIMM_HUB: _run_timm_hub}
_OPT_IN_RUNNERS = {TORCH: _run_torch, TORCH_META: _run_torch_meta}


class _Loader(importlib.abc.Loader):
    def __init__(self, fullname: str, loader: importlib.abc.Loader) -> None:
        self.fullname, self.loader = fullname, loader

    def __getattr__(self, name: str):  # noqa: ANN204 - get_source, get_code, get_filename...: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec):  # noqa: ANN001, ANN201
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        (_RUNNERS.get(self.fullname) or _OPT_IN_RUNNERS[self.fullname])(self.loader, module)


class _AfterMeta(_Loader):
    """For a module of :data:`META_ENTRIES` while torch's meta kernels are deferred: the kernels first (whose import
    imports this module too, in torch's order), then this module as that import left it, executed once."""

    def create_module(self, spec):  # noqa: ANN001, ANN201
        import_meta_registrations()
        self.module = sys.modules.get(self.fullname)
        if self.module is not None:
            self.spec = self.module.__spec__
            return self.module
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        if getattr(self, "module", None) is module:  # executed by the kernels' import: only its own spec back
            module.__spec__ = self.spec
            return
        self.loader.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.pending = set(_RUNNERS)

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)  # each module once
        if not self.pending:
            uninstall()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = (_AfterMeta if fullname in META_ENTRIES else _Loader)(fullname, spec.loader)
        return spec


_FINDER = _Finder()


def install() -> bool:
    """Defer these imports in this process; False (and no change) when there is nothing left to defer (the
    modules are imported already, or TorchDynamo and huggingface_hub's API are) or the finder is installed."""
    if _FINDER in sys.meta_path:
        return False
    done = {ROI_ALIGN, TIMM_TYPING} if DYNAMO in sys.modules else set()
    if HUB_API in sys.modules:
        done.add(TIMM_HUB)
    _FINDER.pending = {name for name in _RUNNERS if name not in sys.modules and name not in done}
    if not _FINDER.pending:
        return False
    sys.meta_path.insert(0, _FINDER)
    return True


def defer_meta_registrations() -> bool:
    """Let the coming ``import torch`` skip torch's Python meta kernels until :func:`import_meta_registrations`
    (or anything that imports ``torch._decomp``) imports them; False (and no change) when torch is imported already."""
    if TORCH in sys.modules or TORCH_META in sys.modules:
        return False
    _FINDER.pending |= set(_OPT_IN_RUNNERS)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    return True


def import_meta_registrations() -> bool:
    """Import torch's Python meta kernels if torch's import skipped them (:func:`defer_meta_registrations`);
    True when this call imported them."""
    if TORCH not in sys.modules or TORCH_META in sys.modules:
        return False
    _FINDER.pending -= META_ENTRIES  # from here on every one of them is the real module, imported by this import
    if not _FINDER.pending:
        uninstall()
    importlib.import_module(TORCH_META)
    return True


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
