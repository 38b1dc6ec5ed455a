"""SRD's nearest-PFV index over a registered dataset (issue #13 pt 5), the ERF bounding-box crops of its
neighbours, and the pure click -> PFV mapping of the SRD Explorer's grid (issue #15 pt 6)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from explainers.datasets import open_dataset
from explainers.images import image_hash
from explainers.methods import srd
from explainers.methods.srd import index as index_mod
from tests.project import CLASSES, PER_CLASS, make_project


@pytest.fixture(scope="module")
def fruit(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    make_project(root)
    return root / "data" / "fruit"


@pytest.fixture
def counted(monkeypatch):
    """Counts the forward passes the index runs (one per image it computes)."""
    calls = []
    real = index_mod.forward_pass

    def counting(bundle, x):
        calls.append(1)
        return real(bundle, x)

    monkeypatch.setattr(index_mod, "forward_pass", counting)
    return calls


def test_dataset_index_is_built_cached_and_reports_the_corrupt_file(lite0, fruit, tmp_path, counted):
    ds = open_dataset(fruit)
    n_ok = len(CLASSES) * PER_CLASS
    assert len(ds) == n_ok + 1  # the corrupt file is listed, not yet decoded
    seen = []
    index = srd.build_dataset_index(lite0, "low", ds, cache=tmp_path, batch_size=5,
                                    progress=lambda f, t: seen.append(f))
    assert len(counted) == n_ok
    assert index.layer == "bn2.act" and len(index.image_keys) == n_ok and len(index) == n_ok * 49
    assert [n for n, _ in index.failures] == ["banana/broken.png"] and "broken.png" in index.failures[0][1]
    assert "banana/broken.png" not in index.image_names
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 3  # one step per batch of 5, then done
    # the stored vectors are the layer's PFVs of each file, unit-normalised (independent forward pass)
    s = next(s for s in ds.samples if s.name == "cherry/cherry_2.png")
    from explainers.images import load_image
    p = srd.forward_pass(lite0, lite0.preprocess(load_image(s.path)))
    own = p.vectors("low").float()
    i = index.image_keys.index(image_hash(s.path.read_bytes()))
    rows = index.vectors[index.image == i]
    torch.testing.assert_close(rows, own / own.norm(dim=1, keepdim=True), rtol=0, atol=1e-6)
    best = index.nearest_pfvs(p.vector("low", (2, 5)), k=2)
    assert (best[0].image_name, best[0].position) == ("cherry/cherry_2.png", (2, 5))
    assert best[0].similarity == pytest.approx(1.0, abs=1e-5)
    # one file on disk, keyed by weights fingerprint + layer + file list
    path = srd.dataset_index_path(lite0, "bn2.act", ds, tmp_path)
    assert path.is_file() and lite0.fingerprint in str(path) and "bn2.act" in str(path)
    # a second build (same files) only loads it: no forward pass, same index, same failures
    again = srd.build_dataset_index(lite0, "low", open_dataset(fruit), cache=tmp_path)
    assert len(counted) == n_ok
    assert torch.equal(again.vectors, index.vectors) and torch.equal(again.position, index.position)
    assert again.image_names == index.image_names and again.failures == index.failures
    assert again.grids == index.grids == [(7, 7)] * n_ok


def test_a_changed_file_list_invalidates_the_dataset_index(lite0, fruit, tmp_path, counted):
    ds = open_dataset(fruit)
    key = srd.file_list_key(ds)
    srd.build_dataset_index(lite0, "low", ds, cache=tmp_path)
    first = len(counted)
    touched = fruit / "apple" / "apple_0.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same name and size, new mtime
    try:
        ds2 = open_dataset(fruit)
        assert srd.file_list_key(ds2) != key
        srd.build_dataset_index(lite0, "low", ds2, cache=tmp_path)
        assert len(counted) == 2 * first  # rebuilt, not read from the stale file
        assert len(list(tmp_path.rglob("dataset-*.pt"))) == 2
        fewer = ds2.filter("cherry")  # another file list: another key
        assert srd.file_list_key(fewer) not in {key, srd.file_list_key(ds2)}
    finally:
        os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_dataset_images_reads_only_the_neighbours_files(lite0, fruit, tmp_path):
    ds = open_dataset(fruit)
    index = srd.build_dataset_index(lite0, "low", ds, cache=tmp_path)
    q = torch.randn(index.vectors.shape[1])
    nbs = index.nearest_pfvs(q, k=3)
    images = srd.dataset_images(ds, nbs)
    assert set(images) == {nb.image_key for nb in nbs}
    for key, (name, data) in images.items():
        assert image_hash(data) == key and (fruit / name).read_bytes() == data
    assert len(images) < len(ds)  # only the neighbours' files were read


# --------------------------------------------------------------------------- the ERF's bounding box, enlarged


def test_box_crop_is_the_erf_bounding_box_region_enlarged():
    rng = np.random.default_rng(1)
    image = rng.random((3, 64, 80)).astype(np.float32)
    erf = torch.zeros(64, 80)
    erf[10:20, 30:45] = 1.0 / 150  # uniform ERF on rows 10-19, columns 30-44 (sums to 1)
    # central 90 % of a uniform marginal of 10 rows: from the first row where the cumulative mass reaches 5 %
    # (row 10, 10 %) to the first where it reaches 95 % (row 19, 100 %): the whole support
    assert srd.erf_box(erf, min_side=1) == (10, 19, 30, 44)
    expected = (image.transpose(1, 2, 0)[10:20, 30:45] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(srd.box_crop(image, (10, 19, 30, 44), size=None), expected)
    big = srd.box_crop(image, (10, 19, 30, 44), size=192)  # 192 // 15 = 12: 120 x 180
    assert big.shape == (120, 180, 3)
    np.testing.assert_array_equal(big, np.kron(expected, np.ones((12, 12, 1), dtype=np.uint8)))
    # the page's view: a small ERF gets at least min_side (32) pixels of context, centred on it
    view = srd.erf_view(image, erf, size=192)
    r0, r1, c0, c1 = srd.erf_box(erf)
    assert (r1 - r0 + 1, c1 - c0 + 1) == (32, 32) and r0 <= 10 and r1 >= 19 and c0 <= 30 and c1 >= 44
    assert view.shape == (192, 192, 3)
    # unweighted: the crop keeps the image's brightness (the ERF-weighted one fades outside the ERF)
    assert view.mean() == pytest.approx(srd.box_crop(image, (r0, r1, c0, c1), None).mean(), abs=1e-9)
    with pytest.raises(Exception, match="outside"):
        srd.box_crop(image, (60, 70, 0, 5))


def test_neighbour_views_are_enlarged_bounding_box_crops(lite0):
    from explainers.images import GALLERY
    data = GALLERY["coffee"].png_bytes()
    items = {image_hash(data): ("coffee.png", data)}
    nb = srd.Neighbour(next(iter(items)), "coffee.png", "blocks.1.1.bn2.act", (10, 12), 0.9)
    (view,) = srd.neighbour_views(lite0, [nb], items)
    r0, r1, c0, c1 = srd.erf_box(view.erf)
    side = max(r1 - r0 + 1, c1 - c0 + 1)
    f = max(1, 192 // side)
    assert view.crop.shape == ((r1 - r0 + 1) * f, (c1 - c0 + 1) * f, 3) and max(view.crop.shape[:2]) >= 160


# --------------------------------------------------------------------------- grid clicks -> PFV


@pytest.mark.parametrize("grid,display", [((7, 7), (224, 224)), ((14, 14), (224, 224)), ((112, 112), (224, 224)),
                                          ((7, 7), (300, 451)), ((28, 5), (224, 160)), ((1, 1), (50, 50))])
def test_clicks_at_cell_centres_and_edges_pick_that_cell(grid, display):
    h, w = grid
    H, W = display
    xs, ys = srd.grid_centres(grid, display)
    cells = [(r, c) for r in range(h) for c in range(w)]
    assert [srd.click_to_cell(x, y, grid, display) for x, y in zip(xs, ys)] == cells
    for r, c in cells[:: max(1, len(cells) // 50)]:
        # plotly pixel coordinates: cell (r, c) covers x in [c W/w - 0.5, (c+1) W/w - 0.5)
        left, top = c * W / w - 0.5, r * H / h - 0.5
        right, bottom = (c + 1) * W / w - 0.5, (r + 1) * H / h - 0.5
        assert srd.click_to_cell(left, top, grid, display) == (r, c)  # the top-left edge belongs to the cell
        assert srd.click_to_cell(right - 1e-6, bottom - 1e-6, grid, display) == (r, c)
        if c + 1 < w:
            assert srd.click_to_cell(right, top, grid, display) == (r, c + 1)  # the next cell starts there
    # the image's outer border (and a little beyond) is clamped into the grid
    assert srd.click_to_cell(-0.5, -0.5, grid, display) == (0, 0)
    assert srd.click_to_cell(W - 0.5, H - 0.5, grid, display) == (h - 1, w - 1)
    assert srd.click_to_cell(-3, H + 2, grid, display) == (h - 1, 0)


def test_grid_click_uses_the_shown_layer_and_ignores_points_without_coordinates():
    xs, ys = srd.grid_centres((7, 7), (224, 224))
    k = 1 * 7 + 3  # the marker at row 1, column 3
    pts = [{"curve_number": 0}, {"x": float(xs[k]), "y": float(ys[k]), "customdata": [36, 57]}]
    assert srd.grid_click(pts, "bn2.act", (7, 7), (224, 224)) == ("bn2.act", 1, 3)  # not the stale customdata
    assert srd.grid_click([], "bn2.act", (7, 7), (224, 224)) is None
    assert srd.grid_click([{"x": None, "y": 3}], "bn2.act", (7, 7), (224, 224)) is None
    xs, ys = srd.grid_centres((112, 112), (224, 224))
    k = 36 * 112 + 57
    assert srd.grid_click([{"x": xs[k], "y": ys[k]}], "bn1.act", (112, 112), (224, 224)) == ("bn1.act", 36, 57)
