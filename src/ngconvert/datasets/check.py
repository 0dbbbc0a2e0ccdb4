"""Validating a precomputed dataset (ours or another tool's) against the format.

Checks, each problem reported as one line ``KEY: what is wrong``:

* ``info``: required keys and types, scale order (finest first), chunk and shard
  parameters, the encoding against the data type and channel count;
* chunks (a sample per scale, or all with ``full``): a chunk that is missing although the
  next coarser (or, for the coarsest, the next finer) scale has data there, chunks that do
  not decode to their shape, damaged gzip;
* shards: the shard index, every minishard index (keys belong to the shard and minishard,
  data ranges inside the file);
* meshes: legacy manifests and fragments, multi-resolution manifests (their exact length)
  and fragment sizes, sharded or not;
* segment properties: the spec's rules.
"""
from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import field

import numpy as np

from ..codecs.chunks import decode_chunk
from ..codecs.sharding import ShardedReader, ShardSpec, check_spec_json, compressed_morton
from ..core.errors import UserError
from ..core.geometry import Box, ChunkGrid, chunk_key
from ..meshes.formats import parse_multires_manifest, read_legacy_fragment
from ..sources.precomputed import PrecomputedVolume
from ..sources.precomputed_info import DECODED, NUMBER_TYPES, Report, check_volume_info
from ..store.base import Store
from ..store.open import open_store


def _listing(store: Store, prefix: str, r: Report) -> list[tuple[str, int]]:
    """Keys under ``prefix``; a store that cannot list (plain HTTP) gives none, noted once."""
    try:
        return list(store.list(prefix))
    except UserError:
        r.notes.add("the store cannot list objects (plain HTTP): shard files and mesh manifests were "
                    "not enumerated; check the bucket or folder itself for those")
        return []


# ---------------------------------------------------------------- info


# ---------------------------------------------------------------- chunks


def _sample(n: int, full: bool, count: int) -> np.ndarray:
    if full or n <= count:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=count, replace=False))


def _grid(info: dict, i: int) -> ChunkGrid:
    s = info["scales"][i]
    start = tuple(s.get("voxel_offset", (0, 0, 0)))
    return ChunkGrid(Box(start, tuple(a + n for a, n in zip(start, s["size"]))), tuple(s["chunk_sizes"][0]))


def _region_has_data(vol: PrecomputedVolume, info: dict, src: int, dst: int, box: Box) -> bool:
    """Whether scale ``dst`` has non-zero voxels over ``box`` of scale ``src``."""
    a = np.array(info["scales"][src]["resolution"], float)
    b = np.array(info["scales"][dst]["resolution"], float)
    lo = np.floor(np.array(box.start) * a / b).astype(int)
    hi = np.ceil(np.array(box.stop) * a / b).astype(int)
    try:
        return bool(vol.read(dst, Box(tuple(lo), tuple(hi))).any())
    except UserError:
        return False


def check_chunks(store: Store, info: dict, r: Report, full: bool, per_scale: int) -> None:
    vol = PrecomputedVolume(store, info)
    dtype = np.dtype(info["data_type"])
    channels = int(info["num_channels"])
    last = len(info["scales"]) - 1
    for i, s in enumerate(info["scales"]):
        grid = _grid(info, i)
        if "sharding" in s:
            check_shards(store, s, grid, r)
        idx = _sample(grid.count, full, per_scale)
        shape = grid.shape
        cells = []
        for n in idx:
            k, rem = divmod(int(n), shape[0] * shape[1])
            j, ii = divmod(rem, shape[0])
            cells.append(grid.cell((ii, j, k)))
        block = tuple(s.get("compressed_segmentation_block_size", (8, 8, 8)))
        enc = str(s["encoding"]).lower()
        repeats: dict[str, list] = {}       # one line per kind of damage, with a count

        def damaged(key: str, message: str) -> None:
            repeats.setdefault(message, [key, 0])[1] += 1

        for cell in cells:
            key = f"{s['key']}/{chunk_key(cell)}"
            r.count("chunks")
            try:
                ((_c, _w, data),) = list(vol.chunks(i, grid, [cell]))
            except UserError as e:
                text = str(e)
                damaged(key, text.split(": ", 1)[1] if "sharding" in s and ": " in text else text)
                continue
            if data is None:
                # data at the next coarser scale over a missing chunk: it was lost (the other way
                # round is normal: averaging can round a sparse region to zero)
                if i < last and _region_has_data(vol, info, i, i + 1, cell):
                    r.add(key, f"missing, but scale {info['scales'][i + 1]['key']} has data there")
                continue
            if enc not in DECODED:
                continue
            try:
                decode_chunk(data, enc, cell.shape, dtype, channels, block)
            except Exception as e:       # every decoder error is a damaged chunk
                r.add(key, f"does not decode to {'x'.join(map(str, cell.shape))}x{channels} ({e})")
        for message, (key, n) in repeats.items():
            r.add(key, message + (f" (and {n - 1} more chunk(s) of this scale)" if n > 1 else ""))


