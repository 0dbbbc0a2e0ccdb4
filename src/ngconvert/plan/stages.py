"""Turning a layer spec into stages of independent, idempotent region tasks.

A *stage* computes pyramid levels ``first..top`` from level ``base``: level 0 is read
from the source, a later base is read from the exact intermediate ("carry") that the
previous stage left in the destination's scratch area.  A *task* owns a block of
``top``-level chunks and the regions under it at every level it writes, so tasks of a
stage never write the same key and can run in any order, anywhere, more than once.

A stage spans several levels only when the chunk grids of those levels nest (always
for a zero voxel offset; offsets that are not a multiple of the factors break the
nesting, and such levels get a stage each).  The region a task reads is capped by a
memory budget, and stages are kept wide enough to use every worker.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from .spec import LayerSpec, Scale
from ..core.geometry import Box, ChunkGrid, Vec, ceildiv, chunk_key
from ..sources.open import SourceRef

SCRATCH = ".ngconvert"
CHUNK_SCRATCH = f"{SCRATCH}/chunks"      # chunks of sharded scales, before their shard is written
DEFAULT_TASK_BYTES = 64 << 20


@dataclass(frozen=True)
class Stage:
    index: int
    base: int            # level read
    first: int           # first level written
    top: int             # last level written
    group: Vec           # top-level chunks per task, per axis
    carry: bool          # leaves the top level's exact data for the next stage

    def to_json(self):
        return {"index": self.index, "base": self.base, "first": self.first, "top": self.top,
                "group": list(self.group), "carry": self.carry}

    @classmethod
    def from_json(cls, o):
        return cls(o["index"], o["base"], o["first"], o["top"], tuple(o["group"]), o["carry"])


@dataclass(frozen=True)
class Task:
    stage: int
    index: int
    box: Box             # region of the stage's top level

    @property
    def name(self) -> str:
        return f"stage {self.stage} task {self.index} ({self.box.start}-{self.box.stop})"


@dataclass
class Plan:
    layer: LayerSpec
    source: SourceRef
    source_dtype: str
    stages: list[Stage]
    _scales: list[Scale] | None = field(default=None, repr=False, compare=False)

    def scales(self) -> list[Scale]:
        if self._scales is None:
            self._scales = self.layer.scales()
        return self._scales

    def tasks(self, stage: Stage):
        """The stage's tasks, lazily, in a fixed order."""
        scale = self.scales()[stage.top]
        step = tuple(c * g for c, g in zip(self.layer.chunk_size, stage.group))
        grid = ChunkGrid(scale.bounds, step)
        for n, (k, j, i) in enumerate(itertools.product(*(range(s) for s in reversed(grid.shape)))):
            yield Task(stage.index, n, grid.cell((i, j, k)))

    def task_count(self, stage: Stage) -> int:
        scale = self.scales()[stage.top]
        step = tuple(c * g for c, g in zip(self.layer.chunk_size, stage.group))
        return ChunkGrid(scale.bounds, step).count

    def estimated_bytes(self) -> int:
        """Uncompressed bytes of every scale (an upper bound of what is written, near enough)."""
        item = np.dtype(self.layer.data_type).itemsize * self.layer.num_channels
        return sum(int(np.prod(s.bounds.shape, dtype=np.int64)) * item for s in self.scales())

    def estimated_chunks(self) -> int:
        """Chunks of every scale (files written, unsharded)."""
        return sum(ChunkGrid(s.bounds, self.layer.chunk_size).count for s in self.scales())

    def footprint(self, task: Task, level: int) -> Box:
        """The region of ``level`` under a task's top-level box."""
        scales = self.scales()
        box = task.box
        for lvl in range(self.stages[task.stage].top, level, -1):
            box = box.upsample(scales[lvl].factor).intersect(scales[lvl - 1].bounds)
        return box

    def to_json(self) -> dict:
        return {"layer": self.layer.to_json(), "source": self.source.to_json(),
                "source_dtype": self.source_dtype, "stages": [s.to_json() for s in self.stages]}

    @classmethod
    def from_json(cls, o) -> "Plan":
        return cls(LayerSpec.from_json(o["layer"]), SourceRef.from_json(o["source"]),
                   o["source_dtype"], [Stage.from_json(s) for s in o["stages"]])


