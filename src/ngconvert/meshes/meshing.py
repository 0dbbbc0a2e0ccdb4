"""Meshes for a segmentation layer: marching cubes over regions, merged per segment.

Two stages of independent tasks, like the volume plan:

1. *region tasks* read a block of the mesh scale with one voxel of overlap on the high
   sides (and zero padding on the dataset's faces, so surfaces close there), run zmesh's
   multi-label marching cubes with simplification bounded by ``max_error``, and leave each
   label's piece, in nanometres, in the scratch area, grouped into batches by id;
2. *segment tasks* take one batch, weld each segment's pieces (the overlap makes the pieces
   meet on shared vertices, so the seams close), drop segments under the dust threshold and
   write the legacy or multi-resolution mesh (coarser levels simplified with growing error).

Region boundaries are never simplified away (zmesh keeps open borders), which is what makes
the seams watertight.

Over 450 lines because mesh planning, tasks, shards and the layer run still share one
module; the split into meshes/plan.py, tasks.py, shards.py and layer.py was left for a later
change so that this move stays purely a move.
"""
from __future__ import annotations

import io
import itertools
import json
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import numpy as np

from .formats import legacy_fragment, legacy_manifest, mesh_info, multires_segment
from .geometry import Mesh, compact, concat, weld
from ..codecs.sharding import ShardSpec, write_shard
from ..core.errors import UserError
from ..core.geometry import Box, ChunkGrid
from ..core.gzip import gzip_compress
from ..core.jsonio import dumps
from ..sources.precomputed import PrecomputedVolume
from ..store.base import Store
from ..store.destination import locked, exchange_folders
from ..store.local import FileStore
from ..store.open import open_store
from ..tasks.executors import ExecutorScope, make_executor
from ..tasks.progress import Progress
# zmesh, fastremap: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

MESH_SCRATCH = ".ngconvert/mesh"
FORMATS = ("legacy", "multires")


@dataclass
class MeshOptions:
    """How to mesh a segmentation layer (JSON-able; kept in the plan for --resume)."""

    format: str = "multires"            # legacy or multires
    lods: int = 3                       # multires levels of detail
    max_error: float | None = None      # simplification bound in nm (default: half the smallest voxel)
    dust: int = 0                       # skip segments with fewer voxels than this
    scale: int = 0                      # mesh this scale of the layer
    quantization_bits: int = 10         # multires vertex quantization: 10 or 16
    directory: str = "mesh"
    ids: list[int] | None = None        # mesh only these segments
    region: int = 256                   # region task edge, in voxels of the mesh scale
    sharded: bool = False               # multires meshes packed into shard files (key = segment id)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, o) -> "MeshOptions":
        return cls(**o)

    def check(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"--format {self.format}: choose legacy or multires")
        if not 1 <= self.lods <= 10:
            raise UserError(f"--lods {self.lods}: choose 1 to 10")
        if self.max_error is not None and not self.max_error >= 0:
            raise UserError(f"--max-error {self.max_error}: give 0 (no simplification) or more, in nm")
        if self.dust < 0:
            raise UserError(f"--dust {self.dust}: give 0 or more voxels")
        if self.quantization_bits not in (10, 16):
            raise UserError(f"--quantization-bits {self.quantization_bits}: the format allows 10 or 16")
        if self.region < 16:
            raise UserError(f"--mesh-region {self.region}: give 16 voxels or more")
        if self.sharded and self.format != "multires":
            raise UserError("legacy meshes cannot be sharded; use --mesh-format multires")
        if not self.directory or "/" in self.directory.strip("/") or self.directory in (".", ".."):
            raise UserError(f"--mesh-dir {self.directory!r}: give a plain folder name such as mesh")


class MeshBatch(NamedTuple):
    index: int

    @property
    def name(self) -> str:
        return f"mesh batch {self.index}"


class MeshRegion(NamedTuple):
    index: int
    box: Box

    @property
    def name(self) -> str:
        return f"mesh region {self.index} ({self.box.start}-{self.box.stop})"


