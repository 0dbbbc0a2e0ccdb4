"""Assembling one label volume from per-structure masks placed at atlas origins.

Rules (also in the README):

* a mask voxel is inside its structure when its value is greater than ``threshold``
  (default 0: any non-zero voxel);
* a structure's origin is the atlas voxel of its mask's voxel ``[0, 0, 0]``; fractional
  origins are rounded to the nearest voxel, halves upwards (``floor(x + 0.5)``);
* the volume's bounding box is the union of the masks' boxes, and its start becomes the
  layer's ``voxel_offset``, so every structure lands at its atlas coordinates;
* the label type is the smallest unsigned type that holds the largest id;
* overlapping voxels (two different ids) are an error naming the pairs (``overlap="error"``),
  or keep the id placed first (``"first"``) or last (``"last"``), never a sum; structures are
  placed in the order of the origins file when one is given, else in the order given (a
  folder: natural order of the file names);
* ids come from ``ids``, else from the label table by name (``SC_L`` matches ``SC_L``,
  ``Left SC``, ``SC (left)``; a table naming only ``SC`` gives both sides its id), else
  1, 2, 3... in placement order.

Over 450 lines because the assembly plan (structures, origins, ids) still sits with the
writing; the split into pipelines/assembly_plan.py was left for a later change so that this
move stays purely a move.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .convert import ConvertOptions, check_destination, convert
from ..core.errors import UserError, read_text_file
from ..core.fingerprint import file_fingerprint
from ..core.geometry import Box
from ..properties.labels import Label, LabelTable, load_table, match_names
from ..sources.base import UNIT_TO_NM
from ..sources.open import NIBABEL_SUFFIXES, SourceRef, header_voxel_size
from ..store.open import open_store
# nibabel: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

MASK_SUFFIXES = (".npy",) + NIBABEL_SUFFIXES
OVERLAP_RULES = ("error", "first", "last")
MAX_COORDINATE = 2 ** 31      # |origin| and the assembled box stay within int32 per axis
MAX_VOXELS = 2 ** 31          # voxels of the assembled box (a temporary file) unless max_voxels allows more
SPARSE_VOXELS = 2 ** 27       # a box larger than this must not be mostly empty space ...
SPARSE_RATIO = 1000           # ... more than this many times the voxels of the masks together
SLAB_VOXELS = 1 << 25        # mask voxels compared per step when placing a memory-mapped mask


@dataclass
class Structure:
    name: str
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mask: np.ndarray | None = None      # in memory, or None to read ``path``
    path: str = ""

    @property
    def where(self) -> str:
        return self.path or f"structure {self.name!r}"


@dataclass
class Placement:
    name: str
    label: int
    start: tuple[int, int, int]
    shape: tuple[int, int, int]

    @property
    def box(self) -> Box:
        return Box(self.start, tuple(s + n for s, n in zip(self.start, self.shape)))


@dataclass
class Assembly:
    """The assembled labels: ``volume`` (``[x, y, z]``) starting at atlas voxel ``offset``."""

    offset: tuple[int, int, int]
    shape: tuple[int, int, int]
    dtype: str
    ids: dict[str, int]
    table: LabelTable
    placements: list[Placement]
    volume: np.ndarray | None = None
    overlaps: dict[tuple[int, int], int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    resolution_nm: tuple[float, float, float] | None = None
    result: object = None                # the ConvertResult when written


def stem(path: str) -> str:
    name = os.path.basename(path)
    for suf in sorted(MASK_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _natural(text: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def structures_from_paths(paths) -> list[Structure]:
    """Mask files from folders, files or quoted glob patterns, in natural order per folder."""
    import glob

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            found = [os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(MASK_SUFFIXES)
                     and not f.startswith(".")]
            if not found:
                raise UserError(f"{p}: no mask files (.npy, .nii, .nii.gz, .mgz) in this folder")
            files += sorted(found, key=lambda f: _natural(os.path.basename(f)))
        elif os.path.exists(p):
            files.append(p)
        elif any(c in p for c in "*?["):
            found = sorted(glob.glob(p), key=lambda f: _natural(os.path.basename(f)))
            if not found:
                raise UserError(f"{p}: the pattern matches no files")
            files += found
        else:
            raise UserError(f"{p}: no such file or folder; check the path")
    out, seen = [], {}
    for f in files:
        if not f.lower().endswith(MASK_SUFFIXES):
            raise UserError(f"{f}: not a mask file; give .npy or NIfTI/MGH masks")
        name = stem(f)
        if name in seen:
            raise UserError(f"{f}: structure name {name!r} is also used by {seen[name]}; rename one file")
        seen[name] = f
        out.append(Structure(name, path=f))
    return out


def structures_from_mapping(mapping) -> list[Structure]:
    """``{name: mask}``, ``{name: (mask, origin)}`` or ``{name: (path, origin)}``."""
    out = []
    for name, value in mapping.items():
        origin = (0.0, 0.0, 0.0)
        if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], (int, float)):
            value, origin = value
        if isinstance(value, (str, os.PathLike)):
            out.append(Structure(str(name), _origin3(origin, name), path=os.fspath(value)))
        else:
            out.append(Structure(str(name), _origin3(origin, name), mask=np.asarray(value)))
    return out


def _origin3(value, where) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise UserError(f"{where}: origin {value!r} is not three numbers x,y,z (atlas voxels)")
    return vals


def read_origins(path) -> dict[str, tuple[float, float, float]]:
    """``name,x,y,z`` per line (CSV, TSV or spaces; a header row is skipped) or JSON
    ``{name: [x, y, z]}``; the file's order is the placement order."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such origins file; check the path")
    text = read_text_file(path, "origins file")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix the JSON syntax") from None
        return {str(k): _origin3(v, f"{path}: {k}") for k, v in data.items()}
    out: dict[str, tuple[float, float, float]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip().strip('"') for p in re.split(r"[,\t;]" if re.search(r"[,\t;]", line) else r"\s+", line)]
        if len(parts) < 4:
            raise UserError(f"{path}:{n}: expected 'name,x,y,z', got {line!r}; give a name and three numbers")
        name, coords = ",".join(parts[:-3]) if len(parts) > 4 else parts[0], parts[-3:]
        bad = [c for c in coords if _number(c) is None]
        if bad:
            if not out and len(bad) == 3:          # a header row such as name,x,y,z
                continue
            raise UserError(f"{path}:{n}: {bad[0]!r} is not a number; give name,x,y,z (atlas voxels)")
        xyz = tuple(float(c) for c in coords)
        if not all(math.isfinite(v) for v in xyz):
            raise UserError(f"{path}:{n}: origin {coords} is not finite; give three numbers")
        if name in out:
            raise UserError(f"{path}:{n}: {name!r} has a second origin; give one line per structure")
        out[name] = xyz
    if not out:
        raise UserError(f"{path}: no origins found; give one 'name,x,y,z' line per structure")
    return out


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def round_origin(origin) -> tuple[int, int, int]:
    """Nearest voxel, halves upwards: ``floor(x + 0.5)``."""
    return tuple(int(math.floor(v + 0.5)) for v in origin)