def check_shards(store: Store, s: dict, grid: ChunkGrid, r: Report) -> None:
    spec = ShardSpec.from_json(s["sharding"])
    reader = ShardedReader(store, s["key"], spec)
    for key, size in _listing(store, s["key"] + "/", r):
        name = key.rsplit("/", 1)[-1]
        m = re.fullmatch(r"([0-9a-f]+)\.shard", name)
        if not m:
            continue
        shard = int(m.group(1), 16)
        r.count("shards")
        _check_one_shard(reader, spec, shard, key, size, r, grid)


def _check_one_shard(reader: ShardedReader, spec: ShardSpec, shard: int, key: str, size: int, r: Report,
                     grid: ChunkGrid | None) -> list[tuple[int, int, int]]:
    """Shard index and minishard indexes; returns (key, start, size) entries."""
    out = []
    try:
        index = reader.shard_index(shard)
    except ValueError as e:
        r.add(key, str(e))
        return out
    if index is None:
        return out
    max_code = None
    if grid is not None:
        max_code = int(compressed_morton(np.array([[n - 1 for n in grid.shape]]), grid.shape)[0])
    for mini, (a, b) in enumerate(index.tolist()):
        if b < a or spec.index_bytes + b > size:
            r.add(key, f"shard index entry {mini} ({a}, {b}) points outside the file ({size} bytes)")
            continue
        try:
            entries = reader.minishard(shard, mini)
        except (ValueError, OSError, EOFError, zlib.error) as e:
            r.add(key, f"minishard {mini}: {e}")
            continue
        for k, (start, n) in entries.items():
            if reader.spec.locate(k) != (shard, mini):
                r.add(key, f"minishard {mini} lists key {k}, which belongs to shard {reader.spec.locate(k)[0]} "
                           f"minishard {reader.spec.locate(k)[1]}")
            if start < spec.index_bytes or start + n > size:
                r.add(key, f"key {k}: data [{start}, {start + n}) lies outside the file ({size} bytes)")
            if max_code is not None and k > max_code:
                r.add(key, f"key {k} is beyond the chunk grid {grid.shape}")
            out.append((k, start, n))
    return out


# ---------------------------------------------------------------- meshes


def check_meshes(store: Store, directory: str, r: Report, full: bool, per_dir: int) -> None:
    prefix = f"{directory}/" if directory else ""
    blob = store.get(prefix + "info")
    mesh_type = "neuroglancer_legacy_mesh"
    minfo: dict = {}
    if blob is not None:
        try:
            minfo = json.loads(blob)
            mesh_type = minfo.get("@type", mesh_type)
        except ValueError:
            r.add(prefix + "info", "is not valid JSON")
            return
    if mesh_type == "neuroglancer_multilod_draco":
        _check_multires(store, prefix, minfo, r, full, per_dir)
        return
    if mesh_type != "neuroglancer_legacy_mesh":
        r.add(prefix + "info", f"@type {mesh_type!r} is not a mesh type")
        return
    manifests = sorted(k for k, _ in _listing(store, prefix, r) if re.fullmatch(r"\d+:0", k[len(prefix):]))
    for key in [manifests[i] for i in _sample(len(manifests), full, per_dir)]:
        r.count("mesh manifests")
        try:
            frags = json.loads(store.get(key) or b"null")["fragments"]
            assert isinstance(frags, list) and all(isinstance(f, str) for f in frags)
        except (ValueError, TypeError, KeyError, AssertionError):
            r.add(key, 'is not a legacy manifest {"fragments": [names]}')
            continue
        for name in frags:
            data = store.get(prefix + name)
            if data is None:
                r.add(key, f"lists fragment {name!r}, which does not exist")
                continue
            try:
                read_legacy_fragment(data)
            except (ValueError, struct.error) as e:
                r.add(prefix + name, f"is not a legacy mesh fragment ({e})")


