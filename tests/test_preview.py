"""``ngconvert preview`` / ``ngconvert.preview``: pixels of the three mid-sections.

Expected pictures are computed from the arrays written and the layout the function reports
(``preview_layout``: panel rectangles and the pixel <-> nm mapping), pixel for pixel.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ngconvert
from conftest import one_line_error, run, smooth_volume
from ngconvert.properties.labels import auto_color
from ngconvert.datasets.preview import ALPHA, preview_layout
from ngconvert.store.local import FileStore
from ngconvert.store.base import StorageOptions

pytest_plugins = ("s3server",)

BOX_SHAPE = (128, 96, 64)
BOX_RES = (1.0, 1.0, 1.5)
BOX = ((48, 128), (0, 64), (32, 64))          # aligned to 16: exact at every scale up to 16x


def box_volume() -> np.ndarray:
    a = np.full(BOX_SHAPE, 10, np.uint8)
    a[tuple(slice(*b) for b in BOX)] = 250
    return a


@pytest.fixture(scope="module")
def box_dataset(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("pv") / "box"
    ngconvert.write_volume(box_volume(), dest, resolution=BOX_RES, layer_type="image", chunk_size=(16, 16, 16),
                           workers=1)
    return dest


def pixel_grid(panel):
    """Physical points (nm, [rows, cols, 3]) at the centres of a panel's pixels."""
    cols = np.arange(panel.x0, panel.x0 + panel.width)
    rows = np.arange(panel.y0, panel.y0 + panel.height)
    pts = np.array([[panel.point(c, r) for c in cols] for r in rows])
    return pts


