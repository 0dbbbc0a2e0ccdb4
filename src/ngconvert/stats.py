"""Per-scale statistics of a dataset on a store, or of a planned layer."""
from __future__ import annotations

import json

import numpy as np

from .errors import UserError
from .geometry import Box
from .pyramid import chunk_count
from .spec import format_number
from .store import Store


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
    from .sharding import ShardedReader, ShardSpec

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


def read_info(store: Store) -> dict:
    """The volume ``info`` of the dataset at ``store``, validated as ``ngconvert check`` does."""
    return read_info_checked(store)


def parse_info(blob: bytes, where: str) -> dict:
    """An ``info`` file's JSON object; anything else is one line naming ``where``."""
    try:
        info = json.loads(blob)
    except ValueError as e:
        raise UserError(f"{where}: is not valid JSON ({e}); fix it or re-run the conversion") from None
    if not isinstance(info, dict):
        raise UserError(f"{where}: is not a JSON object; fix it or re-run the conversion")
    return info


def read_info_checked(store: Store, blob: bytes | None = None) -> dict:
    """The ``info`` of a precomputed volume, checked with the rules of ``ngconvert check``
    (keys, types, scales); any problem is one :class:`UserError` line naming the file.
    ``blob``: the info's bytes when the caller has already read them."""
    from .check import Report, check_volume_info

    blob = store.get("info") if blob is None else blob
    where = store.describe("info")
    if blob is None:
        if store.exists(".ngconvert/plan.json"):
            raise UserError(f"{store.url} is an unfinished conversion (no info yet); finish it with "
                            "'ngconvert convert ... --resume'")
        raise UserError(f"{store.url}: no 'info' file; give the folder of a precomputed dataset")
    info = parse_info(blob, where)
    kind = info.get("@type", "neuroglancer_multiscale_volume")
    if kind != "neuroglancer_multiscale_volume":
        raise UserError(f"{where}: @type {kind!r} is not a precomputed volume (neuroglancer_multiscale_volume); "
                        "give the folder of an image or segmentation layer")
    r = Report(store.url)
    check_volume_info(info, r)
    if r.problems:
        more = f" (and {len(r.problems) - 1} more problem(s); see 'ngconvert check')" if len(r.problems) > 1 else ""
        raise UserError(f"{where}: {r.problems[0]}{more}; fix it or re-run the conversion")
    return info
