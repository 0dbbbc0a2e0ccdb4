"""Reading and validating a precomputed ``info`` file (the checks every reader relies on)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..codecs.chunks import DATA_TYPES, encoding_problem
from ..codecs.sharding import check_spec_json
from ..core.errors import UserError
from ..store.base import Store


KNOWN_ENCODINGS = ("raw", "jpeg", "png", "compressed_segmentation", "compresso", "jxl")
DECODED = ("raw", "jpeg", "png", "compressed_segmentation", "compresso")
NUMBER_TYPES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767),
                "uint32": (0, 2 ** 32 - 1), "int32": (-2 ** 31, 2 ** 31 - 1), "float32": None}


@dataclass
class Report:
    url: str
    problems: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)
    notes: set = field(default_factory=set)

    def add(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n


def _is_int_list(v, n=3, positive=False) -> bool:
    return (isinstance(v, list) and len(v) == n and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            and (not positive or all(x > 0 for x in v)))


def check_volume_info(info: dict, r: Report) -> bool:
    """Problems of a volume info; True when the scales are usable for the chunk checks."""
    ok = True
    if info.get("@type", "neuroglancer_multiscale_volume") != "neuroglancer_multiscale_volume":
        r.add("info", f"@type {info.get('@type')!r} is not neuroglancer_multiscale_volume")
    if info.get("type") not in ("image", "segmentation"):
        r.add("info", f"type {info.get('type')!r} is not image or segmentation")
    dtype = info.get("data_type")
    if dtype not in DATA_TYPES:
        r.add("info", f"data_type {dtype!r} is not one of {', '.join(DATA_TYPES)}")
        ok = False
    channels = info.get("num_channels")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        r.add("info", f"num_channels {channels!r} is not a positive integer")
        ok = False
    if info.get("type") == "segmentation" and isinstance(channels, int) and channels != 1:
        r.add("info", f"a segmentation has num_channels {channels}; it must be 1")
    scales = info.get("scales")
    if not isinstance(scales, list) or not scales:
        r.add("info", "scales is missing or empty")
        return False
    keys = set()
    prev = None
    for i, s in enumerate(scales):
        where = f"info scale {i}"
        if not isinstance(s, dict):
            r.add(where, "is not an object")
            ok = False
            continue
        key = s.get("key")
        if not isinstance(key, str) or not key:
            r.add(where, "key is missing")
            ok = False
        elif key in keys:
            r.add(where, f"key {key!r} is used by another scale")
        keys.add(key)
        if not _is_int_list(s.get("size"), positive=True):
            r.add(where, f"size {s.get('size')!r} is not three positive integers")
            ok = False
        if "voxel_offset" in s and not _is_int_list(s.get("voxel_offset")):
            r.add(where, f"voxel_offset {s.get('voxel_offset')!r} is not three integers")
            ok = False
        res = s.get("resolution")
        if not (isinstance(res, list) and len(res) == 3 and all(isinstance(x, (int, float)) and x > 0 for x in res)):
            r.add(where, f"resolution {res!r} is not three positive numbers")
            ok = False
            res = None
        cs = s.get("chunk_sizes")
        if not (isinstance(cs, list) and cs and all(_is_int_list(c, positive=True) for c in cs)):
            r.add(where, f"chunk_sizes {cs!r} is not a list of three positive integers")
            ok = False
        enc = s.get("encoding")
        enc = enc.lower() if isinstance(enc, str) else enc      # the format's names are case-insensitive
        if enc not in KNOWN_ENCODINGS:
            r.add(where, f"encoding {enc!r} is not one of {', '.join(KNOWN_ENCODINGS)}")
            ok = False
        elif dtype in DATA_TYPES and isinstance(channels, int) and enc in DECODED:
            problem = encoding_problem(enc, dtype, channels)
            if problem:
                r.add(where, problem)
        if enc == "compressed_segmentation" and not _is_int_list(
                s.get("compressed_segmentation_block_size"), positive=True):
            r.add(where, "compressed_segmentation_block_size is missing or not three positive integers")
            ok = False
        if enc == "jpeg" and "jpeg_quality" in s and not (isinstance(s["jpeg_quality"], int)
                                                           and 0 <= s["jpeg_quality"] <= 100):
            r.add(where, f"jpeg_quality {s['jpeg_quality']!r} is not 0..100")
        if "sharding" in s:
            for p in check_spec_json(s["sharding"]):
                r.add(where, p)
                ok = False
            if isinstance(cs, list) and len(cs) != 1:
                r.add(where, "a sharded scale must have exactly one chunk size")
        if res is not None and prev is not None and any(a < b for a, b in zip(res, prev)):
            r.add(where, f"resolution {res} is finer than the previous scale's {prev}; list scales from finest "
                         "to coarsest")
        prev = res if res is not None else prev
    for name in ("mesh", "skeletons", "segment_properties"):
        if name in info and not isinstance(info[name], str):
            r.add("info", f"{name} is not a string")
    return ok


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
