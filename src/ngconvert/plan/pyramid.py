"""Choosing chunk shapes and downsampling factors (pure functions)."""
from __future__ import annotations

import math

from ..core.geometry import Box, Vec, ceildiv

DEFAULT_CHUNK_VOXELS = 64 ** 3


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def choose_chunk_size(shape: Vec, resolution: tuple[float, float, float],
                      target_voxels: int = DEFAULT_CHUNK_VOXELS, max_z: int | None = None) -> Vec:
    """A power-of-two chunk shape holding about ``target_voxels`` voxels.

    The chunk is grown one axis at a time, always doubling the axis whose physical
    extent is smallest, so chunks are as close to physically cubic as possible
    (64^3 for isotropic data, 128x128x16 for 4x4x40 nm).  An axis never grows past
    the volume's extent rounded up to a power of two, so thin volumes get wide,
    flat chunks instead of mostly-empty cubes.  ``max_z`` caps the depth (slice stacks
    whose slices are large keep a chunk-deep slab small).
    """
    chunk = [1, 1, 1]
    limit = [next_pow2(max(1, n)) for n in shape]
    if max_z is not None:
        limit[2] = min(limit[2], 1 << max(0, max_z.bit_length() - 1))
    while chunk[0] * chunk[1] * chunk[2] * 2 <= target_voxels:
        growable = [d for d in range(3) if chunk[d] < limit[d]]
        if not growable:
            break
        d = min(growable, key=lambda d: (chunk[d] * resolution[d], d))
        chunk[d] *= 2
    return tuple(chunk)


def next_factor(size: Vec, resolution: tuple[float, float, float]) -> Vec:
    """The factor for one more pyramid level, anisotropy-aware.

    Axes whose voxels are much finer than the coarsest axis (finer than max/sqrt(2))
    are halved first, so 4x4x40 nm data goes 8x8x40, 16x16x40, 32x32x40 before z is
    reduced.  Once the data is close to isotropic every axis is halved.  Axes that are
    a single voxel thick are never reduced.
    """
    coarsest = max(r for r, n in zip(resolution, size) if n > 1) if any(n > 1 for n in size) else 1.0
    pick = [n > 1 and r < coarsest / math.sqrt(2) for r, n in zip(resolution, size)]
    if not any(pick):
        pick = [n > 1 for n in size]
    return tuple(2 if p else 1 for p in pick)


def plan_factors(bounds: Box, resolution, chunk: Vec, fixed_factor: Vec | None = None,
                 max_mips: int | None = None) -> list[Vec]:
    """Factors of every level after the first, until the volume fits in one chunk."""
    factors: list[Vec] = []
    box = bounds
    res = tuple(float(r) for r in resolution)
    while any(n > c for n, c in zip(box.shape, chunk)):
        if max_mips is not None and len(factors) >= max_mips:
            break
        if fixed_factor is not None:
            f = tuple(ff if n > 1 else 1 for ff, n in zip(fixed_factor, box.shape))
        else:
            f = next_factor(box.shape, res)
        if f == (1, 1, 1):
            break
        factors.append(f)
        box = box.downsample(f)
        res = tuple(r * ff for r, ff in zip(res, f))
    return factors


def scale_boxes(bounds: Box, factors: list[Vec]) -> list[Box]:
    """Bounds of each level: ``start = floor(start/f)``, ``stop = ceil(stop/f)``.

    Coarse voxel ``i`` covers fine voxels ``[f*i, f*i + f)`` in absolute coordinates,
    which is the placement the viewer derives from resolutions and voxel offsets.
    """
    boxes = [bounds]
    for f in factors:
        boxes.append(boxes[-1].downsample(f))
    return boxes


def chunk_count(box: Box, chunk: Vec) -> int:
    n = 1
    for s, c in zip(box.shape, chunk):
        n *= ceildiv(s, c)
    return n
