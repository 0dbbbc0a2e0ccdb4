"""Boxes, scale extents and chunk grids of a precomputed volume.

All coordinates are absolute voxel coordinates of one scale, in x, y, z order,
with exclusive upper bounds, exactly as the chunk keys spell them.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

Vec = tuple[int, int, int]


def floordiv(a: int, b: int) -> int:
    return a // b


def ceildiv(a: int, b: int) -> int:
    return -((-a) // b)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``[start, stop)`` in voxels."""

    start: Vec
    stop: Vec

    @property
    def shape(self) -> Vec:
        return tuple(max(0, b - a) for a, b in zip(self.start, self.stop))

    @property
    def empty(self) -> bool:
        return any(b <= a for a, b in zip(self.start, self.stop))

    @property
    def voxels(self) -> int:
        s = self.shape
        return s[0] * s[1] * s[2]

    def intersect(self, other: "Box") -> "Box":
        return Box(tuple(max(a, b) for a, b in zip(self.start, other.start)),
                   tuple(min(a, b) for a, b in zip(self.stop, other.stop)))

    def slices(self, origin: Vec) -> tuple[slice, slice, slice]:
        """Slices that cut this box out of an array whose voxel [0,0,0] is at ``origin``."""
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, origin))

    def downsample(self, factor: Vec) -> "Box":
        """The box of coarser voxels that the voxels of this box fall into."""
        return Box(tuple(floordiv(a, f) for a, f in zip(self.start, factor)),
                   tuple(ceildiv(b, f) for b, f in zip(self.stop, factor)))

    def upsample(self, factor: Vec) -> "Box":
        """The finer voxels covered by this box."""
        return Box(tuple(a * f for a, f in zip(self.start, factor)),
                   tuple(b * f for b, f in zip(self.stop, factor)))

    def to_json(self) -> list:
        return [list(self.start), list(self.stop)]

    @classmethod
    def from_json(cls, obj) -> "Box":
        return cls(tuple(obj[0]), tuple(obj[1]))


def chunk_key(box: Box) -> str:
    """The spec's unsharded chunk name: ``x0-x1_y0-y1_z0-z1``."""
    return "_".join(f"{a}-{b}" for a, b in zip(box.start, box.stop))


@dataclass(frozen=True)
class ChunkGrid:
    """The chunk grid of one scale: cells start at ``bounds.start``; edge cells are truncated."""

    bounds: Box
    chunk: Vec

    @property
    def shape(self) -> Vec:
        return tuple(ceildiv(n, c) for n, c in zip(self.bounds.shape, self.chunk))

    @property
    def count(self) -> int:
        s = self.shape
        return s[0] * s[1] * s[2]

    def cell(self, index: Vec) -> Box:
        start = tuple(o + i * c for o, i, c in zip(self.bounds.start, index, self.chunk))
        stop = tuple(min(a + c, e) for a, c, e in zip(start, self.chunk, self.bounds.stop))
        return Box(start, stop)

    def cells_in(self, box: Box):
        """Chunk boxes whose cells intersect ``box`` (x fastest)."""
        box = box.intersect(self.bounds)
        if box.empty:
            return
        lo = [floordiv(a - o, c) for a, o, c in zip(box.start, self.bounds.start, self.chunk)]
        hi = [ceildiv(b - o, c) for b, o, c in zip(box.stop, self.bounds.start, self.chunk)]
        for k, j, i in itertools.product(range(lo[2], hi[2]), range(lo[1], hi[1]), range(lo[0], hi[0])):
            yield self.cell((i, j, k))

    def is_aligned(self, box: Box) -> bool:
        """True when ``box`` (clipped to the bounds) is a union of whole cells."""
        box = box.intersect(self.bounds)
        for a, b, o, e, c in zip(box.start, box.stop, self.bounds.start, self.bounds.stop, self.chunk):
            if (a - o) % c or (b != e and (b - o) % c):
                return False
        return True
