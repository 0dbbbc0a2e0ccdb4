"""Label tables: ids with names, colours, descriptions, tags and other properties.

One model (:class:`LabelTable`) read from every format atlases come with, detected by
extension or content:

* CSV/TSV with a header row (column mapping in :data:`COLUMN_ROLES`, documented in the README);
* JSON: ``{id: name}``, ``{id: {name, color, description, ...}}`` or a list of objects;
* ITK-SNAP label descriptions (``IDX R G B A VIS MSH "LABEL"``);
* FreeSurfer colour LUTs and 3D Slicer colour tables (``id name R G B A``).

Every problem names the file and line and says how to fix it.

Over 450 lines because the label-file readers still sit with the table and colours; the
split into properties/label_files.py was left for a later change so that this move stays
purely a move.
"""
from __future__ import annotations

import colorsys
import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError, read_text_file

Color = tuple[int, int, int]

# normalised column name -> role; the first name of each role found in a header is used
COLUMN_ROLES: dict[str, tuple[str, ...]] = {
    "id": ("id", "label_id", "labelid", "label_value", "labelvalue", "label_index", "index", "idx",
           "structure_id", "segment_id", "value", "no", "number"),
    "name": ("name", "label", "label_name", "structure_name", "structure", "region_name", "region",
             "segment_name", "segment", "acronym", "abbreviation"),
    "description": ("description", "desc", "full_name", "fullname", "long_name"),
    "color": ("color", "colour", "color_hex_triplet", "color_hex", "hex", "rgb", "rgb_hex"),
    "tags": ("tags", "tag"),
}
COLOR_COMPONENTS = (("r", "g", "b"), ("red", "green", "blue"), ("color_r", "color_g", "color_b"),
                    ("colour_r", "colour_g", "colour_b"))
IGNORED_COLUMNS = ("a", "alpha", "color_a", "colour_a", "opacity")
BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False}
NUMBER_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32")
_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767),
               "uint32": (0, 2 ** 32 - 1), "int32": (-2 ** 31, 2 ** 31 - 1)}
MAX_ID = 2 ** 64 - 1


@dataclass
class Label:
    id: int
    name: str = ""
    color: Color | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)     # other columns: column name -> str, number or bool
    line: int = 0

    def to_json(self) -> dict:
        d = {"id": self.id, "name": self.name}
        if self.color is not None:
            d["color"] = to_hex(self.color)
        if self.description:
            d["description"] = self.description
        if self.tags:
            d["tags"] = list(self.tags)
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_json(cls, o: dict) -> "Label":
        color = o.get("color")
        return cls(int(o["id"]), o.get("name", ""), parse_color(color) if color else None, o.get("description", ""),
                   tuple(o.get("tags", ())), dict(o.get("extra", {})))


@dataclass
class LabelTable:
    """Labels by id, in the order of the source table."""

    labels: dict[int, Label]
    source: str = ""
    kind: str = ""                          # the format it was read from
    extra_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label_id) -> bool:
        return label_id in self.labels

    def names(self) -> dict[str, list[int]]:
        """Lower-cased names and acronyms -> ids (a name may be shared)."""
        out: dict[str, list[int]] = {}
        for lab in self.labels.values():
            for text in _aliases(lab):
                out.setdefault(text.lower(), []).append(lab.id)
        return out

    def to_json(self) -> dict:
        return {"source": self.source, "kind": self.kind, "extra_columns": list(self.extra_columns),
                "labels": [lab.to_json() for lab in self.labels.values()]}

    @classmethod
    def from_json(cls, o: dict) -> "LabelTable":
        labels = [Label.from_json(x) for x in o["labels"]]
        return cls({lab.id: lab for lab in labels}, o.get("source", ""), o.get("kind", ""),
                   list(o.get("extra_columns", [])))


def _aliases(lab: Label) -> list[str]:
    out = [lab.name] if lab.name else []
    for key in ("acronym", "abbreviation"):
        v = lab.extra.get(key)
        if isinstance(v, str) and v:
            out.append(v)
    return out


# ---------------------------------------------------------------- colours

