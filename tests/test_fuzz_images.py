"""Hostile image bytes, fuzzed (hypothesis): every call returns an RGB image or raises InvalidImage, quickly.

The seeds are real files of every format the app names; hypothesis truncates them, flips bytes, splices random
bytes in, or makes up bytes outright.  Anything else (another exception type, a hang, a crash) is a bug.
"""

from __future__ import annotations

import io
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from explainers import InvalidImage, load_image
from explainers.images import MAX_ASPECT, MAX_PIXELS, MIN_SIDE


def _seed_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    out = []
    for fmt, kw in [("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {}), ("TIFF", {}), ("WEBP", {}), ("BMP", {})]:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out.append(buf.getvalue())
    frames = [Image.new("P", (32, 32), i) for i in range(3)]  # an animated GIF
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out.append(buf.getvalue())
    return out


SEEDS = _seed_files()
BUDGET_S = 2.0  # a 40x48 file, however mangled, decodes in milliseconds; 2 s means something spun


@st.composite
def mangled(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    how = draw(st.sampled_from(["truncate", "flip", "splice", "header"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 16))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "splice":
        i = draw(st.integers(0, len(data)))
        return bytes(data[:i]) + draw(st.binary(max_size=256)) + bytes(data[i:])
    return bytes(data[:draw(st.integers(8, 64))]) + draw(st.binary(max_size=512))  # a real header, junk body


def _check(data: bytes) -> None:
    t0 = time.perf_counter()
    try:
        img = load_image(data, name="fuzz.bin")
    except InvalidImage as exc:
        assert str(exc) and "\n" not in str(exc)  # one line for the user
    else:
        assert img.mode == "RGB"
        w, h = img.size
        assert min(w, h) >= MIN_SIDE and w * h <= MAX_PIXELS and max(w, h) / min(w, h) <= MAX_ASPECT
    assert time.perf_counter() - t0 < BUDGET_S


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mangled())
def test_mangled_real_files(data):
    _check(data)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    _check(data)
