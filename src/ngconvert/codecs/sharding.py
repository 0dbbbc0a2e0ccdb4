"""The sharded format (``neuroglancer_uint64_sharded_v1``): keys, hashing, writing and reading.

A shard file is ``2**minishard_bits`` 16-byte index entries (``start, end`` of each
minishard's index, relative to the end of that table), then per minishard its data blobs
in ascending key order followed by its minishard index: a ``[3, n]`` uint64 array of
delta-encoded keys, delta-encoded offsets (from the end of the previous blob) and sizes,
optionally gzipped.  Blobs are gzipped one by one when ``data_encoding`` is gzip (for
multi-resolution meshes only the manifest is; its fragments sit uncompressed just before it).

Shards are written whole into a local temporary file, streaming blob by blob, and then put
in the store in one piece (a rename on disk, a single or multipart upload elsewhere), so a
shard is either absent or complete.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..core.errors import UserError
from ..core.gzip import gzip_compress
from ..store.base import TMP_DIR
from ..store.local import FileStore
# mmh3: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

HASHES = ("identity", "murmurhash3_x86_128")
ENCODINGS = ("raw", "gzip")
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class ShardSpec:
    preshift_bits: int = 0
    hash: str = "identity"
    minishard_bits: int = 0
    shard_bits: int = 0
    minishard_index_encoding: str = "gzip"
    data_encoding: str = "gzip"

    def to_json(self) -> dict:
        return {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": self.preshift_bits, "hash": self.hash,
                "minishard_bits": self.minishard_bits, "shard_bits": self.shard_bits,
                "minishard_index_encoding": self.minishard_index_encoding, "data_encoding": self.data_encoding}

    @classmethod
    def from_json(cls, o: dict) -> "ShardSpec":
        return cls(int(o.get("preshift_bits", 0)), o.get("hash", "identity"), int(o.get("minishard_bits", 0)),
                   int(o.get("shard_bits", 0)), o.get("minishard_index_encoding", "raw"),
                   o.get("data_encoding", "raw"))

    def problems(self) -> list[str]:
        out = []
        if self.hash not in HASHES:
            out.append(f"hash {self.hash!r} is not identity or murmurhash3_x86_128")
        for name in ("preshift_bits", "minishard_bits", "shard_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v <= 64:
                out.append(f"{name} {v!r} is not an integer 0..64")
        if self.preshift_bits + self.minishard_bits + self.shard_bits > 64:
            out.append("preshift_bits + minishard_bits + shard_bits exceed 64")
        for name in ("minishard_index_encoding", "data_encoding"):
            if getattr(self, name) not in ENCODINGS:
                out.append(f"{name} {getattr(self, name)!r} is not raw or gzip")
        return out

    @property
    def index_bytes(self) -> int:
        return 16 << self.minishard_bits

    def hashed(self, key: int) -> int:
        k = (int(key) >> self.preshift_bits) & MASK64
        if self.hash == "identity":
            return k
        import mmh3

        return mmh3.hash64(struct.pack("<Q", k), seed=0, x64arch=False, signed=False)[0]

    def locate(self, key: int) -> tuple[int, int]:
        """(shard number, minishard number) of ``key``."""
        h = self.hashed(key)
        return (h >> self.minishard_bits) & ((1 << self.shard_bits) - 1), h & ((1 << self.minishard_bits) - 1)

    def shard_name(self, shard: int) -> str:
        digits = max(1, math.ceil(self.shard_bits / 4))
        return f"{shard:0{digits}x}.shard"


# ---------------------------------------------------------------- chunk keys


def morton_bits(grid_shape) -> tuple[int, int, int]:
    return tuple(max(0, math.ceil(math.log2(n))) if n > 1 else 0 for n in grid_shape)


def compressed_morton(positions: np.ndarray, grid_shape) -> np.ndarray:
    """Compressed Morton codes of chunk grid positions ``[n, 3]``: bits of x, y, z are
    interleaved from the lowest, and a dimension stops contributing once its bits (enough
    for the grid's extent along it) are used up."""
    pos = np.asarray(positions, np.uint64).reshape(-1, 3)
    bits = morton_bits(grid_shape)
    code = np.zeros(len(pos), np.uint64)
    out_bit = 0
    for b in range(max(bits) if bits else 0):
        for d in range(3):
            if b < bits[d]:
                code |= ((pos[:, d] >> np.uint64(b)) & np.uint64(1)) << np.uint64(out_bit)
                out_bit += 1
    return code


def decode_morton(code: int, grid_shape) -> tuple[int, int, int]:
    bits = morton_bits(grid_shape)
    pos = [0, 0, 0]
    out_bit = 0
    for b in range(max(bits) if bits else 0):
        for d in range(3):
            if b < bits[d]:
                pos[d] |= ((int(code) >> out_bit) & 1) << b
                out_bit += 1
    return tuple(pos)


# ---------------------------------------------------------------- choosing parameters

TARGET_SHARD_BYTES = 2 << 30        # uncompressed chunk bytes per shard
KEYS_PER_MINISHARD_BITS = 9         # 512 keys per minishard


def choose_spec(grid_shape, chunk_bytes: int, encoding: str, target_bytes: int = TARGET_SHARD_BYTES,
                hash: str = "identity") -> ShardSpec:
    """Parameters for a scale: shards of about ``target_bytes`` of uncompressed chunks,
    about 512 chunks per minishard, gzip for the minishard indexes, and gzip for the chunk
    data unless the encoding is already compressed (jpeg, png)."""
    total = sum(morton_bits(grid_shape))
    per_shard = int(math.floor(math.log2(max(1, target_bytes // max(1, chunk_bytes)))))
    per_shard = max(0, min(total, per_shard))
    if hash == "identity":
        pre = min(per_shard, KEYS_PER_MINISHARD_BITS)
        mini = per_shard - pre
    else:
        pre, mini = 0, max(0, per_shard - KEYS_PER_MINISHARD_BITS)
    return ShardSpec(pre, hash, mini, total - per_shard, "gzip",
                     "raw" if encoding in ("jpeg", "png") else "gzip")


# ---------------------------------------------------------------- writing


class ShardFileWriter:
    """Writes one shard file, minishard by minishard (keys ascending within each)."""

    def __init__(self, path: str, spec: ShardSpec, gzip_level: int = 6):
        self.spec = spec
        self.gzip_level = gzip_level
        self.f = open(path, "wb")
        self.f.write(b"\0" * spec.index_bytes)
        self.index = np.zeros((1 << spec.minishard_bits, 2), np.uint64)
        self.count = 0

    def add_minishard(self, minishard: int, entries: Iterable[tuple[int, bytes, bytes, bool]]) -> int:
        """``entries``: (key, data, prefix, encoded) in ascending key order; ``prefix`` is
        written just before ``data`` and not indexed (multires mesh fragments); ``encoded``
        says ``data`` is already in the data encoding (gzipped).  Returns entries written."""
        base = self.spec.index_bytes
        keys, starts, sizes = [], [], []
        for key, data, prefix, encoded in entries:
            if prefix:
                self.f.write(prefix)
            if self.spec.data_encoding == "gzip" and not encoded:
                data = gzip_compress(data, self.gzip_level)
            starts.append(self.f.tell() - base)
            self.f.write(data)
            keys.append(int(key))
            sizes.append(len(data))
        if not keys:
            return 0
        k = np.array(keys, np.uint64)
        st = np.array(starts, np.uint64)
        sz = np.array(sizes, np.uint64)
        rows = np.zeros((3, len(keys)), np.uint64)
        rows[0, 0], rows[0, 1:] = k[0], np.diff(k)
        rows[1, 0] = st[0]
        rows[1, 1:] = st[1:] - (st[:-1] + sz[:-1])
        rows[2] = sz
        blob = rows.astype("<u8").tobytes()
        if self.spec.minishard_index_encoding == "gzip":
            blob = gzip_compress(blob, 6)
        start = self.f.tell() - base
        self.f.write(blob)
        self.index[minishard] = (start, start + len(blob))
        self.count += len(keys)
        return len(keys)

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(self.index.astype("<u8").tobytes())
        self.f.close()


def file_mode() -> int:
    """The mode ``open()`` gives a new file here (0666 less the umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_shard(store, key: str, spec: ShardSpec, items: list[tuple[int, int]],
                fetch: Callable[[int], tuple[bytes, bytes, bool] | None], gzip_level: int = 6) -> int:
    """Write the shard file ``key`` from ``items`` ((minishard, chunk key) pairs); ``fetch``
    returns (data, prefix, already encoded) for a key, or None (nothing stored for it).
    Returns the number of entries.  A local dataset's shard is built in its own temporary
    folder (then renamed into place), others in the system's temporary folder."""

    tmpdir = None
    if isinstance(store, FileStore):
        tmpdir = store.root / TMP_DIR
        tmpdir.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="ngconvert-shard-", dir=tmpdir)
    os.fchmod(fd, file_mode())     # mkstemp makes 0600: shards are read like every other file
    os.close(fd)
    try:
        w = ShardFileWriter(path, spec, gzip_level)
        items = sorted(items)
        at = 0
        while at < len(items):
            m = items[at][0]
            stop = at
            while stop < len(items) and items[stop][0] == m:
                stop += 1

            def entries(group=items[at:stop]):
                for _m, k in group:
                    got = fetch(k)
                    if got is not None:
                        yield (k, *got)
            w.add_minishard(m, entries())
            at = stop
        w.close()
        if w.count == 0:
            os.remove(path)
            return 0
        store.put_file(key, path, content_type="application/octet-stream")
        return w.count
    finally:
        if os.path.exists(path):
            os.remove(path)


# ---------------------------------------------------------------- reading


def _maybe_gunzip(data: bytes, encoding: str) -> bytes:
    if encoding != "gzip":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"gzip data in the shard is damaged ({e})") from None


class ShardedReader:
    """Reads values from the shards under ``prefix`` with ranged reads; shard and minishard
    indexes are cached."""

    def __init__(self, store, prefix: str, spec: ShardSpec):
        self.store, self.prefix, self.spec = store, prefix.rstrip("/"), spec
        self._shard_index: dict[int, np.ndarray | None] = {}
        self._minishards: dict[tuple[int, int], dict[int, tuple[int, int]]] = {}

    def path(self, shard: int) -> str:
        name = self.spec.shard_name(shard)
        return f"{self.prefix}/{name}" if self.prefix else name

    def shard_index(self, shard: int) -> np.ndarray | None:
        if shard not in self._shard_index:
            raw = self.store.get_range(self.path(shard), 0, self.spec.index_bytes)
            if raw is None:
                self._shard_index[shard] = None
            else:
                if len(raw) != self.spec.index_bytes:
                    raise ValueError(f"{self.path(shard)}: shard index is {len(raw)} bytes, "
                                     f"{self.spec.index_bytes} expected")
                self._shard_index[shard] = np.frombuffer(raw, "<u8").reshape(-1, 2)
        return self._shard_index[shard]

    def minishard(self, shard: int, minishard: int) -> dict[int, tuple[int, int]]:
        """key -> (absolute start, size) for one minishard."""
        k = (shard, minishard)
        if k not in self._minishards:
            index = self.shard_index(shard)
            entries: dict[int, tuple[int, int]] = {}
            if index is not None:
                start, end = (int(x) for x in index[minishard])
                if end > start:
                    base = self.spec.index_bytes
                    raw = self.store.get_range(self.path(shard), base + start, base + end)
                    if raw is None or len(raw) != end - start:
                        raise ValueError(f"{self.path(shard)}: minishard {minishard} index is truncated")
                    rows = np.frombuffer(_maybe_gunzip(raw, self.spec.minishard_index_encoding), "<u8")
                    if len(rows) % 3:
                        raise ValueError(f"{self.path(shard)}: minishard {minishard} index has {len(rows)} "
                                         "numbers, not a multiple of 3")
                    rows = rows.reshape(3, -1).astype(np.uint64)
                    keys = np.cumsum(rows[0], dtype=np.uint64)
                    sizes = rows[2]
                    starts = np.zeros(len(keys), np.uint64)
                    pos = np.uint64(base)
                    for i in range(len(keys)):
                        pos = pos + rows[1, i]
                        starts[i] = pos
                        pos = pos + sizes[i]
                    entries = {int(kk): (int(s), int(z)) for kk, s, z in zip(keys, starts, sizes)}
            self._minishards[k] = entries
        return self._minishards[k]

    def locate(self, key: int) -> tuple[int, int, int] | None:
        """(shard, absolute start, size) of ``key``'s stored value, or None."""
        shard, mini = self.spec.locate(key)
        hit = self.minishard(shard, mini).get(int(key))
        return None if hit is None else (shard, hit[0], hit[1])

    def get(self, key: int) -> bytes | None:
        where = self.locate(key)
        if where is None:
            return None
        shard, start, size = where
        raw = self.store.get_range(self.path(shard), start, start + size)
        if raw is None or len(raw) != size:
            raise ValueError(f"{self.path(shard)}: value of key {key} is truncated")
        return _maybe_gunzip(raw, self.spec.data_encoding)

    def get_with_prefix(self, key: int, prefix_size: int) -> tuple[bytes, bytes] | None:
        """(value, the ``prefix_size`` bytes stored just before it): multires manifests."""
        where = self.locate(key)
        if where is None:
            return None
        shard, start, size = where
        if prefix_size > start:
            raise ValueError(f"{self.path(shard)}: fragments of key {key} would start before the file")
        raw = self.store.get_range(self.path(shard), start - prefix_size, start + size)
        if raw is None or len(raw) != prefix_size + size:
            raise ValueError(f"{self.path(shard)}: value of key {key} and its fragments are truncated")
        return _maybe_gunzip(raw[prefix_size:], self.spec.data_encoding), raw[:prefix_size]


def check_spec_json(obj) -> list[str]:
    if not isinstance(obj, dict):
        return ["sharding is not an object"]
    out = []
    if obj.get("@type") != "neuroglancer_uint64_sharded_v1":
        out.append(f"sharding @type {obj.get('@type')!r} is not neuroglancer_uint64_sharded_v1")
    for k in ("preshift_bits", "hash", "minishard_bits", "shard_bits"):
        if k not in obj:
            out.append(f"sharding lacks {k}")
    for k in ("preshift_bits", "minishard_bits", "shard_bits"):
        v = obj.get(k)
        if k in obj and (not isinstance(v, int) or isinstance(v, bool)):
            out.append(f"sharding {k} {v!r} is not an integer")
    for k in ("hash", "minishard_index_encoding", "data_encoding"):
        if k in obj and not isinstance(obj[k], str):
            out.append(f"sharding {k} {obj[k]!r} is not a string")
    if out:
        return out
    return ShardSpec.from_json(obj).problems()


def shard_error(e: Exception, where: str) -> UserError:
    return UserError(f"{where}: {e}; the shard is damaged")
