"""Keep ``import timm`` / ``import torchvision`` from importing TorchDynamo (issue 15: 1-2 s of a 6 s cold start).

Nothing in this project compiles a model (the methods hook modules and run their own backward passes, eagerly), yet
two module-level lines made every process that builds a model import ``torch._dynamo`` and what it pulls in
(torch.distributed.tensor, fsdp, the symbolic-shapes machinery; ~860 modules):

* torchvision 0.29's ``torchvision/ops/roi_align.py``: ``from torch._dynamo.utils import is_compile_supported``,
  run by ``import torchvision`` (timm imports torchvision).  The same file has a ``lazy_compile`` helper written so
  that eager-mode users do not import TorchDynamo ("importing dynamo has undesirable side effects for eager mode
  only users", pytorch/vision#8436); the top-level import undoes that.
* timm 1.0.31's ``timm/layers/typing.py``: ``disable_compiler = torch.compiler.disable``, which naflexvit applies as
  a decorator while ``timm.models`` is imported; ``torch.compiler.disable`` imports TorchDynamo on every call.

``python -X importtime -c 'import timm'`` on this 2-core CPU: 3.3-3.5 s with them, ~1.3 s without.

:func:`install` adds one finder to ``sys.meta_path`` that wraps the loading of exactly these two modules, once each:

* while ``roi_align.py`` runs, the name ``torch._dynamo.utils`` resolves to a stand-in whose
  ``is_compile_supported`` imports the real one on its first call (only ``roi_align()`` calls it); the stand-in is
  removed as soon as that module has run, and ``roi_align.py``'s other imports are done before it exists;
* after ``typing.py`` has run, its ``disable_compiler`` becomes :func:`lazy_disable`, which applies the real
  ``torch.compiler.disable`` to a function on that function's first call.  Eagerly the two are the same call
  (TorchDynamo's disable only matters while a frame is being compiled).

Nothing changes when TorchDynamo, torchvision or timm is already imported, or when a release no longer has these
lines.  ``tests/test_defer_dynamo.py`` checks that timm, torchvision and a model's forward and backward leave
``torch._dynamo`` unimported, that ``roi_align`` and a decorated timm function still work, and that
``torch._dynamo`` imported afterwards is the real one and still compiles.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable

ROI_ALIGN = "torchvision.ops.roi_align"
TIMM_TYPING = "timm.layers.typing"
DYNAMO = "torch._dynamo"
DYNAMO_UTILS = "torch._dynamo.utils"
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


_RUNNERS = {ROI_ALIGN: _run_roi_align, TIMM_TYPING: _run_timm_typing}


class _Loader(importlib.abc.Loader):
    def __init__(self, fullname: str, loader: importlib.abc.Loader) -> None:
        self.fullname, self.loader = fullname, loader

    def __getattr__(self, name: str):  # noqa: ANN204 - get_source, get_code, get_filename...: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec):  # noqa: ANN001, ANN201
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        _RUNNERS[self.fullname](self.loader, module)


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
            spec.loader = _Loader(fullname, spec.loader)
        return spec


_FINDER = _Finder()


def install() -> bool:
    """Defer TorchDynamo's import in this process; False (and no change) when it is already imported or installed."""
    if DYNAMO in sys.modules or _FINDER in sys.meta_path:
        return False
    _FINDER.pending = {name for name in _RUNNERS if name not in sys.modules}
    if not _FINDER.pending:
        return False
    sys.meta_path.insert(0, _FINDER)
    return True


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
