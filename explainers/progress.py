"""Progress reporting and cancellation without coupling the library to a UI.

Long-running code calls :func:`report`; whoever drives it (a Streamlit page, the
CLI's tqdm bar, a test) installs a callback with :func:`progress_callback`.
A context variable keeps concurrent browser sessions apart.

Cancellation rides on the same calls: a driver that wants a Stop button runs the
work inside :func:`cancellable` and calls ``token.cancel()`` from any thread; the
next :func:`report` (or :func:`check`) in the work raises :class:`Cancelled`, so
the work ends at a point where it is safe to, and nothing partial is returned or
cached (the cache stores only what a computation returns).  In the Streamlit app a
button click does this by itself: its rerun interrupts the script at the next
progress update.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

ProgressFn = Callable[[float, str], None]
_callback: ContextVar[ProgressFn | None] = ContextVar("explainers_progress", default=None)


class Cancelled(Exception):
    """The work was stopped on request (not a failure): no result exists."""


class CancelToken:
    """A thread-safe stop flag: ``cancel()`` from anywhere, checked by :func:`report` in the working thread."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


_token: ContextVar[CancelToken | None] = ContextVar("explainers_cancel", default=None)


def check() -> None:
    """Raise :class:`Cancelled` if the current work was asked to stop (for loops that report no progress)."""
    token = _token.get()
    if token is not None and token.cancelled:
        raise Cancelled("Stopped on request.")


def report(fraction: float, text: str = "") -> None:
    """Tell the current listener (if any) that ``fraction`` in [0, 1] of the work is done; stop if asked to."""
    check()
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


@contextmanager
def cancellable(token: CancelToken | None = None) -> Iterator[CancelToken]:
    """Run the block with a stop flag (a new one unless given); :func:`report` inside raises once it is set."""
    token = token or CancelToken()
    reset = _token.set(token)
    try:
        yield token
    finally:
        _token.reset(reset)


class ForwardProgress:
    """Counts a model's forward passes inside a library's loop and reports the fraction done (``total`` expected).

    The libraries (pytorch-grad-cam's Score-CAM and Ablation-CAM, captum's Integrated Gradients) loop internally,
    so a forward hook is the one place we can observe their progress without copying their loops; each report is
    also where a Stop takes effect.  The hook is removed when the block ends.
    """

    def __init__(self, model, total: int, text: str) -> None:
        self.model, self.total, self.text, self.done = model, max(int(total), 1), text, 0

    def __enter__(self) -> ForwardProgress:
        def hook(_module, _inputs, _output) -> None:
            self.done += 1
            report(self.done / self.total, f"{self.text} {min(self.done, self.total)}/{self.total}")

        self.handle = self.model.register_forward_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()
