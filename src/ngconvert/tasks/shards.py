"""Assembling the shards of a sharded layer: one independent task per shard file.

The pyramid tasks leave every encoded chunk of a sharded scale in the scratch area
(``.ngconvert/chunks/<scale>/<chunk key>``); a shard task reads the chunks of one shard in
key order and streams them into the shard file, which is stored whole.  No two tasks write
the same shard, each holds one chunk at a time, and a finished shard is marked so that
``--resume`` skips it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codecs.sharding import ShardSpec, compressed_morton, decode_morton, write_shard
from ..core.geometry import Box, ChunkGrid, chunk_key
from ..plan.stages import CHUNK_SCRATCH, SCRATCH
from ..store.base import Store


@dataclass(frozen=True)
class ShardTask:
    scale: int                      # scale index
    shard: int
    items: tuple                    # ((minishard, chunk key), ...)

    @property
    def name(self) -> str:
        return f"scale {self.scale} shard {self.shard}"


def chunk_positions(grid: ChunkGrid) -> np.ndarray:
    g = grid.shape
    return np.stack(np.meshgrid(*(np.arange(n) for n in g), indexing="ij"), -1).reshape(-1, 3)


def plan_shard_tasks(scales, chunk_size, specs: list[dict]) -> list[ShardTask]:
    """Every shard of every scale, with the chunk keys it holds."""
    tasks = []
    for s, spec_json in zip(scales, specs):
        spec = ShardSpec.from_json(spec_json)
        grid = ChunkGrid(s.bounds, chunk_size)
        pos = chunk_positions(grid)
        keys = compressed_morton(pos, grid.shape)
        if spec.hash == "identity":
            h = keys >> np.uint64(spec.preshift_bits)
        else:
            h = np.array([spec.hashed(int(k)) for k in keys], np.uint64)
        mini = h & np.uint64((1 << spec.minishard_bits) - 1)
        shard = (h >> np.uint64(spec.minishard_bits)) & np.uint64((1 << spec.shard_bits) - 1)
        order = np.argsort(shard, kind="stable")
        shard, mini, keys = shard[order], mini[order], keys[order]
        cuts = np.flatnonzero(np.diff(shard)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(shard)]):
            items = tuple(sorted(zip(mini[a:b].tolist(), keys[a:b].tolist())))
            tasks.append(ShardTask(s.index, int(shard[a]), items))
    return tasks


def shard_done_key(task: ShardTask) -> str:
    return f"{SCRATCH}/done/shards/{task.scale}/{task.shard}"


@dataclass(frozen=True)
class ShardCtx:
    """What every shard task of a run shares (sent once per worker); one entry per scale."""
    store: Store
    scales: tuple                   # Scale
    chunk_sizes: tuple              # the scale's chunk size
    specs: tuple                    # the scale's sharding JSON (None: not sharded)
    gzip_level: int = 6


def run_shard_task(ctx: ShardCtx, task: ShardTask) -> int:
    """Write one shard file; returns the number of chunks in it."""
    store = ctx.store
    scale = ctx.scales[task.scale]
    spec = ShardSpec.from_json(ctx.specs[task.scale])
    grid = ChunkGrid(scale.bounds, ctx.chunk_sizes[task.scale])

    def fetch(key: int):
        cell: Box = grid.cell(decode_morton(key, grid.shape))
        name = f"{CHUNK_SCRATCH}/{scale.key}/{chunk_key(cell)}"
        raw = store.get_raw(name)
        if raw is None:
            return None
        if raw.content_encoding == "gzip":
            if spec.data_encoding == "gzip":       # gzipped by the pyramid task: stored as it is
                return raw.data, b"", True
            return store.get(name), b"", False
        return raw.data, b"", False

    n = write_shard(store, f"{scale.key}/{spec.shard_name(task.shard)}", spec, list(task.items), fetch, ctx.gzip_level)
    store.put(shard_done_key(task), b"")
    return n
