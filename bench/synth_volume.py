"""Deterministic "brain-like" test volumes written as NIfTI-1 files.

The volume is an ellipsoidal head (scalp, skull, CSF) around a brain whose grey/white
matter boundary follows a smooth random field, with two ventricles, plus uniform integer
noise in [-2, 2] everywhere.  Smooth structure plus a little noise is what MRI and light
microscopy look like to a compressor: the noise is what makes gzip slow and the output
about 30% of the raw size, unlike a noise-free phantom that compresses to almost nothing.

Voxels are 1 mm.  The data is generated in z slabs straight into a memory-mapped file, so
a 2 GiB volume needs only a few hundred MB of RAM.  The same arguments always give the
same bytes.

    python bench/synth_volume.py OUT.nii --size 512 --dtype uint8
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil

import nibabel as nib
import numpy as np

SEED = 20240611
SLAB = 16                       # z slices generated at a time
NOISE = 2                       # noise is uniform in [-NOISE, NOISE]
VALUE_SCALE = {"uint8": 1.0, "uint16": 16.0}   # uint16 volumes use a wider value range
N_WAVES = 8


def _axis(n: int) -> np.ndarray:
    """Voxel centres mapped to [-1, 1]."""
    return ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0)


def _sigmoid(t):
    return 0.5 + 0.5 * np.tanh(0.5 * t)     # 1/(1+exp(-t)) without overflow


def _waves(rng: np.random.Generator):
    """Random separable cosine products: smooth folds of the grey/white boundary."""
    freq = rng.uniform(2.0, 9.0, size=(N_WAVES, 3)).astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi, size=(N_WAVES, 3)).astype(np.float32)
    amp = rng.uniform(0.3, 1.0, size=N_WAVES).astype(np.float32)
    return freq, phase, amp


def _slab_values(n: int, z0: int, z1: int, waves) -> np.ndarray:
    """Noise-free intensities (float32, uint8 scale) of slices z0:z1, shape (n, n, z1-z0)."""
    u = _axis(n)
    x, y, z = u[:, None, None], u[None, :, None], u[None, None, z0:z1]
    edge = 0.5 * 2.0 / n * 3.0                    # boundaries blur over about 3 voxels
    r = np.sqrt((x / 0.78) ** 2 + (y / 0.92) ** 2 + (z / 0.82) ** 2)

    def inside(radius, rr=r):
        return _sigmoid((radius - rr) / edge)

    freq, phase, amp = waves
    field = np.zeros((n, n, z1 - z0), dtype=np.float32)
    for (fx, fy, fz), (px, py, pz), a in zip(freq, phase, amp):
        field += a * np.cos(fx * x + px) * np.cos(fy * y + py) * np.cos(fz * z + pz)
    white = _sigmoid((field + 1.6 * (0.62 - r)) / 0.08)

    ventricles = np.zeros_like(field)
    for cx in (-0.12, 0.12):
        rv = np.sqrt(((x - cx) / 0.07) ** 2 + ((y - 0.05) / 0.3) ** 2 + (z / 0.15) ** 2)
        ventricles = np.maximum(ventricles, inside(1.0, rv))

    head, skull, csf = inside(1.0), inside(0.95), inside(0.90)
    brain = inside(0.87)
    v = 70.0 * head                               # scalp
    v += (15.0 - 70.0) * skull                    # skull is dark
    v += (40.0 - 15.0) * csf                      # CSF
    tissue = 100.0 + 55.0 * white                 # grey 100, white 155
    v += (tissue - 40.0) * brain
    v += (30.0 - tissue) * ventricles * brain
    return v.astype(np.float32)


def _write_header(path: str, n: int, dtype: np.dtype) -> int:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((n, n, n))
    hdr.set_data_dtype(dtype)
    hdr.set_zooms((1.0, 1.0, 1.0))
    hdr.set_xyzt_units("mm", "sec")
    affine = np.eye(4)
    affine[:3, 3] = -(n - 1) / 2.0                # centred on the world origin
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    offset = 352                                  # 348-byte header + 4-byte extension flag
    hdr.set_data_offset(offset)
    with open(path, "wb") as f:
        hdr.write_to(f)
        f.write(b"\0" * (offset - f.tell()))
        f.truncate(offset + n ** 3 * dtype.itemsize)
    return offset


def write_volume(path: str, n: int, dtype: str = "uint8", seed: int = SEED) -> None:
    """Write an n^3 volume to ``path`` (.nii), atomically (a temporary name, then rename)."""
    dt = np.dtype(dtype)
    scale = VALUE_SCALE[dt.name]
    lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
    tmp = path + ".part"
    offset = _write_header(tmp, n, dt)
    out = np.memmap(tmp, dtype=dt, mode="r+", offset=offset, shape=(n, n, n), order="F")
    waves = _waves(np.random.default_rng(seed))
    for i, z0 in enumerate(range(0, n, SLAB)):
        z1 = min(n, z0 + SLAB)
        values = np.rint(_slab_values(n, z0, z1, waves) * scale)
        noise = np.random.default_rng([seed, n, i]).integers(-NOISE, NOISE + 1, size=values.shape)
        out[:, :, z0:z1] = np.clip(values + noise, lo, hi).astype(dt)
    out.flush()
    del out
    os.replace(tmp, path)


def gzip_file(src: str, dest: str, level: int = 6) -> None:
    tmp = dest + ".part"
    with open(src, "rb") as fi, gzip.GzipFile(tmp, "wb", compresslevel=level, mtime=0) as fo:
        shutil.copyfileobj(fi, fo, 16 << 20)
    os.replace(tmp, dest)


def ensure_volume(path: str, n: int, dtype: str = "uint8") -> str:
    """Create ``path`` unless it already exists (.nii.gz paths are gzipped from the .nii)."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".nii.gz"):
        plain = ensure_volume(path[:-3], n, dtype)
        gzip_file(plain, path)
    else:
        write_volume(path, n, dtype)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output .nii or .nii.gz")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--dtype", choices=sorted(VALUE_SCALE), default="uint8")
    args = ap.parse_args()
    ensure_volume(args.out, args.size, args.dtype)


if __name__ == "__main__":
    main()