@dataclass
class MeshPlan:
    options: MeshOptions
    info: dict                          # the volume's info (the layer may not have one stored yet)
    batches: int
    error_nm: float
    _grid: ChunkGrid | None = field(default=None, repr=False)

    @property
    def bounds(self) -> Box:
        s = self.info["scales"][self.options.scale]
        start = tuple(int(v) for v in s.get("voxel_offset", (0, 0, 0)))
        return Box(start, tuple(a + int(n) for a, n in zip(start, s["size"])))

    @property
    def resolution(self) -> np.ndarray:
        return np.array(self.info["scales"][self.options.scale]["resolution"], np.float64)

    def grid(self) -> ChunkGrid:
        if self._grid is None:
            self._grid = ChunkGrid(self.bounds, (self.options.region,) * 3)
        return self._grid

    def task_count(self) -> int:
        return self.grid().count + self.batches

    def regions(self):
        g = self.grid()
        for n, (k, j, i) in enumerate(itertools.product(*(range(s) for s in reversed(g.shape)))):
            yield MeshRegion(n, g.cell((i, j, k)))

    def to_json(self) -> dict:
        return {"options": self.options.to_json(), "info": self.info, "batches": self.batches,
                "error_nm": self.error_nm}

    @classmethod
    def from_json(cls, o) -> "MeshPlan":
        return cls(MeshOptions.from_json(o["options"]), o["info"], o["batches"], o["error_nm"])


def plan_meshes(info: dict, options: MeshOptions, workers: int) -> MeshPlan:
    options.check()
    if info.get("type") != "segmentation":
        raise UserError("meshes are made from segmentation layers; this layer is an image")
    if int(info.get("num_channels", 1)) != 1:
        raise UserError("meshes need a one-channel segmentation")
    if not 0 <= options.scale < len(info["scales"]):
        raise UserError(f"--mesh-scale {options.scale}: the layer has scales 0..{len(info['scales']) - 1}")
    res = np.array(info["scales"][options.scale]["resolution"], np.float64)
    error = float(options.max_error) if options.max_error is not None else 0.5 * float(res.min())
    plan = MeshPlan(options, info, max(1, 4 * workers), error)
    return plan


# ---------------------------------------------------------------- stage 1: regions


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def mesh_region(labels: np.ndarray, resolution, error_nm: float) -> dict[int, Mesh]:
    """Meshes of every non-zero label of ``labels`` (``[x, y, z]``), in voxel units of the
    array with voxel centres at ``i + 0.5``."""
    import zmesh

    res = np.asarray(resolution, np.float64)
    aniso = res / res.min()
    mesher = zmesh.Mesher(tuple(aniso))
    mesher.mesh(np.asfortranarray(labels), close=False)
    out = {}
    err = error_nm / res.min()
    for label in mesher.ids():
        m = mesher.get(int(label), normals=False, reduction_factor=100 if err > 0 else 0,
                       max_error=err if err > 0 else None, voxel_centered=True)
        mesher.erase(int(label))
        if len(m.faces):
            out[int(label)] = (np.asarray(m.vertices, np.float64) / aniso, np.asarray(m.faces, np.int64))
    mesher.clear()
    return out


@dataclass(frozen=True)
class MeshCtx:
    """What every mesh task of a run shares (sent once per worker)."""
    store: Store
    plan: MeshPlan


