"""Image input: every odd file a user can upload becomes RGB or a clear InvalidImage."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from explainers import InvalidImage, load_image
from explainers.images import GALLERY, gallery, image_hash


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def fake_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny body: decoding it would be the bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"hello, this is a text file renamed to .png", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "not an image|could not be opened"),
])
def test_non_images_are_refused(data, message):
    with pytest.raises(InvalidImage, match=message):
        load_image(data, name="upload.png")


def test_truncated_file_is_refused():
    data = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(InvalidImage, match="damaged or truncated|not an image"):
        load_image(data[: len(data) // 2])


def test_tiny_images_are_refused():
    with pytest.raises(InvalidImage, match="1x1"):
        load_image(png(Image.new("RGB", (1, 1))))


def test_huge_image_refused_from_header_alone():
    data = fake_png_header(20000, 20000)
    assert len(data) < 200  # nothing was decoded to get here
    with pytest.raises(InvalidImage, match=r"too large \(400 MP\); the limit is 50 MP"):
        load_image(data)
    # just over our limit but under PIL's own bomb check: our header check refuses it
    with pytest.raises(InvalidImage, match="8000x8000 pixels .64 MP.; the limit is 50 MP"):
        load_image(fake_png_header(8000, 8000))


def test_modes_become_rgb():
    rng = np.random.default_rng(1)
    gray = Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8), "L")
    out = load_image(png(gray))
    assert out.mode == "RGB" and out.size == (50, 40)
    assert np.array_equal(np.asarray(out)[..., 0], np.asarray(gray))

    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red -> white
    assert np.asarray(load_image(png(rgba)))[0, 0].tolist() == [255, 255, 255]

    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.info["transparency"] = 1
    assert load_image(png(pal, transparency=1)).mode == "RGB"

    deep = Image.fromarray(np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16))
    assert deep.mode.startswith("I")
    arr = np.asarray(load_image(png(deep)))
    assert arr.min() == 0 and arr.max() == 255

    buf = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(buf, format="JPEG")
    cmyk = np.asarray(load_image(buf.getvalue()))
    assert cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 60  # cyan-free, magenta+yellow ink = red


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    first = np.asarray(load_image(buf.getvalue()))[0, 0]
    assert first[0] > 200 and first[2] < 50


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 30), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert load_image(buf.getvalue()).size == (30, 60)


def test_path_input(tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(GALLERY["chelsea"].png_bytes())
    assert load_image(path).size == GALLERY["chelsea"].image().size
    with pytest.raises(InvalidImage, match="No image file"):
        load_image(tmp_path / "nope.png")


def test_gallery_builds_from_installed_packages():
    items = gallery()
    assert {"chelsea", "coffee", "rocket", "astronaut", "motorcycle", "horse", "china", "flower"} <= set(GALLERY)
    hashes = set()
    for item in items:
        img = item.image()
        assert img.mode == "RGB" and min(img.size) >= 100 and item.label
        hashes.add(image_hash(item.png_bytes()))
    assert len(hashes) == len(items)


def test_long_strips_are_refused_by_what_their_resize_would_cost():
    # 100000x16 is 1.6 MP (under the pixel limit) but its short side resized to 256 would be 256x1.6M px.
    with pytest.raises(InvalidImage, match=r"100000x16 pixels \(aspect 6250:1\).*limit is 32:1"):
        load_image(fake_png_header(100000, 16))
    assert load_image(png(Image.new("RGB", (512, 16)))).size == (512, 16)  # exactly 32:1 is fine


def test_formats_outside_the_named_ones_are_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"
    with pytest.raises(InvalidImage, match="not an image we can read .PNG, JPEG"):
        load_image(eps, name="x.eps")
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(buf, format="PPM")  # a real image, but not a format we name
    with pytest.raises(InvalidImage, match="not an image we can read"):
        load_image(buf.getvalue())