def _check_multires(store: Store, prefix: str, minfo: dict, r: Report, full: bool, per_dir: int) -> None:
    bits = minfo.get("vertex_quantization_bits")
    if bits not in (10, 16):
        r.add(prefix + "info", f"vertex_quantization_bits {bits!r} is not 10 or 16")
    t = minfo.get("transform")
    if t is not None and not (isinstance(t, list) and len(t) == 12):
        r.add(prefix + "info", "transform is not 12 numbers")
    if "sharding" in minfo:
        for p in check_spec_json(minfo["sharding"]):
            r.add(prefix + "info", p)
            return
        spec = ShardSpec.from_json(minfo["sharding"])
        reader = ShardedReader(store, prefix.rstrip("/"), spec)
        for key, size in _listing(store, prefix, r):
            m = re.fullmatch(r"([0-9a-f]+)\.shard", key[len(prefix):])
            if not m:
                continue
            r.count("shards")
            entries = _check_one_shard(reader, spec, int(m.group(1), 16), key, size, r, None)
            for k, _start, _n in [entries[i] for i in _sample(len(entries), full, per_dir)]:
                r.count("mesh manifests")
                try:
                    manifest = reader.get(k)
                    parsed = parse_multires_manifest(manifest)
                    total = sum(int(x.sum()) for x in parsed["sizes"])
                    reader.get_with_prefix(k, total)
                except (ValueError, OSError, EOFError, struct.error) as e:
                    r.add(f"{key} segment {k}", str(e))
        return
    listing = _listing(store, prefix, r)
    manifests = sorted(k for k, _ in listing if re.fullmatch(r"\d+\.index", k[len(prefix):]))
    sizes = dict(listing)
    for key in [manifests[i] for i in _sample(len(manifests), full, per_dir)]:
        r.count("mesh manifests")
        try:
            parsed = parse_multires_manifest(store.get(key) or b"")
        except (ValueError, struct.error) as e:
            r.add(key, str(e))
            continue
        total = sum(int(x.sum()) for x in parsed["sizes"])
        frag = key[: -len(".index")]
        if frag not in sizes and total:
            r.add(frag, "fragment data is missing")
        elif sizes.get(frag, 0) != total:
            r.add(frag, f"is {sizes.get(frag, 0)} bytes, the manifest's fragments add up to {total}")


# ---------------------------------------------------------------- segment properties


def segment_property_problems(obj) -> list[str]:
    """The spec's rules for ``neuroglancer_segment_properties``."""
    out = []
    if not isinstance(obj, dict) or obj.get("@type") != "neuroglancer_segment_properties":
        return ["@type is not neuroglancer_segment_properties"]
    inline = obj.get("inline")
    if not isinstance(inline, dict):
        return ["only inline properties are supported, and inline is missing"]
    ids = inline.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) and re.fullmatch(r"\d+", i) and int(i) < 2 ** 64
                                            for i in ids):
        return ["ids must be a list of base-10 strings of uint64 values"]
    if len(set(ids)) != len(ids):
        out.append("ids repeat")
    props = inline.get("properties")
    if not isinstance(props, list):
        return out + ["properties is not a list"]
    seen, kinds = set(), {}
    for p in props:
        if not isinstance(p, dict):
            out.append("a property is not an object")
            continue
        pid, kind = p.get("id"), p.get("type")
        where = f"property {pid!r}"
        if not isinstance(pid, str) or not pid:
            out.append("a property has no id")
        elif pid in seen:
            out.append(f"{where}: id is used twice")
        seen.add(pid)
        if kind not in ("label", "description", "string", "number", "tags"):
            out.append(f"{where}: type {kind!r} is not label, description, string, number or tags")
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
        values = p.get("values")
        if not isinstance(values, list) or len(values) != len(ids):
            out.append(f"{where}: values must be a list as long as ids ({len(ids)})")
            continue
        if kind in ("label", "description", "string") and not all(isinstance(v, str) for v in values):
            out.append(f"{where}: values must be strings")
        if kind == "number":
            dt = p.get("data_type")
            if dt not in NUMBER_TYPES:
                out.append(f"{where}: data_type {dt!r} is not one of {', '.join(NUMBER_TYPES)}")
            elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                out.append(f"{where}: values must be numbers")
            elif NUMBER_TYPES[dt] is not None:
                lo, hi = NUMBER_TYPES[dt]
                if not all(float(v).is_integer() and lo <= v <= hi for v in values):
                    out.append(f"{where}: values do not fit {dt}")
        if kind == "tags":
            tags = p.get("tags")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                out.append(f"{where}: tags must be a list of strings")
                continue
            bad = [t for t in tags if "#" in t or re.search(r"\s", t) or not t]
            if bad:
                out.append(f"{where}: tag {bad[0]!r} contains a space or '#'")
            if len({t.lower() for t in tags}) != len(tags):
                out.append(f"{where}: tags repeat (case-insensitively)")
            if "description" in p:
                out.append(f"{where}: a tags property has no description")
            td = p.get("tag_descriptions")
            if td is not None and (not isinstance(td, list) or len(td) != len(tags)):
                out.append(f"{where}: tag_descriptions must be as long as tags")
            for v in values:
                if not (isinstance(v, list) and all(isinstance(x, int) and 0 <= x < len(tags) for x in v)
                        and v == sorted(set(v))):
                    out.append(f"{where}: each value must be a sorted list of distinct tag indices")
                    break
    for kind in ("label", "description", "tags"):
        if kinds.get(kind, 0) > 1:
            out.append(f"more than one {kind} property")
    return out


