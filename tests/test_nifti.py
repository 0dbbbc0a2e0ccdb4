"""nibabel sources: voxel size, affine sidecar, channels, compressed and other formats."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

import ngconvert
from checks import check_dataset
from conftest import label_volume, read_info, read_tensorstore, smooth_volume


def _nifti(path, data, affine=None, units="mm", cls=nib.Nifti1Image):
    affine = np.diag([0.5, 0.6, 0.8, 1.0]) if affine is None else affine
    img = cls(data, affine)
    if hasattr(img.header, "set_xyzt_units"):
        img.header.set_xyzt_units(units)
    nib.save(img, str(path))
    return path


def test_nifti_gz_voxel_size_affine_and_sidecar(tmp):
    a = smooth_volume((50, 40, 30), np.int16)
    aff = np.array([[-0.5, 0, 0, 60.0], [0, 0.6, 0, -70.0], [0, 0, 0.8, -20.0], [0, 0, 0, 1]])
    src = _nifti(tmp / "brain.nii.gz", a, aff)
    ngconvert.convert(src, tmp / "out", ngconvert.ConvertOptions(layer_type="image", compress="none",
                                                                  voxel_offset=(2, 0, -1), quiet=True))
    info = read_info(tmp / "out")
    assert info["scales"][0]["resolution"] == [500000.0, 600000.0, 800000.0]
    assert info["data_type"] == "int16"
    np.testing.assert_array_equal(read_tensorstore(tmp / "out", 0)[..., 0], a)
    t = json.loads((tmp / "out" / "transform.json").read_text())
    np.testing.assert_allclose(t["voxel_to_world"], aff, atol=1e-6)
    assert t["world_units"] == "mm"
    # the centre of stored voxel (0,0,0) sits at (offset + 0.5) * resolution in the layer
    p = np.array([(o + 0.5) * r for o, r in zip((2, 0, -1), info["scales"][0]["resolution"])] + [1.0])
    np.testing.assert_allclose((np.array(t["layer_nm_to_world"]) @ p)[:3], aff[:3, 3], atol=1e-6)
    q = np.array([(o + 3 + 0.5) * r for o, r in zip((2, 0, -1), info["scales"][0]["resolution"])] + [1.0])
    np.testing.assert_allclose((np.array(t["layer_nm_to_world"]) @ q)[:3], (aff @ [3, 3, 3, 1])[:3], atol=1e-6)
    assert not (tmp / "out" / ".ngconvert").exists()


def test_micron_units(tmp):
    src = _nifti(tmp / "v.nii", smooth_volume((20, 20, 20), np.uint8), np.diag([2.0, 2.0, 5.0, 1]), units="micron")
    ngconvert.convert(src, tmp / "out", ngconvert.ConvertOptions(quiet=True))
    assert read_info(tmp / "out")["scales"][0]["resolution"] == [2000.0, 2000.0, 5000.0]


def test_resolution_override(tmp):
    src = _nifti(tmp / "v.nii", smooth_volume((20, 20, 20), np.uint8))
    ngconvert.convert(src, tmp / "out", ngconvert.ConvertOptions(resolution=(4, 4, 40), units="nm", quiet=True))
    assert read_info(tmp / "out")["scales"][0]["resolution"] == [4.0, 4.0, 40.0]


def test_4d_rgb_nifti_becomes_channels(tmp):
    a = smooth_volume((40, 30, 20), np.uint8, channels=3)
    src = _nifti(tmp / "rgb.nii.gz", a)
    ngconvert.convert(src, tmp / "out", ngconvert.ConvertOptions(compress="none", quiet=True))
    info = read_info(tmp / "out")
    assert info["num_channels"] == 3 and info["type"] == "image"
    check_dataset(tmp / "out", a, "tensorstore", "average")


def test_rgb24_nifti(tmp):
    a = smooth_volume((30, 20, 10), np.uint8, channels=3)
    rec = np.zeros(a.shape[:3], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for i, c in enumerate("RGB"):
        rec[c] = a[..., i]
    src = _nifti(tmp / "rgb24.nii", rec)
    ngconvert.convert(src, tmp / "out", ngconvert.ConvertOptions(compress="none", quiet=True))
    np.testing.assert_array_equal(read_tensorstore(tmp / "out", 0), a)


@pytest.mark.parametrize("name,cls", [("v.mgz", nib.MGHImage), ("v.img", nib.AnalyzeImage),
                                      ("v.nii", nib.Nifti2Image)])
def test_other_nibabel_formats(tmp, name, cls):
    a = label_volume((33, 20, 17), np.int32)
    src = _nifti(tmp / name, a, np.diag([1.0, 1.0, 2.0, 1]).astype(np.float32), cls=cls)
    res = ngconvert.convert(src, tmp / "out", ngconvert.ConvertOptions(compress="none", quiet=True))
    assert res.layer.layer_type == "segmentation"        # chosen by --type auto
    check_dataset(tmp / "out", a.astype(np.uint32), "tensorstore", "mode")
    assert read_info(tmp / "out")["scales"][0]["resolution"] == [1e6, 1e6, 2e6]


def test_scaled_nifti_gives_float32(tmp):
    a = smooth_volume((20, 20, 10), np.int16)
    img = nib.Nifti1Image(a, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, str(tmp / "s.nii"))
    res = ngconvert.convert(tmp / "s.nii", tmp / "out", ngconvert.ConvertOptions(compress="none", quiet=True))
    assert res.layer.data_type == "float32"
    np.testing.assert_allclose(read_tensorstore(tmp / "out", 0)[..., 0], a * 0.5 + 10.0, rtol=1e-6)


def test_label_intent_is_segmentation(tmp):
    a = smooth_volume((20, 20, 10), np.uint16)        # looks like an image...
    img = nib.Nifti1Image(a, np.eye(4))
    img.header.set_intent("label")                    # ...but the header says labels
    nib.save(img, str(tmp / "l.nii"))
    res = ngconvert.convert(tmp / "l.nii", tmp / "out", ngconvert.ConvertOptions(quiet=True))
    assert res.layer.layer_type == "segmentation"


def test_auto_type_image_for_noisy_data(tmp):
    src = _nifti(tmp / "b.nii", smooth_volume((40, 40, 40), np.uint8, noise=3))
    res = ngconvert.convert(src, tmp / "out", ngconvert.ConvertOptions(quiet=True))
    assert res.layer.layer_type == "image" and res.layer.encoding == "raw"
    assert any("auto chose image" in n for n in res.notes)


def test_float64_and_int64_converted_only_when_lossless(tmp):
    a = smooth_volume((20, 20, 10), np.float32).astype(np.float64)
    res = ngconvert.write_volume(a, tmp / "f", layer_type="image")
    assert res.layer.data_type == "float32"
    with pytest.raises(ngconvert.UserError, match="--dtype float32"):
        ngconvert.write_volume(a + 1e-12, tmp / "g", layer_type="image")
    res = ngconvert.write_volume(a + 1e-12, tmp / "g", layer_type="image", dtype="float32")
    assert res.layer.data_type == "float32"
    labels = label_volume((20, 20, 10), np.int64)
    res = ngconvert.write_volume(labels, tmp / "l", layer_type="segmentation", encoding="raw")
    assert res.layer.data_type == "uint32"
    big = labels.copy()
    big[0, 0, 0] = 2**40
    res = ngconvert.write_volume(big, tmp / "b", layer_type="segmentation", encoding="raw", compress="none")
    assert res.layer.data_type == "uint64"
    np.testing.assert_array_equal(read_tensorstore(tmp / "b", 0)[..., 0], big.astype(np.uint64))


def test_npy_memory_mapped_source(tmp):
    a = smooth_volume((70, 50, 40), np.uint16)
    np.save(tmp / "v.npy", np.ascontiguousarray(a.transpose(2, 1, 0)))
    res = ngconvert.convert(tmp / "v.npy", tmp / "out",
                            ngconvert.ConvertOptions(axes="zyx", resolution=(4, 4, 40), compress="none",
                                                     layer_type="image", quiet=True))
    assert res.layer.resolution == (4.0, 4.0, 40.0)
    check_dataset(tmp / "out", a, "tensorstore", "average")


def test_gz_staging_copy_is_removed(tmp, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp / "t"))
    os.makedirs(tmp / "t")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    src = _nifti(tmp / "v.nii.gz", smooth_volume((20, 20, 20), np.uint8))
    ngconvert.convert(src, tmp / "out", ngconvert.ConvertOptions(quiet=True))
    assert os.listdir(tmp / "t") == []


@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("axes,channels", [("xyz", None), ("zyx", None), ("xyzc", 3), ("czyx", 2)])
def test_npy_orders_and_channels(tmp, fortran, axes, channels):
    a = smooth_volume((31, 22, 13), np.uint8, channels=channels)          # [x, y, z(, c)]
    order = {"xyz": (0, 1, 2), "zyx": (2, 1, 0), "xyzc": (0, 1, 2, 3), "czyx": (3, 2, 1, 0)}[axes]
    stored = np.transpose(a, order)
    np.save(tmp / "v.npy", np.asfortranarray(stored) if fortran else np.ascontiguousarray(stored))
    ngconvert.convert(tmp / "v.npy", tmp / "out", ngconvert.ConvertOptions(
        axes=axes, layer_type="image", compress="none", quiet=True))
    np.testing.assert_array_equal(read_tensorstore(tmp / "out", 0), a if a.ndim == 4 else a[..., None])


def test_big_endian_npy(tmp):
    a = smooth_volume((20, 10, 6), np.uint16)
    np.save(tmp / "be.npy", a.astype(">u2"))
    ngconvert.convert(tmp / "be.npy", tmp / "out", ngconvert.ConvertOptions(layer_type="image",
                                                                            compress="none", quiet=True))
    np.testing.assert_array_equal(read_tensorstore(tmp / "out", 0)[..., 0], a)
