"""Importing surface meshes made elsewhere (GIfTI, FreeSurfer, OBJ, STL, PLY, OFF, VTK) as
segment meshes, in the legacy or multi-resolution format.

Coordinates: a vertex ``v`` of the file becomes ``T @ v`` (``--transform``, default identity)
in ``--units`` (default mm for GIfTI and FreeSurfer surfaces, nm otherwise), converted to nm.
With ``from_world`` the result is taken as world coordinates of the layer's NIfTI affine
(``transform.json``) and mapped into the layer.  A transform that mirrors reverses the
triangle winding so surfaces keep facing outwards.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .formats import legacy_fragment, legacy_manifest, mesh_info
from .geometry import concat, flip_winding, mirrors, transform as apply_affine
from .meshing import write_segment
from ..core.errors import UserError
from ..core.gzip import gzip_compress
from ..core.jsonio import dumps
from ..properties.labels import load_table
from ..properties.segment_properties import PROPERTIES_DIR, segment_properties
from ..sources.base import UNIT_TO_NM
from ..sources.precomputed_info import parse_info, read_info_checked
from ..store.destination import locked
from ..store.open import open_store
# nibabel, trimesh: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

FREESURFER_SURFACES = ("pial", "white", "inflated", "sphere", "orig", "smoothwm", "midthickness", "graymid")
TRIMESH_SUFFIXES = (".obj", ".stl", ".ply", ".off")
SUFFIXES = (".gii",) + TRIMESH_SUFFIXES + (".vtk",)


def _one_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def is_freesurfer_surface(path: str) -> bool:
    name = os.path.basename(path).lower()
    return any(name.endswith("." + s) or name.startswith(("lh." + s, "rh." + s)) for s in FREESURFER_SURFACES)


def default_units(path: str) -> str:
    return "mm" if str(path).lower().endswith(".gii") or is_freesurfer_surface(path) else "nm"


def _read_gifti(path: str):
    import nibabel as nib

    img = nib.load(path)
    pts = [d for d in img.darrays if d.intent == nib.nifti1.intent_codes["NIFTI_INTENT_POINTSET"]]
    tris = [d for d in img.darrays if d.intent == nib.nifti1.intent_codes["NIFTI_INTENT_TRIANGLE"]]
    if not pts or not tris:
        raise UserError(f"{path}: GIfTI file has no {'pointset' if not pts else 'triangle'} array; "
                        "give a surface (.surf.gii), not a data file")
    return np.asarray(pts[0].data), np.asarray(tris[0].data)


def _read_vtk(path: str):
    """VTK legacy ASCII polydata: POINTS and POLYGONS (triangles; polygons are fanned)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if b"BINARY" in head.upper():
        raise UserError(f"{path}: binary VTK is not supported; save it as ASCII VTK or as PLY")
    tokens = Path(path).read_text(errors="replace").split()
    up = [t.upper() for t in tokens]
    if "POINTS" not in up or "POLYGONS" not in up:
        raise UserError(f"{path}: not VTK polydata with POINTS and POLYGONS; save it as PLY or OBJ")
    i = up.index("POINTS")
    n = int(tokens[i + 1])
    v = np.array(tokens[i + 3:i + 3 + 3 * n], np.float64).reshape(n, 3)
    j = up.index("POLYGONS")
    count = int(tokens[j + 1])
    vals = np.array(tokens[j + 3:j + 3 + int(tokens[j + 2])], np.int64)
    faces, at = [], 0
    for _ in range(count):
        k = int(vals[at])
        poly = vals[at + 1:at + 1 + k]
        faces += [(poly[0], poly[m], poly[m + 1]) for m in range(1, k - 1)]
        at += k + 1
    return v, np.array(faces, np.int64).reshape(-1, 3)