_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


def parse_color(value) -> Color:
    """``#rrggbb``, ``rrggbb``, ``#rgb``, ``r,g,b`` / ``r g b`` (0-255) or a list of 3-4 numbers.

    Raises ``ValueError`` with what was wrong; callers add the file and line.
    """
    if isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        text = str(value).strip()
        m = _HEX.match(text)
        if m and len(m.group(1)) == 3 and not text.startswith("#") and text.isdigit():
            m = None         # "300" is a number (out of range below), not the shorthand #330000
        if m:
            h = m.group(1)
            if len(h) == 3:
                h = "".join(c * 2 for c in h)
            return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
        text = re.sub(r"^rgba?\((.*)\)$", r"\1", text)
        parts = [p for p in re.split(r"[,;\s]+", text) if p]
    if len(parts) == 1 and _number(parts[0]) is not None:
        raise ValueError(f"colour {value!r} is one number, not #rrggbb or r,g,b")
    if len(parts) not in (3, 4):
        raise ValueError(f"colour {value!r} is not #rrggbb or three numbers r,g,b")
    rgb = []
    for p in parts[:3]:
        try:
            f = float(p)
        except (TypeError, ValueError):
            raise ValueError(f"colour {value!r} has a component {p!r} that is not a number") from None
        if not (0 <= f <= 255) or f != int(f):
            raise ValueError(f"colour {value!r}: component {p} is not a whole number 0-255")
        rgb.append(int(f))
    return tuple(rgb)


def to_hex(color: Color) -> str:
    return "#%02x%02x%02x" % tuple(color)


def _mix(x: int) -> int:
    """A 64-bit integer hash (splitmix64 finaliser): the same on every run and machine."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def auto_color(label_id: int) -> Color:
    """A stable colour for an id without one: the hue steps by the golden ratio from id to
    id (in 64-bit integer arithmetic, so huge ids too), so neighbouring ids differ strongly;
    saturation and value vary with a hash of the id."""
    hue = ((label_id * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) / 2.0 ** 64   # exact for any uint64
    h = _mix(label_id)
    sat = 0.55 + 0.40 * ((h & 0xFFFF) / 0xFFFF)
    val = 0.75 + 0.25 * (((h >> 16) & 0xFFFF) / 0xFFFF)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def color_of(table: LabelTable | None, label_id: int) -> Color:
    lab = table.labels.get(label_id) if table is not None else None
    return lab.color if lab is not None and lab.color is not None else auto_color(label_id)


# ---------------------------------------------------------------- reading


def _err(path, line: int, what: str, fix: str) -> UserError:
    where = f"{path}:{line}" if line else str(path)
    return UserError(f"{where}: {what}; {fix}")


def _parse_id(raw, path, line) -> int:
    text = str(raw).strip()
    if isinstance(raw, float) and raw.is_integer():
        text = str(int(raw))
    if isinstance(raw, bool) or not re.fullmatch(r"\+?\d+", text) or int(text) > MAX_ID:
        raise _err(path, line, f"label id {text!r} is not a non-negative integer",
                   "ids must be whole numbers from 0 to 2^64-1")
    return int(text)


def _norm(header: str) -> str:
    return re.sub(r"[\s\-./]+", "_", header.strip().lower()).strip("_")


def _number(text):
    """An int or float for numeric text, else None."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text
    if isinstance(text, float):
        return text if math.isfinite(text) else None
    t = str(text).strip()
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    try:
        f = float(t)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _split_tags(value) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:   # ; | or , separate tags when present (then spaces belong to a tag), else whitespace
        text = str(value)
        items = re.split(r"[;|,]" if re.search(r"[;|,]", text) else r"\s+", text)
    return tuple(t for t in (i.strip() for i in items) if t)