def _mask_header(s: Structure, axes: str):
    """(shape [x,y,z], reader, resolution_nm or None) without reading the voxels."""
    if s.mask is not None:
        arr = _xyz(s.mask, axes, s.where)
        return tuple(arr.shape), (lambda: arr), None
    path = s.path
    if not os.path.exists(path):
        raise UserError(f"{path}: no such mask file; check the path")
    if path.lower().endswith(".npy"):
        try:
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise UserError(f"{path}: not a readable .npy file ({e}); save it again with numpy.save") from None
        arr = _xyz(mm, axes, path)
        return tuple(arr.shape), (lambda: arr), None
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as e:    # nibabel raises many types for bad files
        raise UserError(f"{path}: not a readable image ({str(e).splitlines()[0]}); check the file") from None
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise UserError(f"{path}: a mask must be 3-D, this one has shape {img.shape}")
    zooms, units, _ = header_voxel_size(img.header)
    res = tuple(z * UNIT_TO_NM[units] for z in zooms)

    def load():
        return np.asanyarray(img.dataobj).reshape(shape)
    return shape, load, res


def _xyz(arr: np.ndarray, axes: str, where: str) -> np.ndarray:
    arr = np.asarray(arr) if not isinstance(arr, np.memmap) else arr
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise UserError(f"{where}: a mask must be 3-D, this one has shape {arr.shape}")
    if axes != "xyz":
        if sorted(axes) != ["x", "y", "z"]:
            raise UserError(f"--axes {axes!r}: give a permutation of xyz, e.g. zyx")
        arr = np.transpose(arr, tuple(axes.index(a) for a in "xyz"))
    if arr.dtype.kind not in "biuf":
        raise UserError(f"{where}: mask type {arr.dtype} is not numeric")
    return arr


