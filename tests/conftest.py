"""Shared helpers: independent readers (tensorstore, cloud-volume) and numpy references."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("CLOUD_VOLUME_CACHE", "/tmp/ngconvert-test-cv-cache")


def read_info(path) -> dict:
    return json.loads((Path(path) / "info").read_text())


def read_tensorstore(path, scale_index: int) -> np.ndarray:
    """A scale as ``[x, y, z, c]`` through tensorstore (plain chunk files only)."""
    import tensorstore as ts

    t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{Path(path).resolve()}",
                 "scale_index": scale_index}, read=True).result()
    return np.asarray(t.read().result())


def read_cloudvolume(path, mip: int) -> np.ndarray:
    """A scale as ``[x, y, z, c]`` through cloud-volume (reads ``KEY.gz`` files)."""
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{Path(path).resolve()}", mip=mip, progress=False, fill_missing=False)
    b = cv.bounds
    return np.asarray(cv[b.minpt[0]:b.maxpt[0], b.minpt[1]:b.maxpt[1], b.minpt[2]:b.maxpt[2]])


def reference_mean(a: np.ndarray, offset, cumulative, out_offset, out_size) -> np.ndarray:
    """Exact float mean of the full-resolution voxels under each coarse voxel (edges clipped)."""
    a = a.astype(np.float64)
    if a.ndim == 3:
        a = a[..., None]
    F = np.array(cumulative)
    lo = np.array(out_offset) * F
    hi = (np.array(out_offset) + np.array(out_size)) * F
    padded = np.zeros(tuple(hi - lo) + (a.shape[3],))
    count = np.zeros(tuple(hi - lo) + (1,))
    d = np.array(offset) - lo
    sl = tuple(slice(d[i], d[i] + a.shape[i]) for i in range(3))
    padded[sl] = a
    count[sl] = 1
    shape = []
    for n, f in zip(out_size, F):
        shape += [n, f]
    s = padded.reshape(shape + [a.shape[3]]).sum(axis=(1, 3, 5))
    c = count.reshape(shape + [1]).sum(axis=(1, 3, 5))
    return s / c


def smooth_volume(shape, dtype=np.uint8, seed=0, noise=2, channels=None) -> np.ndarray:
    """Brain-like data: smooth structure plus a little noise."""
    rng = np.random.default_rng(seed)
    x, y, z = (np.linspace(0, 5, n) for n in shape)
    base = np.sin(x)[:, None, None] * np.cos(y)[None, :, None] + np.sin(z / 2)[None, None, :]
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        v = base * 100.0 + rng.normal(0, noise, shape)
        return v.astype(dtype)
    span = min(info.max, 60000) - max(info.min, -30000)
    mid = max(info.min, -30000) + span / 2
    v = mid + base * span / 6 + rng.integers(-noise, noise + 1, shape)
    v = np.clip(v, info.min, info.max).astype(dtype)
    if channels:
        v = np.stack([np.roll(v, 7 * i, axis=0) for i in range(channels)], axis=-1)
    return v


def label_volume(shape, dtype=np.uint32, seed=0, labels=(0, 3, 7, 12, 100)) -> np.ndarray:
    """Piecewise-constant labels (blobs) for segmentation tests."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    out = np.zeros(shape, dtype=dtype)
    for lab in labels[1:]:
        c = rng.uniform(0, 1, 3) * np.array(shape)
        r = rng.uniform(0.15, 0.35) * min(shape)
        out[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r * r] = lab
    return out


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


def run(*args, check=None):
    """``ngconvert ARGS...`` in a new process; ``check``: the exit status it must have."""
    p = subprocess.run([sys.executable, "-m", "ngconvert", *map(str, args)], capture_output=True, text=True)
    if check is not None:
        assert p.returncode == check, p.stderr
    return p


def one_line_error(p):
    """The error line of a run that failed on bad input: exit 2, one line, no traceback."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]
