"""Image input: decode uploads and files safely into RGB, and the built-in sample gallery.

Every failure a user can cause becomes :class:`InvalidImage` with a message
that says what was wrong, so the app can show it and carry on.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import InvalidImage

MAX_PIXELS = 50_000_000  # refuse anything larger before decoding it
MAX_FRAMES = 1000  # frames of an animation or pages of a TIFF; only the first is used
MAX_TOTAL_PIXELS = 10 * MAX_PIXELS  # all frames of one file together (a viewer decoding each would hold them)
MIN_SIDE = 16  # a 1x1 image upscaled to 224x224 is a flat colour: nothing to explain
# Preprocessing resizes the SHORT side to the model's input (~256 px), so the resized image has
# 256^2 x aspect pixels: a 100000x16 strip (4.8 KB as PNG, under the pixel limit) would become 256x1.6M
# (~5 GB as float) before the centre crop.  Panoramas are at most ~10:1; 32:1 keeps that resize under
# ~25 MB per image.
MAX_ASPECT = 32
# The formats the app names (and nothing else): Pillow's other plugins stay unreachable from an upload
# (EPS, for one, hands the bytes to Ghostscript where it is installed).  Multi-picture JPEGs (MPO) open as JPEG.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We check the size ourselves from the header; keep PIL's own bomb check above ours.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS * 2


def image_hash(data: bytes) -> str:
    """Stable key for caches and the label store."""
    return hashlib.sha256(data).hexdigest()[:16]


def _as_bytes(source: bytes | str | Path | io.IOBase) -> bytes:
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise InvalidImage(f"No image file at {str(path)!r}.")
        return path.read_bytes()
    return source.read()


def load_image(source: bytes | str | Path | io.IOBase, name: str = "the file") -> Image.Image:
    """Decode bytes, a path or a file object into an RGB PIL image.

    EXIF orientation is applied; grayscale, palette, 16-bit, CMYK and alpha
    images become RGB (alpha is composited on white); animated files give their
    first frame.  Non-images, formats other than :data:`FORMATS`, truncated files,
    images under 16 px on a side, over 50 megapixels or beyond a 32:1 aspect ratio
    raise :class:`InvalidImage` — the size checks read only the header, so a
    20000x20000 upload is refused before it is decoded.
    """
    data = _as_bytes(source)
    if not data:
        raise InvalidImage(f"{name} is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL refuses from the header alone, before decoding; say how big it claimed to be.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({int(found.group(1)) / 1e6:.0f} MP)" if found else ""
        raise InvalidImage(f"{name} is too large{size}; the limit is {MAX_PIXELS / 1e6:.0f} MP. "
                           "Please downscale it first.") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"{name} is not an image we can read ({FORMAT_NAMES}).") from exc
    except Exception as exc:  # noqa: BLE001 - corrupt headers raise many types
        raise InvalidImage(f"{name} could not be opened as an image ({type(exc).__name__}).") from exc
    check_size(*img.size, name)
    try:
        check_frames(img, data, name)  # every frame's declared size and all frames together, without decoding
        img.seek(0)  # animated GIF/WebP/APNG, multi-page TIFF: only the first frame is ever decoded
        check_size(*img.size, name)  # a frame may declare another size than the file header
        from . import memory  # lazily: keeps ``import explainers.images`` light

        width, height = img.size
        scale = memory.jpeg_draft_scale(width, height, img.mode, MIN_SIDE) if img.format == "JPEG" else 1
        if scale > 1:  # libjpeg decodes at 1/2, 1/4 or 1/8 scale: what fits the memory budget
            img.draft("RGB", (-(-width // scale), -(-height // scale)))
        else:
            memory.check_image(width, height, img.mode, name)
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except InvalidImage:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated data, bad chunks, odd modes
        raise InvalidImage(f"{name} is damaged or truncated and could not be decoded ({type(exc).__name__}).") from exc


def check_frames(img: Image.Image, data: bytes, name: str = "the image") -> None:
    """Decompression-bomb limits for every frame of a multi-frame file, read from headers only (nothing decoded).

    Each frame (a TIFF page, a GIF image, which may extend Pillow's canvas beyond the logical screen) must be
    under :data:`MAX_PIXELS`, there are at most :data:`MAX_FRAMES` frames, and all frames together at most
    :data:`MAX_TOTAL_PIXELS` (what a viewer that decodes every frame would allocate).  APNG and WebP frames
    lie within the checked canvas, so their count times the canvas is what is checked."""
    fmt = img.format
    if fmt == "GIF":
        sizes = _gif_frame_extents(data)
        canvas = img.size
        frames = []
        for x1, y1 in sizes:  # Pillow grows its canvas to every frame's extent
            canvas = (max(canvas[0], x1), max(canvas[1], y1))
            frames.append(canvas)
    elif fmt == "TIFF":
        frames = []
        for i in range(MAX_FRAMES + 1):
            try:
                img.seek(i)  # reads the page's IFD only
            except EOFError:
                break
            except Exception:  # noqa: BLE001 - a later page Pillow cannot set up is never decoded either
                if i == 0:
                    raise
                break
            frames.append(img.size)
    else:
        count = int(getattr(img, "n_frames", 1) or 1)  # APNG: acTL; WebP: the animation's frame count
        frames = [img.size] * min(count, MAX_FRAMES + 1)
    if len(frames) > MAX_FRAMES:
        raise InvalidImage(f"{name} has more than {MAX_FRAMES} frames; only still images (or short animations, "
                           "of which the first frame is used) are accepted.")
    total = 0
    for i, (w, h) in enumerate(frames):
        if w * h > MAX_PIXELS:
            raise InvalidImage(f"{name}: frame {i + 1} is {w}x{h} pixels ({w * h / 1e6:.0f} MP); the limit is "
                               f"{MAX_PIXELS / 1e6:.0f} MP per frame.")
        total += w * h
    if total > MAX_TOTAL_PIXELS:
        raise InvalidImage(f"{name} has {len(frames)} frames of {total / 1e6:.0f} MP together; the limit is "
                           f"{MAX_TOTAL_PIXELS / 1e6:.0f} MP for all frames of a file.")


def _gif_frame_extents(data: bytes) -> list[tuple[int, int]]:
    """(x0 + width, y0 + height) of every image descriptor in a GIF, by walking its blocks (no LZW decoding);
    stops at the trailer, at damaged structure, or after :data:`MAX_FRAMES` + 1 frames."""
    out: list[tuple[int, int]] = []
    if len(data) < 13:
        return out
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)

    def skip_sub_blocks(p: int) -> int:
        while p < len(data) and data[p]:
            p += data[p] + 1
        return p + 1

    while pos < len(data) and len(out) <= MAX_FRAMES:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = skip_sub_blocks(pos + 2)
        elif block == 0x2C:  # image descriptor
            if pos + 10 > len(data):
                break
            x0, y0, w, h = (int.from_bytes(data[pos + 1 + 2 * k:pos + 3 + 2 * k], "little") for k in range(4))
            out.append((x0 + w, y0 + h))
            flags = data[pos + 9]
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            pos = skip_sub_blocks(pos + 1)  # LZW minimum code size, then the data sub-blocks
        else:
            break
    return out


def check_size(width: int, height: int, name: str = "the image") -> None:
    """Refuse what preprocessing cannot afford: over MAX_PIXELS, under MIN_SIDE a side, or beyond MAX_ASPECT."""
    if width * height > MAX_PIXELS:
        raise InvalidImage(
            f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); "
            f"the limit is {MAX_PIXELS / 1e6:.0f} MP. Please downscale it first."
        )
    if min(width, height) < MIN_SIDE:
        raise InvalidImage(
            f"{name} is only {width}x{height} pixels; it needs at least {MIN_SIDE} px on each side "
            "to be explained meaningfully."
        )
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise InvalidImage(
            f"{name} is {width}x{height} pixels (aspect {aspect:.0f}:1); resizing its short side to the model's "
            f"input would need about {aspect * 256 * 256 * 12 / 1e9:.1f} GB. The limit is {MAX_ASPECT}:1: "
            "please crop it first."
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB.  16/32-bit integer and float images are rescaled to their range."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            raise InvalidImage("the image holds no finite pixel values.")
        lo, hi = float(finite.min()), float(finite.max())
        scaled = np.zeros_like(arr) if hi == lo else (np.nan_to_num(arr, nan=lo) - lo) / (hi - lo)
        return Image.fromarray((scaled.clip(0, 1) * 255).round().astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- gallery


@dataclass(frozen=True)
class GalleryItem:
    """A sample image from an installed package (nothing third-party is copied into the repo)."""

    key: str
    label: str
    source: str
    _loader: Callable[[], np.ndarray]

    def image(self) -> Image.Image:
        return _gallery_image(self.key)

    def png_bytes(self) -> bytes:
        return _gallery_png(self.key)


GALLERY_MANIFEST = Path(__file__).resolve().parents[1] / "assets" / "gallery.json"


# scikit-image data functions that only read their file ``data/<name>.png|.jpg`` (no post-processing).
_SKIMAGE_PLAIN = {"astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel", "moon",
                  "page", "rocket", "text"}


def _skimage_pixels(name: str) -> np.ndarray | None:
    """``skimage.data.<name>()`` for a plain file read, decoded by Pillow; ``None`` where the library must load it.

    Why: ``skimage.data``'s loaders go through ``skimage.io``, whose import pulls in SciPy (~0.7 s of the app's
    cold start, for the default gallery image).  Functions that post-process (``horse`` thresholds its file),
    read several files (``stereo_motorcycle``) or files in other modes than RGB / L keep the library's loader;
    tests/test_images.py holds every gallery image to the library's pixels.
    """
    if name not in _SKIMAGE_PLAIN:
        return None
    from importlib.util import find_spec

    spec = find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    path = next((f for f in (folder / f"{name}.png", folder / f"{name}.jpg") if f.is_file()), None)
    if path is None:
        return None
    with Image.open(path) as img:
        return np.asarray(img) if img.mode in ("RGB", "L") else None


def _loader(entry: dict) -> Callable[[], np.ndarray]:
    """A loader for one manifest entry: scikit-image's ``data.<name>()`` or scikit-learn's sample image."""
    def load() -> np.ndarray:
        fast = _skimage_pixels(entry["name"]) if entry["package"] == "scikit-image" and "item" not in entry else None
        if fast is not None:
            return fast
        if entry["package"] == "scikit-image":
            import skimage.data

            arr = getattr(skimage.data, entry["name"])()
        elif entry["package"] == "scikit-learn":
            from sklearn.datasets import load_sample_image

            arr = load_sample_image(entry["name"])
        else:
            raise ValueError(f"gallery manifest: unknown package {entry['package']!r}")
        return arr[entry["item"]] if "item" in entry else arr

    return load


def _read_manifest(path: Path = GALLERY_MANIFEST) -> dict[str, GalleryItem]:
    entries = json.loads(path.read_text())["images"]
    return {e["key"]: GalleryItem(e["key"], e["label"], e["package"], _loader(e)) for e in entries}


GALLERY: dict[str, GalleryItem] = _read_manifest()


@lru_cache(maxsize=16)
def _gallery_image(key: str) -> Image.Image:
    arr = GALLERY[key]._loader()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))


@lru_cache(maxsize=16)
def _gallery_png(key: str) -> bytes:
    return encode_png(_gallery_image(key))


def gallery() -> list[GalleryItem]:
    """The sample images, in display order."""
    return list(GALLERY.values())
