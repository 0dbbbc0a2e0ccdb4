"""Per-scale statistics of a dataset on a store, or of a planned layer."""
from __future__ import annotations

import numpy as np

from ..codecs.sharding import ShardedReader, ShardSpec
from ..core.errors import UserError
from ..core.geometry import Box
from ..plan.pyramid import chunk_count
from ..plan.spec import format_number
from ..store.base import Store


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n}"


def scale_rows(info: dict, store: Store | None = None) -> list[dict]:
    """One row per scale: geometry, chunk counts, raw size and (with a store) what is stored."""
    itemsize = np.dtype(info["data_type"]).itemsize * int(info.get("num_channels", 1))
    stored: dict[str, list[int]] = {}
    if store is not None:
        for key, size in store.list(""):
            top, _, rest = key.partition("/")
            if rest and "/" not in rest:
                entry = stored.setdefault(top, [0, 0])
                entry[0] += 1
                entry[1] += size
    rows = []
    for s in info["scales"]:
        size, off = s["size"], s.get("voxel_offset", [0, 0, 0])
        chunk = s["chunk_sizes"][0]
        box = Box(tuple(off), tuple(o + n for o, n in zip(off, size)))
        row = {
            "key": s["key"], "size": size, "voxel_offset": off, "resolution": s["resolution"],
            "chunk_size": chunk, "encoding": s["encoding"], "chunks": chunk_count(box, tuple(chunk)),
            "raw_bytes": int(np.prod(size)) * itemsize,
        }
        if store is not None:
            files, nbytes = stored.get(s["key"], [0, 0])
            row["stored_bytes"] = nbytes
            if "sharding" in s:
                row["shards"] = files
                row["stored_chunks"] = _sharded_chunks(store, s)
            else:
                row["stored_chunks"] = files
        rows.append(row)
    return rows


def _sharded_chunks(store: Store, scale: dict) -> int:
    """Chunks stored in a sharded scale, counted from the minishard indexes."""

    spec = ShardSpec.from_json(scale["sharding"])
    reader = ShardedReader(store, scale["key"], spec)
    total = 0
    for key, _size in store.list(scale["key"] + "/"):
        name = key.rsplit("/", 1)[-1]
        if not name.endswith(".shard"):
            continue
        try:
            shard = int(name[:-6], 16)
            for m in range(1 << spec.minishard_bits):
                total += len(reader.minishard(shard, m))
        except ValueError as e:
            raise UserError(f"{store.describe(key)}: {e}; run 'ngconvert check' for details") from None
    return total


def format_rows(rows: list[dict]) -> str:
    stored = rows and "stored_chunks" in rows[0]
    sharded = any("shards" in r for r in rows)
    head = ["scale", "size", "offset", "resolution (nm)", "chunk", "encoding", "chunks", "raw"]
    if stored:
        head += ["stored", "bytes", "ratio"] + (["shards"] if sharded else [])
    table = [head]
    for r in rows:
        line = [r["key"], "x".join(map(str, r["size"])), ",".join(map(str, r["voxel_offset"])),
                "x".join(format_number(v) for v in r["resolution"]), "x".join(map(str, r["chunk_size"])),
                r["encoding"], str(r["chunks"]), _human(r["raw_bytes"])]
        if stored:
            ratio = r["stored_bytes"] / r["raw_bytes"] if r["raw_bytes"] else 0
            line += [str(r["stored_chunks"]), _human(r["stored_bytes"]), f"{ratio:.3f}"]
            if sharded:
                line.append(str(r.get("shards", "-")))
        table.append(line)
    if stored:
        tot = ["total", "", "", "", "", "", str(sum(r["chunks"] for r in rows)),
               _human(sum(r["raw_bytes"] for r in rows)), str(sum(r["stored_chunks"] for r in rows)),
               _human(sum(r["stored_bytes"] for r in rows)), ""]
        if sharded:
            tot.append(str(sum(r.get("shards", 0) for r in rows)))
        table.append(tot)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