def run_region(ctx: MeshCtx, region: MeshRegion) -> int:
    """Mesh one region; returns the number of labels meshed."""
    store, plan = ctx.store, ctx.plan
    index, box = region
    import fastremap

    bounds = plan.bounds
    ext = Box(box.start, tuple(min(b + 1, hi) for b, hi in zip(box.stop, bounds.stop)))
    vol = PrecomputedVolume(store, plan.info)
    data = vol.read(plan.options.scale, ext)[..., 0]
    if plan.options.ids is not None:
        data = fastremap.mask_except(data, [int(i) for i in plan.options.ids], in_place=False)
    core = data[tuple(slice(0, n) for n in box.shape)]
    ids, counts = fastremap.unique(core, return_counts=True)
    keep = ids != 0
    ids, counts = ids[keep], counts[keep]
    if len(ids) == 0:
        return 0
    # zero padding where the region touches the dataset's faces closes the surfaces there
    before = tuple(int(s == lo) for s, lo in zip(ext.start, bounds.start))
    after = tuple(int(e == hi) for e, hi in zip(ext.stop, bounds.stop))
    padded = np.pad(data, tuple(zip(before, after)))
    meshes = mesh_region(padded, plan.resolution, plan.error_nm)
    shift = np.array(ext.start, np.float64) - np.array(before)
    res = plan.resolution
    by_batch: dict[int, list] = {}
    count_of = dict(zip(ids.tolist(), counts.tolist()))
    for label in sorted(set(meshes) | set(count_of)):
        v, f = meshes.get(label, (np.zeros((0, 3)), np.zeros((0, 3), np.int64)))
        by_batch.setdefault(label % plan.batches, []).append(
            (label, (v + shift) * res, f, count_of.get(label, 0)))
    for batch, items in by_batch.items():
        store.put(f"{MESH_SCRATCH}/{batch}/{index}", _npz(
            ids=np.array([i[0] for i in items], np.uint64),
            counts=np.array([i[3] for i in items], np.int64),
            nv=np.array([len(i[1]) for i in items], np.int64),
            nf=np.array([len(i[2]) for i in items], np.int64),
            vertices=np.concatenate([i[1] for i in items]).astype(np.float64),
            faces=np.concatenate([i[2] for i in items]).astype(np.int64)))
    return len(ids)


# ---------------------------------------------------------------- stage 2: segments


def simplify_levels(mesh: Mesh, error_nm: float, voxel_nm: float, lods: int) -> list[Mesh]:
    """``lods`` versions of a mesh: the mesh itself, then simplified with an error bound
    doubling from level to level (at least one voxel at level 1)."""
    import zmesh

    v, f = mesh
    out = [mesh]
    if lods == 1 or len(f) == 0:
        return out
    lo = v.min(axis=0)
    # zmesh's simplifier rounds vertices to a half-unit integer grid and its error bound to
    # whole units, in a range below 2^20.  In voxel units that moves vertices by up to half a
    # voxel, merges neighbours into degenerate triangles and can make it loop forever; so the
    # mesh is scaled up by the largest power of two that keeps it in range.
    extent = float(((v - lo) / voxel_nm).max()) if len(v) else 1.0
    scale = float(2 ** max(0, min(10, int(np.floor(np.log2(2 ** 18 / max(extent, 1.0)))))))
    local = (v - lo) / voxel_nm * scale
    simplifier = zmesh.Mesher((1, 1, 1))
    for lod in range(1, lods):
        err = max(error_nm, voxel_nm) * 2 ** lod / voxel_nm * scale
        m = simplifier.simplify(zmesh.Mesh(local.astype(np.float32), f.astype(np.uint32), None),
                                reduction_factor=2 ** (lod + 1), max_error=err,
                                compute_normals=False)
        sv, sf = np.asarray(m.vertices, np.float64) / scale, np.asarray(m.faces, np.int64)
        # the simplifier can leave a collapsed vertex as NaN: drop faces that use one
        sf = sf[np.isfinite(sv).all(axis=1)[sf].all(axis=1)] if len(sf) else sf
        sv, sf = compact(sv, sf)
        out.append((sv * voxel_nm + lo, sf) if len(sf) else out[-1])
    return out


SHARD_OUT = ".ngconvert/mesh-out"          # multires segments waiting for their shard


def write_segment(store: Store, directory: str, fmt: str, label: int, mesh: Mesh, voxel_nm: float,
                  error_nm: float, lods: int, bits: int, bbox: str = "", sharded: bool = False) -> int:
    """Write one segment's mesh (nm, welded); returns bytes written.  ``sharded``: the
    multires manifest and fragments go to the scratch area for :func:`write_mesh_shards`."""
    v, f = mesh
    prefix = f"{directory}/" if directory else ""     # "" for a mesh-only dataset
    if sharded:
        prefix = f"{SHARD_OUT}/"
    if fmt == "legacy":
        name = f"{label}:0:{bbox or 'mesh'}"
        frag = legacy_fragment(v, f)
        store.put(prefix + name, gzip_compress(frag, 6), content_encoding="gzip")
        store.put(f"{prefix}{label}:0", legacy_manifest([name]), content_type="application/json")
        return len(frag)
    seg = multires_segment(simplify_levels(mesh, error_nm, voxel_nm, lods), voxel_nm, bits, lods)
    store.put(f"{prefix}{label}", seg.fragments)
    store.put(f"{prefix}{label}.index", seg.manifest)
    return len(seg.fragments) + len(seg.manifest)


