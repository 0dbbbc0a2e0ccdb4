"""Every encoding, type and layout written by ngconvert, read back by tensorstore or cloud-volume."""
import numpy as np
import pytest

import ngconvert
from checks import check_dataset
from conftest import label_volume, read_info, smooth_volume

ODD = (97, 61, 33)

IMAGE_TYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"]


@pytest.mark.parametrize("dtype", IMAGE_TYPES)
@pytest.mark.parametrize("compress,reader", [("none", "tensorstore"), ("gzip", "cloudvolume")])
def test_raw_image_every_dtype(tmp, dtype, compress, reader):
    a = smooth_volume(ODD, dtype)
    ngconvert.write_volume(a, tmp / "v", resolution=(1, 1, 1), layer_type="image",
                           encoding="raw", compress=compress, chunk_size=(32, 32, 32))
    check_dataset(tmp / "v", a, reader, "average")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int16", "int32"])
def test_raw_segmentation_mode(tmp, dtype):
    a = label_volume(ODD, dtype)
    ngconvert.write_volume(a, tmp / "v", layer_type="segmentation", encoding="raw", compress="none",
                           chunk_size=(16, 16, 16))
    check_dataset(tmp / "v", a, "tensorstore", "mode")


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("compress,reader", [("none", "tensorstore"), ("gzip", "cloudvolume")])
def test_compressed_segmentation(tmp, dtype, compress, reader):
    a = label_volume(ODD, dtype)
    if dtype == "uint64":
        a[a == 100] = np.uint64(2**40 + 5)
    ngconvert.write_volume(a, tmp / "v", layer_type="segmentation", compress=compress,
                           chunk_size=(32, 32, 32), cseg_block_size=(8, 8, 8))
    info = read_info(tmp / "v")
    assert info["scales"][0]["encoding"] == "compressed_segmentation"
    assert info["scales"][0]["compressed_segmentation_block_size"] == [8, 8, 8]
    check_dataset(tmp / "v", a, reader, "mode")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
def test_compressed_segmentation_widens_small_label_types(tmp, dtype):
    a = label_volume(ODD, dtype, labels=(0, 3, 7, 12, 100))
    res = ngconvert.write_volume(a, tmp / "v", layer_type="segmentation", compress="none",
                                 chunk_size=(32, 32, 32), cseg_block_size=(4, 4, 2))
    assert read_info(tmp / "v")["data_type"] == "uint32"
    assert any("widened" in n for n in res.notes)
    check_dataset(tmp / "v", a.astype(np.uint32), "tensorstore", "mode")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64"])
@pytest.mark.parametrize("sharded", [False, True])
def test_compresso_segmentation(tmp, dtype, sharded):
    """compresso is read by cloud-volume (tensorstore does not read it)."""
    a = label_volume(ODD, dtype)
    if dtype == "uint64":
        a[a == 100] = np.uint64(2**40 + 5)
    extra = dict(sharded=True, shard_bytes=32 << 10) if sharded else {}
    ngconvert.write_volume(a, tmp / "v", layer_type="segmentation", encoding="compresso", chunk_size=(32, 32, 16),
                           voxel_offset=(4, -3, 2), **extra)
    info = read_info(tmp / "v")
    assert info["scales"][0]["encoding"] == "compresso" and info["data_type"] == dtype
    check_dataset(tmp / "v", a, "cloudvolume", "mode", offset=(4, -3, 2))
    files = [f for f in (tmp / "v").rglob("*") if f.is_file() and f.name != "info"]
    assert not any(f.suffix == ".gz" for f in files)               # compresso is not gzipped again


def test_compressed_segmentation_two_channels(tmp):
    a = np.stack([label_volume(ODD, np.uint32, seed=1), label_volume(ODD, np.uint32, seed=2)], axis=-1)
    ngconvert.write_volume(a, tmp / "v", layer_type="image", encoding="compressed_segmentation",
                           downsample="mode", compress="none", chunk_size=(32, 32, 32))
    check_dataset(tmp / "v", a, "tensorstore", "mode")


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg(tmp, channels):
    a = smooth_volume(ODD, np.uint8, noise=0, channels=channels if channels > 1 else None)
    ngconvert.write_volume(a, tmp / "v", layer_type="image", encoding="jpeg", jpeg_quality=90,
                           chunk_size=(32, 32, 32))
    info = read_info(tmp / "v")
    assert info["num_channels"] == channels and info["scales"][0]["encoding"] == "jpeg"
    # stated bound for quality 90 on smooth data: mean error <= 1.5, max <= 24 grey levels
    check_dataset(tmp / "v", a, "tensorstore", "average", jpeg_tol=(1.5, 24))
    if channels == 1:
        # cloud-volume reshapes decoded RGB pixels as if they were planar, unlike the spec,
        # tensorstore and the viewer; its reading is compared for grey data only
        check_dataset(tmp / "v", a, "cloudvolume", "average", jpeg_tol=(1.5, 24))