def label_dtype(max_id: int) -> str:
    for t in ("uint8", "uint16", "uint32", "uint64"):
        if max_id <= np.iinfo(t).max:
            return t
    raise UserError(f"label id {max_id} does not fit 64 bits")


def _assign_ids(structs: list[Structure], ids, table: LabelTable | None, notes: list[str]) -> dict[str, int]:
    names = [s.name for s in structs]
    if ids is not None:
        if isinstance(ids, (str, os.PathLike)):
            ids = _read_id_file(ids)
        out = {}
        missing = [n for n in names if n not in ids]
        if missing and table is None:
            raise UserError(f"no id given for {len(missing)} structure(s): {', '.join(missing[:10])}; "
                            "add them to ids or give a label table")
        for n in names:
            if n in ids:
                out[n] = int(ids[n])
                if out[n] < 1:
                    raise UserError(f"{n}: id {ids[n]} must be 1 or more (0 is background)")
        if missing:
            found, more, still = match_names(missing, table)
            notes += more
            if still:
                raise UserError(f"{len(still)} structure(s) have no id and no name in {table.source}: "
                                f"{', '.join(still[:10])}; add them to the ids or the table")
            out.update(found)
        return out
    if table is not None:
        found, more, still = match_names(names, table)
        notes += more
        if still:
            import difflib

            hints = []
            for n in still[:5]:
                close = difflib.get_close_matches(n.lower(), [lab.name.lower() for lab in table.labels.values()], 1)
                hints.append(f"{n}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise UserError(f"{len(still)} structure name(s) are not in {table.source}: {', '.join(hints)}"
                            f"{', ...' if len(still) > 5 else ''}; rename the files or add the names to the table")
        zero = [n for n, i in found.items() if i == 0]
        if zero:
            raise UserError(f"{zero[0]}: the table gives it id 0, which is background; give it another id")
        return found
    notes.append(f"no label table: ids 1..{len(names)} assigned in placement order")
    return {n: i + 1 for i, n in enumerate(names)}


def _read_id_file(path) -> dict[str, int]:
    out = {}
    text = read_text_file(path, "id file")
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in re.split(r"[,\t;]|\s+", line) if p.strip()]
        if len(parts) != 2:
            raise UserError(f"{path}:{n}: expected 'name,id', got {line!r}")
        a, b = parts
        if b.isdigit():
            out[a] = int(b)
        elif a.isdigit():
            out[b] = int(a)
        elif not out:
            continue      # header
        else:
            raise UserError(f"{path}:{n}: no integer id in {line!r}; give name,id")
    return out


