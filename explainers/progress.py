"""Progress reporting without coupling the library to a UI.

Long-running code calls :func:`report`; whoever drives it (a Streamlit page, the
CLI's tqdm bar, a test) installs a callback with :func:`progress_callback`.
A context variable keeps concurrent browser sessions apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

ProgressFn = Callable[[float, str], None]
_callback: ContextVar[ProgressFn | None] = ContextVar("explainers_progress", default=None)


def report(fraction: float, text: str = "") -> None:
    """Tell the current listener (if any) that ``fraction`` in [0, 1] of the work is done."""
    cb = _callback.get()
    if cb is not None:
        cb(min(max(float(fraction), 0.0), 1.0), text)


@contextmanager
def progress_callback(fn: ProgressFn | None) -> Iterator[None]:
    token = _callback.set(fn)
    try:
        yield
    finally:
        _callback.reset(token)
