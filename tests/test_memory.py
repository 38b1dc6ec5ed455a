"""Memory bounds from what things cost (issue 17): hand-computed bytes, the refusals they drive, and RSS measured
in a subprocess against the estimate."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from explainers import InvalidImage, load_image, memory
from explainers.errors import InvalidOption
from explainers.registry import explain, explain_batch

ROOT = Path(__file__).resolve().parents[1]


def test_resized_size_is_torchvisions():
    from torchvision.transforms import functional as F

    for w, h in [(640, 480), (480, 640), (3000, 16), (333, 1000), (257, 256)]:
        got = F.resize(Image.new("RGB", (w, h)), 256).size
        assert memory.resized_size(w, h, 256) == got


def test_preprocess_bytes_by_hand():
    # 640x480 -> 341x256 (int(256 * 640 / 480)); taps: ceil(640/341) * 2 + 1 = 5 and ceil(480/256) * 2 + 1 = 5
    convert = 640 * 480 * 4                      # 1 228 800: the convert("RGB") copy
    temp = 341 * 480 * 4                         # 654 720: the horizontal pass
    out = 341 * 256 * 4                          # 349 184
    coeffs = (341 * 5 + 256 * 5) * 8             # 23 880
    bounds = (341 + 256) * 2 * 4                 # 4 776
    crop = 224 * 224 * (4 + 3 + 12)              # 953 344
    assert memory.preprocess_bytes(640, 480) == convert + temp + out + coeffs + bounds + crop == 3_214_704
    # The 3000000x16 strip: 16 -> 256 makes the long side 48 000 000 (enlarging: 3 taps each way)
    strip = (3_000_000 * 16 * 4 + 48_000_000 * 16 * 4 + 48_000_000 * 256 * 4 + (48_000_000 * 3 + 256 * 3) * 8
             + (48_000_000 + 256) * 8 + 224 * 224 * 19)
    assert memory.preprocess_bytes(3_000_000, 16) == strip
    assert 53e9 < strip < 54e9  # the issue measured "~37 GB" as 3 bytes a pixel; Pillow stores RGB in 4


def test_load_bytes_by_hand():
    assert memory.load_bytes(1000, 1000, "RGB") == 1000 * 1000 * 8            # frame + transposed copy
    assert memory.load_bytes(1000, 1000, "L") == 1000 * 1000 * (2 + 4)        # + the RGB conversion
    assert memory.load_bytes(1000, 1000, "RGBA") == 1000 * 1000 * (8 + 16)    # RGBA, background, composite, RGB
    assert memory.load_bytes(1000, 1000, "I;16") == 1000 * 1000 * (4 + 47)    # float64 arrays of to_rgb


def test_budget_follows_the_cap(monkeypatch):
    monkeypatch.setenv(memory.ENV_CAP, "10")
    assert memory.budget_bytes() == 10 << 20
    monkeypatch.delenv(memory.ENV_CAP)
    assert 0 < memory.budget_bytes() <= memory._cpu_available()


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_an_image_over_the_memory_budget_is_refused_or_downscaled(monkeypatch):
    png, jpeg = _png(3000, 2000), _jpeg(3000, 2000)
    assert load_image(png).size == (3000, 2000)
    # 3000x2000 RGB -> 384x256 (17 taps each way): decode 48 000 000 + convert 24 000 000 + horizontal pass
    # 3 072 000 + result 393 216 + coefficients 87 040 + bounds 5 120 + crop 953 344 = 76 510 720 (73 MiB);
    # a 40 MiB budget refuses the PNG ...
    assert memory.load_bytes(3000, 2000, "RGB") + memory.preprocess_bytes(3000, 2000) == 76_510_720
    monkeypatch.setenv(memory.ENV_CAP, "40")
    with pytest.raises(InvalidImage, match=r"3000x2000 pixels: decoding and resizing it would need about 73 MB "
                                           r"of memory, more than the 40 MB") as e:
        load_image(png, name="big.png")
    assert len(str(e.value).splitlines()) == 1
    # ... and decodes the JPEG at half scale (libjpeg's DCT scaling): 1500x1000 costs ~20 MB
    assert load_image(jpeg).size == (1500, 1000)
    monkeypatch.setenv(memory.ENV_CAP, "1")
    with pytest.raises(InvalidImage, match="memory"):
        load_image(jpeg)


def test_preprocessing_a_strip_is_refused_by_its_resize(lite0, monkeypatch):
    """A 20000x16 image that skipped load_image: the resize alone would need ~360 MB."""
    img = Image.new("RGB", (20000, 16))
    monkeypatch.setenv(memory.ENV_CAP, "100")
    with pytest.raises(InvalidImage, match=r"resizing its short side to 256 px would need about 34\d MB"):
        lite0.preprocess(img)
    monkeypatch.delenv(memory.ENV_CAP)
    assert lite0.preprocess(Image.new("RGB", (640, 480))).shape == (1, 3, 224, 224)


_RSS = """
import io, json, resource, sys
from PIL import Image
def peak(): return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024
from explainers import load_image, load_model, InvalidImage
from explainers.memory import preprocess_bytes
bundle = load_model('efficientnet_lite0', device='cpu')
bundle.preprocess(Image.new('RGB', (64, 64)))
out = {}
for w, h in [(100000, 16), (3000000, 16)]:
    buf = io.BytesIO(); Image.new('L', (w, h)).save(buf, format='PNG'); data = buf.getvalue()
    open('/proc/self/clear_refs', 'w').write('5'); base = peak()
    try:
        load_image(data, name=f'{w}x{h}.png'); out[f'{w}x{h}'] = ['accepted', 0]
    except InvalidImage as exc:
        out[f'{w}x{h}'] = [str(exc), peak() - base]
