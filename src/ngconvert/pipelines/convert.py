"""The conversion API: a source and options in, a multiscale precomputed layer out.

Over 450 lines because the options and the layer resolution still sit with the pipeline; the
split into plan/options.py and plan/resolve.py was left for a later change so that this move
stays purely a move.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..codecs.chunks import DATA_TYPES, ENCODINGS, check_codec_options, encoding_problem
from ..codecs.kernels import METHODS
from ..codecs.sharding import HASHES, ShardSpec, TARGET_SHARD_BYTES, choose_spec
from ..core.errors import UserError
from ..sources.fingerprint import fingerprint
from ..core.geometry import Box, Vec
from ..core.jsonio import dumps
from ..meshes.meshing import MeshOptions, clear_mesh_scratch, plan_meshes, run_mesh_plan
from ..plan.pyramid import choose_chunk_size, chunk_count, plan_factors, scale_boxes
from ..plan.spec import LAYER_TYPES, LayerSpec
from ..plan.stages import CHUNK_SCRATCH, DEFAULT_TASK_BYTES, PLAN_KEY, Plan, done_key, plan_stages
from ..properties.labels import load_table, resolve_ids
from ..properties.segment_properties import write_segment_metadata
from ..sources.base import UNIT_TO_NM, SourceInfo
from ..sources.open import SliceOptions, SourceRef, normalize_flip, open_source, prepare, ref_for, release
from ..sources.survey import float32_overflow, guess_layer_type, value_range
from ..store.base import StorageOptions, Store
from ..store.destination import check_same_run, check_space, claim, preflight, refuse_overlap
from ..store.local import FileStore, MemoryStore
from ..store.open import open_store
from ..tasks.executors import ExecutorScope, ThreadExecutor, check_worker_counts, make_executor
from ..tasks.progress import Progress
from ..tasks.regions import PyramidCtx, run_task
from ..tasks.shards import ShardCtx, plan_shard_tasks, run_shard_task, shard_done_key


MAX_CHUNKS = 2_000_000        # chunks at full resolution a plan may have unless max_chunks allows more
MAX_COORDINATE = 2 ** 40      # |voxel_offset| and voxel_offset + size stay within this (about 1.1e12)


@dataclass
class ConvertOptions:
    """What the user asks for; anything left as None is chosen from the data."""

    layer_type: str = "auto"                  # image, segmentation or auto
    encoding: str | None = None               # raw, jpeg, png, compressed_segmentation
    compress: str = "auto"                    # gzip, none, auto (gzip for raw/compressed_segmentation)
    gzip_level: int = 1
    jpeg_quality: int = 85
    png_level: int = 6
    cseg_block_size: Vec = (8, 8, 8)
    resolution: tuple[float, float, float] | None = None
    units: str = "nm"
    voxel_offset: Vec = (0, 0, 0)
    chunk_size: Vec | None = None
    factor: Vec | None = None
    max_mips: int | None = None
    downsample: str | None = None             # average, mode, stride, min, max
    dtype: str | None = None                  # explicit conversion, may lose information
    axes: str = "xyz"
    order_file: str | None = None             # slice stacks: names and z positions of the slices
    pad: str = ""                             # slice stacks: "origin" or "center" for smaller slices
    flip: str = ""                            # slices: axes to reverse, any of x, y, z
    transpose: bool = False                   # slices: swap x and y
    affine: list | None = None                # voxel -> world for array sources
    world_units: str = "mm"
    skip_empty: bool = False
    workers: int | None = None
    task_bytes: int | None = None
    storage: StorageOptions | None = None     # how to reach s3:// and gs:// sources and destinations
    scheduler: str | None = None              # a Dask scheduler address: run the tasks there
    dask_workers: int | None = None           # a local Dask cluster of this many worker processes
    labels: object = None                     # label table: a path, {id: name | {...}}, or a LabelTable
    only: object = None                       # ids or names to keep ("17,53" or [17, "Left-Hippocampus"])
    exclude: object = None                    # ids or names to set to 0
    all_labels: bool = False                  # list table ids absent from the volume in the properties
    mesh: object = None                       # MeshOptions: write meshes of the segmentation too
    sharded: bool = False                     # write every scale in the sharded format
    shard_bytes: int | None = None            # target uncompressed chunk bytes per shard
    shard_hash: str = "identity"              # identity or murmurhash3_x86_128
    sharding: dict | None = None              # an explicit sharding spec for every scale
    max_chunks: int | None = MAX_CHUNKS       # refuse plans of more chunks at scale 0 (None: no limit)
    overwrite: bool = False
    resume: bool = False
    break_lock: bool = False                  # take the destination's lock even if another run holds it
    source_fingerprint: dict | None = None    # what the source is made of, when the caller made it (assembly)
    quiet: bool = False


@dataclass
class ConvertResult:
    dest: str
    layer: LayerSpec
    plan: Plan
    tasks_run: int = 0
    chunks: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    labels_present: list[int] | None = None   # label ids in the written layer (with a label table)
    meshes: int | None = None                 # segments meshed (with ConvertOptions.mesh)
    already_complete: bool = False            # resume found the same dataset complete: nothing written


def _resolve_dtype(src_info: SourceInfo, src, opts: ConvertOptions, origin: str, say) -> str:
    d = np.dtype(src_info.dtype)
    if opts.dtype:
        if opts.dtype not in DATA_TYPES:
            raise UserError(f"--dtype {opts.dtype}: not a precomputed data type; choose one of {', '.join(DATA_TYPES)}")
        if opts.dtype != d.name:
            if opts.dtype == "float32" and d.kind == "f" and d.itemsize > 4:
                big = float32_overflow(src)
                if big is not None:
                    raise UserError(f"{origin}: values up to {big:g} do not fit float32 (largest "
                                    f"{float(np.finfo(np.float32).max):g}) and would be stored as inf; rescale "
                                    "the data first, or choose --dtype of another range")
            say(f"converting {d.name} to {opts.dtype} as asked (values are rounded and clipped)")
        return opts.dtype
    if d.name in DATA_TYPES:
        return d.name
    if d.kind == "b":
        return "uint8"
    if d.name == "float16":
        return "float32"
    if d.name == "float64":
        lo, hi, exact = value_range(src, check_float32=True)
        if not exact:
            raise UserError(f"{origin}: float64 values are not all exactly representable as float32; "
                            "pass --dtype float32 to convert with rounding")
        say("float64 data converted to float32 (checked lossless)")
        return "float32"
    if d.kind in "iu":
        lo, hi, _ = value_range(src)
        for cand in ("uint8", "uint16", "uint32", "uint64") if lo >= 0 else ("int8", "int16", "int32"):
            info = np.iinfo(cand)
            if info.min <= lo and hi <= info.max and np.dtype(cand).itemsize >= min(4, d.itemsize):
                say(f"{d.name} data converted to {cand} (values {lo}..{hi} fit; lossless)")
                return cand
        raise UserError(f"{origin}: {d.name} values {lo}..{hi} fit no precomputed type; "
                        "pass --dtype to convert with clipping")
    raise UserError(f"{origin}: data type {d} is not supported; give integers or float32")


SLAB_TASK_BYTES = 256 << 20


def task_budget(opts: ConvertOptions, src) -> int:
    """Bytes of input one task may hold: ``--task-memory``, or a default by source kind."""
    if opts.task_bytes:
        return opts.task_bytes
    return SLAB_TASK_BYTES if getattr(src, "whole_slices", False) else DEFAULT_TASK_BYTES


MAX_CHUNK_VOXELS = 512 ** 3


def _check_option_ranges(opts: ConvertOptions) -> None:
    """Checks that need no data, done before any work."""
    if opts.layer_type not in LAYER_TYPES + ("auto",):
        raise UserError(f"--type {opts.layer_type}: choose image, segmentation or auto")
    if opts.encoding is not None and opts.encoding not in ENCODINGS:
        raise UserError(f"--encoding {opts.encoding}: choose one of {', '.join(ENCODINGS)}")
    if opts.compress not in ("auto", "gzip", "none"):
        raise UserError(f"--compress {opts.compress}: choose auto, gzip or none")
    if opts.downsample is not None and opts.downsample not in METHODS:
        raise UserError(f"--downsample {opts.downsample}: choose one of {', '.join(METHODS)}")
    check_codec_options(opts.gzip_level, opts.jpeg_quality, opts.png_level, opts.cseg_block_size)
    if opts.units not in UNIT_TO_NM:
        raise UserError(f"--units {opts.units}: choose one of nm, um, mm, m")
    if opts.resolution is not None and (len(opts.resolution) != 3 or any(
            not np.isfinite(float(r)) or float(r) <= 0 for r in opts.resolution)):
        raise UserError(f"--resolution {','.join(map(str, opts.resolution))}: voxel sizes must be positive "
                        "numbers, e.g. 4,4,40")
    if opts.chunk_size is not None and (len(opts.chunk_size) != 3 or any(c < 1 for c in opts.chunk_size)):
        raise UserError(f"--chunk-size {opts.chunk_size}: give three positive sizes, e.g. 64,64,64")
    if opts.factor is not None and (len(opts.factor) != 3 or any(f < 1 for f in opts.factor)):
        raise UserError(f"--factor {opts.factor}: give three factors of 1 or more, e.g. 2,2,1")
    if opts.factor is not None and all(f == 1 for f in opts.factor):
        raise UserError(f"--factor {','.join(map(str, opts.factor))}: a factor of 1 on every axis never shrinks the "
                        "volume; give at least one factor of 2 or more, e.g. 2,2,1")
    if opts.chunk_size is not None and len(opts.chunk_size) == 3 and \
            int(np.prod([int(c) for c in opts.chunk_size], dtype=object)) > MAX_CHUNK_VOXELS:
        raise UserError(f"--chunk-size {','.join(map(str, opts.chunk_size))}: a chunk of more than "
                        f"{MAX_CHUNK_VOXELS} voxels (512^3) is too large to hold or to show; give e.g. 64,64,64")
    if opts.max_mips is not None and opts.max_mips < 0:
        raise UserError(f"--max-mips {opts.max_mips}: must be 0 or more")
    check_worker_counts(opts.workers, opts.dask_workers)
    if opts.task_bytes is not None and opts.task_bytes < 1:
        raise UserError(f"--task-memory {opts.task_bytes >> 20} MB (task_bytes {opts.task_bytes}): give 1 MB or more")
    if opts.shard_bytes is not None and opts.shard_bytes < 1:
        raise UserError(f"--shard-size {opts.shard_bytes >> 20} MB (shard_bytes {opts.shard_bytes}): "
                        "give 1 MB or more")
    if opts.shard_hash not in ("identity", "murmurhash3_x86_128"):
        raise UserError(f"--shard-hash {opts.shard_hash}: choose identity or murmurhash3_x86_128")
    if opts.max_chunks is not None and opts.max_chunks < 1:
        raise UserError(f"max_chunks {opts.max_chunks}: give 1 or more, or None for no limit")
    off = tuple(opts.voxel_offset)
    if len(off) != 3 or any(isinstance(o, bool) or not isinstance(o, (int, np.integer)) for o in off):
        raise UserError(f"--offset {','.join(map(str, off))}: give three integers, e.g. 0,0,0")
    if any(abs(int(o)) > MAX_COORDINATE for o in off):
        raise UserError(f"--offset {','.join(map(str, off))}: offsets are limited to +-{MAX_COORDINATE} "
                        "(2^40) voxels; give a smaller offset")
    if opts.flip:
        normalize_flip(opts.flip)
    if opts.mesh is not None and hasattr(opts.mesh, "check"):
        opts.mesh.check()


def resolve_layer(ref: SourceRef, opts: ConvertOptions, notes: list[str]) -> LayerSpec:
    """Decide every property of the layer from the source and the options.

    Notes on what was decided are appended to ``notes``; the caller shows them once the
    whole layer is resolved, so a bad option gives one error line and nothing else.
    """
    say = notes.append
    _check_option_ranges(opts)
    src = open_source(ref)
    info = src.info
    origin = ref.origin
    for n in info.notes:
        say(f"{origin}: {n}")
    data_type = _resolve_dtype(info, src, opts, origin, say)
    table, keep, drop = resolve_segments(opts)
    for n in table.notes if table is not None else ():
        say(n)

    layer_type = opts.layer_type
    labelled = table is not None or keep is not None or drop is not None
    if labelled and layer_type == "image":
        raise UserError("--labels, --only and --exclude describe segmentations; drop --type image "
                        "or pass --type segmentation")
    if opts.mesh is not None:
        if layer_type == "image":
            raise UserError("--mesh makes surfaces of segmentations; pass --type segmentation")
        opts.mesh.check()
        labelled = True
    if labelled and layer_type == "auto":
        layer_type = "segmentation"
    if layer_type == "auto" and opts.encoding in ("jpeg", "png"):
        layer_type = "image"          # asking for an image codec says what the data is
    if layer_type == "auto":
        layer_type, why = guess_layer_type(src, np.dtype(data_type))
        say(f"--type auto chose {layer_type} ({why}); pass --type to override")
    if layer_type == "segmentation":
        if info.channels != 1:
            raise UserError(f"{origin}: segmentation needs one channel, the data has {info.channels}; use --type image")
        if np.dtype(data_type).kind == "f":
            raise UserError(f"{origin}: segmentation needs integer labels, the data is {data_type}; "
                            "use --type image or pass --dtype uint32")

    encoding = opts.encoding or ("compressed_segmentation" if layer_type == "segmentation" else "raw")
    if encoding == "jpeg" and layer_type == "segmentation":
        raise UserError("--encoding jpeg is lossy and would invent labels; use compressed_segmentation or raw "
                        "for a segmentation")
    if encoding == "compressed_segmentation" and data_type not in ("uint32", "uint64"):
        kind = np.dtype(data_type).kind
        if kind == "f":
            raise UserError(f"--encoding compressed_segmentation stores uint32/uint64 labels, the data is "
                            f"{data_type}; use raw, or --dtype uint32")
        if kind == "i":
            lo, _hi, _ = value_range(src)
            if lo < 0:
                raise UserError(f"{origin}: compressed_segmentation stores unsigned labels but the data has "
                                f"negative values (min {lo}); use --encoding raw")
        say(f"{data_type} labels widened to uint32 for compressed_segmentation")
        data_type = "uint32"
    problem = encoding_problem(encoding, data_type, info.channels)
    if problem:
        raise UserError(f"{origin}: {problem}; choose another --encoding")

    compress = opts.compress
    if compress == "auto":
        compress = "gzip" if encoding in ("raw", "compressed_segmentation") else "none"
    if compress not in ("gzip", "none"):
        raise UserError(f"--compress {compress}: choose gzip or none")

    method = opts.downsample or ("mode" if layer_type == "segmentation" else "average")
    if method == "average" and layer_type == "segmentation":
        say("note: averaging labels invents labels at boundaries; mode is the usual choice")

    if opts.resolution is not None:
        resolution = tuple(float(r) * UNIT_TO_NM[opts.units] for r in opts.resolution)
    elif info.resolution_nm is not None:
        resolution = tuple(float(r) for r in info.resolution_nm)
    else:
        resolution = (1.0, 1.0, 1.0)
        say("no voxel size known; using 1x1x1 nm (pass --resolution and --units)")
    if any(not np.isfinite(r) or r <= 0 for r in resolution):
        raise UserError(f"{origin}: the voxel size {resolution} nm is not positive; pass --resolution")

    if opts.chunk_size:
        chunk = tuple(opts.chunk_size)
    else:
        max_z = None
        if getattr(src, "whole_slices", False):
            # a task holds whole slices: keep one chunk-deep slab within a quarter of its budget
            per_slice = info.shape[0] * info.shape[1] * info.channels * np.dtype(data_type).itemsize
            max_z = max(1, task_budget(opts, src) // 4 // per_slice)
        chunk = choose_chunk_size(info.shape, resolution, max_z=max_z)
    offset = tuple(int(o) for o in opts.voxel_offset)
    bounds = Box(offset, tuple(o + s for o, s in zip(offset, info.shape)))
    if any(abs(v) > MAX_COORDINATE for v in bounds.stop):
        raise UserError(f"--offset {','.join(map(str, offset))}: with the size {'x'.join(map(str, info.shape))} "
                        f"the layer would end at {','.join(map(str, bounds.stop))}, beyond the limit of "
                        f"{MAX_COORDINATE} (2^40) voxels; give a smaller offset")
    n_chunks = chunk_count(bounds, chunk)
    if opts.max_chunks is not None and n_chunks > opts.max_chunks:
        raise UserError(f"--chunk-size {','.join(map(str, chunk))}: {n_chunks} chunks at full resolution, more "
                        f"than the limit of {opts.max_chunks}; give a larger --chunk-size (or pass --force-chunks)")
    factors = plan_factors(bounds, resolution, chunk, opts.factor, opts.max_mips)
    if opts.mesh is not None and not 0 <= opts.mesh.scale <= len(factors):
        raise UserError(f"--mesh-scale {opts.mesh.scale}: the layer will have scales 0..{len(factors)}; choose one "
                        "of them")

    affine = info.affine if info.affine is not None else opts.affine
    world_units = info.world_units if info.affine is not None else opts.world_units
    transform = make_transform(affine, world_units, offset, resolution, origin) if affine is not None else None

    sharding = resolve_sharding(opts, bounds, resolution, chunk, factors, encoding, compress,
                                np.dtype(data_type).itemsize * info.channels)

    return LayerSpec(
        layer_type=layer_type, data_type=data_type, num_channels=info.channels, size=info.shape,
        voxel_offset=offset, resolution=resolution, chunk_size=chunk, factors=factors,
        encoding=encoding, compress=compress, gzip_level=opts.gzip_level, jpeg_quality=opts.jpeg_quality,
        png_level=opts.png_level, cseg_block_size=tuple(opts.cseg_block_size), downsample=method,
        skip_empty=opts.skip_empty, transform=transform,
        segments=table.to_json() if table is not None else None, keep_labels=keep, drop_labels=drop,
        all_labels=bool(opts.all_labels), mesh=opts.mesh.to_json() if opts.mesh is not None else None,
        sharding=sharding)


def resolve_sharding(opts: ConvertOptions, bounds: Box, resolution, chunk, factors, encoding: str,
                     compress: str, voxel_bytes: int) -> list[dict] | None:
    """Per-scale sharding specs: the user's, or chosen from each scale's chunk grid."""
    if not (opts.sharded or opts.sharding):
        return None

    if opts.sharding:
        spec = ShardSpec.from_json(opts.sharding)
        bad = spec.problems()
        if bad:
            raise UserError(f"--sharding: {bad[0]}")
        specs = [spec] * (len(factors) + 1)
    else:
        if opts.shard_hash not in HASHES:
            raise UserError(f"--shard-hash {opts.shard_hash}: choose identity or murmurhash3_x86_128")
        target = opts.shard_bytes or TARGET_SHARD_BYTES
        if target < 1:
            raise UserError("--shard-size must be positive")
        chunk_bytes = int(np.prod(chunk)) * voxel_bytes
        specs = []
        for box in scale_boxes(bounds, [tuple(f) for f in factors]):
            grid = tuple(-(-n // c) for n, c in zip(box.shape, chunk))
            specs.append(choose_spec(grid, chunk_bytes, encoding, target, opts.shard_hash))
    if compress == "none":
        specs = [replace(sp, data_encoding="raw") for sp in specs]
    return [sp.to_json() for sp in specs]


def resolve_segments(opts: ConvertOptions):
    """The label table and the ``--only``/``--exclude`` selection as explicit id lists."""
    table = load_table(opts.labels)
    keep = drop = None
    if opts.only not in (None, "", []):
        keep = resolve_ids(opts.only, table, "--only")
        if not keep:
            raise UserError("--only names no labels; give ids or names, e.g. --only 17,53")
    if opts.exclude not in (None, "", []):
        drop = resolve_ids(opts.exclude, table, "--exclude")
    if keep is not None and drop is not None:
        keep, drop = [k for k in keep if k not in set(drop)], None
        if not keep:
            raise UserError("--exclude removes every label --only keeps; nothing would be left")
    return table, keep, drop


def make_transform(affine, world_units: str, offset, resolution, origin: str) -> dict:
    """The ``transform.json`` sidecar (see the README, "Physical space")."""
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4):
        raise UserError(f"affine for {origin} must be 4x4, got {a.shape}")
    # layer point p (nm, as the viewer places voxels: voxel v spans [v, v+1) * resolution)
    # -> voxel index i = p / resolution - voxel_offset - 0.5 -> world = A [i, 1]
    to_index = np.eye(4)
    to_index[:3, :3] = np.diag([1.0 / r for r in resolution])
    to_index[:3, 3] = [-(o + 0.5) for o in offset]
    return {
        "@type": "ngconvert_transform_v1",
        "source": origin,
        "world_units": world_units,
        "voxel_to_world": a.tolist(),
        "layer_nm_to_world": (a @ to_index).tolist(),
        "voxel_offset": list(offset),
        "resolution_nm": list(resolution),
    }


def _executor_for(plan: Plan, store: Store, ex):
    if getattr(ex, "is_dask", False):
        if isinstance(store, MemoryStore):
            raise UserError("an in-memory destination cannot be written by Dask workers; give a folder or URL")
        return ex
    if ex.workers > 1 and (isinstance(store, MemoryStore) or
                           (plan.source.kind == "array" and "fork" not in mp.get_all_start_methods())):
        return ThreadExecutor(ex.workers)   # the data cannot be reached from another process
    return ex


def _saved_plan(store: Store, prepared: SourceRef) -> Plan | None:
    """The plan an interrupted run left in ``store`` (its stages and tasks), pointed at the
    prepared source; None when there is none."""
    blob = store.get(PLAN_KEY)
    if blob is None:
        return None
    plan = Plan.from_json(json.loads(blob))
    plan.source = replace(prepared, axes=plan.source.axes) if prepared.kind != "array" else prepared
    return plan


def run_record(ref: SourceRef, layer: LayerSpec, array=None) -> dict:
    """What a run is made of: the source's fingerprint and the resolved layer (every option
    that changes the bytes written).  Saved at the start, compared by ``--resume``."""
    layer_json = layer.to_json()
    if isinstance(layer_json.get("transform"), dict):     # names the source as typed: compared by its path below
        layer_json["transform"] = {k: v for k, v in layer_json["transform"].items() if k != "source"}
    return {"command": "convert", "source": _where(ref.origin), "fingerprint": fingerprint(ref, array),
            "layer": layer_json}


def _where(origin: str) -> str:
    """A local source by its real path (the same file named another way is the same source)."""
    return os.path.realpath(origin) if origin and "://" not in origin and os.path.exists(origin) else origin


def check_destination(store: Store, opts: ConvertOptions) -> bool:
    """Refuse, without changing anything, what :func:`claim` would refuse (for commands
    that prepare at length before they write); True when a dataset is there."""
    mode = preflight(store, overwrite=opts.overwrite, resume=opts.resume)
    return mode != "new" or not store.is_empty()


def _new_plan(ref: SourceRef, opts: ConvertOptions, notes: list[str], workers: int | None = None) -> Plan:
    prepared = prepare(ref)
    try:
        layer = resolve_layer(prepared, opts, notes)
        src = open_source(prepared)
        workers = workers or opts.workers or make_executor(None).workers
        stages = plan_stages(layer, workers, task_budget(opts, src), getattr(src, "whole_slices", False))
        return Plan(layer, prepared, src.info.dtype.name, stages)
    except BaseException:
        release(prepared)
        raise


def _execute(plan: Plan, store: Store, opts: ConvertOptions, result: "ConvertResult", ex) -> bytes:
    """Run every unfinished task, stage by stage, then write the sidecars; returns the
    ``info`` to write last (:meth:`Claim.finish`)."""
    executor = _executor_for(plan, store, ex)
    ctx = PyramidCtx(store, plan)
    survey = plan.layer.segments is not None
    seen: list[np.ndarray] = []
    shard_tasks = (plan_shard_tasks(plan.scales(), plan.layer.chunk_size, plan.layer.sharding)
                   if plan.layer.sharding is not None else [])
    mesh_plan = None
    if plan.layer.mesh is not None:
        info = plan.layer.info()
        info.pop("mesh")
        mesh_plan = plan_meshes(info, MeshOptions.from_json(plan.layer.mesh), executor.workers)
    # one bar across the whole plan: pyramid stages, shards, meshes
    total = sum(plan.task_count(s) for s in plan.stages) + len(shard_tasks)
    total += mesh_plan.task_count() if mesh_plan is not None else 0
    with Progress(total, "pyramid", quiet=opts.quiet) as bar:
        for stage in plan.stages:
            todo = []
            for task in plan.tasks(stage):
                if opts.resume and store.exists(done_key(task)):
                    bar.update(1)
                    if survey and stage.base == 0:     # ids seen by the interrupted run
                        seen.append(np.frombuffer(store.get(done_key(task)) or b"", dtype=np.uint64))
                else:
                    todo.append(task)
            for _task, res in executor.run(run_task, todo, ctx):
                result.tasks_run += 1
                result.chunks += res.chunks
                result.bytes_written += res.bytes_written
                if res.labels is not None:
                    seen.append(res.labels)
                bar.update(1, res.bytes_written)
        if shard_tasks:
            bar.phase("shards")
            todo = [t for t in shard_tasks if not (opts.resume and store.exists(shard_done_key(t)))]
            bar.update(len(shard_tasks) - len(todo))
            scales = plan.scales()
            shard_ctx = ShardCtx(store, tuple(scales), (plan.layer.chunk_size,) * len(scales),
                                 tuple(plan.layer.sharding), plan.layer.gzip_level)
            for _task, _n in executor.run(run_shard_task, todo, shard_ctx):
                bar.update(1)
            store.delete_prefix(CHUNK_SCRATCH + "/")
        if mesh_plan is not None:
            bar.phase("meshes")
            if not opts.resume:
                clear_mesh_scratch(store)
            meshed = run_mesh_plan(store, mesh_plan, opts.workers, opts.quiet, opts.resume, executor=executor,
                                   bar=bar)
            result.meshes = len(meshed.ids)
            if meshed.dust:
                result.warnings.append(f"{len(meshed.dust)} segment(s) under the dust threshold were not meshed")
            clear_mesh_scratch(store)
    if plan.layer.transform is not None:
        store.put("transform.json", dumps(plan.layer.transform), content_type="application/json")
    if survey:
        present = set(np.unique(np.concatenate(seen)).tolist()) if seen else set()
        result.labels_present = sorted(present - {0})
        result.warnings += write_segment_metadata(store, plan.layer, present)
    return dumps(plan.layer.info())


def convert(source, dest, options: ConvertOptions | None = None, dry_run: bool = False,
            executor=None) -> ConvertResult:
    """Convert ``source`` (a path or numpy array) into a precomputed layer at ``dest``.

    With ``dry_run`` the layer and plan are worked out and returned; nothing is written.
    ``executor``: a ``dask.distributed.Client`` (or one of ours) to run the tasks on;
    default: ``options.scheduler``/``options.dask_workers``, else the local cores.
    """
    opts = options or ConvertOptions()
    _check_option_ranges(opts)      # bad options are one line before the destination is looked at
    if dry_run:
        return _convert(source, dest, opts, True, make_executor(opts.workers))
    with ExecutorScope(opts.workers, executor, opts.scheduler, opts.dask_workers, opts.quiet) as ex:
        if getattr(ex, "is_dask", False) and isinstance(source, np.ndarray):
            # workers in other processes read the array from a file (on this machine's disk)
            tmp = tempfile.mkdtemp(prefix="ngconvert-array-")
            try:
                path = os.path.join(tmp, "array.npy")
                np.save(path, source)
                ref = SourceRef(kind="npy", path=path, origin="array", axes=opts.axes,
                                flip=normalize_flip(opts.flip), transpose=opts.transpose)
                return _convert(ref, dest, opts, False, ex, array=source)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return _convert(source, dest, opts, False, ex)


def source_paths(ref: SourceRef) -> list:
    """The local files and folders a source reads (for the overlap rule)."""
    paths = [ref.origin] if ref.origin and os.path.exists(ref.origin) else []
    return paths + [f for f in ref.files or [] if f is not None and "://" not in f]


def _convert(source, dest, opts: ConvertOptions, dry_run: bool, ex, array=None) -> ConvertResult:
    t0 = time.perf_counter()
    # storage options are for whichever side is a URL (the source, the destination or both)
    target = open_store(dest, opts.storage if "://" in str(dest) and not str(dest).startswith("file://") else None)
    notes: list[str] = []
    ref = ref_for(source, opts.axes, SliceOptions(opts.order_file, opts.pad, opts.flip, opts.transpose,
                                                  opts.storage))
    if array is None and isinstance(source, np.ndarray):
        array = source
    if not dry_run:
        refuse_overlap(source_paths(ref), target)
        preflight(target, overwrite=opts.overwrite, resume=opts.resume)   # refuse early, change nothing
    # the whole plan is resolved (source read, every option checked) before anything is written
    plan = _new_plan(ref, opts, notes, ex.workers)

    def show_notes():
        if not opts.quiet:
            for note in notes:
                print(f"ngconvert: {note}", file=sys.stderr)
    try:
        if dry_run:
            show_notes()
            return ConvertResult(target.url, plan.layer, plan, notes=notes)
        check_space(target, plan.estimated_bytes(), 0 if plan.layer.sharding else plan.estimated_chunks())
        record = run_record(ref, plan.layer, array)
        if opts.source_fingerprint is not None:
            record["fingerprint"] = opts.source_fingerprint
        with claim(target, overwrite=opts.overwrite, resume=opts.resume, break_lock=opts.break_lock,
                   command="convert") as c:
            result = ConvertResult(target.url, plan.layer, plan, notes=notes)
            if c.mode == "complete":
                check_same_run(c.record, record, target.url)
                show_notes()
                result.already_complete = True
                result.seconds = time.perf_counter() - t0
                return result
            if c.mode == "resume":
                check_same_run(c.record, record, target.url)
                saved = _saved_plan(c.store, plan.source)
                if saved is not None:
                    result.plan = plan = saved
                resume = True
                show_notes()
            else:
                show_notes()
                c.start(record)
                # the saved plan names the user's file, not the temporary uncompressed copy
                c.store.put(PLAN_KEY, dumps(replace(plan, source=ref).to_json()), content_type="application/json")
                resume = False
            info = _execute(plan, c.store, replace(opts, resume=resume), result, ex)
            c.finish(info)
    finally:
        release(plan.source)
    if not opts.quiet:
        for w in result.warnings:
            print(f"ngconvert: warning: {w}", file=sys.stderr)
    result.seconds = time.perf_counter() - t0
    return result


def write_volume(array: np.ndarray, dest, resolution=(1.0, 1.0, 1.0), layer_type: str = "auto",
                 units: str = "nm", axes: str = "xyz", **options) -> ConvertResult:
    """Write a numpy array as a multiscale precomputed layer.

    ``array`` is indexed ``[x, y, z]`` or ``[x, y, z, c]`` by default; pass ``axes="zyx"``
    (or ``"czyx"``, ...) for other orders.  ``resolution`` is the voxel size in ``units``.
    Other keyword arguments are :class:`ConvertOptions` fields, and ``executor`` (a
    ``dask.distributed.Client``).
    """
    executor = options.pop("executor", None)
    opts = ConvertOptions(layer_type=layer_type, resolution=tuple(resolution), units=units, axes=axes,
                          quiet=options.pop("quiet", True), **options)
    return convert(array, dest, opts, executor=executor)


def write_segmentation(array: np.ndarray, dest, labels=None, resolution=(1.0, 1.0, 1.0), offset=(0, 0, 0),
                       units: str = "nm", axes: str = "xyz", only=None, exclude=None,
                       **options) -> ConvertResult:
    """Write a label array as a segmentation layer with segment properties and colours.

    ``labels`` is a label table: a path (CSV/TSV/JSON/ITK-SNAP/FreeSurfer/Slicer) or a mapping
    ``{id: name}`` / ``{id: {"name": ..., "color": "#rrggbb", "description": ..., ...}}``.
    ``offset`` is the layer's ``voxel_offset``; ``only``/``exclude`` select labels by id or
    name.  Warnings about ids missing from the table or the volume are issued as Python
    warnings and kept in ``result.warnings``.
    """
    import warnings

    res = write_volume(array, dest, resolution=resolution, layer_type="segmentation", units=units, axes=axes,
                       labels=labels, only=only, exclude=exclude, voxel_offset=tuple(offset), **options)
    for w in res.warnings:
        warnings.warn(w, stacklevel=2)
    return res


def _folder_name(label: int, name: str) -> str:
    import re

    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return f"{label}-{clean}" if clean else str(label)


def split_structures(source, dest, options: ConvertOptions, executor=None) -> list[ConvertResult]:
    """One segmentation layer per structure of the label table (after ``only``/``exclude``):
    ``DEST/<id>-<name>/`` holds just that structure (everything else 0, empty chunks not
    stored), with its own segment properties, colour and meshes when asked.  Structures
    absent from the volume get no layer (a warning says which)."""
    table = load_table(options.labels)
    if table is None:
        raise UserError("--split needs a label table (--labels) naming the structures")
    _t, keep, drop = resolve_segments(options)
    ids = [i for i in table.labels if i != 0 and (keep is None or i in keep) and (drop is None or i not in drop)]
    if not ids:
        raise UserError("--split: no structures left to write (check --only/--exclude)")
    results, absent = [], []
    with ExecutorScope(options.workers, executor, options.scheduler, options.dask_workers, options.quiet) as ex:
        for label in ids:
            sub = f"{str(dest).rstrip('/')}/{_folder_name(label, table.labels[label].name)}"
            opts = replace(options, only=[label], exclude=None, skip_empty=True, layer_type="segmentation",
                           all_labels=False, quiet=True)
            res = convert(source, sub, opts, executor=ex)
            if not res.labels_present:
                absent.append(label)
                empty = open_store(sub, options.storage if "://" in sub else None)
                empty.clear()
                if isinstance(empty, FileStore):
                    shutil.rmtree(empty.root, ignore_errors=True)
                continue
            results.append(res)
            if not options.quiet:
                print(f"ngconvert: wrote {sub} ({table.labels[label].name or label})", file=sys.stderr)
    if absent and not options.quiet:
        print(f"ngconvert: warning: {len(absent)} structure(s) are not in the volume and got no layer: "
              f"{', '.join(map(str, absent[:8]))}", file=sys.stderr)
    return results
