"""Decompression-bomb limits for every frame of multi-frame files (issue 17): a later frame over the pixel limit,
more frames than allowed, or frames that together are huge are refused with one line, from headers alone."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image

from explainers import InvalidImage, load_image
from explainers.images import MAX_FRAMES, MAX_PIXELS, MAX_TOTAL_PIXELS

EMPTY_LZW = b"\x02\x01\x2c\x00"  # minimum code size 2, one sub-block holding <clear><end>, terminator


def _gif(size=(32, 32), frames=1) -> bytes:
    imgs = [Image.new("P", size, i % 2) for i in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=frames > 1, append_images=imgs[1:])
    return buf.getvalue()


def _with_raw_frames(gif: bytes, extents: list[tuple[int, int]]) -> bytes:
    """Append image descriptors (x0 = y0 = 0, w x h, no local palette) with empty pixel data before the trailer:
    what a crafted file declares; nothing here is ever decoded."""
    assert gif.endswith(b"\x3b")
    body = b"".join(b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + EMPTY_LZW for w, h in extents)
    return gif[:-1] + body + b"\x3b"


def _refused(data: bytes, match: str) -> str:
    t0 = time.perf_counter()
    with pytest.raises(InvalidImage, match=match) as exc:
        load_image(data, name="crafted")
    assert time.perf_counter() - t0 < 5
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1
    return msg


def test_a_gif_whose_second_frame_is_huge():
    data = _with_raw_frames(_gif(), [(10000, 10000)])
    assert Image.open(io.BytesIO(data)).size == (32, 32)  # the header says 32x32; Pillow grows it when seeking
    _refused(data, r"crafted: frame 2 is 10000x10000 pixels \(100 MP\); the limit is 50 MP per frame")


def test_gif_frames_that_together_are_huge():
    n = MAX_TOTAL_PIXELS // 1_000_000 + 1  # 501 frames of 1000x1000: each under the limit, together over it
    data = _with_raw_frames(_gif((1000, 1000)), [(1000, 1000)] * (n - 1))
    _refused(data, rf"crafted has {n} frames of {n} MP together; the limit is 500 MP")


def test_too_many_gif_frames():
    data = _with_raw_frames(_gif((16, 16)), [(16, 16)] * MAX_FRAMES)
    _refused(data, rf"more than {MAX_FRAMES} frames")


def test_a_tiff_whose_second_page_is_huge():
    side = int(MAX_PIXELS ** 0.5) + 10  # 7081 x 7081, 50.1 MP, as 1-bit
    buf = io.BytesIO()
    Image.new("L", (32, 32)).save(buf, format="TIFF", save_all=True,
                                   append_images=[Image.new("1", (side, side))], compression="tiff_deflate")
    _refused(buf.getvalue(), rf"crafted: frame 2 is {side}x{side} pixels")


def _apng(frames: int = 2) -> bytes:
    imgs = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, format="PNG", save_all=True, append_images=imgs[1:])
    return buf.getvalue()


def test_an_apng_declaring_too_many_frames():
    data = bytearray(_apng())
    i = data.index(b"acTL")  # length(4) 'acTL' num_frames(4) num_plays(4) crc(4)
    data[i + 4:i + 8] = struct.pack(">I", MAX_FRAMES + 1)
    data[i + 12:i + 16] = struct.pack(">I", zlib.crc32(bytes(data[i:i + 12])))
    _refused(bytes(data), rf"more than {MAX_FRAMES} frames")


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "TIFF", "WEBP"])
def test_ordinary_animations_give_their_first_frame(fmt):
    imgs = [Image.new("RGB", (40, 30), c) for c in [(250, 0, 0), (0, 250, 0), (0, 0, 250)]]
    buf = io.BytesIO()
    imgs[0].save(buf, format=fmt, save_all=True, append_images=imgs[1:])
    img = load_image(buf.getvalue())
    assert img.size == (40, 30)
    r, g, b = img.getpixel((20, 15))
    assert r > 200 and g < 50 and b < 50