def _bbox_name(v: np.ndarray, res: np.ndarray) -> str:
    lo = np.floor(v.min(axis=0) / res).astype(int)
    hi = np.ceil(v.max(axis=0) / res).astype(int)
    return "_".join(f"{a}-{b}" for a, b in zip(lo, hi))


def run_batch(ctx: MeshCtx, item: MeshBatch) -> tuple[list[int], list[int]]:
    """Merge and write every segment of a batch; returns (ids written, ids dropped as dust)."""
    store, plan, batch = ctx.store, ctx.plan, item.index
    pieces: dict[int, list[Mesh]] = {}
    counts: dict[int, int] = {}
    for key, _size in sorted(store.list(f"{MESH_SCRATCH}/{batch}/")):
        blob = store.get(key)
        if blob is None:
            continue
        z = np.load(io.BytesIO(blob))
        vo = fo = 0
        for label, c, nv, nf in zip(z["ids"].tolist(), z["counts"].tolist(), z["nv"].tolist(), z["nf"].tolist()):
            counts[label] = counts.get(label, 0) + c
            if nf:
                pieces.setdefault(label, []).append((z["vertices"][vo:vo + nv], z["faces"][fo:fo + nf]))
            vo, fo = vo + nv, fo + nf
    written, dust = [], []
    opts = plan.options
    res = plan.resolution
    for label in sorted(counts):
        if counts[label] < opts.dust:
            dust.append(label)
            continue
        if label not in pieces:
            continue
        mesh = weld(*concat(pieces[label]), decimals=3)
        if len(mesh[1]) == 0:
            continue
        write_segment(store, opts.directory, opts.format, label, mesh, float(res.min()), plan.error_nm,
                      opts.lods, opts.quantization_bits, _bbox_name(mesh[0], res), sharded=opts.sharded)
        written.append(label)
    return written, dust


# ---------------------------------------------------------------- running


def _done(stage: str, n: int) -> str:
    return f"{MESH_SCRATCH}-done/{stage}/{n}"


@dataclass
class MeshResult:
    ids: list[int] = field(default_factory=list)
    dust: list[int] = field(default_factory=list)
    already_complete: bool = False      # resume found the meshes complete: nothing written


def run_mesh_plan(store: Store, plan: MeshPlan, workers: int | None, quiet: bool, resume: bool,
                  executor=None, bar: Progress | None = None) -> MeshResult:
    """Both stages, skipping tasks an interrupted run finished; writes ``<dir>/info``.
    ``bar``: a progress bar already counting these tasks (else one is made)."""
    executor = executor or make_executor(workers)
    ctx = MeshCtx(store, plan)
    regions = list(plan.regions())
    result = MeshResult()
    own = bar is None
    if own:
        bar = Progress(plan.task_count(), "meshing", quiet=quiet)
    try:
        todo = []
        for region in regions:
            if resume and store.exists(_done("regions", region.index)):
                bar.update(1)
            else:
                todo.append(region)
        for (n, _box), _count in executor.run(run_region, todo, ctx):
            store.put(_done("regions", n), b"")
            bar.update(1)
        todo = []
        for b in range(plan.batches):
            blob = store.get(_done("segments", b)) if resume else None
            if blob is not None:
                done = json.loads(blob)
                result.ids += done["ids"]
                result.dust += done["dust"]
                bar.update(1)
            else:
                todo.append(MeshBatch(b))
        for batch, (ids, dust) in executor.run(run_batch, todo, ctx):
            store.put(_done("segments", batch.index), json.dumps({"ids": ids, "dust": dust}).encode())
            result.ids += ids
            result.dust += dust
            bar.update(1)
        result.ids.sort()
        result.dust.sort()
        sharding = None
        if plan.options.sharded:
            sharding = write_mesh_shards(store, plan.options.directory, result.ids, executor, resume, bar)
    finally:
        if own:
            bar.close()
    sp = "../segment_properties" if "segment_properties" in plan.info else None
    store.put(f"{plan.options.directory}/info", dumps(mesh_info(plan.options.format, sp,
                                                                 plan.options.quantization_bits, sharding)),
              content_type="application/json")
    return result


