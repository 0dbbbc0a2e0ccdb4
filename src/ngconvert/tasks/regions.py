"""Running one region task: read once, write every level the task owns, leave a carry."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..codecs.chunks import encode_chunk
from ..codecs.kernels import mean_from_sums, pool_sum, pool_values
from ..core.geometry import Box, ChunkGrid, chunk_key
from ..core.gzip import gzip_compress
from ..plan.stages import CHUNK_SCRATCH, Plan, Task, carry_key, done_key
from ..sources.open import open_source
from ..store.base import Store, StoreItem
from ..store.local import FileStore, MemoryStore
# fastremap: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)


@dataclass
class TaskResult:
    chunks: int = 0
    bytes_written: int = 0
    labels: np.ndarray | None = None      # label ids seen (level-0 tasks of a layer with a label table)


def read_source_region(plan: Plan, box: Box) -> np.ndarray:
    """Level-0 voxels of ``box`` (dataset coordinates), in the layer's data type."""
    src = open_source(plan.source)
    offset = plan.layer.voxel_offset
    local = Box(tuple(a - o for a, o in zip(box.start, offset)), tuple(b - o for b, o in zip(box.stop, offset)))
    data = src.read(local)
    dtype = np.dtype(plan.layer.data_type)
    if data.dtype != dtype:
        data = cast(data, dtype)
    if plan.layer.selects_labels:
        data = select_labels(data, plan.layer.keep_labels, plan.layer.drop_labels)
    return data


def select_labels(data: np.ndarray, keep, drop) -> np.ndarray:
    """Labels not kept (or dropped) become 0, in a copy (``data`` may be the caller's array)."""
    import fastremap

    if keep is not None:
        out = fastremap.mask_except(data, [int(k) for k in keep], in_place=False)
    else:
        out = fastremap.mask(data, [int(d) for d in drop], in_place=False)
    return np.asfortranarray(out)


def labels_seen(data: np.ndarray) -> np.ndarray:
    import fastremap

    return np.asarray(fastremap.unique(data), dtype=np.uint64)


def cast(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert to ``dtype``; float to integer rounds, and every conversion clips to the range."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if data.dtype.kind == "f":
            data = np.nan_to_num(np.rint(data), nan=0.0)
            data = np.clip(data, float(info.min), float(info.max))
        elif data.dtype.kind in "iu" and not np.can_cast(data.dtype, dtype):
            src = np.iinfo(data.dtype)      # bounds the source type can hold, so clip cannot overflow
            data = np.clip(data, data.dtype.type(max(info.min, src.min)), data.dtype.type(min(info.max, src.max)))
    return np.asfortranarray(data.astype(dtype, copy=False))


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(arr), allow_pickle=False)
    return buf.getvalue()


def read_carry(store: Store, plan: Plan, level: int, box: Box, dtype) -> np.ndarray:
    scale = plan.scales()[level]
    out = np.zeros(box.shape + (plan.layer.num_channels,), dtype=dtype, order="F")
    for cell in ChunkGrid(scale.bounds, plan.layer.chunk_size).cells_in(box):
        blob = store.get(carry_key(level, cell))
        if blob is None:
            raise RuntimeError(f"intermediate data for level {level} at {chunk_key(cell)} is missing; "
                               "run again with --resume")
        part = np.load(io.BytesIO(blob), allow_pickle=False)
        inter = cell.intersect(box)
        out[inter.slices(box.start)] = part[inter.slices(cell.start)]
    return out


class ChunkWriter:
    def __init__(self, store: Store, plan: Plan):
        self.store, self.plan = store, plan
        self.opts = plan.layer.encoding_options
        # sharded layers: chunks wait in the scratch area, uncompressed, until their shard is
        # assembled (the shard's data_encoding then compresses them)
        self.sharded = plan.layer.sharding is not None
        self.gzip = plan.layer.compress == "gzip"
        self.result = TaskResult()

    def write_level(self, level: int, values: np.ndarray, box: Box) -> None:
        scale = self.plan.scales()[level]
        grid = ChunkGrid(scale.bounds, self.plan.layer.chunk_size)
        skip_empty = self.plan.layer.skip_empty
        # sharded scales gzip here when their data encoding is gzip: the shard takes the bytes as they are
        gzip = (self.plan.layer.sharding[level]["data_encoding"] == "gzip") if self.sharded else self.gzip

        def encoded():
            for cell in grid.cells_in(box):
                chunk = values[cell.slices(box.start)]
                if skip_empty and not chunk.any():
                    continue
                data = encode_chunk(chunk, self.opts)
                enc = None
                if gzip:
                    data, enc = gzip_compress(data, self.plan.layer.gzip_level), "gzip"
                self.result.chunks += 1
                key = f"{scale.key}/{chunk_key(cell)}"
                yield StoreItem(f"{CHUNK_SCRATCH}/{key}" if self.sharded else key, data, enc)

        if isinstance(self.store, (FileStore, MemoryStore)):
            for item in encoded():
                self.store.put(item.key, item.data, content_encoding=item.content_encoding)
                self.result.bytes_written += len(item.data)
        else:   # network stores: many requests in flight while the next chunks are encoded
            self.result.bytes_written += self.store.put_many(encoded())


@dataclass(frozen=True)
class PyramidCtx:
    """What every pyramid task of a run shares (sent once per worker)."""
    store: Store
    plan: Plan


def run_task(ctx: PyramidCtx, task: Task) -> TaskResult:
    store, plan = ctx.store, ctx.plan
    stage = plan.stages[task.stage]
    scales = plan.scales()
    layer = plan.layer
    dtype = np.dtype(layer.data_type)
    average = layer.downsample == "average"
    writer = ChunkWriter(store, plan)

    box = plan.footprint(task, stage.base)
    if stage.base == 0:
        cur = read_source_region(plan, box)
    else:
        cur = read_carry(store, plan, stage.base, box, np.float64 if average else dtype)
    marker = b""
    if stage.base == 0 and layer.segments is not None:
        writer.result.labels = labels_seen(cur)
        marker = writer.result.labels.tobytes()
    if stage.first == stage.base:
        writer.write_level(stage.base, cur, box)
    for level in range(stage.base + 1, stage.top + 1):
        factor = scales[level].factor
        if average:
            cur, box = pool_sum(cur, box, factor)
            values = mean_from_sums(cur, box, scales[0].bounds, scales[level].cumulative, dtype)
        else:
            cur, box = pool_values(cur, box, factor, layer.downsample)
            values = cur
        writer.write_level(level, values, box)
    if stage.carry:
        grid = ChunkGrid(scales[stage.top].bounds, layer.chunk_size)
        for cell in grid.cells_in(box):
            store.put(carry_key(stage.top, cell), _npy_bytes(cur[cell.slices(box.start)]))
    store.put(done_key(task), marker)
    return writer.result
