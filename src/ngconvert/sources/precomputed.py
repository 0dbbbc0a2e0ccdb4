"""Reading regions of an existing precomputed volume through a store (any writer's output).

Used to mesh a written layer, and by commands that read datasets back.  Missing chunks
read as zeros, as in the viewer.
"""
from __future__ import annotations

import numpy as np

from .precomputed_info import read_info_checked
from ..codecs.chunks import decode_chunk
from ..codecs.sharding import ShardedReader, ShardSpec, compressed_morton
from ..core.errors import UserError
from ..core.geometry import Box, ChunkGrid, chunk_key
from ..store.base import Store


class PrecomputedVolume:
    def __init__(self, store: Store, info: dict | None = None):
        self.store = store
        if info is None:

            info = read_info_checked(store)
        if info.get("@type", "neuroglancer_multiscale_volume") != "neuroglancer_multiscale_volume" or \
                "scales" not in info:
            raise UserError(f"{store.url} is not a precomputed volume (info @type {info.get('@type')!r})")
        self.info = info
        self.dtype = np.dtype(info["data_type"])
        self._readers: dict[int, ShardedReader] = {}
        self.channels = int(info.get("num_channels", 1))

    def scale(self, index: int) -> dict:
        scales = self.info["scales"]
        if not 0 <= index < len(scales):
            raise UserError(f"{self.store.url} has scales 0..{len(scales) - 1}, not {index}")
        return scales[index]

    def bounds(self, index: int) -> Box:
        s = self.scale(index)
        start = tuple(int(v) for v in s.get("voxel_offset", (0, 0, 0)))
        return Box(start, tuple(a + int(n) for a, n in zip(start, s["size"])))

    def resolution(self, index: int) -> tuple[float, float, float]:
        return tuple(float(r) for r in self.scale(index)["resolution"])

    def read(self, index: int, box: Box) -> np.ndarray:
        """The voxels of ``box`` (dataset coordinates) at scale ``index``: ``[x, y, z, c]``."""
        s = self.scale(index)
        bounds = self.bounds(index)
        box = box.intersect(bounds)
        out = np.zeros(box.shape + (self.channels,), dtype=self.dtype, order="F")
        chunk = tuple(int(c) for c in s["chunk_sizes"][0])
        grid = ChunkGrid(bounds, chunk)
        block = tuple(s.get("compressed_segmentation_block_size", (8, 8, 8)))
        cells = list(grid.cells_in(box))
        for cell, key, data in self.chunks(index, grid, cells):
            if data is None:
                continue
            try:
                arr = decode_chunk(data, str(s["encoding"]).lower(), cell.shape, self.dtype, self.channels, block)
            except ValueError as e:
                raise UserError(f"{self.store.describe(key)}: {e}; the dataset is damaged") from None
            inter = cell.intersect(box)
            out[inter.slices(box.start)] = arr[inter.slices(cell.start)]
        return out

    def _reader(self, index: int) -> ShardedReader:
        if index not in self._readers:
            s = self.scale(index)
            self._readers[index] = ShardedReader(self.store, s["key"], ShardSpec.from_json(s["sharding"]))
        return self._readers[index]

    def chunks(self, index: int, grid: ChunkGrid, cells):
        """(cell, key for messages, stored bytes or None) for chunks of a scale, sharded or not."""
        s = self.scale(index)
        if "sharding" not in s:
            keys = {f"{s['key']}/{chunk_key(c)}": c for c in cells}
            for key, data in self.store.get_many(list(keys)):
                yield keys[key], key, data
            return
        reader = self._reader(index)
        for cell in cells:
            pos = tuple((a - b) // c for a, b, c in zip(cell.start, grid.bounds.start, grid.chunk))
            code = int(compressed_morton(np.array([pos]), grid.shape)[0])
            try:
                data = reader.get(code)
            except ValueError as e:
                raise UserError(f"{self.store.describe(s['key'])}: {e}; the dataset is damaged") from None
            yield cell, f"{s['key']} chunk {chunk_key(cell)}", data