def read_mesh_file(path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices ``[n, 3]`` float64 in the file's units, faces ``[m, 3]`` int64), checked."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such mesh file; check the path")
    lower = path.lower()
    try:
        if lower.endswith(".gii"):
            v, f = _read_gifti(path)
        elif lower.endswith(TRIMESH_SUFFIXES):
            import trimesh

            m = trimesh.load(path, force="mesh", process=False)
            v, f = np.asarray(m.vertices), np.asarray(m.faces)
        elif lower.endswith(".vtk"):
            v, f = _read_vtk(path)
        elif is_freesurfer_surface(path) or "." not in os.path.basename(path):
            import nibabel.freesurfer as fs

            v, f = fs.read_geometry(path)
        else:
            raise UserError(f"{path}: unknown mesh format; give .gii, a FreeSurfer surface (lh.pial), .obj, "
                            ".stl, .ply, .off or .vtk")
    except UserError:
        raise
    except Exception as e:       # the readers raise many types for damaged files
        raise UserError(f"{path}: not a readable mesh ({_one_line(e)}); check the file") from None
    v = np.asarray(v, np.float64)
    f = np.asarray(f)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or f.size == 0:
        raise UserError(f"{path}: the mesh is empty (no vertices or no triangles)")
    if f.ndim != 2 or f.shape[1] != 3:
        raise UserError(f"{path}: faces have shape {f.shape}; give a triangle mesh")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= len(v):
        bad = int(f.max()) if f.max() >= len(v) else int(f.min())
        raise UserError(f"{path}: a triangle uses vertex {bad}, but the mesh has vertices 0..{len(v) - 1}; "
                        "the file is damaged")
    if not np.isfinite(v).all():
        n = int((~np.isfinite(v).all(axis=1)).sum())
        raise UserError(f"{path}: {n} vertex position(s) are not finite (NaN or infinity); fix the mesh")
    return v, f


def read_transform(path) -> np.ndarray:
    """A 4x4 affine from a text file: 16 numbers (or 12: the top 3x4 rows), any separators,
    or a JSON list of rows."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such transform file; check the path")
    text = Path(path).read_text()
    try:
        nums = [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text)]
    except ValueError:
        nums = []
    if len(nums) == 12:
        nums += [0.0, 0.0, 0.0, 1.0]
    if len(nums) != 16:
        raise UserError(f"{path}: a transform needs 16 numbers (4x4) or 12 (3x4), found {len(nums)}")
    m = np.array(nums).reshape(4, 4)
    if not np.isfinite(m).all() or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise UserError(f"{path}: the transform is singular or not finite; give an invertible 4x4 affine")
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise UserError(f"{path}: the last row must be 0 0 0 1 (an affine transform)")
    return m


def read_id_list(path) -> list[tuple[int, list[str]]]:
    """``id,file[,file...]`` per line; paths relative to the list's folder."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such id list; check the path")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            row = [c.strip() for c in row if c.strip()]
            if not row or row[0].startswith("#"):
                continue
            if not re.fullmatch(r"\d+", row[0]):
                if not out and n == 1:
                    continue             # header
                raise UserError(f"{path}:{n}: {row[0]!r} is not a segment id; give id,file[,file...]")
            if len(row) < 2:
                raise UserError(f"{path}:{n}: no mesh file for id {row[0]}; give id,file[,file...]")
            files = [c if os.path.isabs(c) or os.path.exists(c) and not os.path.exists(os.path.join(base, c))
                     else os.path.join(base, c) for c in row[1:]]
            out.append((check_segment_id(int(row[0]), f"{path}:{n}: "), files))
    if not out:
        raise UserError(f"{path}: no 'id,file' lines found")
    return out


MAX_SEGMENT_ID = 2 ** 64 - 1


def check_segment_id(label, where: str = "") -> int:
    """A segment id as an int: 1 .. 2^64-1 (uint64; 0 is background)."""
    try:
        value = int(label)
    except (TypeError, ValueError):
        raise UserError(f"{where}segment id {label!r} is not an integer") from None
    if not 1 <= value <= MAX_SEGMENT_ID:
        raise UserError(f"{where}segment id {value} is out of range; give 1 or more (0 is background), at most "
                        f"{MAX_SEGMENT_ID} (uint64)")
    return value


@dataclass
class ImportResult:
    ids: list[int] = field(default_factory=list)
    files: int = 0
    warnings: list[str] = field(default_factory=list)


def _target(store, fmt: str | None):
    """(kind, mesh directory, mesh format, volume info or None) for the destination."""
    blob = store.get("info")
    if blob is None:
        if not store.is_empty():
            raise UserError(f"{store.url} is not empty and holds no precomputed layer; choose a new folder")
        return "new", "", fmt or "legacy", None
    info = parse_info(blob, store.describe("info"))
    kind = info.get("@type", "neuroglancer_multiscale_volume")
    if kind in ("neuroglancer_legacy_mesh", "neuroglancer_multilod_draco"):
        have = "legacy" if kind == "neuroglancer_legacy_mesh" else "multires"
        if fmt and fmt != have:
            raise UserError(f"{store.url} holds {have} meshes; pass --format {have}")
        return "meshes", "", have, None

    info = read_info_checked(store, blob)
    if info.get("type") != "segmentation":
        raise UserError(f"{store.url} is an image layer; meshes belong to segmentation layers")
    directory = info.get("mesh", "mesh")
    mblob = store.get(f"{directory}/info")
    have = None
    if mblob is not None:
        t = json.loads(mblob).get("@type")
        have = "multires" if t == "neuroglancer_multilod_draco" else "legacy"
    if have and fmt and fmt != have:
        raise UserError(f"{store.url}: its meshes in {directory}/ are {have}; pass --format {have} "
                        "(or re-mesh the layer)")
    return "volume", directory, have or fmt or "legacy", info


def import_meshes(items, dest, *, storage=None, break_lock: bool = False, **kw) -> ImportResult:
    """Write surface meshes as segment meshes (see :func:`_import_meshes`), holding the
    destination's lock so that no other run writes it meanwhile."""

    store = open_store(dest, storage if "://" in str(dest) else None)
    store.check_writable()
    with locked(store, "mesh-import", break_lock):
        return _import_meshes(items, store, storage=storage, **kw)


def _import_meshes(items, dest, *, matrix=None, units: str | None = None, from_world: bool = False,
                   fmt: str | None = None, labels=None, overwrite: bool = False, storage=None, lods: int = 3,
                   quantization_bits: int = 10) -> ImportResult:
    """Write surface meshes as segment meshes.

    ``items``: ``[(id, [file, ...]), ...]``; several files for one id are fragments of one
    mesh.  ``dest``: a segmentation layer (its meshes are added to), a mesh-only dataset, or
    a new folder (a mesh-only dataset is created; ``labels`` adds segment properties)."""

    if units is not None and units not in UNIT_TO_NM:
        raise UserError(f"--units {units}: choose nm, um, mm or m")
    if not 1 <= int(lods) <= 10:
        raise UserError(f"--lods {lods}: choose 1 to 10")
    if quantization_bits not in (10, 16):
        raise UserError(f"--quantization-bits {quantization_bits}: the format allows 10 or 16")
    for label, _files in items:
        check_segment_id(label)
    m = np.eye(4) if matrix is None else np.asarray(matrix, np.float64)
    if m.shape != (4, 4):
        raise UserError(f"the transform must be 4x4, got {m.shape}")
    store = open_store(dest, storage if "://" in str(dest) else None)
    store.check_writable()
    kind, directory, fmt, info = _target(store, fmt)
    prefix = f"{directory}/" if directory else ""
    res = ImportResult()
    table = load_table(labels)

    to_layer = None
    if from_world:
        tblob = store.get("transform.json") if kind == "volume" else None
        if tblob is None:
            raise UserError(f"{store.url} has no transform.json (made from a NIfTI affine); "
                            "give --transform and --units instead of --from-world")
        to_layer = np.linalg.inv(np.asarray(json.loads(tblob)["layer_nm_to_world"], np.float64))
    voxel_nm = float(min(info["scales"][0]["resolution"])) if info else None

    meshes: dict[int, list] = {}
    for label, files in items:
        if int(label) < 1:
            raise UserError(f"segment id {label} must be 1 or more (0 is background)")
        for path in files:
            v, f = read_mesh_file(path)
            full = m if to_layer is None else to_layer @ m
            v = apply_affine(v, m)
            if to_layer is not None:
                v = apply_affine(v, to_layer)
            else:
                v = v * UNIT_TO_NM[units or default_units(path)]
            if mirrors(full):
                f = flip_winding(f)
            meshes.setdefault(int(label), []).append((v, f))
            res.files += 1
    if not meshes:
        raise UserError("no meshes to import; give mesh files and an id")

    # ids the layer does not list
    if info is not None and "segment_properties" in info:
        sp = store.get(f"{info['segment_properties']}/info")
        if sp is not None:
            known = {int(i) for i in json.loads(sp)["inline"]["ids"]}
            absent = sorted(set(meshes) - known)
            if absent:
                res.warnings.append(f"{len(absent)} id(s) are not segments of {store.url}: "
                                    f"{', '.join(map(str, absent[:8]))}")
    clash = [i for i in meshes if store.exists(f"{prefix}{i}:0") or store.exists(f"{prefix}{i}.index")]
    if clash and not overwrite:
        raise UserError(f"segment(s) {', '.join(map(str, clash[:8]))} already have meshes in {store.url}; "
                        "pass --overwrite to replace them")
    if voxel_nm is None:      # a mesh-only dataset: the median edge length stands in for a voxel
        v, f = concat([p for parts in meshes.values() for p in parts])
        voxel_nm = float(np.median(np.linalg.norm(v[f[:, 0]] - v[f[:, 1]], axis=1))) or 1.0

    for label in sorted(meshes):
        parts = meshes[label]
        if fmt == "legacy":
            names = []
            for k, (v, f) in enumerate(parts):
                name = f"{label}:0:import{k}"
                store.put(prefix + name, gzip_compress(legacy_fragment(v, f), 6), content_encoding="gzip")
                names.append(name)
            store.put(f"{prefix}{label}:0", legacy_manifest(names), content_type="application/json")
        else:
            write_segment(store, directory, "multires", label, concat(parts), voxel_nm, 0.0, lods,
                          quantization_bits)
        res.ids.append(label)

    sp_ref = None
    if kind == "new" and table is not None:
        props, _notes = segment_properties(table, [i for i in sorted(meshes) if i in table.labels])
        store.put(f"{PROPERTIES_DIR}/info", dumps(props), content_type="application/json")
        sp_ref = PROPERTIES_DIR
    elif info is not None and "segment_properties" in info:
        sp_ref = f"../{info['segment_properties']}"
    elif kind == "meshes":
        sp_ref = json.loads(store.get("info")).get("segment_properties")
    store.put(f"{prefix}info", dumps(mesh_info(fmt, sp_ref, quantization_bits)), content_type="application/json")
    if kind == "volume" and info.get("mesh") != directory:
        info["mesh"] = directory
        store.put("info", dumps(info), content_type="application/json")
    return res