def plan_assembly(structures, ids=None, labels=None, origins=None, axes: str = "xyz",
                  max_voxels: int | None = MAX_VOXELS):
    """Work out ids, placements, bounds and type without reading any mask voxels."""
    notes: list[str] = []
    structs = structures_from_mapping(structures) if isinstance(structures, dict) else structures_from_paths(structures)
    if not structs:
        raise UserError("no structures to assemble")
    if origins is not None:
        table_o = read_origins(origins) if isinstance(origins, (str, os.PathLike)) else {
            str(k): _origin3(v, k) for k, v in origins.items()}
        by_name = {s.name: s for s in structs}
        lower = {s.name.lower(): s for s in structs}
        missing = [s.name for s in structs if s.name not in table_o and s.name.lower() not in
                   {k.lower() for k in table_o}]
        if missing:
            raise UserError(f"{origins}: no origin for {len(missing)} structure(s): {', '.join(missing[:10])}; "
                            "add a 'name,x,y,z' line for each")
        unused = [k for k in table_o if k not in by_name and k.lower() not in lower]
        if unused:
            notes.append(f"{len(unused)} origin(s) name no mask and are ignored: {', '.join(unused[:5])}")
        ordered = []
        for k, v in table_o.items():
            s = by_name.get(k) or lower.get(k.lower())
            if s is not None and s not in ordered:
                s.origin = v
                ordered.append(s)
        structs = ordered
    table = load_table(labels)
    id_of = _assign_ids(structs, ids, table, notes)

    placements, readers, resolutions = [], {}, set()
    rounded = []
    for s in structs:
        shape, reader, res = _mask_header(s, axes)
        start = round_origin(s.origin)
        if any(abs(a - b) > 1e-9 for a, b in zip(start, s.origin)):
            rounded.append(s.name)
        placements.append(Placement(s.name, id_of[s.name], start, shape))
        readers[s.name] = (reader, s.where)
        if res is not None:
            resolutions.add(tuple(round(r, 6) for r in res))
    if rounded:
        notes.append(f"{len(rounded)} fractional origin(s) rounded to the nearest voxel (halves up): "
                     f"{', '.join(rounded[:5])}")
    for p in placements:
        if any(abs(v) >= MAX_COORDINATE or abs(v + n) >= MAX_COORDINATE for v, n in zip(p.start, p.shape)):
            raise UserError(f"{origins or 'origins'}: {p.name} at origin {','.join(map(str, p.start))} is beyond "
                            f"+-{MAX_COORDINATE} (2^31) voxels; give origins in atlas voxels")
    start = tuple(min(p.start[d] for p in placements) for d in range(3))
    stop = tuple(max(p.start[d] + p.shape[d] for p in placements) for d in range(3))
    bounds = Box(start, stop)
    voxels = int(np.prod(bounds.shape, dtype=object))
    masks = sum(int(np.prod(p.shape, dtype=object)) for p in placements)
    if max_voxels is not None and voxels > SPARSE_VOXELS and voxels > SPARSE_RATIO * masks:
        far = max(placements, key=lambda p: max(abs(v) for v in p.start))
        raise UserError(f"{origins or 'origins'}: the structures span {'x'.join(map(str, bounds.shape))} = "
                        f"{voxels} voxels, over {SPARSE_RATIO} times their own {masks} ({far.name} is at origin "
                        f"{','.join(map(str, far.start))}); check the origins (atlas voxels), or pass --force-size")
    if max_voxels is not None and voxels > max_voxels:
        far = max(placements, key=lambda p: max(abs(v) for v in p.start))
        raise UserError(f"{origins or 'origins'}: the structures span {'x'.join(map(str, bounds.shape))} = "
                        f"{voxels} voxels, more than the limit of {max_voxels} ({far.name} is at origin "
                        f"{','.join(map(str, far.start))}); check the origins (atlas voxels), or pass --force-size")

    if table is None:   # names become the table
        first: dict[int, str] = {}
        for p in placements:
            first.setdefault(p.label, p.name)
        table = LabelTable({i: Label(i, n) for i, n in first.items()}, "the structure names", "names")
    dtype = label_dtype(max(p.label for p in placements))
    resolution = resolutions.pop() if len(resolutions) == 1 else None
    if len(resolutions) > 0:
        notes.append("the NIfTI masks disagree on the voxel size; pass --resolution")
    assembly = Assembly(bounds.start, bounds.shape, dtype, id_of, table, placements, notes=notes,
                        resolution_nm=resolution)
    return assembly, readers


def assembly_fingerprint(assembly: Assembly, readers, overlap: str, threshold: float) -> dict:
    """What the assembled volume is made of (mask files, placements, rules), for ``--resume``."""
    import hashlib
    import json


    parts = []
    for p in assembly.placements:
        where = readers[p.name][1]
        parts.append([p.name, p.label, list(p.start), list(p.shape),
                      file_fingerprint(where) if os.path.isfile(where) else None])
    blob = json.dumps([parts, overlap, float(threshold), assembly.dtype.str if hasattr(assembly.dtype, "str")
                       else str(assembly.dtype)], sort_keys=True)
    return {"assembly_sha256": hashlib.sha256(blob.encode()).hexdigest()}