def _nests(scales: list[Scale], chunk: Vec, lower: int, top: int) -> bool:
    """True when task boundaries of level ``top`` fall on chunk boundaries of ``lower``."""
    f = (1, 1, 1)
    for lvl in range(top, lower, -1):
        f = tuple(a * b for a, b in zip(f, scales[lvl].factor))
    for o_top, o_low, ff, c in zip(scales[top].bounds.start, scales[lower].bounds.start, f, chunk):
        if (ff * o_top - o_low) % c:
            return False
    return True


def _region_bytes(scales, chunk, base, top, group, itemsize) -> int:
    f = (1, 1, 1)
    for lvl in range(top, base, -1):
        f = tuple(a * b for a, b in zip(f, scales[lvl].factor))
    shape = [min(c * g * ff, n) for c, g, ff, n in zip(chunk, group, f, scales[base].bounds.shape)]
    return int(np.prod(shape)) * itemsize


def _tasks(scales, chunk, top, group) -> int:
    n = 1
    for s, c, g in zip(scales[top].bounds.shape, chunk, group):
        n *= ceildiv(s, c * g)
    return n


def plan_stages(layer: LayerSpec, workers: int, task_bytes: int = DEFAULT_TASK_BYTES,
                whole_slices: bool = False) -> list[Stage]:
    """Stages for ``layer``; ``whole_slices`` makes tasks that read the source take whole
    x-y slabs (a slice image can only be decoded whole, so it is read once)."""
    scales = layer.scales()
    chunk = layer.chunk_size
    last = len(scales) - 1
    value_bytes = np.dtype(layer.data_type).itemsize * layer.num_channels
    carry_bytes = (8 * layer.num_channels) if layer.downsample == "average" else value_bytes
    want_tasks = max(1, 4 * workers)
    stages: list[Stage] = []
    base, first = 0, 0
    while first <= last:
        slab = whole_slices and base == 0
        itemsize = value_bytes if base == 0 else carry_bytes

        def start_group(level):
            if not slab:
                return (1, 1, 1)
            shape = scales[level].bounds.shape
            return (ceildiv(shape[0], chunk[0]), ceildiv(shape[1], chunk[1]), 1)

        top = first
        for cand in range(first + 1, last + 1):
            if not all(_nests(scales, chunk, lvl, cand) for lvl in range(first, cand)):
                break
            if _region_bytes(scales, chunk, base, cand, start_group(cand), itemsize) > task_bytes:
                break
            if _tasks(scales, chunk, cand, start_group(cand)) < want_tasks <= _tasks(
                    scales, chunk, top, start_group(top)):
                break
            top = cand
        group = list(start_group(top))
        while True:   # batch small tasks while the budget and the worker count allow
            grown = False
            for d in ((2,) if slab else (0, 1, 2)):
                g = list(group)
                g[d] *= 2
                if group[d] * chunk[d] >= scales[top].bounds.shape[d]:
                    continue
                if _region_bytes(scales, chunk, base, top, g, itemsize) > task_bytes:
                    continue
                if _tasks(scales, chunk, top, g) < want_tasks:
                    continue
                group, grown = g, True
            if not grown:
                break
        # level 0 is re-read from the source, so only coarser levels need a carry
        stages.append(Stage(len(stages), base, first, top, tuple(group), 0 < top < last))
        base, first = top, top + 1
    return stages


def done_key(task: Task) -> str:
    return f"{SCRATCH}/done/{task.stage}/{task.index}"


def carry_key(level: int, box: Box) -> str:
    return f"{SCRATCH}/carry/{level}/{chunk_key(box)}"


PLAN_KEY = f"{SCRATCH}/plan.json"
