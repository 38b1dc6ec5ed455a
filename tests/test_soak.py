"""Many users at once, short (issue 17): 4 AppTest sessions in threads through Compare, 3 rounds (scripts/soak.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_four_sessions_three_rounds_equal_solo_no_error_bounded_rss():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    report = soak.soak(sessions=4, rounds=3, cache_mb=64, log=print)
    assert not report["errors"], report["errors"]
    assert report["maps"] >= 8
    assert report["max_abs_diff_vs_solo"] <= 1e-6  # deterministic CPU kernels: in fact 0.0
    assert report["rss_growth_mb"] <= report["rss_bound_mb"], report