def check_threshold(threshold) -> float:
    """``--threshold`` must be a finite number."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise UserError(f"--threshold {threshold!r}: give a number, e.g. 0 or 0.5") from None
    if not math.isfinite(value):
        raise UserError(f"--threshold {threshold}: give a finite number, e.g. 0 or 0.5 (a voxel is inside "
                        "when its value exceeds it)")
    return value


def fill(assembly: Assembly, readers, out: np.ndarray, overlap: str = "error", threshold: float = 0) -> None:
    """Place every mask into ``out`` (the assembled box, ``[x, y, z]``)."""
    if overlap not in OVERLAP_RULES:
        raise UserError(f"--overlap {overlap}: choose error, first or last")
    check_threshold(threshold)
    counts: dict[tuple[int, int], int] = {}
    for p in assembly.placements:
        reader, where = readers[p.name]
        mask = reader()
        region = out[tuple(slice(a - o, a - o + n) for a, o, n in zip(p.start, assembly.offset, p.shape))]
        label = region.dtype.type(p.label)
        step = max(1, SLAB_VOXELS // max(1, p.shape[0] * p.shape[1]))
        placed = 0
        for z0 in range(0, p.shape[2], step):
            m = np.asarray(mask[:, :, z0:z0 + step])
            inside = m > threshold if m.dtype != bool else m
            if not inside.any():
                continue
            placed += int(np.count_nonzero(inside))
            reg = region[:, :, z0:z0 + step]
            existing = reg[inside]
            clash = (existing != 0) & (existing != label)
            if clash.any():
                other, n = np.unique(existing[clash], return_counts=True)
                for o, c in zip(other.tolist(), n.tolist()):
                    counts[(int(o), p.label)] = counts.get((int(o), p.label), 0) + int(c)
            if overlap == "last":
                reg[inside] = label
            else:
                reg[inside & (reg == 0)] = label
        if placed == 0:
            assembly.notes.append(f"{where}: the mask is empty (no voxel above {threshold:g})")
    assembly.overlaps = counts
    if counts:
        names = {}
        for p in assembly.placements:
            names.setdefault(p.label, p.name)
        pairs = sorted(counts.items(), key=lambda kv: -kv[1])
        text = "; ".join(f"{names.get(a, a)} and {names.get(b, b)}: {c} voxel(s)" for (a, b), c in pairs[:5])
        more = f"; and {len(pairs) - 5} more pair(s)" if len(pairs) > 5 else ""
        if overlap == "error":
            raise UserError(f"structures overlap ({text}{more}); pass --overlap first or --overlap last "
                            "to say which label wins")
        assembly.notes.append(f"overlaps resolved by --overlap {overlap}: {text}{more}")


def assemble(structures, dest=None, *, ids=None, labels=None, origins=None, overlap: str = "error",
             threshold: float = 0, axes: str = "xyz", resolution=None, units: str = "nm",
             options=None, max_voxels: int | None = MAX_VOXELS, **option_fields) -> Assembly:
    """Assemble structure masks into one label volume, and write it as a segmentation layer
    when ``dest`` is given.

    ``structures``: ``{name: (mask, origin)}`` (``mask`` an array or a path, ``origin`` in atlas
    voxels), ``{name: mask}`` (origin 0), or a folder / list of mask files (origins from
    ``origins``: a file or ``{name: (x, y, z)}``).  ``ids``: ``{name: id}`` or a ``name,id``
    file; ``labels``: a label table (path or mapping) giving ids by name and the segment
    properties.  Without ``dest`` the volume is returned in memory (``assembly.volume``).
    Other keyword arguments are :class:`ngconvert.ConvertOptions` fields.
    """
    from dataclasses import replace


    if overlap not in OVERLAP_RULES:
        raise UserError(f"--overlap {overlap}: choose error, first or last")
    check_threshold(threshold)
    assembly, readers = plan_assembly(structures, ids, labels, origins, axes, max_voxels)
    if dest is None:
        out = np.zeros(assembly.shape, dtype=assembly.dtype, order="F")
        fill(assembly, readers, out, overlap, threshold)
        assembly.volume = out
        return assembly

    opts = options or ConvertOptions(**option_fields)
    if resolution is not None:
        opts = replace(opts, resolution=tuple(float(r) for r in resolution), units=units)
    elif opts.resolution is None and assembly.resolution_nm is not None:
        opts = replace(opts, resolution=assembly.resolution_nm, units="nm")
    opts = replace(opts, layer_type="segmentation", labels=assembly.table, voxel_offset=assembly.offset)
    opts = replace(opts, source_fingerprint=assembly_fingerprint(assembly, readers, overlap, threshold))
    # refuse before the work of placing the masks
    check_destination(open_store(dest, opts.storage if "://" in str(dest) else None), opts)
    what = structures if isinstance(structures, (str, os.PathLike)) else f"{len(assembly.placements)} structures"
    tmp = tempfile.mkdtemp(prefix="ngconvert-assembly-")
    try:
        path = os.path.join(tmp, "labels.npy")
        out = np.lib.format.open_memmap(path, mode="w+", dtype=assembly.dtype, shape=assembly.shape,
                                        fortran_order=True)
        fill(assembly, readers, out, overlap, threshold)
        out.flush()
        del out
        ref = SourceRef(kind="npy", path=path, origin=f"assembly of {os.fspath(what)}")
        assembly.result = convert(ref, dest, opts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return assembly
