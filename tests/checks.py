"""Voxel-for-voxel checks of a written dataset, through an independent reader."""
from __future__ import annotations

import itertools

import numpy as np

from conftest import read_cloudvolume, read_info, read_tensorstore, reference_mean


def read_all(path, reader: str) -> list[np.ndarray]:
    info = read_info(path)
    fn = read_tensorstore if reader == "tensorstore" else read_cloudvolume
    return [fn(path, i) for i in range(len(info["scales"]))]


def cumulative(info, i):
    r0, ri = info["scales"][0]["resolution"], info["scales"][i]["resolution"]
    return tuple(int(round(b / a)) for a, b in zip(r0, ri))


def block_candidates(prev: np.ndarray, prev_off, out_off, out_size, factor):
    """For each coarse voxel, the finer values of its block (invalid positions masked)."""
    vals, valid = [], []
    for d in itertools.product(*(range(f) for f in factor)):
        idx = []
        ok = np.ones(tuple(out_size), dtype=bool)
        for ax in range(3):
            fine = (np.arange(out_off[ax], out_off[ax] + out_size[ax]) * factor[ax] + d[ax]) - prev_off[ax]
            inside = (fine >= 0) & (fine < prev.shape[ax])
            shape = [1, 1, 1]
            shape[ax] = -1
            ok &= inside.reshape(shape)
            idx.append(np.clip(fine, 0, prev.shape[ax] - 1).reshape(shape))
        vals.append(prev[idx[0], idx[1], idx[2]])
        valid.append(np.broadcast_to(ok[..., None], prev[idx[0], idx[1], idx[2]].shape))
    return np.stack(vals), np.stack(valid)


def check_dataset(path, a: np.ndarray, reader: str, method: str, offset=(0, 0, 0), jpeg_tol=None):
    """Every scale, read back by ``reader``, against numpy; returns the scales read."""
    info = read_info(path)
    if a.ndim == 3:
        a = a[..., None]
    scales = read_all(path, reader)
    assert len(scales) >= 1
    last = info["scales"][-1]
    assert all(s <= c for s, c in zip(last["size"], last["chunk_sizes"][0])), "pyramid stops early"
    for i, (s, v) in enumerate(zip(info["scales"], scales)):
        assert list(v.shape[:3]) == s["size"], (i, v.shape, s["size"])
        assert v.dtype == np.dtype(info["data_type"])
        if i == 0:
            if jpeg_tol is None:
                np.testing.assert_array_equal(v, a)
            else:
                err = np.abs(v.astype(float) - a)
                assert err.mean() <= jpeg_tol[0] and err.max() <= jpeg_tol[1], (err.mean(), err.max())
            continue
        prev_s, prev = info["scales"][i - 1], scales[i - 1]
        factor = tuple(int(round(b / c)) for b, c in zip(s["resolution"], prev_s["resolution"]))
        if method == "average":
            ref = reference_mean(a, offset, cumulative(info, i), s["voxel_offset"], s["size"])
            err = np.abs(v.astype(np.float64) - ref)
            bound = 1e-4 * np.abs(ref).max() + 1e-6 if v.dtype.kind == "f" else 0.5 + 1e-9
            if jpeg_tol is not None:
                assert err.mean() <= jpeg_tol[0] and err.max() <= jpeg_tol[1], (i, err.mean(), err.max())
            else:
                assert err.max() <= bound, (i, err.max())
        else:
            cand, valid = block_candidates(prev, prev_s["voxel_offset"], s["voxel_offset"], s["size"], factor)
            present = ((cand == v[None]) & valid).any(axis=0)
            assert present.all(), f"scale {i}: {method} produced a value absent from its block"
            if method == "mode":
                counts = ((cand[:, None] == cand[None, :]) & valid[None] & valid[:, None]).sum(axis=0)
                nvalid = valid.sum(axis=0)
                majority = counts * 2 > nvalid[None]
                has = majority.any(axis=0)
                winner = np.take_along_axis(cand, majority.argmax(axis=0)[None], axis=0)[0]
                np.testing.assert_array_equal(v[has], winner[has])
            elif method in ("min", "max"):
                fill = np.iinfo(v.dtype).max if method == "min" else np.iinfo(v.dtype).min
                masked = np.where(valid, cand, fill)
                red = masked.min(axis=0) if method == "min" else masked.max(axis=0)
                np.testing.assert_array_equal(v, red)
    return scales
