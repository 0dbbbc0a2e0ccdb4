"""Segment properties (``neuroglancer_segment_properties``) and colours from a label table.

Written next to a segmentation layer's ``info``:

* ``segment_properties/info``: inline ids (base-10 strings, ascending) with a ``label``
  property (names), ``description`` when any label has one, ``tags`` (tag columns and
  true/false columns) and one ``number`` or ``string`` property per other column;
* ``segment_colors.json``: ``{"@type": "ngconvert_segment_colors_v1", "colors": {"17":
  "#dcd814", ...}}`` for every id in the layer, from the table or :func:`auto_color`.  The
  viewer state's ``segmentColors`` is built from it.
"""
from __future__ import annotations

import re

from .labels import BOOL_WORDS, NUMBER_TYPES, _INT_RANGES, LabelTable, _number, color_of, to_hex
from ..core.jsonio import dumps

PROPERTIES_DIR = "segment_properties"
COLORS_KEY = "segment_colors.json"
RESERVED = ("label", "description", "tags")


def clean_tag(tag: str) -> str:
    """Tags may hold no spaces and no ``#`` (the viewer's rule)."""
    return re.sub(r"\s+", "_", tag.strip()).replace("#", "")


def _bool(v):
    if isinstance(v, bool):
        return v
    return BOOL_WORDS.get(str(v).strip().lower())


FLOAT32_MAX = 3.4028234663852886e38


def _number_type(values) -> str | None:
    """The smallest number type that holds every value exactly enough, or None (then the
    column is written as strings): integers beyond 32 bits or floats beyond float32."""
    if all(isinstance(v, int) for v in values):
        lo, hi = min(values, default=0), max(values, default=0)
        for t in NUMBER_TYPES:
            a, b = _INT_RANGES[t]
            if a <= lo and hi <= b:
                return t
        return None
    if any(abs(v) > FLOAT32_MAX for v in values):
        return None
    return "float32"


def _unique_id(name: str, taken: set[str]) -> str:
    base = name or "property"
    out, n = base, 2
    while out.lower() in taken:
        out, n = f"{base}_{n}", n + 1
    taken.add(out.lower())
    return out


def segment_properties(table: LabelTable, ids: list[int]) -> tuple[dict, list[str]]:
    """The ``segment_properties/info`` object for ``ids`` (each must be in ``table``) and notes."""
    ids = sorted(ids)
    labels = [table.labels[i] for i in ids]
    notes: list[str] = []
    props: list[dict] = [{"id": "label", "type": "label", "values": [lab.name for lab in labels]}]
    if any(lab.description for lab in labels):
        props.append({"id": "description", "type": "description", "values": [lab.description for lab in labels]})

    tag_names: list[str] = []
    tag_index: dict[str, int] = {}
    per_label: list[set[int]] = [set() for _ in labels]

    def tag(i: int, text: str) -> None:
        t = clean_tag(text)
        if not t:
            return
        if t != text.strip():
            notes.append(f"tag {text!r} written as {t!r} (tags cannot hold spaces or '#')")
        k = t.lower()                       # tags match case-insensitively: one spelling each
        if k not in tag_index:
            tag_index[k] = len(tag_names)
            tag_names.append(t)
        per_label[i].add(tag_index[k])

    for i, lab in enumerate(labels):
        for t in lab.tags:
            tag(i, t)
    taken = set(RESERVED)
    for col in table.extra_columns:
        values = [lab.extra.get(col, "") for lab in labels]
        present = [v for v in values if not (isinstance(v, str) and not v.strip())]
        if present and all(_bool(v) is not None for v in present) and not all(
                isinstance(_number(v), (int, float)) for v in present):
            for i, v in enumerate(values):
                if _bool(v):
                    tag(i, col)
            continue
        nums = [_number(v) for v in values]
        kind = _number_type(nums) if values and all(n is not None for n in nums) else None
        if kind is not None:
            props.append({"id": _unique_id(col, taken), "type": "number", "data_type": kind, "values": nums})
        else:
            props.append({"id": _unique_id(col, taken), "type": "string",
                          "values": ["" if v is None else str(v) for v in values]})
    if tag_names:
        props.append({"id": "tags", "type": "tags", "tags": tag_names,
                      "values": [sorted(s) for s in per_label]})
    info = {"@type": "neuroglancer_segment_properties",
            "inline": {"ids": [str(i) for i in ids], "properties": props}}
    return info, sorted(set(notes))


def segment_colors(table: LabelTable | None, ids) -> dict:
    return {"@type": "ngconvert_segment_colors_v1",
            "colors": {str(i): to_hex(color_of(table, i)) for i in sorted(ids)}}


def _first(ids, n=8) -> str:
    ids = sorted(ids)
    more = f", ... ({len(ids) - n} more)" if len(ids) > n else ""
    return ", ".join(map(str, ids[:n])) + more


def consistency_warnings(table: LabelTable, present: set[int], listed: set[int]) -> list[str]:
    """Warnings for ids in the table but not the volume, and the reverse (background 0 aside)."""
    out = []
    absent = {i for i in table.labels if i != 0} - present
    if absent:
        what = "listed in the segment properties" if absent & listed else "left out of the segment properties"
        out.append(f"{len(absent)} id(s) of {table.source} are not in the volume ({what}): {_first(absent)}")
    untabled = present - set(table.labels) - {0}
    if untabled:
        out.append(f"{len(untabled)} id(s) in the volume are not in {table.source} (no name; coloured "
                   f"automatically): {_first(untabled)}")
    return out


def listed_ids(table: LabelTable, present: set[int], keep=None, drop=None, all_labels: bool = False) -> list[int]:
    """Ids the properties list: the table's ids found in the volume, or with ``all_labels``
    every table id the selection keeps; never 0 (background)."""
    if all_labels:
        ids = set(table.labels)
        if keep is not None:
            ids &= set(keep)
        if drop is not None:
            ids -= set(drop)
    else:
        ids = present & set(table.labels)
    return sorted(ids - {0})


def write_segment_metadata(store, layer, present: set[int]) -> list[str]:
    """Write ``segment_properties/info`` and ``segment_colors.json``; return the warnings."""

    table = LabelTable.from_json(layer.segments)
    present = set(present) - {0}
    ids = listed_ids(table, present, layer.keep_labels, layer.drop_labels, layer.all_labels)
    info, notes = segment_properties(table, ids)
    store.put(f"{PROPERTIES_DIR}/info", dumps(info), content_type="application/json")
    store.put(COLORS_KEY, dumps(segment_colors(table, present | set(ids))), content_type="application/json")
    selected = table
    if layer.keep_labels is not None or layer.drop_labels is not None:
        # ids the user removed are not missing from the volume
        keep = set(layer.keep_labels) if layer.keep_labels is not None else set(table.labels)
        keep -= set(layer.drop_labels or ())
        selected = LabelTable({i: lab for i, lab in table.labels.items() if i in keep}, table.source)
    return notes + consistency_warnings(selected, present, set(ids))