# the estimate against the real allocation: a 20000x16 strip through the model's preprocessing
img = Image.new('RGB', (20000, 16))
open('/proc/self/clear_refs', 'w').write('5'); base = peak()
bundle.preprocess(img)
out['strip'] = [peak() - base, preprocess_bytes(20000, 16)]
print(json.dumps(out))
"""


def test_strips_are_refused_with_bounded_memory_and_the_estimate_holds():
    """The issue's 100000x16 PNG (2.5 GB to explain) and 3000000x16 strip (MemoryError): refused with one line
    while the process grows by under 50 MB; and the preprocessing estimate bounds what a real resize allocates."""
    env = {"PYTHONPATH": str(ROOT), "RELEVANCE_EXPLORER_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_RSS)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("100000x16", "3000000x16"):
        msg, grown = out[key]
        assert msg != "accepted" and len(msg.splitlines()) == 1, msg
        assert grown < 50e6, (key, grown)
    measured, estimate = out["strip"]
    assert 0.7 * estimate <= measured <= estimate * 1.05, out["strip"]  # the estimate is what Pillow allocates


def test_copies_options_are_bounded_by_memory(monkeypatch):
    from tests.pipeline_models import load

    bundle = load()
    x = torch.randn(1, 3, 32, 32)
    per = memory.per_sample_bytes(bundle, 32, 32)
    # 8+16+16 channels of 32x32 (3 convs, 2 ReLUs), 16x16 x 16 (pool, conv, ReLU), 16 + 16 + 3 (pool, flatten, linear)
    leaves = (8 * 2 + 16 * 2) * 32 * 32 + 16 * 3 * 16 * 16 + 16 + 3
    assert per == int(1.25 * 4 * leaves + 2 * 4 * 3 * 32 * 32)
    monkeypatch.setenv(memory.ENV_CAP, str(100.5 * per / 2**20))  # room for 100 copies (and SmoothGrad's noise)
    explain(bundle, x, "integrated-gradients", internal_batch_size=64, steps=4)
    for method, option in memory.COPIES_OPTION.items():
        extra = {"samples": 1} if method == "smoothgrad" else {}
        with pytest.raises(InvalidOption, match=rf"{option}=200 needs about .* use {option} <= 100\.") as e:
            explain(bundle, x, method, **{option: 200}, **extra)
        assert len(str(e.value).splitlines()) == 1
    with pytest.raises(InvalidOption, match=r"on 101 images at 32x32 .* at most 100 images"):
        explain_batch(bundle, torch.randn(101, 3, 32, 32), "saliency")
    # SmoothGrad's noise images: samples x the input's bytes (12 KB at 32x32), half the budget at most
    monkeypatch.setenv(memory.ENV_CAP, str(100 * 3 * 32 * 32 * 4 / 2**20))
    with pytest.raises(InvalidOption, match=r"samples=500 needs 6 MB for its noise images alone .* samples <= 50\."):
        explain(bundle, x, "smoothgrad", samples=500, batch_size=1)
