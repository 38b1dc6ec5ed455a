"""Write explainers/colormaps.npz: every colormap the app offers as a 256x3 uint8 lookup table.

Rendering indexes these tables instead of importing matplotlib (about 0.3 s of an app's cold start, and a
colormap call per map); matplotlib is needed only here and in the test that checks the tables against it.
Run after changing the offered colormaps: ``python scripts/make_colormap_luts.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib import colormaps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import explainers.render as render  # noqa: E402

OUT = Path(render.__file__).with_name("colormaps.npz")


def lut(name: str) -> np.ndarray:
    cmap = colormaps[name]
    if cmap.N != 256:
        cmap = cmap.resampled(256)
    # integer indices pick the table's own entries, exactly what matplotlib shows for floats in [i/256, (i+1)/256)
    return (cmap(np.arange(256))[:, :3] * 255).round().astype(np.uint8)


def main() -> None:
    names = dict.fromkeys((*render.DIVERGING, *render.SEQUENTIAL))
    np.savez_compressed(OUT, **{name: lut(name) for name in names})
    print(f"wrote {len(names)} colormaps to {OUT}")


if __name__ == "__main__":
    main()