def voxels_of(panel, res) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-resolution voxel indices (x, y, z) shown at each pixel of a panel."""
    pts = pixel_grid(panel)
    return tuple(np.floor(pts[..., d] / res[d]).astype(int) for d in range(3))


def cut(image, panel):
    x0, y0, x1, y1 = panel.rect
    return image[y0:y1, x0:x1]


# -- where things land ------------------------------------------------------------------


@pytest.mark.parametrize("size", [768, 200])
def test_bright_box_lands_in_the_expected_place_of_each_panel(box_dataset, size):
    img = ngconvert.preview(box_dataset, size=size)
    lay = preview_layout(box_dataset, size=size)
    assert img.dtype == np.uint8 and img.shape == (lay.height, lay.width, 3)
    assert max(img.shape[:2]) == size
    if size == 200:                                   # small: a coarser scale still fills the panels
        assert all(p.scales[0] > 0 for p in lay.panels.values())
    else:
        assert all(p.scales[0] == 0 for p in lay.panels.values())
    for name, p in lay.panels.items():
        x, y, z = voxels_of(p, BOX_RES)
        inside = np.ones(x.shape, bool)
        for d, (lo, hi) in zip((x, y, z), BOX):
            inside &= (d >= lo) & (d < hi)
        assert inside.any() and not inside.all(), name
        got = cut(img, p)
        expected = np.where(inside, 255, 0).astype(np.uint8)       # windowed: 10 -> 0, 250 -> 255
        for c in range(3):
            np.testing.assert_array_equal(got[..., c], expected, err_msg=f"{name} panel, size {size}")
    # in words: XY (x right, y down) bright on the right half, top two thirds
    xy = lay.panels["xy"]
    assert tuple(img[xy.pixel((120, 5, 0))[::-1]]) == (255, 255, 255)
    assert tuple(img[xy.pixel((5, 5, 0))[::-1]]) == (0, 0, 0)
    assert tuple(img[xy.pixel((120, 90, 0))[::-1]]) == (0, 0, 0)
    # panels side by side, same top, in the order XY, XZ, YZ
    ps = [lay.panels[n] for n in ("xy", "xz", "yz")]
    assert ps[0].x0 + ps[0].width < ps[1].x0 and ps[1].x0 + ps[1].width < ps[2].x0
    assert len({p.y0 for p in ps}) == 1


def test_gradient_along_x(tmp):
    x = np.linspace(0.0, 1.0, 80, dtype=np.float32)
    a = np.broadcast_to(x[:, None, None], (80, 40, 30)).copy()
    ngconvert.write_volume(a, tmp / "ramp", resolution=(2, 2, 2), chunk_size=(32, 32, 32), workers=1)
    img = ngconvert.preview(tmp / "ramp").astype(int)
    lay = preview_layout(tmp / "ramp")
    for name in ("xy", "xz"):
        panel = cut(img, lay.panels[name])[..., 0]
        assert (np.diff(panel, axis=1) >= 0).all() and (panel[:, -1] > panel[:, 0] + 200).all(), name
        assert (panel == panel[:1]).all(), name                      # the same down every column
    yz = cut(img, lay.panels["yz"])[..., 0]
    assert (yz == yz[0, 0]).all()                                    # one x: one value


# -- segmentations ------------------------------------------------------------------------


def test_segment_colours_match_segment_colors_json_exactly(tmp):
    lab = np.zeros((64, 64, 48), np.uint32)
    lab[4:40, 4:40, 4:40] = 3
    lab[30:60, 20:60, 20:44] = 5
    lab[10:30, 44:62, 10:30] = 9                   # no colour in the table: the automatic one
    table = {3: {"name": "red", "color": "#ff0000"}, 5: {"name": "green", "color": "#00ff80"}, 9: "plain"}
    ngconvert.write_segmentation(lab, tmp / "seg", labels=table, resolution=(2, 2, 2), chunk_size=(16, 16, 16),
                                 workers=1)
    stored = json.loads((tmp / "seg" / "segment_colors.json").read_text())["colors"]
    assert stored["3"] == "#ff0000" and stored["5"] == "#00ff80"
    assert stored["9"] == "#%02x%02x%02x" % auto_color(9)
    palette = {0: (0, 0, 0), **{int(k): tuple(int(v[i:i + 2], 16) for i in (1, 3, 5)) for k, v in stored.items()}}

    img = ngconvert.preview(tmp / "seg")
    lay = preview_layout(tmp / "seg")
    seen = set()
    for name, p in lay.panels.items():
        x, y, z = voxels_of(p, (2, 2, 2))
        ids = lab[x, y, z]
        seen |= set(np.unique(ids).tolist())
        expected = np.array([palette[i] for i in ids.ravel()], np.uint8).reshape(ids.shape + (3,))
        np.testing.assert_array_equal(cut(img, p), expected, err_msg=name)
    assert seen == {0, 3, 5, 9}

    # --segments: the others are not drawn
    only = ngconvert.preview(tmp / "seg", segments=[5])
    xy = lay.panels["xy"]
    x, y, z = voxels_of(xy, (2, 2, 2))
    ids = lab[x, y, z]
    got = cut(only, xy)
    assert (got[ids == 5] == (0, 255, 128)).all() and (got[ids != 5] == 0).all()


def test_overlay_blends_inside_segments_and_keeps_grey_outside(tmp):
    image = smooth_volume((96, 64, 48), np.uint16, noise=50)
    ngconvert.write_volume(image, tmp / "img", resolution=(1, 1, 1), layer_type="image", chunk_size=(32, 32, 32),
                           workers=1)
    lab = np.zeros((48, 32, 24), np.uint32)        # half the voxels, twice their size: the same space
    lab[5:30, 4:20, 6:20] = 3
    lab[28:44, 18:30, 10:22] = 8
    ngconvert.write_segmentation(lab, tmp / "seg", labels={3: {"name": "a", "color": "#ff0000"}, 8: "b"},
                                 resolution=(2, 2, 2), chunk_size=(16, 16, 16), workers=1)
    colors = json.loads((tmp / "seg" / "segment_colors.json").read_text())["colors"]
    rgb = {int(k): np.array([int(v[i:i + 2], 16) for i in (1, 3, 5)], float) for k, v in colors.items()}

    grey = ngconvert.preview(tmp / "img")
    over = ngconvert.preview([tmp / "img", tmp / "seg"])
    assert over.shape == grey.shape
    np.testing.assert_array_equal(ngconvert.preview([tmp / "seg", tmp / "img"]), over)   # either order
    lay = preview_layout([tmp / "img", tmp / "seg"])
    assert (grey[..., 0] == grey[..., 1]).all()
    checked = 0
    for name, p in lay.panels.items():
        x, y, z = voxels_of(p, (2, 2, 2))
        ids = lab[x, y, z]
        g, o = cut(grey, p).astype(float), cut(over, p).astype(float)
        np.testing.assert_array_equal(o[ids == 0], g[ids == 0], err_msg=name)
        for i in (3, 8):
            m = ids == i
            if m.any():
                blend = np.round(g[m] * (1 - ALPHA) + rgb[i] * ALPHA)
                assert np.abs(o[m] - blend).max() <= 1, (name, i)
                checked += m.sum()
    assert checked > 1000


def test_two_datasets_that_do_not_overlap_are_refused(tmp):
    ngconvert.write_volume(np.ones((16, 16, 16), np.uint8), tmp / "a", layer_type="image", workers=1)
    lab = np.ones((16, 16, 16), np.uint32)
    ngconvert.write_segmentation(lab, tmp / "b", offset=(100, 0, 0), workers=1)
    with pytest.raises(ngconvert.UserError, match="do not overlap"):
        ngconvert.preview([tmp / "a", tmp / "b"])
    assert "do not overlap" in one_line_error(run("preview", tmp / "a", tmp / "b", "-o", tmp / "x.png"))


# -- physical aspect ----------------------------------------------------------------------


def test_anisotropic_voxels_are_stretched_by_their_resolution(tmp):
    a = np.zeros((40, 40, 10), np.uint8)
    a[:20, :, :5] = 200                     # 20 x 20 nm in XZ: a square, though 20 x 5 voxels
    ngconvert.write_volume(a, tmp / "aniso", resolution=(1, 1, 4), layer_type="image", chunk_size=(64, 64, 16),
                           workers=1)
    lay = preview_layout(tmp / "aniso")
    xz = lay.panels["xz"]
    assert abs(xz.width - xz.height) <= 1                 # 40 nm by 40 nm
    px_x, px_z = xz.width / 40, xz.height / 10            # pixels per voxel along x and z
    assert px_z == pytest.approx(4 * px_x, rel=0.03)
    img = ngconvert.preview(tmp / "aniso")
    rows, cols = np.nonzero(cut(img, xz)[..., 0] > 127)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert abs(h - w) <= 1 and abs(w - xz.width / 2) <= 1


# -- what is read -------------------------------------------------------------------------


class CountingStore(FileStore):
    def __init__(self, root):
        super().__init__(root)
        self.keys: list[str] = []

    def get_raw(self, key):
        self.keys.append(key)
        return super().get_raw(key)

    def get_range(self, key, start, stop):
        self.keys.append(key)
        return super().get_range(key, start, stop)


def test_only_the_chunks_the_sections_cross_are_read(tmp):
    shape, chunk = (96, 80, 64), 8
    ngconvert.write_volume(smooth_volume(shape, np.uint8), tmp / "many", layer_type="image",
                           chunk_size=(chunk,) * 3, workers=1)
    info = json.loads((tmp / "many" / "info").read_text())
    key0 = info["scales"][0]["key"]
    all_chunks = math.prod(math.ceil(n / chunk) for n in shape)
    store = CountingStore(tmp / "many")
    lay = preview_layout(store)
    assert all(p.scales == (0,) for p in lay.panels.values())
    store.keys.clear()
    ngconvert.preview(store)
    chunk_keys = [k for k in store.keys if "/" in k]
    assert len(chunk_keys) == len(set(chunk_keys))                    # each chunk once
    assert all(k.startswith(key0 + "/") for k in chunk_keys)          # only the chosen scale
    centre = [n // 2 for n in shape]                                   # the middle voxels: 48, 40, 32
    expected = set()
    for normal in range(3):
        ranges = [range(0, n, chunk) for n in shape]
        ranges[normal] = [centre[normal] // chunk * chunk]
        for x in ranges[0]:
            for y in ranges[1]:
                for z in ranges[2]:
                    expected.add(f"{key0}/{x}-{x + chunk}_{y}-{y + chunk}_{z}-{z + chunk}")
    assert set(chunk_keys) == expected
    assert len(expected) < all_chunks / 3                  # 267 of 960


def test_sharded_dataset_gives_the_same_picture(box_dataset, tmp):
    ngconvert.write_volume(box_volume(), tmp / "sharded", resolution=BOX_RES, layer_type="image",
                           chunk_size=(16, 16, 16), sharded=True, workers=1)
    sharded, plain = ngconvert.preview(tmp / "sharded"), ngconvert.preview(box_dataset)
    for p in preview_layout(box_dataset).panels.values():        # the names differ, the sections not
        np.testing.assert_array_equal(cut(sharded, p), cut(plain, p))


# -- remote datasets ----------------------------------------------------------------------


def test_s3_dataset_through_the_test_server(box_dataset, tmp, moto_server, bucket):
    opts = StorageOptions(endpoint_url=moto_server.url)
    ngconvert.upload(box_dataset, f"s3://{bucket}/box", opts)
    local = ngconvert.preview(box_dataset)
    np.testing.assert_array_equal(ngconvert.preview(f"s3://{bucket}/box", storage=opts), local)
    run("preview", f"s3://{bucket}/box", "-o", tmp / "s3.png", "--endpoint-url", moto_server.url, check=0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp / "s3.png").convert("RGB")), local)


def test_http_dataset_through_the_dataset_server(box_dataset):
    from ngconvert.hosting.serve import DatasetServer

    local = ngconvert.preview(box_dataset)
    with DatasetServer({"/": box_dataset.parent}) as server:
        np.testing.assert_array_equal(ngconvert.preview(f"{server.url}/box"), local)


# -- the command line ---------------------------------------------------------------------


def test_cli_writes_the_png(box_dataset, tmp):
    p = run("preview", box_dataset, "-o", tmp / "box.png", "--size", "400", check=0)
    assert "box.png" in p.stderr
    back = np.asarray(Image.open(tmp / "box.png").convert("RGB"))
    np.testing.assert_array_equal(back, ngconvert.preview(box_dataset, size=400))
    assert back.shape[1] == 400


def test_cli_bad_input_is_one_line(box_dataset, tmp):
    (tmp / "empty").mkdir()
    assert "no 'info'" in one_line_error(run("preview", tmp / "empty", "-o", tmp / "a.png"))
    assert "does not exist" in one_line_error(run("preview", box_dataset, "-o", tmp / "missing" / "a.png"))
    assert ".png" in one_line_error(run("preview", box_dataset, "-o", tmp / "a.jpg"))
    for size in ("0", "-3"):
        assert f"--size {size}" in one_line_error(run("preview", box_dataset, "-o", tmp / "a.png", "--size", size))
    # a truncated gzip chunk that the XY section needs
    damaged = tmp / "damaged"
    shutil.copytree(box_dataset, damaged)
    key0 = json.loads((damaged / "info").read_text())["scales"][0]["key"]
    chunk = damaged / key0 / "0-16_0-16_32-48.gz"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    line = one_line_error(run("preview", damaged, "-o", tmp / "d.png"))
    assert "0-16_0-16_32-48" in line
    assert not (tmp / "d.png").exists() and not (tmp / "a.png").exists()


def test_convert_says_how_to_look_at_the_result(tmp):
    np.save(tmp / "v.npy", smooth_volume((32, 32, 16), np.uint8))
    p = run("convert", tmp / "v.npy", tmp / "out", "--workers", "1", check=0)
    dest = str(tmp / "out")
    assert f"ngconvert preview {dest} -o {dest}.png" in p.stderr and f"ngconvert view {dest}" in p.stderr
    assert "preview" not in run("convert", tmp / "v.npy", tmp / "q", "--workers", "1", "--quiet", check=0).stderr
    assert "preview" not in run("convert", tmp / "v.npy", tmp / "d", "--dry-run", check=0).stdout


def test_preview_is_the_function_even_after_its_module_is_imported():
    import ngconvert.cli.main  # noqa: F401
    import ngconvert.datasets.preview  # noqa: F401

    assert callable(ngconvert.preview) and ngconvert.preview.__name__ == "preview"
