"""Downsampling kernels for one pyramid step.

Arrays are ``[x, y, z, c]`` and cover a :class:`~ngconvert.core.geometry.Box` of absolute
voxel coordinates.  A coarse voxel ``i`` pools the fine voxels ``[f*i, f*i + f)``; blocks
cut by the region's edges are pooled over the voxels that exist.

``average`` works on running *sums* (exact integers or float64) instead of rounded means, so every level
is the exact mean of the full-resolution voxels under it, rounded once: no drift from
level to level, and partial blocks at the volume's edges are weighted by how many
voxels they really hold.  ``mode`` (labels) uses tinybrain's counting kernels for 2x2x2
and 2x2x1 and a vectorised block mode otherwise; it only ever returns a value present in
the block.  ``stride``, ``min`` and ``max`` are plain block reductions.
"""
from __future__ import annotations

import numpy as np
import tinybrain

from ..core.geometry import Box, Vec, ceildiv

METHODS = ("average", "mode", "stride", "min", "max")


def _pads(box: Box, factor: Vec) -> list[tuple[int, int]]:
    pads = []
    for a, b, f in zip(box.start, box.stop, factor):
        pads.append((a - (a // f) * f, ceildiv(b, f) * f - b))
    return pads


def _padded(data: np.ndarray, box: Box, factor: Vec, mode: str) -> np.ndarray:
    pads = _pads(box, factor)
    if any(p for pair in pads for p in pair):
        data = np.pad(data, pads + [(0, 0)], mode=mode)
    return np.asfortranarray(data)


def _blocks(data: np.ndarray, factor: Vec) -> np.ndarray:
    """View ``[x,y,z,c]`` as ``[fx, nx, fy, ny, fz, nz, c]`` (data must be F-contiguous)."""
    fx, fy, fz = factor
    nx, ny, nz, c = data.shape[0] // fx, data.shape[1] // fy, data.shape[2] // fz, data.shape[3]
    return data.reshape((fx, nx, fy, ny, fz, nz, c), order="F")


def _accumulator(dtype: np.dtype, block: int) -> np.dtype:
    """The narrowest type that holds the sum of ``block`` values of ``dtype`` exactly."""
    if dtype.kind in "iu" and dtype.itemsize <= 4:
        info = np.iinfo(dtype)
        need_lo, need_hi = min(0, info.min) * block, info.max * block
        for cand in (np.uint16, np.uint32, np.int16, np.int32, np.int64):
            ci = np.iinfo(cand)
            if ci.min <= need_lo and need_hi <= ci.max and np.dtype(cand).itemsize >= dtype.itemsize:
                return np.dtype(cand)
    if dtype == np.int64:
        # int64 arrays here are sums of <=32-bit values made by an earlier level; they stay
        # exact until one coarse voxel pools 2^31 full-resolution voxels
        return np.dtype(np.int64)
    return np.dtype(np.float64)


SLAB_BYTES = 8 << 20
"""Rough size of the accumulator one step of :func:`pool_sum` or :func:`mean_from_sums`
works on: the output is made z-slab by z-slab, so no temporary ever approaches the
size of the input (a whole-volume temporary would double a task's memory)."""


def _z_slabs(planes: int, plane_bytes: int):
    """``(j0, j1)`` ranges of output z planes, each about ``SLAB_BYTES``."""
    step = max(1, SLAB_BYTES // max(1, plane_bytes))
    for j0 in range(0, planes, step):
        yield j0, min(planes, j0 + step)


def _strided_sum(data: np.ndarray, factor: Vec, acc: np.dtype) -> np.ndarray:
    """Block sums of ``data`` (whose shape is a multiple of ``factor``) by strided adds."""
    out = data
    for axis in (2, 1, 0):
        f = factor[axis]
        if f == 1:
            continue
        index = [slice(None)] * 4
        index[axis] = slice(0, None, f)
        total = out[tuple(index)].astype(acc)
        for r in range(1, f):
            index[axis] = slice(r, None, f)
            total += out[tuple(index)]
        out = total
    return out


def pool_sum(data: np.ndarray, box: Box, factor: Vec) -> tuple[np.ndarray, Box]:
    """Exact sum of each block (``data`` may be values or sums of an earlier level).

    The sum is built from strided adds, z first, in the narrowest exact accumulator
    (uint16 for uint8 data), which is many times faster than a reshape-and-reduce.  It is
    made a slab of output z planes at a time (padding only the slabs at the edges), so
    the only full-size allocation is the output itself.
    """
    out_box = box.downsample(factor)
    acc = _accumulator(data.dtype, factor[0] * factor[1] * factor[2])
    pads = _pads(box, factor)
    (zlo, _zhi), fz = pads[2], factor[2]
    nz = data.shape[2]
    out = np.empty(out_box.shape + (data.shape[3],), dtype=acc, order="F")
    # the input planes under one output plane, in the accumulator type, bound every
    # temporary of a slab (the padded copy at an edge, the first partial sum)
    plane_bytes = (data.shape[0] + pads[0][0] + pads[0][1]) * (data.shape[1] + pads[1][0] + pads[1][1]) \
        * data.shape[3] * acc.itemsize * fz
    for j0, j1 in _z_slabs(out.shape[2], plane_bytes):
        a, b = j0 * fz - zlo, j1 * fz - zlo          # input z range of these planes (unpadded)
        zpad = (max(0, -a), max(0, b - nz))
        part = data[:, :, max(0, a):min(nz, b)]
        slab_pads = [pads[0], pads[1], zpad, (0, 0)]
        if any(p for pair in slab_pads for p in pair):
            part = np.pad(part, slab_pads, mode="constant")
        if factor == (1, 1, 1):
            out[:, :, j0:j1] = part
        else:
            out[:, :, j0:j1] = _strided_sum(part, factor, acc)
    return out, out_box


def _mode_generic(data: np.ndarray, factor: Vec) -> np.ndarray:
    b = _blocks(data, factor)
    nx, ny, nz, c = b.shape[1], b.shape[3], b.shape[5], b.shape[6]
    k = factor[0] * factor[1] * factor[2]
    rows = np.ascontiguousarray(b.transpose(1, 3, 5, 6, 0, 2, 4)).reshape(-1, k)
    counts = np.zeros(rows.shape, dtype=np.uint8)
    for j in range(k):
        counts[:, j] = (rows == rows[:, j:j + 1]).sum(axis=1)
    pick = counts.argmax(axis=1)
    out = rows[np.arange(rows.shape[0]), pick]
    return np.asfortranarray(out.reshape(nx, ny, nz, c))


def pool_values(data: np.ndarray, box: Box, factor: Vec, method: str) -> tuple[np.ndarray, Box]:
    """One step of mode, stride, min or max pooling; keeps the dtype."""
    out_box = box.downsample(factor)
    if factor == (1, 1, 1):
        return data, out_box
    data = _padded(data, box, factor, "edge")
    if method == "mode":
        if factor in ((2, 2, 2), (2, 2, 1)) and data.dtype != np.bool_:
            # one channel at a time: the kernel crashes on multi-channel input
            out = np.stack([tinybrain.downsample_segmentation(np.asfortranarray(data[..., c]), factor)[0]
                            for c in range(data.shape[3])], axis=-1)
        else:
            out = _mode_generic(data, factor)
    elif method == "stride":
        out = data[::factor[0], ::factor[1], ::factor[2]]
    elif method == "min":
        out = _blocks(data, factor).min(axis=(0, 2, 4))
    elif method == "max":
        out = _blocks(data, factor).max(axis=(0, 2, 4))
    else:
        raise ValueError(f"unknown downsampling method {method!r}")
    return np.asfortranarray(out), out_box


def axis_counts(box: Box, base: Box, cumulative: Vec) -> list[np.ndarray]:
    """Per axis, how many full-resolution voxels each voxel of ``box`` pools."""
    counts = []
    for a, b, o, e, f in zip(box.start, box.stop, base.start, base.stop, cumulative):
        i = np.arange(a, b, dtype=np.int64)
        counts.append((np.minimum((i + 1) * f, e) - np.maximum(i * f, o)).astype(np.float64))
    return counts


def mean_from_sums(sums: np.ndarray, box: Box, base: Box, cumulative: Vec, dtype: np.dtype) -> np.ndarray:
    """Exact block means of the full-resolution data, rounded once to ``dtype``.

    Computed in float64 a slab of z planes at a time, straight into the output array.
    """
    cx, cy, cz = axis_counts(box, base, cumulative)
    dtype = np.dtype(dtype)
    out = np.empty(sums.shape, dtype=dtype, order="F")
    interior = all(c.size and (c == c[0]).all() for c in (cx, cy, cz))
    plane_bytes = sums.shape[0] * sums.shape[1] * sums.shape[3] * 8
    for j0, j1 in _z_slabs(sums.shape[2], plane_bytes):
        mean = sums[:, :, j0:j1].astype(np.float64, order="F")
        if interior:
            mean /= cx[0] * cy[0] * cz[0]          # interior: one count for every voxel
        else:                                      # edge: counts are exact small integers
            mean /= cx[:, None, None, None] * cy[None, :, None, None] * cz[None, None, j0:j1, None]
        if dtype.kind != "f":
            np.rint(mean, out=mean)
        out[:, :, j0:j1] = mean.astype(dtype)
    return out