class _Builder:
    """Collects labels row by row, checking ids, duplicates and colours."""

    def __init__(self, path, kind: str):
        self.path, self.kind = path, kind
        self.labels: dict[int, Label] = {}
        self.extra_columns: list[str] = []
        self.notes: list[str] = []

    def add(self, line: int, raw_id, name="", color=None, description="", tags=(), extra=None) -> None:
        label_id = _parse_id(raw_id, self.path, line)
        if label_id in self.labels:
            raise _err(self.path, line, f"id {label_id} is listed twice (first on line "
                       f"{self.labels[label_id].line})", "give each id one row")
        rgb = None
        if color is not None and str(color).strip() not in ("", "None"):
            try:
                rgb = parse_color(color)
            except ValueError as e:
                raise _err(self.path, line, str(e), "write colours as #rrggbb or r,g,b with 0-255") from None
        self.labels[label_id] = Label(label_id, str(name or "").strip(), rgb, str(description or "").strip(),
                                      _split_tags(tags) if tags else (), dict(extra or {}), line)

    def table(self) -> LabelTable:
        if not self.labels:
            raise _err(self.path, 0, f"no labels found in this {self.kind}",
                       "check the file; see the README for the label table formats")
        return LabelTable(self.labels, str(self.path), self.kind, self.extra_columns, self.notes)


def _columns(headers: list[str], path) -> tuple[dict, list[int], list[tuple[int, str]]]:
    """Roles -> column index, colour component columns, and extra columns."""
    normed = [_norm(h) for h in headers]
    roles: dict[str, int] = {}
    for role, names in COLUMN_ROLES.items():
        for n in names:
            if n in normed and normed.index(n) not in roles.values():
                roles[role] = normed.index(n)
                break
    components: list[int] = []
    for trio in COLOR_COMPONENTS:
        if all(c in normed for c in trio):
            components = [normed.index(c) for c in trio]
            break
    used = set(roles.values()) | set(components)
    extra = [(i, headers[i].strip()) for i, n in enumerate(normed)
             if i not in used and n not in IGNORED_COLUMNS and n]
    return roles, components, extra


def _rows_to_table(path, kind: str, headers: list[str], rows: list[tuple[int, list]],
                   header_line: int = 1) -> LabelTable:
    """Header + rows (line number, values) -> table, with the documented column mapping."""
    roles, components, extra = _columns(headers, path)
    if "id" not in roles:
        # a "label" column of integers is the id when nothing else is
        named = roles.get("name")
        if named is not None and all(_number(r[named]) is not None and isinstance(_number(r[named]), int)
                                     for _, r in rows if len(r) > named and str(r[named]).strip()):
            roles["id"] = named
            del roles["name"]
            extra = [(i, h) for i, h in extra]
        else:
            raise _err(path, header_line, f"no id column in the header {headers}",
                       f"name one column {', '.join(COLUMN_ROLES['id'][:4])} (see the README)")
    b = _Builder(path, kind)
    width = len(headers)
    for line, values in rows:
        if len(values) < width:
            values = list(values) + [""] * (width - len(values))
        def get(role):
            return values[roles[role]] if role in roles else ""
        color = get("color")
        if components:
            comp = [str(values[i]).strip() for i in components]
            color = ",".join(comp) if any(comp) else ""
        b.add(line, get("id"), get("name"), color or None, get("description"), get("tags"),
              {h: values[i] for i, h in extra})
    b.extra_columns = [h for _, h in extra]
    return b.table()