@pytest.mark.parametrize("dtype,channels", [("uint8", 1), ("uint8", 3), ("uint16", 1), ("uint8", 2)])
def test_png(tmp, dtype, channels):
    a = smooth_volume(ODD, dtype, channels=channels if channels > 1 else None)
    ngconvert.write_volume(a, tmp / "v", layer_type="image", encoding="png", chunk_size=(32, 32, 32))
    check_dataset(tmp / "v", a, "tensorstore", "average")


def test_rgb_raw_gzip(tmp):
    a = smooth_volume(ODD, np.uint8, channels=3)
    ngconvert.write_volume(a, tmp / "v", layer_type="image", chunk_size=(32, 32, 32))
    assert read_info(tmp / "v")["num_channels"] == 3
    check_dataset(tmp / "v", a, "cloudvolume", "average")


@pytest.mark.parametrize("offset", [(10, 20, 30), (-5, 7, -3), (-100, -64, 13)])
@pytest.mark.parametrize("compress,reader", [("none", "tensorstore"), ("gzip", "cloudvolume")])
def test_offsets(tmp, offset, compress, reader):
    a = smooth_volume(ODD, np.uint16)
    ngconvert.write_volume(a, tmp / "v", layer_type="image", compress=compress, voxel_offset=offset,
                           chunk_size=(16, 16, 16))
    info = read_info(tmp / "v")
    assert info["scales"][0]["voxel_offset"] == list(offset)
    check_dataset(tmp / "v", a, reader, "average", offset=offset)


def test_offsets_segmentation(tmp):
    a = label_volume(ODD, np.uint32)
    ngconvert.write_volume(a, tmp / "v", layer_type="segmentation", compress="none",
                           voxel_offset=(-3, 5, 9), chunk_size=(16, 16, 8))
    check_dataset(tmp / "v", a, "tensorstore", "mode", offset=(-3, 5, 9))


def test_anisotropic(tmp):
    a = smooth_volume((300, 280, 24), np.uint8)
    ngconvert.write_volume(a, tmp / "v", resolution=(4, 4, 40), layer_type="image", compress="none")
    info = read_info(tmp / "v")
    res = [s["resolution"] for s in info["scales"]]
    assert info["scales"][0]["chunk_sizes"] == [[128, 128, 16]]
    assert res[1] == [8, 8, 40] and res[2] == [16, 16, 40]
    check_dataset(tmp / "v", a, "tensorstore", "average")


@pytest.mark.parametrize("method", ["stride", "min", "max", "mode"])
def test_other_downsampling_methods(tmp, method):
    a = smooth_volume(ODD, np.uint16, noise=50)
    ngconvert.write_volume(a, tmp / "v", layer_type="image", downsample=method, compress="none",
                           chunk_size=(16, 16, 16), voxel_offset=(1, 0, -1))
    check_dataset(tmp / "v", a, "tensorstore", method, offset=(1, 0, -1))


@pytest.mark.parametrize("workers", [1, 2])
def test_volume_larger_than_one_task_uses_several_stages(tmp, workers):
    a = smooth_volume((200, 190, 130), np.uint8)
    res = ngconvert.write_volume(a, tmp / "v", layer_type="image", compress="none", chunk_size=(16, 16, 16),
                                 task_bytes=64 * 1024, workers=workers)
    assert len(res.plan.stages) >= 3 and res.tasks_run > 20
    assert any(s.carry for s in res.plan.stages)
    check_dataset(tmp / "v", a, "tensorstore", "average")


def test_large_labels_several_stages_cloudvolume(tmp):
    a = label_volume((160, 150, 70), np.uint64)
    res = ngconvert.write_volume(a, tmp / "v", layer_type="segmentation", chunk_size=(16, 16, 16),
                                 task_bytes=64 * 1024, voxel_offset=(-20, 3, 0))
    assert len(res.plan.stages) >= 2
    check_dataset(tmp / "v", a, "cloudvolume", "mode", offset=(-20, 3, 0))


def test_axes_order_zyx(tmp):
    a = smooth_volume(ODD, np.uint8)
    ngconvert.write_volume(np.ascontiguousarray(a.transpose(2, 1, 0)), tmp / "v", axes="zyx",
                           layer_type="image", compress="none")
    check_dataset(tmp / "v", a, "tensorstore", "average")


def test_serial_and_parallel_output_identical(tmp):
    a = label_volume((130, 120, 70), np.uint32)
    for w in (1, 2):
        ngconvert.write_volume(a, tmp / f"w{w}", layer_type="segmentation", chunk_size=(32, 32, 32),
                               task_bytes=256 * 1024, workers=w)
    files1 = sorted(p.relative_to(tmp / "w1") for p in (tmp / "w1").rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(tmp / "w2") for p in (tmp / "w2").rglob("*") if p.is_file())
    assert files1 == files2
    for f in files1:
        assert (tmp / "w1" / f).read_bytes() == (tmp / "w2" / f).read_bytes(), f
