"""Looking at a source's values: lossless type checks and the layer-type guess."""
from __future__ import annotations

import numpy as np

from .base import VolumeSource
from ..core.geometry import Box

SCAN_BYTES = 64 << 20


def _slabs(src: VolumeSource, budget: int = SCAN_BYTES):
    x, y, z = src.info.shape
    per_slice = max(1, x * y * src.info.channels * max(1, src.info.dtype.itemsize))
    step = max(1, budget // per_slice)
    for z0 in range(0, z, step):
        yield src.read(Box((0, 0, z0), (x, y, min(z, z0 + step))))


def value_range(src: VolumeSource, check_float32: bool = False) -> tuple[float, float, bool]:
    """Minimum, maximum, and whether every value survives a float32 round trip (one streamed pass)."""
    lo, hi, exact = None, None, True
    for block in _slabs(src):
        if block.size == 0:
            continue
        bmin, bmax = block.min(), block.max()
        lo = bmin if lo is None else min(lo, bmin)
        hi = bmax if hi is None else max(hi, bmax)
        if check_float32 and exact:
            with np.errstate(over="ignore", invalid="ignore"):
                exact = bool(np.array_equal(block.astype(np.float32).astype(block.dtype), block, equal_nan=True))
    return (lo if lo is not None else 0), (hi if hi is not None else 0), exact


def float32_overflow(src: VolumeSource) -> float | None:
    """The largest finite magnitude of the values when it exceeds float32's range, else None
    (one streamed pass)."""
    limit = float(np.finfo(np.float32).max)
    big = 0.0
    for block in _slabs(src):
        if block.size == 0:
            continue
        with np.errstate(invalid="ignore"):
            a = np.abs(block[np.isfinite(block)]) if not np.isfinite(block).all() else np.abs(block)
        if a.size:
            big = max(big, float(a.max()))
    return big if big > limit else None


def sample(src: VolumeSource, max_voxels: int = 8 << 20) -> np.ndarray:
    """Evenly spaced whole z-slices, at most about ``max_voxels`` voxels."""
    x, y, z = src.info.shape
    n = max(1, min(z, max_voxels // max(1, x * y)))
    zs = sorted(set(np.linspace(0, z - 1, n).round().astype(int).tolist()))
    return np.concatenate([src.read(Box((0, 0, k), (x, y, k + 1))) for k in zs], axis=2)


def guess_layer_type(src: VolumeSource, dtype: np.dtype) -> tuple[str, str]:
    """``image`` or ``segmentation`` and the reason, from the data itself."""
    info = src.info
    if dtype.kind == "f":
        return "image", "floating-point data"
    if info.channels > 1:
        return "image", f"{info.channels} channels"
    if info.label_hint:
        return "segmentation", "the NIfTI header's intent code is 'label'"
    v = sample(src)[..., 0]
    a, b = v[:-1], v[1:]
    both = (a != 0) & (b != 0)
    pairs = int(both.sum())
    if pairs == 0:
        return "image", "no non-zero neighbouring voxels in a sample"
    same = float((a == b)[both].mean())
    distinct = len(np.unique(v))
    if same >= 0.9:
        return "segmentation", (f"integer data in piecewise-constant regions: {same:.0%} of neighbouring "
                                f"non-zero voxels share a value; {distinct} distinct values in a sample")
    return "image", (f"only {same:.0%} of neighbouring non-zero voxels share a value "
                     f"({distinct} distinct values in a sample)")