def check_properties(store: Store, directory: str, r: Report) -> None:
    key = f"{directory}/info" if directory else "info"
    blob = store.get(key)
    if blob is None:
        r.add(key, "missing (info names segment properties here)")
        return
    try:
        obj = json.loads(blob)
    except ValueError:
        r.add(key, "is not valid JSON")
        return
    r.count("segment properties")
    for p in segment_property_problems(obj):
        r.add(key, p)


# ---------------------------------------------------------------- entry point


def _join(base: str, rel: str) -> str:
    parts = [p for p in (base.rstrip("/") + "/" + rel).split("/") if p not in ("", ".")]
    out: list[str] = []
    for p in parts:
        if p == "..":
            if out:
                out.pop()
        else:
            out.append(p)
    return "/".join(out)


def check(url, storage=None, full: bool = False, sample: int = 64) -> Report:
    """Validate the dataset at ``url``; see the module docstring."""
    store = open_store(url, storage if "://" in str(url) else None)
    store.check_readable()
    r = Report(store.url)
    blob = store.get("info")
    if blob is None:
        r.add("info", "missing: this is not a precomputed dataset (or it is unfinished)")
        return r
    try:
        info = json.loads(blob)
    except ValueError as e:
        r.add("info", f"is not valid JSON ({e})")
        return r
    if not isinstance(info, dict):
        r.add("info", "is not a JSON object")
        return r
    kind = info.get("@type", "neuroglancer_multiscale_volume")
    if store.exists(".ngconvert/publishing"):
        r.add(".ngconvert/publishing", "an overwrite was interrupted while the new dataset was copied in (old and "
                                       "new objects are mixed); run that command again with --resume")
    if kind in ("neuroglancer_legacy_mesh", "neuroglancer_multilod_draco"):
        check_meshes(store, "", r, full, sample)
        if isinstance(info.get("segment_properties"), str):
            check_properties(store, _join("", info["segment_properties"]), r)
        return r
    if kind == "neuroglancer_segment_properties":
        for p in segment_property_problems(info):
            r.add("info", p)
        return r
    if check_volume_info(info, r):
        check_chunks(store, info, r, full, sample)
    if isinstance(info.get("mesh"), str):
        directory = _join("", info["mesh"])
        if check_reference(store, directory, "mesh", r):
            check_meshes(store, directory, r, full, sample)
    if isinstance(info.get("skeletons"), str):
        directory = _join("", info["skeletons"])
        if check_reference(store, directory, "skeletons", r):
            check_skeleton_info(store, directory, r)
    if isinstance(info.get("segment_properties"), str):
        check_properties(store, _join("", info["segment_properties"]), r)
    return r


def check_reference(store: Store, directory: str, field: str, r: Report) -> bool:
    """A folder that ``info[field]`` names must exist and hold something (a dangling
    reference makes the viewer fail on every segment); False when it does not."""
    if not directory:
        r.add("info", f"'{field}' names no folder")
        return False
    if store.exists(f"{directory}/info"):
        return True
    notes = len(r.notes)
    if _listing(store, directory + "/", r) or len(r.notes) > notes:
        # the folder is there: its info tells the viewer the format (legacy meshes included)
        r.add(f"{directory}/info", f"missing (info names {field} in {directory}/; write the folder's info, "
                                   "e.g. {\"@type\": \"neuroglancer_legacy_mesh\"})" if field == "mesh"
              else f"missing (info names {field} in {directory}/)")
        return field == "mesh"
    r.add(f"{directory}/", f"missing or empty (info names it as '{field}')")
    return False


def check_skeleton_info(store: Store, directory: str, r: Report) -> None:
    key = f"{directory}/info"
    try:
        obj = json.loads(store.get(key) or b"")
    except ValueError:
        r.add(key, "is not valid JSON")
        return
    if not isinstance(obj, dict) or obj.get("@type") != "neuroglancer_skeletons":
        r.add(key, "@type is not neuroglancer_skeletons")
        return
    r.count("skeleton info")
