"""Slice stacks (TIFF/PNG/JPEG folders, patterns, order files) and multi-page TIFF sources."""
import imagecodecs
import numpy as np
import pytest
import tifffile

import ngconvert
from checks import check_dataset
from conftest import read_info, read_tensorstore, smooth_volume
from test_cli import one_line_error, run


def write_slices(folder, vol, ext="tif", names=None, **tiff_kw):
    """Write ``vol[x, y, z(, c)]`` as one image per z (rows = y, columns = x)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for z in range(vol.shape[2]):
        img = np.ascontiguousarray(vol[:, :, z].swapaxes(0, 1))
        name = names[z] if names else f"slice_{z}.{ext}"
        path = folder / name
        if ext == "tif":
            tifffile.imwrite(path, img, **tiff_kw)
        elif ext == "png":
            path.write_bytes(imagecodecs.png_encode(img))
        else:
            path.write_bytes(imagecodecs.jpeg8_encode(img, level=95))
        paths.append(path)
    return paths


def convert(src, dest, **kw):
    kw.setdefault("compress", "none")
    kw.setdefault("layer_type", "image")
    kw.setdefault("quiet", True)
    return ngconvert.convert(src, dest, ngconvert.ConvertOptions(**kw))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "float32"])
@pytest.mark.parametrize("compression", [None, "lzw", "zlib"])
def test_tiff_folder_types_and_compression(tmp, dtype, compression):
    vol = smooth_volume((45, 33, 12), dtype)
    write_slices(tmp / "s", vol, compression=compression)
    convert(tmp / "s", tmp / "out")
    check_dataset(tmp / "out", vol, "tensorstore", "average")


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_png_folder(tmp, dtype):
    vol = smooth_volume((40, 30, 9), dtype)
    write_slices(tmp / "s", vol, "png")
    convert(tmp / "s", tmp / "out")
    check_dataset(tmp / "out", vol, "tensorstore", "average")


def test_jpeg_pattern_within_tolerance(tmp):
    vol = smooth_volume((48, 32, 8), np.uint8, noise=0)
    write_slices(tmp / "s", vol, "jpg", names=[f"img{z}_gray.jpg" for z in range(8)])
    (tmp / "s" / "other.jpg").write_bytes((tmp / "s" / "img0_gray.jpg").read_bytes())
    convert(str(tmp / "s" / "*_gray.jpg"), tmp / "out")
    got = read_tensorstore(tmp / "out", 0)[..., 0].astype(float)
    assert got.shape == vol.shape
    assert np.abs(got - vol).mean() < 1.5          # jpeg at quality 95, stated bound


@pytest.mark.parametrize("ext", ["tif", "png"])
def test_rgb_slices_become_three_channels(tmp, ext):
    vol = smooth_volume((30, 20, 6), np.uint8, channels=3)
    write_slices(tmp / "s", vol, ext)
    convert(tmp / "s", tmp / "out")
    assert read_info(tmp / "out")["num_channels"] == 3
    check_dataset(tmp / "out", vol, "tensorstore", "average")


def test_natural_sort(tmp):
    vol = smooth_volume((20, 10, 12), np.uint8)
    write_slices(tmp / "s", vol, names=[f"img{z}.tif" for z in range(12)])   # img10 after img9
    convert(tmp / "s", tmp / "out")
    np.testing.assert_array_equal(read_tensorstore(tmp / "out", 0)[..., 0], vol)


def test_order_file_with_indices_placeholders_and_gaps(tmp):
    vol = smooth_volume((20, 10, 6), np.uint8)
    names = ["c.tif", "a+b[1].tif", "b.tif", "z (copy).tif", "d.tif", "e.tif"]
    write_slices(tmp / "s", vol, names=names)
    order = tmp / "order.txt"
    # z=0 c, z=1 placeholder, z=2 'a+b[1]' (a literal name, not a pattern), z=3 missing, z=4 'z (copy)'
    order.write_text("c.tif 0\nPlaceholder 1\na+b[1].tif 2\nz (copy).tif 4\nd.tif 5\n")
    convert(tmp / "s", tmp / "out", order_file=str(order))
    got = read_tensorstore(tmp / "out", 0)[..., 0]
    assert got.shape == (20, 10, 6)
    np.testing.assert_array_equal(got[:, :, 0], vol[:, :, 0])
    assert not got[:, :, 1].any() and not got[:, :, 3].any()
    np.testing.assert_array_equal(got[:, :, 2], vol[:, :, 1])
    np.testing.assert_array_equal(got[:, :, 4], vol[:, :, 3])
    np.testing.assert_array_equal(got[:, :, 5], vol[:, :, 4])


def test_plain_order_list(tmp):
    vol = smooth_volume((20, 10, 3), np.uint8)
    write_slices(tmp / "s", vol, names=["x.tif", "y.tif", "w.tif"])
    (tmp / "o.txt").write_text("w.tif\nplaceholder\nx.tif\n")
    convert(tmp / "s", tmp / "out", order_file=str(tmp / "o.txt"))
    got = read_tensorstore(tmp / "out", 0)[..., 0]
    np.testing.assert_array_equal(got[:, :, 0], vol[:, :, 2])
    assert not got[:, :, 1].any()
    np.testing.assert_array_equal(got[:, :, 2], vol[:, :, 0])


def test_order_file_missing_names_listed(tmp):
    write_slices(tmp / "s", smooth_volume((10, 10, 2), np.uint8))
    (tmp / "o.txt").write_text("".join(f"gone{i}.tif {i}\n" for i in range(12)))
    line = one_line_error(run("convert", tmp / "s", tmp / "out", "--order", tmp / "o.txt"))
    assert "12 slice(s)" in line and "gone9.tif" in line and "gone10.tif" not in line and "2 more" in line


def test_mismatched_slices_error_and_pad(tmp):
    vol = smooth_volume((30, 20, 4), np.uint8)
    paths = write_slices(tmp / "s", vol)
    small = np.full((10, 12), 200, np.uint8)                # rows x cols
    tifffile.imwrite(paths[2], small)
    line = one_line_error(run("convert", tmp / "s", tmp / "out"))
    assert "slice_2.tif" in line and "--pad" in line
    for pad in ("origin", "center"):
        convert(tmp / "s", tmp / pad, pad=pad)
        got = read_tensorstore(tmp / pad, 0)[..., 0]
        want = np.zeros((30, 20), np.uint8)
        x0, y0 = ((30 - 12) // 2, (20 - 10) // 2) if pad == "center" else (0, 0)
        want[x0:x0 + 12, y0:y0 + 10] = 200
        np.testing.assert_array_equal(got[:, :, 2], want)
        np.testing.assert_array_equal(got[:, :, 1], vol[:, :, 1])
    tifffile.imwrite(paths[3], vol[:, :, 3].T.astype(np.uint16))
    line = one_line_error(run("convert", tmp / "s", tmp / "out3", "--pad", "origin"))
    assert "slice_3.tif" in line and "uint16" in line


def test_flip_and_transpose(tmp):
    vol = smooth_volume((24, 16, 5), np.uint8)
    write_slices(tmp / "s", vol)
    convert(tmp / "s", tmp / "f", flip="y,z")
    np.testing.assert_array_equal(read_tensorstore(tmp / "f", 0)[..., 0], vol[:, ::-1, ::-1])
    convert(tmp / "s", tmp / "t", transpose=True)
    np.testing.assert_array_equal(read_tensorstore(tmp / "t", 0)[..., 0], vol.transpose(1, 0, 2))


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_multipage_tiff(tmp, compression):
    vol = smooth_volume((40, 30, 17), np.uint16)
    tifffile.imwrite(tmp / "stack.tif", np.ascontiguousarray(vol.transpose(2, 1, 0)), compression=compression)
    convert(tmp / "stack.tif", tmp / "out")
    check_dataset(tmp / "out", vol, "tensorstore", "average")


def test_ome_tiff_with_channels(tmp):
    vol = smooth_volume((32, 24, 7), np.uint8, channels=2)     # x, y, z, c
    data = np.ascontiguousarray(vol.transpose(2, 3, 1, 0))     # Z, C, Y, X
    tifffile.imwrite(tmp / "s.ome.tif", data, metadata={"axes": "ZCYX"}, ome=True)
    convert(tmp / "s.ome.tif", tmp / "out")
    assert read_info(tmp / "out")["num_channels"] == 2
    check_dataset(tmp / "out", vol, "tensorstore", "average")


def test_slice_stack_plan_uses_whole_slice_slabs(tmp):
    vol = smooth_volume((300, 260, 40), np.uint8)
    write_slices(tmp / "s", vol)
    res = convert(tmp / "s", tmp / "out", chunk_size=(64, 64, 8), workers=2)
    plan = res.plan
    first = plan.stages[0]
    assert first.base == 0
    for task in plan.tasks(first):
        fp = plan.footprint(task, 0)
        assert fp.shape[:2] == (300, 260)
    check_dataset(tmp / "out", vol, "tensorstore", "average")


def test_empty_folder_and_bad_image(tmp):
    (tmp / "empty").mkdir()
    assert "no .tif" in one_line_error(run("convert", tmp / "empty", tmp / "out"))
    write_slices(tmp / "s", smooth_volume((10, 10, 3), np.uint8))
    (tmp / "s" / "slice_1.tif").write_bytes(b"not a tiff")
    line = one_line_error(run("convert", tmp / "s", tmp / "out"))
    assert "slice_1.tif" in line
