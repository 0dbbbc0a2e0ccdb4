"""Re-encoding and transferring precomputed datasets: new encoding, chunk size, layout or store.

Every scale of the source (ours or another tool's: sharded or not, ``.gz`` or plain, raw,
jpeg, png or compressed_segmentation) is read region by region and written again at the same
geometry, with the new chunk shape, encoding and sharding.  Everything else in the dataset
(meshes, segment properties, colours, ``transform.json``, skeletons) is copied as stored.
The new ``info`` is written last.  Tasks are blocks of destination chunks, run on the local
cores; a finished task is marked so that ``resume`` skips it.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .transfer import copy_dataset
from ..codecs.chunks import ENCODINGS, EncodingOptions, check_codec_options, encode_chunk, encoding_problem
from ..codecs.sharding import TARGET_SHARD_BYTES, choose_spec
from ..core.errors import UserError
from ..core.geometry import Box, ChunkGrid, chunk_key
from ..core.gzip import gzip_compress
from ..core.jsonio import dumps
from ..plan.spec import Scale
from ..plan.stages import CHUNK_SCRATCH, SCRATCH
from ..sources.precomputed import PrecomputedVolume
from ..sources.precomputed_info import read_info_checked
from ..store.base import Store, StorageOptions, content_type_for
from ..store.destination import check_same_run, claim
from ..store.local import FileStore, MemoryStore
from ..store.open import open_store
from ..tasks.executors import ExecutorScope, ThreadExecutor, check_worker_counts
from ..tasks.progress import Progress
from ..tasks.shards import ShardCtx, plan_shard_tasks, run_shard_task, shard_done_key

PLAN_KEY = f"{SCRATCH}/reencode.json"
TASK_BYTES = 64 << 20


@dataclass
class ReencodeOptions:
    """What changes; ``None`` keeps the source's choice."""

    encoding: str | None = None
    jpeg_quality: int = 85
    png_level: int = 6
    cseg_block_size: tuple | None = None
    compress: str = "auto"                 # gzip, none, auto (gzip for raw/compressed_segmentation)
    gzip_level: int = 1
    chunk_size: tuple | None = None
    sharded: bool | None = None            # True: shard every scale, False: unshard, None: keep
    shard_bytes: int | None = None
    shard_hash: str | None = None          # None: the source's, else identity
    workers: int | None = None
    quiet: bool = False
    overwrite: bool = False
    resume: bool = False
    break_lock: bool = False
    storage: StorageOptions | None = None
    scheduler: str | None = None           # a Dask scheduler address
    dask_workers: int | None = None        # a local Dask cluster of this many processes


@dataclass
class ReencodeResult:
    source: str
    dest: str
    chunks: int = 0
    copied: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def changes_layout(info: dict, opts: ReencodeOptions) -> bool:
    """True when the chunks must be decoded and written again (not just copied)."""
    for s in info["scales"]:
        if opts.encoding and opts.encoding != s["encoding"]:
            return True
        if opts.encoding == "jpeg" and s.get("jpeg_quality") != opts.jpeg_quality:
            return True
        if opts.encoding == "png" and s.get("png_level") != opts.png_level:
            return True
        if opts.chunk_size and list(opts.chunk_size) != list(s["chunk_sizes"][0]):
            return True
        if opts.sharded is not None and opts.sharded != ("sharding" in s):
            return True
        if opts.sharded and "sharding" in s and (opts.shard_bytes or (
                opts.shard_hash and opts.shard_hash != s["sharding"].get("hash", "identity"))):
            return True           # new shard parameters asked for
        if opts.cseg_block_size and s["encoding"] == "compressed_segmentation" and \
                list(opts.cseg_block_size) != list(s.get("compressed_segmentation_block_size", [8, 8, 8])):
            return True
    return False


