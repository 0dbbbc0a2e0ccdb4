"""An independent checker for Neuroglancer ``neuroglancer_segment_properties`` objects.

Written from the format's rules, not from ngconvert (nothing is imported from it), so the
tests can hold the library's output against the format:

* ``@type`` is ``neuroglancer_segment_properties``;
* ``inline`` is an object with ``ids`` (base-10 strings of distinct integers 0 <= id < 2^64)
  and ``properties`` (a list);
* every property has a unique string ``id``, a ``type`` among label/description/string/
  number/tags, and ``values`` as long as ``ids``; at most one label, description and tags
  property;
* label/description/string values are strings;
* ``number`` has a ``data_type`` among uint8/int8/uint16/int16/uint32/int32/float32 and
  every value is a finite JSON number inside that type's range (whole for integer types);
* ``tags`` has ``tags`` (strings without '#' or whitespace, distinct ignoring case), an
  optional ``tag_descriptions`` list of the same length, no ``description`` key, and each
  value is an ascending list of distinct indices into ``tags``.
"""
from __future__ import annotations

import math
import re

PROPERTY_TYPES = ("label", "description", "string", "number", "tags")
SINGLE_TYPES = ("label", "description", "tags")
INTEGER_RANGES = {
    "uint8": (0, 2 ** 8 - 1), "int8": (-2 ** 7, 2 ** 7 - 1),
    "uint16": (0, 2 ** 16 - 1), "int16": (-2 ** 15, 2 ** 15 - 1),
    "uint32": (0, 2 ** 32 - 1), "int32": (-2 ** 31, 2 ** 31 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38
NUMBER_TYPES = tuple(INTEGER_RANGES) + ("float32",)


def _is_json_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_ids(ids, problems: list[str]) -> None:
    if not isinstance(ids, list):
        problems.append(f"inline.ids must be a list, got {type(ids).__name__}")
        return
    seen: set[int] = set()
    for k, s in enumerate(ids):
        if not isinstance(s, str):
            problems.append(f"inline.ids[{k}] = {s!r} is not a string")
            continue
        if not re.fullmatch(r"0|[1-9][0-9]*", s):
            problems.append(f"inline.ids[{k}] = {s!r} is not a base-10 non-negative integer")
            continue
        n = int(s)
        if n >= 2 ** 64:
            problems.append(f"inline.ids[{k}] = {s} is not below 2^64")
        if n in seen:
            problems.append(f"inline.ids[{k}] = {s} is listed twice")
        seen.add(n)


def _check_number(where: str, prop: dict, problems: list[str]) -> None:
    data_type = prop.get("data_type")
    if data_type not in NUMBER_TYPES:
        problems.append(f"{where}: data_type {data_type!r} is not one of {', '.join(NUMBER_TYPES)}")
        return
    for k, v in enumerate(prop.get("values") or []):
        if not _is_json_number(v):
            problems.append(f"{where}.values[{k}] = {v!r} is not a number")
            continue
        if isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{where}.values[{k}] = {v!r} is not a finite number (not valid JSON)")
            continue
        if data_type == "float32":
            if abs(v) > FLOAT32_MAX:
                problems.append(f"{where}.values[{k}] = {v!r} is outside the float32 range")
            continue
        if isinstance(v, float) and not v.is_integer():
            problems.append(f"{where}.values[{k}] = {v!r} is not an integer ({data_type})")
            continue
        lo, hi = INTEGER_RANGES[data_type]
        if not lo <= v <= hi:
            problems.append(f"{where}.values[{k}] = {v!r} is outside the {data_type} range {lo}..{hi}")


def _check_tags(where: str, prop: dict, problems: list[str]) -> None:
    tags = prop.get("tags")
    if "description" in prop:
        problems.append(f"{where}: a tags property may not have a 'description'")
    if not isinstance(tags, list):
        problems.append(f"{where}: 'tags' must be a list of strings, got {type(tags).__name__}")
        tags = []
    lowered: set[str] = set()
    for k, t in enumerate(tags):
        if not isinstance(t, str):
            problems.append(f"{where}.tags[{k}] = {t!r} is not a string")
            continue
        if not t:
            problems.append(f"{where}.tags[{k}] is empty")
        if "#" in t:
            problems.append(f"{where}.tags[{k}] = {t!r} contains '#'")
        if re.search(r"\s", t):
            problems.append(f"{where}.tags[{k}] = {t!r} contains whitespace")
        if t.lower() in lowered:
            problems.append(f"{where}.tags[{k}] = {t!r} repeats a tag (tags compare ignoring case)")
        lowered.add(t.lower())
    if "tag_descriptions" in prop:
        descs = prop["tag_descriptions"]
        if not isinstance(descs, list) or len(descs) != len(tags):
            problems.append(f"{where}: tag_descriptions must be a list as long as tags ({len(tags)})")
        elif not all(isinstance(d, str) for d in descs):
            problems.append(f"{where}: tag_descriptions must be strings")
    for k, v in enumerate(prop.get("values") or []):
        if not isinstance(v, list):
            problems.append(f"{where}.values[{k}] = {v!r} is not a list of tag indices")
            continue
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
            problems.append(f"{where}.values[{k}] = {v!r} holds a non-integer tag index")
            continue
        bad = [i for i in v if not 0 <= i < len(tags)]
        if bad:
            problems.append(f"{where}.values[{k}] = {v!r} has indices outside 0..{len(tags) - 1}: {bad}")
        if any(a >= b for a, b in zip(v, v[1:])):
            problems.append(f"{where}.values[{k}] = {v!r} is not sorted ascending without repeats")


def check_segment_properties(info) -> list[str]:
    """Problems with a ``segment_properties/info`` object; an empty list when it is valid."""
    problems: list[str] = []
    if not isinstance(info, dict):
        return [f"the info must be an object, got {type(info).__name__}"]
    if info.get("@type") != "neuroglancer_segment_properties":
        problems.append(f"@type is {info.get('@type')!r}, not 'neuroglancer_segment_properties'")
    inline = info.get("inline")
    if not isinstance(inline, dict):
        problems.append("'inline' must be an object with ids and properties")
        return problems
    ids = inline.get("ids")
    _check_ids(ids, problems)
    n_ids = len(ids) if isinstance(ids, list) else None
    props = inline.get("properties")
    if not isinstance(props, list):
        problems.append("inline.properties must be a list")
        return problems
    seen_ids: set[str] = set()
    type_count: dict[str, int] = {}
    for p, prop in enumerate(props):
        where = f"inline.properties[{p}]"
        if not isinstance(prop, dict):
            problems.append(f"{where} is not an object")
            continue
        pid = prop.get("id")
        if not isinstance(pid, str):
            problems.append(f"{where}: id {pid!r} is not a string")
        elif pid in seen_ids:
            problems.append(f"{where}: id {pid!r} is used by another property")
        else:
            seen_ids.add(pid)
        ptype = prop.get("type")
        if ptype not in PROPERTY_TYPES:
            problems.append(f"{where}: type {ptype!r} is not one of {', '.join(PROPERTY_TYPES)}")
            continue
        type_count[ptype] = type_count.get(ptype, 0) + 1
        values = prop.get("values")
        if not isinstance(values, list):
            problems.append(f"{where}: values must be a list")
            continue
        if n_ids is not None and len(values) != n_ids:
            problems.append(f"{where}: {len(values)} values for {n_ids} ids")
        if ptype in ("label", "description", "string"):
            for k, v in enumerate(values):
                if not isinstance(v, str):
                    problems.append(f"{where}.values[{k}] = {v!r} is not a string")
        elif ptype == "number":
            _check_number(where, prop, problems)
        else:
            _check_tags(where, prop, problems)
    for t in SINGLE_TYPES:
        if type_count.get(t, 0) > 1:
            problems.append(f"{type_count[t]} properties of type {t!r}; at most one is allowed")
    return problems