def _read_text(path) -> str:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such label table; check the path")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the label table ({e.strerror}); check permissions") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):   # UTF-16/32 with a byte-order mark
        return read_text_file(path, "label table")
    if b"\x00" in raw[:4096]:
        raise UserError(f"{path}: not a text file; give a CSV, TSV, JSON or LUT label table")
    for enc in ("utf-8-sig", "latin-1"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise UserError(f"{path}: not a text file; give a CSV, TSV, JSON or LUT label table")


def read_csv(path, text: str | None = None, delimiter: str | None = None) -> LabelTable:
    text = _read_text(path) if text is None else text
    lines = text.splitlines()
    # comment lines before the header (Slicer's CSV and many exports start with '#')
    start = 0
    while start < len(lines) and (not lines[start].strip() or lines[start].lstrip().startswith("#")):
        start += 1
    if start >= len(lines):
        raise _err(path, 0, "the file is empty", "give a header row and one row per label")
    if delimiter is None:
        head = lines[start]
        delimiter = max(("\t", ",", ";"), key=head.count) if any(d in head for d in "\t,;") else ","
    reader = csv.reader(io.StringIO("\n".join(lines[start:])), delimiter=delimiter)
    rows = []
    headers = None
    header_line = start + 1
    consumed = 0
    for values in reader:
        line = start + consumed + 1       # a quoted field may span lines: count lines, not records
        consumed = reader.line_num
        if headers is None:
            header_line = line
            headers = values
            if headers and _number(headers[0]) is not None:
                raise _err(path, line, f"the first row {values[:4]} looks like data, not a header",
                           "add a header row such as id,name,color")
            continue
        if not any(v.strip() for v in values) or values[0].lstrip().startswith("#"):
            continue
        rows.append((line, values))
    return _rows_to_table(path, "csv" if delimiter != "\t" else "tsv", headers, rows, header_line)


def _json_line(text: str, key) -> int:
    """Best-effort line of ``"key"`` (or ``"id": key``) in JSON text."""
    for pat in (rf'"{re.escape(str(key))}"\s*:', rf'"id"\s*:\s*"?{re.escape(str(key))}"?\b'):
        m = re.search(pat, text)
        if m:
            return text.count("\n", 0, m.start()) + 1
    return 0


def read_json(path, text: str | None = None, data=None) -> LabelTable:
    text = _read_text(path) if text is None and data is None else (text or "")
    if data is None:
        try:
            data = json.loads(text, object_pairs_hook=_PairsDict)
        except json.JSONDecodeError as e:
            raise _err(path, e.lineno, f"not valid JSON ({e.msg})", "fix the JSON syntax") from None
        if isinstance(data, _PairsDict) and data.repeated:
            key = data.repeated[0]
            lines = _key_lines(text, key)
            raise _err(path, lines[1] if len(lines) > 1 else 0, f"id {key} is listed twice"
                       + (f" (first on line {lines[0]})" if lines else ""), "give each id one entry")
    return table_from_mapping(data, source=str(path), text=text)


class _PairsDict(dict):
    """A JSON object that remembers keys given more than once (json keeps the last)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        seen: set = set()
        self.repeated = [k for k, _ in pairs if k in seen or seen.add(k)]


def _key_lines(text: str, key) -> list[int]:
    """Lines of every ``"key":`` in JSON text, in order."""
    return [text.count("\n", 0, m.start()) + 1 for m in re.finditer(rf'"{re.escape(str(key))}"\s*:', text)]


def table_from_mapping(data, source: str = "the label table", text: str = "") -> LabelTable:
    """A table from Python/JSON data: ``{id: name}``, ``{id: {name, color, ...}}``, a list of
    objects with an ``id`` key, or ``{"labels": [...]}``."""
    if isinstance(data, LabelTable):
        return data
    if isinstance(data, dict) and isinstance(data.get("labels"), (list, dict)) and len(data) <= 3:
        data = data["labels"]
    if isinstance(data, dict):
        items = [(k, v) for k, v in data.items()]
    elif isinstance(data, list):
        items = []
        for i, obj in enumerate(data):
            if not isinstance(obj, dict) or not any(_norm(k) in COLUMN_ROLES["id"] for k in obj):
                raise _err(source, 0,
                           f"entry {i} of the list is not an object with an id", 'give [{"id": 1, "name": ...}, ...]')
            id_key = next(k for k in obj if _norm(k) in COLUMN_ROLES["id"])
            items.append((obj[id_key], {k: v for k, v in obj.items() if k != id_key}))
    else:
        raise _err(source, 0, "a label table must be an object or a list",
                   'give {"1": "name"} or {"1": {"name": ..., "color": "#rrggbb"}}')
    b = _Builder(source, "json")
    extra_cols: list[str] = []
    if isinstance(data, list) and text:     # the n-th entry's id key is the n-th id key in the text
        id_lines = [next(k for k in obj if _norm(k) in COLUMN_ROLES["id"]) for obj in data]
        lines_by_key = {k: iter(_key_lines(text, k)) for k in set(id_lines)}
        item_lines = [next(lines_by_key[k], 0) for k in id_lines]
    else:
        item_lines = [_json_line(text, key) if text else 0 for key, _ in items]
    for (key, value), line in zip(items, item_lines):
        if isinstance(value, dict):
            headers = list(value)
            roles, components, extra = _columns(headers, source)
            vals = list(value.values())

            def get(role):
                return vals[roles[role]] if role in roles else ""
            color = get("color") if "color" in roles else None
            if components:
                color = [vals[i] for i in components]
            ex = {h: vals[i] if vals[i] is None or isinstance(vals[i], (str, int, float, bool))
                  else json.dumps(vals[i]) for i, h in extra}
            for h in ex:
                if h not in extra_cols:
                    extra_cols.append(h)
            b.add(line, key, get("name"), color, get("description"), get("tags"), ex)
        elif value is None or isinstance(value, (str, int, float)):
            b.add(line, key, "" if value is None else str(value))
        else:
            raise _err(source, line, f"the entry for id {key} is a {type(value).__name__}",
                       "give a name or an object with name/color/description")
    b.extra_columns = extra_cols
    return b.table()


def _read_lut(path, text: str, kind: str) -> LabelTable:
    """FreeSurfer LUT / Slicer colour table: ``id name R G B [A]`` per line."""
    b = _Builder(path, kind)
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 5:
            raise _err(path, n, f"expected 'id name R G B A', got {line!r}", "fix or remove the line")
        has_alpha = len(tokens) >= 6 and all(_number(t) is not None for t in tokens[-4:])
        rgb = tokens[-4:-1] if has_alpha else tokens[-3:]
        name = " ".join(tokens[1:len(tokens) - (4 if has_alpha else 3)])
        b.add(n, tokens[0], name, ",".join(rgb))
    return b.table()


_ITK = re.compile(r'^\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+"(.*)"\s*$')


def _read_itksnap(path, text: str) -> LabelTable:
    b = _Builder(path, "itk-snap")
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = _ITK.match(raw)
        if not m:
            raise _err(path, n, f"expected 'IDX R G B A VIS MSH \"LABEL\"', got {raw.strip()!r}",
                       "fix or remove the line")
        idx, r, g, bl, _a, _vis, _msh, name = m.groups()
        b.add(n, idx, name, f"{r},{g},{bl}")
    return b.table()


def detect_format(path, text: str) -> str:
    """``csv``, ``tsv``, ``json``, ``itk-snap``, ``freesurfer`` or ``slicer``."""
    lower = str(path).lower()
    if lower.endswith(".json"):
        return "json"
    if lower.endswith(".tsv"):
        return "tsv"
    if lower.endswith(".ctbl"):
        return "slicer"
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        return "json"
    comments = [ln for ln in text.splitlines() if ln.lstrip().startswith("#")]
    data = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not data:
        raise UserError(f"{path}: no label rows found; give a CSV, TSV, JSON, ITK-SNAP, FreeSurfer or "
                        "Slicer label table")
    first = data[0]
    if _ITK.match(first) and all(_number(t) is not None for t in first.split('"')[0].split()):
        return "itk-snap"
    tokens = first.split()
    if (len(tokens) >= 5 and "," not in first and isinstance(_number(tokens[0]), int)
            and _number(tokens[1]) is None and all(_number(t) is not None for t in tokens[-3:])):
        return "slicer" if any("color table" in c.lower() for c in comments) else "freesurfer"
    if lower.endswith(".csv") or "," in first or ";" in first:
        return "csv"
    if "\t" in first:
        return "tsv"
    raise UserError(f"{path}:{text.splitlines().index(first) + 1}: cannot tell the label table format from "
                    f"{first.strip()[:60]!r}; give a CSV/TSV with a header (id,name,color), JSON, an ITK-SNAP "
                    "label file or a FreeSurfer/Slicer colour table")


def read_labels(path) -> LabelTable:
    """Read a label table in any supported format (see :func:`detect_format`)."""
    path = os.fspath(path)
    text = _read_text(path)
    kind = detect_format(path, text)
    if kind == "json":
        return read_json(path, text)
    if kind in ("csv", "tsv"):
        return read_csv(path, text, "\t" if kind == "tsv" else None)
    if kind == "itk-snap":
        return _read_itksnap(path, text)
    return _read_lut(path, text, kind)


def load_table(labels) -> LabelTable | None:
    """A table from a path, a mapping, a list of objects or a table; None stays None."""
    if labels is None:
        return None
    if isinstance(labels, LabelTable):
        return labels
    if isinstance(labels, (str, os.PathLike)):
        return read_labels(labels)
    return table_from_mapping(labels)


# ---------------------------------------------------------------- selection


def resolve_ids(items, table: LabelTable | None, option: str) -> list[int]:
    """Ids for ``--only``/``--exclude`` items: integers or names (case-insensitive) from the table."""
    if isinstance(items, str):
        items = [s for s in re.split(r",(?![^()]*\))", items)]
    out: list[int] = []
    names = table.names() if table is not None else {}
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and re.fullmatch(r"\s*\d+\s*", item)):
            out.append(int(item))
            continue
        text = str(item).strip()
        if not text:
            continue
        if table is None:
            raise UserError(f"{option} {text!r}: names need a label table (--labels); or give ids")
        ids = names.get(text.lower())
        if not ids:
            import difflib

            spelled = {a.lower(): a for lab in table.labels.values() for a in _aliases(lab)}
            close = difflib.get_close_matches(text.lower(), list(names), n=3)
            hint = (f"did you mean {', '.join(repr(spelled.get(c, c)) for c in close)}?" if close
                    else "check the table's names")
            raise UserError(f"{option} {text!r}: no label of that name in {table.source}; {hint}")
        out.extend(ids)
    return sorted(set(out))


# ---------------------------------------------------------------- left/right names

_SIDES = {"left": "L", "l": "L", "lh": "L", "right": "R", "r": "R", "rh": "R"}


def side_key(name: str) -> tuple[str, str]:
    """``("hippocampus", "L")`` for ``Hippocampus_L``, ``Left-Hippocampus``, ``hippocampus (left)``
    or ``lh hippocampus``; ``(name, "")`` when the name carries no side.  Sides are whole words,
    so ``cerebral`` is not a left structure."""
    tokens = [t for t in re.split(r"[\s_\-.,()]+", name.lower()) if t]
    if len(tokens) > 1 and tokens[-1] in _SIDES:
        return " ".join(tokens[:-1]), _SIDES[tokens[-1]]
    if len(tokens) > 1 and tokens[0] in _SIDES:
        return " ".join(tokens[1:]), _SIDES[tokens[0]]
    return " ".join(tokens), ""


def match_names(names: list[str], table: LabelTable) -> tuple[dict[str, int], list[str], list[str]]:
    """Structure names -> table ids: the exact name (case-insensitive), then the same base name
    and side written another way (``SC_L`` = ``Left SC`` = ``SC (left)``), then the base name
    alone (both sides of a bilateral structure share its id).  Returns the mapping, notes and
    the names that matched nothing."""
    exact = table.names()
    by_side: dict[tuple[str, str], list[int]] = {}
    for lab in table.labels.values():
        for alias in _aliases(lab):
            by_side.setdefault(side_key(alias), []).append(lab.id)
    out, notes, missing = {}, [], []
    for name in names:
        ids = exact.get(name.lower())
        if not ids:
            ids = by_side.get(side_key(name))
        if not ids:
            base, side = side_key(name)
            if side:
                ids = by_side.get((base, ""))
                if ids:
                    notes.append(f"{name}: the table names one structure {table.labels[ids[0]].name!r} "
                                 f"for both sides; it gets id {ids[0]}")
        if not ids:
            missing.append(name)
        elif len(set(ids)) > 1:
            raise UserError(f"{name}: matches several ids in {table.source} ({', '.join(map(str, sorted(set(ids))))}); "
                            "give the ids explicitly (ids=..., or an id column)")
        else:
            out[name] = ids[0]
    return out, notes, missing