def new_info(info: dict, opts: ReencodeOptions) -> dict:
    """The destination info: the source's, with the new encoding, chunks and sharding."""
    out = json.loads(json.dumps(info))
    dtype = out["data_type"]
    channels = int(out.get("num_channels", 1))
    for s in out["scales"]:
        enc = opts.encoding or s["encoding"]
        if enc == "jpeg" and out.get("type") == "segmentation":
            raise UserError("--encoding jpeg is lossy and would invent labels; keep a lossless encoding")
        problem = encoding_problem(enc, dtype, channels)
        if problem:
            raise UserError(f"--encoding {enc}: {problem}")
        for k in ("jpeg_quality", "png_level", "compressed_segmentation_block_size"):
            if enc != s["encoding"]:
                s.pop(k, None)
        s["encoding"] = enc
        if opts.encoding is not None:        # asked for: its settings are the options'
            if enc == "jpeg":
                s["jpeg_quality"] = opts.jpeg_quality
            if enc == "png":
                s["png_level"] = opts.png_level
        if enc == "compressed_segmentation":
            s["compressed_segmentation_block_size"] = list(
                opts.cseg_block_size or s.get("compressed_segmentation_block_size", [8, 8, 8]))
        chunk = list(opts.chunk_size or s["chunk_sizes"][0])
        if len(chunk) != 3 or any(int(c) < 1 for c in chunk):
            raise UserError(f"--chunk-size {chunk}: give three positive sizes")
        s["chunk_sizes"] = [chunk]
        sharded = ("sharding" in s) if opts.sharded is None else opts.sharded
        if not sharded:
            s.pop("sharding", None)
        elif "sharding" not in s or opts.chunk_size or (opts.sharded and (opts.shard_bytes or (
                opts.shard_hash and opts.shard_hash != s["sharding"].get("hash", "identity")))):
            grid = tuple(-(-int(n) // int(c)) for n, c in zip(s["size"], chunk))
            chunk_bytes = int(np.prod(chunk)) * np.dtype(dtype).itemsize * channels
            hash_ = opts.shard_hash or (s["sharding"].get("hash", "identity") if "sharding" in s else "identity")
            spec = choose_spec(grid, chunk_bytes, enc, opts.shard_bytes or TARGET_SHARD_BYTES, hash_)
            if _compress(opts, enc) == "none":
                spec = replace(spec, data_encoding="raw")
            s["sharding"] = spec.to_json()
    return out


def _compress(opts: ReencodeOptions, encoding: str) -> str:
    if opts.compress == "auto":
        return "gzip" if encoding in ("raw", "compressed_segmentation") else "none"
    return opts.compress


def _scales(info: dict) -> list[Scale]:
    out = []
    for i, s in enumerate(info["scales"]):
        start = tuple(int(v) for v in s.get("voxel_offset", (0, 0, 0)))
        box = Box(start, tuple(a + int(n) for a, n in zip(start, s["size"])))
        out.append(Scale(i, s["key"], box, tuple(s["resolution"]), (1, 1, 1), (1, 1, 1)))
    return out


@dataclass(frozen=True)
class BlockTask:
    scale: int
    index: int
    box: Box

    @property
    def name(self) -> str:
        return f"scale {self.scale} block {self.index} ({self.box.start}-{self.box.stop})"


def plan_blocks(info: dict, task_bytes: int = TASK_BYTES) -> list[BlockTask]:
    """Blocks of destination chunks per scale, each within ``task_bytes`` of voxels."""
    itemsize = np.dtype(info["data_type"]).itemsize * int(info.get("num_channels", 1))
    tasks = []
    for sc, s in zip(_scales(info), info["scales"]):
        chunk = tuple(int(c) for c in s["chunk_sizes"][0])
        group = [1, 1, 1]
        grown = True
        while grown:
            grown = False
            for d in range(3):
                g = list(group)
                g[d] *= 2
                if group[d] * chunk[d] >= sc.bounds.shape[d]:
                    continue
                if int(np.prod([c * k for c, k in zip(chunk, g)])) * itemsize > task_bytes:
                    continue
                group, grown = g, True
        step = tuple(c * k for c, k in zip(chunk, group))
        grid = ChunkGrid(sc.bounds, step)
        for n, (k, j, i) in enumerate(itertools.product(*(range(x) for x in reversed(grid.shape)))):
            tasks.append(BlockTask(sc.index, n, grid.cell((i, j, k))))
    return tasks


def _done_key(task: BlockTask) -> str:
    return f"{SCRATCH}/done/reencode/{task.scale}/{task.index}"


def same_chunks(a: dict, b: dict) -> bool:
    """True when a scale's chunks can be copied byte for byte (same grid and encoding)."""
    keys = ("encoding", "chunk_sizes", "compressed_segmentation_block_size", "jpeg_quality", "png_level")
    return all(a.get(k) == b.get(k) for k in keys)


@dataclass(frozen=True)
class ReencodeCtx:
    """What every block task of a re-encoding shares (sent once per worker)."""
    src: Store
    dst: Store
    src_info: dict
    dst_info: dict
    opts: ReencodeOptions


def run_block(ctx: ReencodeCtx, task: BlockTask) -> int:
    src, dst, src_info, dst_info, opts = ctx.src, ctx.dst, ctx.src_info, ctx.dst_info, ctx.opts
    vol = PrecomputedVolume(src, src_info)
    s = dst_info["scales"][task.scale]
    if same_chunks(src_info["scales"][task.scale], s):
        return _copy_block(vol, dst, s, opts, task)
    data = vol.read(task.scale, task.box)
    sc = _scales(dst_info)[task.scale]
    chunk = tuple(int(c) for c in s["chunk_sizes"][0])
    enc = EncodingOptions(s["encoding"], int(s.get("jpeg_quality", opts.jpeg_quality)),
                          int(s.get("png_level", opts.png_level)),
                          tuple(s.get("compressed_segmentation_block_size", (8, 8, 8))))
    gzip = _gzips(opts, s)
    n = 0
    for cell in ChunkGrid(sc.bounds, chunk).cells_in(task.box):
        blob = encode_chunk(np.asfortranarray(data[cell.slices(task.box.start)]), enc)
        _put_chunk(dst, s, cell, blob, False, gzip, opts.gzip_level)
        n += 1
    dst.put(_done_key(task), b"")
    return n


def _gzips(opts: ReencodeOptions, s: dict) -> bool:
    """Whether chunks of destination scale ``s`` are stored gzipped (a sharded scale: by its
    data encoding, the shard taking the bytes as they are)."""
    if "sharding" in s:
        return s["sharding"].get("data_encoding") == "gzip"
    return _compress(opts, s["encoding"]) == "gzip"


def _put_chunk(dst: Store, s: dict, cell: Box, blob: bytes, gzipped: bool, gzip: bool, level: int) -> None:
    """Store one encoded chunk of destination scale ``s`` (sharded scales: in the scratch area
    until its shard is written); ``gzipped`` says ``blob`` already is."""
    key = f"{s['key']}/{chunk_key(cell)}"
    if "sharding" in s:
        key = f"{CHUNK_SCRATCH}/{key}"
    if gzip:
        dst.put(key, blob if gzipped else gzip_compress(blob, level), content_encoding="gzip")
    else:
        dst.put(key, blob)


def _copy_block(vol: PrecomputedVolume, dst: Store, s: dict, opts: ReencodeOptions, task: BlockTask) -> int:
    """Only the layout changes: the stored chunk bytes move as they are (no generation loss)."""
    sc = _scales(vol.info)[task.scale]
    grid = ChunkGrid(sc.bounds, tuple(int(c) for c in s["chunk_sizes"][0]))
    gzip = _gzips(opts, s)
    source_sharded = "sharding" in vol.info["scales"][task.scale]
    n = 0
    for cell in grid.cells_in(task.box):
        raw_gz = False
        if source_sharded:
            ((_c, _w, blob),) = list(vol.chunks(task.scale, grid, [cell]))
        else:                      # gzipped objects pass through without being unpacked
            key = f"{s['key']}/{chunk_key(cell)}"
            raw = vol.store.get_raw(key)
            blob = None if raw is None else raw.data
            raw_gz = raw is not None and raw.content_encoding == "gzip"
            if raw_gz and not gzip:
                blob, raw_gz = vol.store.get(key), False
        if blob is None:
            continue
        _put_chunk(dst, s, cell, blob, raw_gz, gzip, opts.gzip_level)
        n += 1
    dst.put(_done_key(task), b"")
    return n


def _sidecars(src: Store, info: dict) -> list[str]:
    prefixes = tuple(s["key"].strip("/") + "/" for s in info["scales"]) + (SCRATCH + "/",)
    try:
        listed = [k for k, _size in src.list("")]
    except UserError:
        # plain HTTP cannot list: the sidecars the info names, and the usual files
        listed = ["transform.json", "segment_colors.json"]
        if isinstance(info.get("segment_properties"), str):
            listed.append(info["segment_properties"].strip("/") + "/info")
        if isinstance(info.get("mesh"), str):
            listed.append(info["mesh"].strip("/") + "/info")
    out = []
    for key in listed:
        if key == "info" or key.startswith(prefixes) or key.endswith("/"):
            continue
        out.append(key)
    return sorted(out)


def check_reencode_options(opts: ReencodeOptions) -> None:
    """Checks of the options that need no data, done before anything is read or written."""
    check_codec_options(opts.gzip_level, opts.jpeg_quality, opts.png_level, opts.cseg_block_size)
    if opts.chunk_size is not None and (len(opts.chunk_size) != 3 or any(
            not isinstance(c, (int, np.integer)) or c < 1 for c in opts.chunk_size)):
        raise UserError(f"--chunk-size {','.join(map(str, opts.chunk_size))}: give three positive sizes, "
                        "e.g. 64,64,64")
    if opts.shard_bytes is not None and opts.shard_bytes < 1:
        raise UserError(f"--shard-size {opts.shard_bytes >> 20}: give 1 MB or more")
    if opts.shard_hash is not None and opts.shard_hash not in ("identity", "murmurhash3_x86_128"):
        raise UserError(f"--shard-hash {opts.shard_hash}: choose identity or murmurhash3_x86_128")
    check_worker_counts(opts.workers, opts.dask_workers)


def reencode(source, dest, opts: ReencodeOptions | None = None, executor=None) -> ReencodeResult:
    """Write the dataset at ``source`` to ``dest`` with the changes in ``opts``; ``executor``
    may be a ``dask.distributed.Client``."""
    opts = opts or ReencodeOptions()
    check_reencode_options(opts)
    if not opts.resume:     # a damaged source info is one line before anything is written
        read_info_checked(open_store(source, opts.storage if "://" in str(source) else None))
    with ExecutorScope(opts.workers, executor, opts.scheduler, opts.dask_workers, opts.quiet) as ex:
        return _reencode(source, dest, opts, ex)


def _reencode(source, dest, opts: ReencodeOptions, ex) -> ReencodeResult:
    t0 = time.perf_counter()
    if opts.encoding is not None and opts.encoding not in ENCODINGS:
        raise UserError(f"--encoding {opts.encoding}: choose one of {', '.join(ENCODINGS)}")
    if opts.compress not in ("auto", "gzip", "none"):
        raise UserError(f"--compress {opts.compress}: choose auto, gzip or none")
    src = open_store(source, opts.storage if "://" in str(source) else None)
    dst = open_store(dest, opts.storage if "://" in str(dest) else None)
    blob = src.get("info")
    if blob is None:
        raise UserError(f"{src.url} has no info file; give a precomputed dataset")
    src_info = json.loads(blob)
    if src_info.get("@type", "neuroglancer_multiscale_volume") != "neuroglancer_multiscale_volume":
        raise UserError(f"{src.url} is not a precomputed volume; only volumes can be re-encoded")
    result = ReencodeResult(src.url, dst.url)
    a, b = src.url.rstrip("/") + "/", dst.url.rstrip("/") + "/"
    if isinstance(src, FileStore) and isinstance(dst, FileStore):
        a, b = str(src.root.resolve()) + "/", str(dst.root.resolve()) + "/"
    if a.startswith(b) or b.startswith(a):
        raise UserError(f"{dst.url} is {'the source itself' if a == b else 'inside or around the source'}; "
                        "write the new dataset to another place (then move it)")

    import hashlib

    if not changes_layout(src_info, opts) and opts.compress == "auto":
        res = copy_dataset(src, dst, workers=opts.workers, overwrite=opts.overwrite, resume=opts.resume,
                           break_lock=opts.break_lock)
        result.copied = res.copied
        result.notes.append("nothing to re-encode: objects copied as stored")
        result.seconds = time.perf_counter() - t0
        return result
    dst_info = new_info(src_info, opts)        # every option resolved before the destination is touched
    record = {"command": "reencode", "source": src.url,
              "fingerprint": {"info_sha256": hashlib.sha256(blob).hexdigest()}, "layer": dst_info}
    c = claim(dst, overwrite=opts.overwrite, resume=opts.resume, break_lock=opts.break_lock, command="reencode")
    with c:
        if c.mode in ("complete", "resume"):
            check_same_run(c.record, record, dst.url)
        if c.mode == "complete":
            result.notes.append("already complete (same source and options); nothing to do")
            result.seconds = time.perf_counter() - t0
            return result
        if c.mode == "new":
            c.start(record)
            c.store.put(PLAN_KEY, dumps(dst_info), content_type="application/json")
        _write_reencoded(src, c, src_info, dst_info, opts, ex, result, resume=c.mode == "resume")
    result.seconds = time.perf_counter() - t0
    return result


def _write_reencoded(src, c, src_info, dst_info, opts, ex, result, resume: bool) -> None:
    dst = c.store
    if ex.workers > 1 and not getattr(ex, "is_dask", False) and (
            isinstance(src, MemoryStore) or isinstance(dst, MemoryStore)):

        ex = ThreadExecutor(ex.workers)
    ctx = ReencodeCtx(src, dst, src_info, dst_info, opts)
    blocks = plan_blocks(dst_info)
    shard_tasks = []
    for sc, s in zip(_scales(dst_info), dst_info["scales"]):
        if "sharding" in s:
            shard_tasks += plan_shard_tasks([sc], tuple(s["chunk_sizes"][0]), [s["sharding"]])
    with Progress(len(blocks) + len(shard_tasks), "re-encoding", quiet=opts.quiet) as bar:
        todo = [t for t in blocks if not (resume and dst.exists(_done_key(t)))]
        bar.update(len(blocks) - len(todo))
        for _t, n in ex.run(run_block, todo, ctx):
            result.chunks += n
            bar.update(1)
        if shard_tasks:
            bar.phase("shards")
            todo = [t for t in shard_tasks if not (resume and dst.exists(shard_done_key(t)))]
            bar.update(len(shard_tasks) - len(todo))
            shard_ctx = ShardCtx(dst, tuple(_scales(dst_info)),
                                 tuple(tuple(s["chunk_sizes"][0]) for s in dst_info["scales"]),
                                 tuple(s.get("sharding") for s in dst_info["scales"]), opts.gzip_level)
            for _t, _n in ex.run(run_shard_task, todo, shard_ctx):
                bar.update(1)
    for key in _sidecars(src, src_info):
        raw = src.get_raw(key)
        if raw is not None:
            dst.put(key, raw.data, content_encoding=raw.content_encoding, content_type=content_type_for(key))
            result.copied += 1
    c.finish(dumps(dst_info))