# ---------------------------------------------------------------- sharded multires meshes

MESH_SHARD_BYTES = 1 << 30


def choose_mesh_spec(count: int, total_bytes: int, target_bytes: int = MESH_SHARD_BYTES):
    """murmurhash3 keys (segment ids are not spatial): about ``target_bytes`` per shard and a
    few hundred segments per minishard."""

    key_bits = max(0, math.ceil(math.log2(max(1, count))))
    shard_bits = max(0, min(key_bits, math.ceil(math.log2(max(1, total_bytes / target_bytes)))))
    mini_bits = max(0, key_bits - shard_bits - 8)
    return ShardSpec(0, "murmurhash3_x86_128", mini_bits, shard_bits, "gzip", "gzip")


@dataclass(frozen=True)
class MeshShardCtx:
    """What every mesh shard task shares (sent once per worker)."""
    store: Store
    directory: str
    spec: dict                      # the sharding spec's JSON


def write_one_mesh_shard(ctx: MeshShardCtx, item: tuple) -> int:
    """Pack one shard: ``item`` is ``(shard, ((minishard, label), ...))``."""
    store, directory = ctx.store, ctx.directory
    shard, items = item
    spec = ShardSpec.from_json(ctx.spec)

    def fetch(label: int):
        manifest = store.get(f"{SHARD_OUT}/{label}.index")
        if manifest is None:
            return None
        return manifest, store.get(f"{SHARD_OUT}/{label}") or b"", False

    n = write_shard(store, f"{directory}/{spec.shard_name(shard)}", spec, list(items), fetch)
    store.put(_done("shards", shard), b"")
    return n


def write_mesh_shards(store: Store, directory: str, ids: list[int], executor, resume: bool, bar: Progress) -> dict:
    """Pack the segments waiting in the scratch area into shards; returns the spec."""

    saved = store.get(f"{MESH_SCRATCH}-done/spec.json") if resume else None
    if saved is not None:
        spec = ShardSpec.from_json(json.loads(saved))
    else:
        total = sum(size for _k, size in store.list(SHARD_OUT + "/"))
        spec = choose_mesh_spec(len(ids), total)
        store.put(f"{MESH_SCRATCH}-done/spec.json", dumps(spec.to_json()))
    groups: dict[int, list] = {}
    for label in ids:
        shard, mini = spec.locate(label)
        groups.setdefault(shard, []).append((mini, label))
    todo = [(sh, tuple(sorted(items))) for sh, items in sorted(groups.items())
            if not (resume and store.exists(_done("shards", sh)))]
    ctx = MeshShardCtx(store, directory, spec.to_json())
    bar.grow(len(groups))
    bar.update(len(groups) - len(todo))
    for _item, _n in executor.run(write_one_mesh_shard, todo, ctx):
        bar.update(1)
    store.delete_prefix(SHARD_OUT + "/")
    return spec.to_json()


def clear_mesh_scratch(store: Store) -> None:
    store.delete_prefix(MESH_SCRATCH + "/")
    store.delete_prefix(MESH_SCRATCH + "-done/")
    store.delete_prefix(SHARD_OUT + "/")


MESH_PLAN_KEY = ".ngconvert/mesh-plan.json"


MESH_TARGET_KEY = ".ngconvert/mesh-target.json"


