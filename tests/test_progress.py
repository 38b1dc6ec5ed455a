"""Cancellation through explainers.progress: a stop flag set from another thread ends the work at its next
progress report, and nothing partial reaches the map cache."""

from __future__ import annotations

import threading

import pytest

from explainers.cache import ByteLRU
from explainers.progress import Cancelled, CancelToken, cancellable, check, progress_callback, report


def slow_work(steps: int, started: threading.Event, reached: list[int]) -> str:
    for i in range(steps):
        reached.append(i)
        started.set()
        report(i / steps, f"step {i}")
        threading.Event().wait(0.002)
    return "done"


def test_cancel_from_another_thread_stops_at_the_next_report_and_nothing_is_cached():
    cache, token, started, reached, seen = ByteLRU(2**20), CancelToken(), threading.Event(), [], []
    outcome: list[BaseException | str] = []

    def worker() -> None:
        with progress_callback(lambda f, t: seen.append(f)), cancellable(token):
            try:
                outcome.append(cache.get_or_compute("key", lambda: slow_work(10_000, started, reached)))
            except Cancelled as exc:
                outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(10)
    token.cancel()
    thread.join(10)
    assert isinstance(outcome[0], Cancelled) and len(reached) < 10_000
    assert len(seen) == len(reached) - 1  # the report that noticed the flag reported nothing
    assert "key" not in cache  # a partial computation is never cached
    assert cache.get_or_compute("key", lambda: "fresh") == "fresh"  # and the key is not left locked


def test_without_a_token_report_only_reports():
    seen = []
    with progress_callback(lambda f, t: seen.append((f, t))):
        report(2.0, "clamped")
        check()
    assert seen == [(1.0, "clamped")]


def test_tokens_are_scoped_to_their_block():
    with cancellable() as token:
        token.cancel()
        with pytest.raises(Cancelled):
            report(0.5)
    report(0.5)  # outside the block the flag no longer applies
