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


@pytest.mark.parametrize("method, options, fractions", [
    # captum's IG: 8 steps in chunks of internal_batch_size=2 inputs for 1 image -> 4 forward passes
    ("integrated-gradients", {"steps": 8, "internal_batch_size": 2}, [0.25, 0.5, 0.75, 1.0]),
    # our SmoothGrad loop: 6 noisy copies, 4 per pass -> 2 passes
    ("smoothgrad", {"samples": 6, "batch_size": 4}, [0.5, 1.0]),
])
def test_gradient_methods_report_progress_and_stop_on_request(lite0, gallery_x, method, options, fractions):
    import explainers

    seen: list[float] = []
    with progress_callback(lambda f, t: seen.append(f)):
        explainers.explain(lite0, gallery_x["chelsea"], method, **options)
    assert seen == pytest.approx(fractions)

    token = CancelToken()

    def stop_after_first(f: float, _text: str) -> None:
        token.cancel()  # a Stop clicked while the first pass reports: the next report ends the work

    with progress_callback(stop_after_first), cancellable(token), pytest.raises(Cancelled):
        explainers.explain(lite0, gallery_x["chelsea"], method, **options)