def mesh_layer(dest, options: MeshOptions | None = None, *, storage=None, workers: int | None = None,
               quiet: bool = True, overwrite: bool = False, resume: bool = False, executor=None,
               scheduler: str | None = None, dask_workers: int | None = None,
               break_lock: bool = False) -> MeshResult:
    """Add meshes to an existing segmentation layer (``ngconvert mesh``).

    Meshes that replace others (``overwrite``) are written beside them and swapped in
    when complete, so ``info`` points at a complete mesh folder at every moment: locally
    the two folders are exchanged in one step; on object stores the new meshes go to a new
    folder (``mesh-2``, ...), ``info`` switches to it in one write and the old folder is
    deleted after.  An interrupted run is finished with ``resume=True`` (idempotent)."""

    options = options or MeshOptions()
    options.check()
    store = open_store(dest, storage if "://" in str(dest) else None)
    blob = store.get("info")
    if blob is None:
        if store.exists(".ngconvert/plan.json") or store.exists(".ngconvert/run.json"):
            raise UserError(f"{store.url}: the conversion is not finished; finish it with --resume first")
        raise UserError(f"{store.url} has no info file; give the folder of a segmentation layer")
    try:
        info = json.loads(blob)
    except ValueError as e:
        raise UserError(f"{store.describe('info')}: not valid JSON ({e}); fix it or convert again") from None
    if not isinstance(info, dict) or info.get("type") != "segmentation":
        raise UserError(f"{store.url} is not a segmentation layer (info type {info.get('type') if isinstance(info, dict) else None!r}); "
                        "meshes are made from labels")
    with locked(store, "mesh", break_lock):
        saved = store.get(MESH_PLAN_KEY)
        target = json.loads(store.get(MESH_TARGET_KEY) or b"null")
        if saved is not None and resume:
            plan = MeshPlan.from_json(json.loads(saved))
            if target is None:                # a run of an earlier version: it wrote in place
                target = {"work": plan.options.directory, "final": plan.options.directory, "old": None}
            with ExecutorScope(workers, executor, scheduler, dask_workers, quiet) as ex:
                return _finish_mesh_layer(store, plan, target, ex, quiet, True)
        if saved is not None and not overwrite:
            raise UserError(f"{store.url} has an interrupted meshing run; pass --resume to finish it or "
                            "--overwrite to start again")
        old = info.get("mesh")
        final = options.directory
        in_use = [d for d in dict.fromkeys([old, final]) if d and not store.is_empty_prefix(d + "/")]
        if in_use and not overwrite:
            if resume and old == final:
                return MeshResult(ids=[], dust=[], already_complete=True)
            raise UserError(f"{store.url} already has meshes in {in_use[0]}/; pass --overwrite to replace them "
                            "(the old ones stay until the new ones are complete)")
        if final not in in_use:
            work = final                     # nothing there: write in place
        elif isinstance(store, FileStore):
            work = f"{final}.ngconvert-new"  # exchanged with the old folder at the end
        else:
            n = 2
            while not store.is_empty_prefix(f"{final}-{n}/"):
                n += 1
            work = final = f"{final}-{n}"    # info switches to it in one write
        info.pop("mesh", None)
        clear_mesh_scratch(store)
        if not store.is_empty_prefix(work + "/") and work != final:
            store.delete_prefix(work + "/")
        target = {"work": work, "final": final, "old": old}
        with ExecutorScope(workers, executor, scheduler, dask_workers, quiet) as ex:
            plan = plan_meshes(info, replace(options, directory=work), ex.workers)
            store.put(MESH_TARGET_KEY, dumps(target), content_type="application/json")
            store.put(MESH_PLAN_KEY, dumps(plan.to_json()), content_type="application/json")
            return _finish_mesh_layer(store, plan, target, ex, quiet, False)


SWAP_MARK = ".ngconvert-new-meshes"     # inside a new mesh folder until it has been swapped in


def _finish_mesh_layer(store, plan: MeshPlan, target: dict, ex, quiet: bool, resume: bool) -> MeshResult:
    work, final, old = target["work"], target["final"], target.get("old")
    if work != final and store.exists(f"{final}/{SWAP_MARK}"):
        result = MeshResult()              # an interrupted run had swapped them in already
    else:
        result = run_mesh_plan(store, plan, None, quiet, resume, executor=ex)
        if work != final:                  # local: swap the complete new folder in, in one step
            store.put(f"{work}/{SWAP_MARK}", b"")
            exchange_folders(store.root / work, store.root / final)
    if work != final:
        shutil.rmtree(store.root / work, ignore_errors=True)       # now the old meshes
    info = dict(plan.info)
    info["mesh"] = final
    store.put("info", dumps(info), content_type="application/json")
    if old and old != final:
        store.delete_prefix(old + "/")       # info no longer names it
    store.delete(f"{final}/{SWAP_MARK}")
    store.delete_prefix(".ngconvert/")       # mesh scratch, the plan and temporaries: the layer is complete
    return result