"""Command-line interface: a thin layer over :mod:`ngconvert.pipelines.convert`.

Over 450 lines because every sub-command still lives here; the split into cli/common.py,
convert.py, meshes.py, datasets.py and hosting.py was left for a later change so that this
move stays purely a move.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..codecs.chunks import DATA_TYPES, ENCODINGS
from ..codecs.kernels import METHODS
from ..core.errors import UserError, check_local_path
from ..core.version import __version__
from ..datasets.check import check
from ..datasets.preview import check_png_path, check_size, preview, write_png
from ..datasets.reencode import ReencodeOptions, reencode
from ..datasets.stats import format_rows, scale_rows
from ..datasets.transfer import download, upload
from ..hosting import configs as hosting
from ..hosting.configs import check_port
from ..hosting.serve import DatasetServer
from ..hosting.view import run_view
from ..hosting.viewer_state import build_state, check_http_url, load_dataset, source_for, state_url
from ..meshes.importing import import_meshes, read_id_list, read_transform
from ..meshes.meshing import MeshOptions, mesh_layer
from ..pipelines.assemble import MAX_VOXELS, assemble
from ..pipelines.convert import ConvertOptions, MAX_CHUNKS, convert, split_structures
from ..pipelines.examples import write_example
from ..pipelines.workflow import RunOptions, run_config
from ..sources.precomputed_info import read_info, read_info_checked
from ..store.base import StorageOptions
from ..store.local import FileStore
from ..store.open import open_store
from ..tasks.executors import check_worker_counts
from ..tasks.progress import TransferBar


def _vec(kind, name: str, count: int = 3):
    def parse(text: str):
        parts = [p for p in text.replace("x", ",").split(",") if p.strip() != ""]
        try:
            values = [kind(p) for p in parts]
        except ValueError:
            values = None
        if values is None or len(values) != count:
            example = "4,4,40" if kind is float else "64,64,64"
            raise argparse.ArgumentTypeError(f"{name} {text!r}: give {count} comma-separated "
                                             f"{'numbers' if kind is float else 'integers'}, e.g. {example}")
        return tuple(values)
    return parse


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a volume into a multiscale precomputed layer",
                       description="Convert a volume (NIfTI/MGH/Analyze or .npy) into a precomputed layer "
                                   "with a full multiscale pyramid.")
    p.add_argument("source", help="input volume: .nii, .nii.gz, .mgz, .mgh, .img/.hdr, .npy, a multi-page or "
                                  "OME .tif, or a folder or quoted pattern of .tif/.png/.jpg slices")
    p.add_argument("dest", help="output folder of the layer")
    g = p.add_argument_group("layer")
    g.add_argument("--type", dest="layer_type", default="auto", choices=["auto", "image", "segmentation"],
                   help="layer type (default: auto, decided from the data and reported)")
    g.add_argument("--dtype", choices=DATA_TYPES, help="convert values to this type (rounds and clips)")
    g.add_argument("--axes", default="xyz", help="axis order of a .npy array, e.g. zyx or czyx (default xyz)")
    _add_segment_args(p)
    g = p.add_argument_group("slice stacks and orientation")
    g.add_argument("--order", metavar="FILE", help="order file: '<name> <z>' or one name per line; "
                                                    "'Placeholder' lines and missing z are empty slices")
    g.add_argument("--pad", choices=["origin", "center"],
                   help="place slices smaller than the largest at the origin or centred (default: error)")
    g.add_argument("--flip", metavar="AXES", help="reverse these volume axes, e.g. y or x,z (any source; "
                                                      "an affine is adjusted to match)")
    g.add_argument("--transpose", action="store_true", help="swap the x and y axes (of every slice, or of the volume)")
    g = p.add_argument_group("physical space")
    g.add_argument("--resolution", type=_vec(float, "--resolution"), help="voxel size x,y,z (default: from the header)")
    g.add_argument("--units", default="nm", choices=["nm", "um", "mm", "m"], help="units of --resolution (default nm)")
    g.add_argument("--offset", type=_vec(int, "--offset"), default=(0, 0, 0), help="voxel_offset x,y,z (default 0,0,0)")
    g = p.add_argument_group("meshes")
    g.add_argument("--mesh", action="store_true", help="also write a mesh for every label (legacy format unless "
                                                       "--mesh-format multires; sharded multires with --sharded)")
    _add_mesh_args(g)
    _add_output_args(p)


def _add_mesh_args(g, format_flags=("--mesh-format",)) -> None:
    g.add_argument(*format_flags, dest="mesh_format", choices=["legacy", "multires"], default=None,
                   help="legacy (one fragment per segment) or multires (Draco, levels of detail)")
    g.add_argument("--lods", type=int, default=3, help="multires levels of detail (default 3)")
    g.add_argument("--max-error", type=float, metavar="NM",
                   help="simplification: vertices move at most this far, in nm (default: half the smallest "
                        "voxel of the mesh scale; 0 = none)")
    g.add_argument("--dust", type=int, default=0, metavar="VOXELS", help="skip segments smaller than this")
    g.add_argument("--mesh-scale", type=int, default=0, help="mesh from this scale (0 = full resolution); "
                                                            "coarser is faster and smoother")
    g.add_argument("--mesh-ids", metavar="IDS", help="mesh only these segment ids (comma-separated)")
    g.add_argument("--mesh-dir", default="mesh", help="folder of the meshes in the layer (default mesh)")
    g.add_argument("--quantization-bits", type=int, default=10, choices=[10, 16],
                   help="multires vertex precision (default 10)")


def _mesh_options(a, default_format: str = "legacy"):
    ids = None
    if a.mesh_ids:
        try:
            ids = sorted({int(x) for x in a.mesh_ids.split(",") if x.strip()})
        except ValueError:
            raise UserError(f"--mesh-ids {a.mesh_ids}: give comma-separated segment ids, e.g. 3,17") from None
    sharded = bool(getattr(a, "sharded", False))
    if sharded and a.mesh_format is None:
        default_format = "multires"        # the only mesh format that can be sharded
    return MeshOptions(format=a.mesh_format or default_format, lods=a.lods, max_error=a.max_error, dust=a.dust,
                       scale=a.mesh_scale, quantization_bits=a.quantization_bits, directory=a.mesh_dir, ids=ids,
                       sharded=sharded)


def _add_segment_args(p) -> None:
    g = p.add_argument_group("segments (label tables)")
    g.add_argument("--labels", metavar="TABLE",
                   help="label table: CSV/TSV with a header, JSON, ITK-SNAP, FreeSurfer LUT or Slicer colour "
                        "table; written as segment properties and colours (implies --type segmentation)")
    g.add_argument("--only", metavar="IDS", help="keep only these labels (ids or table names, comma-separated); "
                                                  "all others become 0")
    g.add_argument("--exclude", metavar="IDS", help="set these labels (ids or names) to 0")
    g.add_argument("--all-labels", action="store_true",
                   help="list every table id in the segment properties, also those absent from the volume")
    g.add_argument("--split", action="store_true",
                   help="one layer per structure of the table: DEST/<id>-<name>/ (with --labels; convert only)")


def _add_output_args(p) -> None:
    """Pyramid, encoding and run options shared by every command that writes a layer."""
    g = p.add_argument_group("pyramid and chunks")
    g.add_argument("--chunk-size", type=_vec(int, "--chunk-size"), help="chunk shape x,y,z (default: 2^18 voxels, physically cubic)")
    g.add_argument("--force-chunks", action="store_true",
                   help=f"allow more than {MAX_CHUNKS:,} chunks at full resolution (a tiny --chunk-size)")
    g.add_argument("--factor", type=_vec(int, "--factor"), help="fixed downsampling factor per level, e.g. 2,2,1")
    g.add_argument("--max-mips", type=int, help="at most this many downsampled levels")
    g.add_argument("--downsample", choices=METHODS, help="method (default: average for images, mode for segmentations)")
    g = p.add_argument_group("encoding")
    g.add_argument("--encoding", choices=ENCODINGS, help="chunk encoding (default: raw for images, "
                                                          "compressed_segmentation for segmentations)")
    g.add_argument("--compress", default="auto", choices=["auto", "gzip", "none"],
                   help="gzip chunks, stored as KEY.gz on disk (default: gzip for raw and compressed_segmentation)")
    g.add_argument("--gzip-level", type=int, default=1, help="1 (fastest, default) to 12 (smallest)")
    g.add_argument("--jpeg-quality", type=int, default=85, help="0-100 (default 85)")
    g.add_argument("--png-level", type=int, default=6, help="0-9 (default 6)")
    g.add_argument("--block-size", type=_vec(int, "--block-size"), default=(8, 8, 8),
                   help="compressed_segmentation block size (default 8,8,8)")
    g.add_argument("--skip-empty", action="store_true", help="do not store chunks that are all zero")
    _add_sharding_args(p)
    g = _add_run_args(p, "replace an existing destination", "finish an interrupted conversion",
                      "no progress bar or notes")
    g.add_argument("--task-memory", type=int, metavar="MB",
                   help="input one task holds at most, in MB (default 64, 256 for slice stacks); "
                        "bounds memory per worker")
    g.add_argument("--dry-run", action="store_true", help="print the planned scales and tasks; write nothing")
    _add_storage_args(p)


def _add_run_args(p, overwrite: str, resume: str, quiet: str = "no progress bar"):
    """The run options every task-producing command shares; returns the group for more."""
    g = p.add_argument_group("run")
    g.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    _add_dask_args(g)
    _add_destination_args(g, overwrite, resume, quiet)
    return g


def _add_destination_args(g, overwrite: str, resume: str | None, quiet: str) -> None:
    """The destination policy's flags (see the README, "Destinations"), the same for every
    command that writes."""
    g.add_argument("--overwrite", action="store_true", help=overwrite)
    if resume is not None:
        g.add_argument("--resume", action="store_true", help=resume + " (idempotent: a new run when there is "
                                                                "none, nothing to do when it is complete)")
    g.add_argument("--break-lock", action="store_true",
                   help="take the destination even if another run's lock is on it (only when that run is gone)")
    g.add_argument("--quiet", action="store_true", help=quiet)


def _add_dask_args(g) -> None:
    g.add_argument("--scheduler", metavar="ADDRESS", help="run the tasks on this Dask cluster, e.g. "
                                                          "tcp://scheduler:8786 (see docs/distributed.md)")
    g.add_argument("--dask-workers", type=int, metavar="N", help="run the tasks on a local Dask cluster of N "
                                                                  "worker processes")


def _add_sharding_args(p) -> None:
    g = p.add_argument_group("sharded format")
    g.add_argument("--sharded", action="store_true", help="pack chunks into shard files (parameters chosen "
                                                           "per scale; see the README)")
    g.add_argument("--shard-size", type=int, metavar="MB",
                   help="uncompressed chunk data per shard (default 2048 MB)")
    g.add_argument("--shard-hash", default="identity", choices=["identity", "murmurhash3_x86_128"],
                   help="chunk key hash (default identity: shards are spatial blocks)")
    g.add_argument("--sharding", metavar="JSON", help="an explicit sharding spec for every scale, e.g. "
                                                      "'{\"preshift_bits\": 6, \"minishard_bits\": 3, ...}'")


def _sharding_json(text):
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        raise UserError("--sharding: not valid JSON; give e.g. '{\"preshift_bits\": 6, \"hash\": \"identity\", "
                        "\"minishard_bits\": 3, \"shard_bits\": 4}'") from None
    if not isinstance(obj, dict):
        raise UserError("--sharding: give a JSON object")
    return obj


def _convert_options(a) -> ConvertOptions:
    """ConvertOptions from whichever option groups the command has."""
    if a.task_memory is not None and a.task_memory < 1:
        raise UserError(f"--task-memory {a.task_memory}: give 1 MB or more")
    v = vars(a)
    return ConvertOptions(
        layer_type=v.get("layer_type", "segmentation"), encoding=a.encoding, compress=a.compress,
        gzip_level=a.gzip_level, jpeg_quality=a.jpeg_quality, png_level=a.png_level, cseg_block_size=a.block_size,
        resolution=a.resolution, units=a.units, voxel_offset=v.get("offset", (0, 0, 0)), chunk_size=a.chunk_size,
        factor=a.factor, max_mips=a.max_mips, downsample=a.downsample, dtype=v.get("dtype"),
        axes=v.get("axes", "xyz"), skip_empty=a.skip_empty, workers=a.workers,
        task_bytes=a.task_memory << 20 if a.task_memory is not None else None, order_file=v.get("order"),
        pad=v.get("pad") or "", flip=v.get("flip") or "", transpose=v.get("transpose", False),
        labels=v.get("labels"), only=v.get("only"), exclude=v.get("exclude"), all_labels=v.get("all_labels", False),
        mesh=_mesh_options(a) if v.get("mesh") else None, sharded=a.sharded,
        shard_bytes=a.shard_size << 20 if a.shard_size is not None else None, shard_hash=a.shard_hash,
        max_chunks=None if v.get("force_chunks") else MAX_CHUNKS, sharding=_sharding_json(a.sharding), scheduler=a.scheduler, dask_workers=a.dask_workers,
        overwrite=a.overwrite, resume=a.resume, break_lock=a.break_lock, quiet=a.quiet, storage=_storage(a))


def _report(a, res, what: str) -> None:
    layer = res.layer
    if a.dry_run:
        print(f"{what} -> {a.dest}: {layer.layer_type} {layer.data_type} x{layer.num_channels}, "
              f"{layer.encoding}{'+gzip' if layer.compress == 'gzip' else ''}, downsample {layer.downsample}")
        print(format_rows(scale_rows(layer.info())))
        for s in res.plan.stages:
            print(f"stage {s.index}: levels {s.first}-{s.top} from level {s.base}, "
                  f"{res.plan.task_count(s)} task(s)")
        return
    if getattr(res, "already_complete", False):
        print(f"{a.dest} is already complete (same source and options); nothing to do", file=sys.stderr)
        return
    if not a.quiet:
        extra = f", {len(res.labels_present)} labelled segments" if res.labels_present is not None else ""
        extra += f", {res.meshes} meshes" if res.meshes is not None else ""
        print(f"wrote {a.dest}: {len(layer.factors) + 1} scales, {res.chunks} chunks{extra}, "
              f"{res.bytes_written / 1e6:.1f} MB in {res.seconds:.1f} s", file=sys.stderr)
        _look_hint(a.dest)


def _look_hint(dest) -> None:
    """How to look at a written dataset: a picture, or the viewer."""
    import shlex

    dest = str(dest)
    png = (os.path.basename(dest.rstrip("/").split("://", 1)[-1]) or "preview") + ".png" if "://" in dest \
        else os.path.normpath(dest) + ".png"
    print(f"  picture: ngconvert preview {shlex.quote(dest)} -o {shlex.quote(png)}", file=sys.stderr)
    print(f"  viewer:  ngconvert view {shlex.quote(dest)}", file=sys.stderr)


def _cmd_convert(a) -> int:
    if a.split:

        if a.dry_run or a.resume:
            raise UserError("--split runs one conversion per structure; --dry-run and --resume are not available "
                            "with it (run it again with --overwrite)")
        results = split_structures(a.source, a.dest, _convert_options(a))
        if not a.quiet:
            print(f"wrote {len(results)} structure layer(s) under {a.dest}", file=sys.stderr)
        return 0
    res = convert(a.source, a.dest, _convert_options(a), dry_run=a.dry_run)
    _report(a, res, a.source)
    return 0


def _add_assemble(sub) -> None:
    p = sub.add_parser("assemble", help="place structure masks at their atlas origins into one segmentation layer",
                       description="Assemble binary masks (.npy or NIfTI, one per structure, named by file) "
                                   "into one label volume and write it as a segmentation layer with segment "
                                   "properties. See the README for the placement and overlap rules.")
    p.add_argument("structures", nargs="+", help="folders, files or quoted patterns of mask files")
    p.add_argument("dest", help="output folder of the layer")
    g = p.add_argument_group("assembly")
    g.add_argument("--origins", metavar="FILE", help="'name,x,y,z' per structure (atlas voxels of the mask's "
                                                      "voxel 0,0,0; fractions rounded, halves up); default 0,0,0")
    g.add_argument("--ids", metavar="FILE", help="'name,id' per structure (default: from --labels by name, "
                                                  "else 1, 2, 3... in order)")
    g.add_argument("--overlap", default="error", choices=["error", "first", "last"],
                   help="voxels claimed by two structures: error (default, names the pairs), or keep the "
                        "first or last placed")
    g.add_argument("--threshold", type=float, default=0.0, help="a voxel is inside when its value exceeds "
                                                                 "this (default 0)")
    g.add_argument("--axes", default="xyz", help="axis order of .npy masks, e.g. zyx (default xyz)")
    g.add_argument("--force-size", action="store_true",
                   help="assemble even when the structures span more than 2^31 voxels (far-apart origins)")
    _add_segment_args(p)
    g = p.add_argument_group("physical space")
    g.add_argument("--resolution", type=_vec(float, "--resolution"),
                   help="voxel size x,y,z (default: from NIfTI masks)")
    g.add_argument("--units", default="nm", choices=["nm", "um", "mm", "m"], help="units of --resolution (default nm)")
    g = p.add_argument_group("meshes")
    g.add_argument("--mesh", action="store_true", help="also write a mesh for every structure")
    _add_mesh_args(g)
    _add_output_args(p)


def _cmd_assemble(a) -> int:
    from dataclasses import replace


    if a.dry_run:
        raise UserError("--dry-run is not available for assemble; run it on a new folder")
    opts = replace(_convert_options(a), labels=None)
    asm = assemble(a.structures if len(a.structures) > 1 else a.structures[0], a.dest, ids=a.ids,
                   labels=a.labels, origins=a.origins, overlap=a.overlap, threshold=a.threshold, axes=a.axes,
                   options=opts, max_voxels=None if a.force_size else MAX_VOXELS)
    if not a.quiet:
        for n in asm.notes:
            print(f"ngconvert: {n}", file=sys.stderr)
        print(f"assembled {len(asm.placements)} structures into {'x'.join(map(str, asm.shape))} {asm.dtype} "
              f"voxels at offset {','.join(map(str, asm.offset))}", file=sys.stderr)
    _report(a, asm.result, "assembly")
    return 0


def _add_mesh(sub) -> None:
    p = sub.add_parser("mesh", help="add or replace meshes of an existing segmentation layer",
                       description="Mesh every label of a precomputed segmentation layer (ours or another "
                                   "tool's) and point its info at the meshes.")
    p.add_argument("dataset", help="folder or URL of the segmentation layer")
    g = p.add_argument_group("meshes")
    _add_mesh_args(g, ("--format", "--mesh-format"))
    g.add_argument("--sharded", action="store_true", help="pack multires meshes into shard files")
    _add_run_args(p, "replace existing meshes", "finish an interrupted meshing run")
    _add_storage_args(p)


def _cmd_mesh(a) -> int:

    check_worker_counts(a.workers, a.dask_workers)
    _mesh_options(a).check()
    if not a.resume:        # a damaged info is one line before anything is planned
        store = open_store(a.dataset, _storage(a) if "://" in a.dataset else None)
        blob = store.get("info")
        if blob is not None:    # a missing one is explained by mesh_layer
            read_info_checked(store, blob)
    import time

    t0 = time.perf_counter()
    res = mesh_layer(a.dataset, _mesh_options(a), storage=_storage(a), workers=a.workers,
                     quiet=a.quiet, overwrite=a.overwrite, resume=a.resume, scheduler=a.scheduler,
                     dask_workers=a.dask_workers, break_lock=a.break_lock)
    if res.already_complete:
        print(f"{a.dataset}: its meshes are already complete; nothing to do", file=sys.stderr)
        return 0
    if not a.quiet:
        dust = f", {len(res.dust)} under --dust skipped" if res.dust else ""
        print(f"meshed {len(res.ids)} segments of {a.dataset}{dust} in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    return 0


def _add_mesh_import(sub) -> None:
    p = sub.add_parser("mesh-import", help="add surface meshes (GIfTI, FreeSurfer, OBJ, STL, PLY, OFF, VTK) as "
                                           "segment meshes",
                       description="Link surface meshes to segment ids, in a segmentation layer (added to its "
                                   "meshes) or in a new mesh-only dataset. Coordinates: the file's vertices "
                                   "times --transform, in --units (default mm for GIfTI/FreeSurfer, nm "
                                   "otherwise), or --from-world through the layer's NIfTI affine.")
    p.add_argument("files", nargs="*", help="mesh files (all linked to --id); omit with --ids")
    p.add_argument("dest", help="a segmentation layer, a mesh dataset, or a new folder")
    g = p.add_argument_group("ids")
    g.add_argument("--id", type=int, help="segment id of every file given")
    g.add_argument("--ids", metavar="CSV", help="'id,file[,file...]' per line: many meshes at once")
    g.add_argument("--labels", metavar="TABLE", help="label table for the segment properties of a new mesh dataset")
    g = p.add_argument_group("coordinates")
    g.add_argument("--transform", metavar="FILE", help="4x4 affine (16 numbers, or 12 for 3x4) applied to the "
                                                        "file's vertices")
    g.add_argument("--units", choices=["nm", "um", "mm", "m"], help="units of the (transformed) vertices")
    g.add_argument("--from-world", action="store_true",
                   help="the vertices are world coordinates of the layer's NIfTI affine (transform.json)")
    g = p.add_argument_group("format")
    g.add_argument("--format", dest="mesh_format", choices=["legacy", "multires"],
                   help="mesh format of a new mesh folder (default legacy; an existing one keeps its format)")
    g.add_argument("--lods", type=int, default=3, help="multires levels of detail (default 3)")
    g.add_argument("--quantization-bits", type=int, default=10, choices=[10, 16])
    _add_destination_args(p.add_argument_group("run"), "replace meshes the ids already have", None, "no notes")
    _add_storage_args(p)


def _cmd_mesh_import(a) -> int:
    if a.ids and a.id is not None:
        raise UserError("give --id or --ids, not both")
    if a.ids:
        items = read_id_list(a.ids) + ([(0, a.files)] if a.files else [])
        if a.files:
            raise UserError("with --ids the files come from the list; drop the file arguments")
    elif a.id is not None:
        if not a.files:
            raise UserError("no mesh files given")
        items = [(a.id, a.files)]
    else:
        raise UserError("say which segment the meshes belong to: --id N, or --ids list.csv")
    matrix = read_transform(a.transform) if a.transform else None
    res = import_meshes(items, a.dest, matrix=matrix, units=a.units, from_world=a.from_world, fmt=a.mesh_format,
                        labels=a.labels, overwrite=a.overwrite, storage=_storage(a), lods=a.lods,
                        quantization_bits=a.quantization_bits, break_lock=a.break_lock)
    for w in res.warnings:
        print(f"ngconvert: warning: {w}", file=sys.stderr)
    if not a.quiet:
        print(f"imported {res.files} mesh file(s) as {len(res.ids)} segment(s) into {a.dest}", file=sys.stderr)
    return 0


def _add_reencode(sub) -> None:
    for name, what in (("reencode", "write a precomputed dataset again with another encoding, chunk size or "
                                    "layout"),
                       ("transfer", "copy a precomputed dataset to another store, optionally sharded, "
                                    "unsharded or re-chunked")):
        p = sub.add_parser(name, help=what, description=what[0].upper() + what[1:] + ". Reads any precomputed "
                           "volume (sharded or not, .gz or plain); meshes, segment properties and other files "
                           "are copied; info is written last.")
        p.add_argument("source", help="dataset folder or URL (s3://, gs://, http(s)://)")
        p.add_argument("dest", help="new dataset folder or URL")
        g = p.add_argument_group("what changes (default: keep the source's)")
        g.add_argument("--encoding", choices=ENCODINGS, help="chunk encoding")
        g.add_argument("--jpeg-quality", type=int, default=85, help="0-100 (default 85)")
        g.add_argument("--png-level", type=int, default=6, help="0-9 (default 6)")
        g.add_argument("--block-size", type=_vec(int, "--block-size"), help="compressed_segmentation block size")
        g.add_argument("--compress", default="auto", choices=["auto", "gzip", "none"],
                       help="gzip chunks (default: gzip for raw and compressed_segmentation)")
        g.add_argument("--gzip-level", type=int, default=1, help="1 (fastest, default) to 12 (smallest)")
        g.add_argument("--chunk-size", type=_vec(int, "--chunk-size"), help="new chunk shape x,y,z")
        layout = g.add_mutually_exclusive_group()
        layout.add_argument("--sharded", dest="sharded", action="store_const", const=True, default=None,
                            help="write every scale sharded")
        layout.add_argument("--unsharded", dest="sharded", action="store_const", const=False,
                            help="write every scale as one file per chunk")
        g.add_argument("--shard-size", type=int, metavar="MB", help="uncompressed chunk data per shard (default 2048)")
        g.add_argument("--shard-hash", choices=["identity", "murmurhash3_x86_128"],
                       help="default: the source's, else identity")
        _add_run_args(p, "replace an existing destination dataset", "finish an interrupted run")
        _add_storage_args(p)


def _cmd_reencode(a) -> int:
    if a.command == "reencode" and not (a.encoding or a.chunk_size or a.sharded is not None or a.block_size
                                        or a.compress != "auto"):
        raise UserError("reencode needs a change: --encoding, --chunk-size, --sharded/--unsharded, --block-size "
                        "or --compress (use 'transfer' to copy as is)")
    opts = ReencodeOptions(encoding=a.encoding, jpeg_quality=a.jpeg_quality, png_level=a.png_level,
                           cseg_block_size=a.block_size, compress=a.compress, gzip_level=a.gzip_level,
                           chunk_size=a.chunk_size, sharded=a.sharded,
                           shard_bytes=a.shard_size << 20 if a.shard_size is not None else None,
                           shard_hash=a.shard_hash,
                           workers=a.workers, quiet=a.quiet, overwrite=a.overwrite, resume=a.resume,
                           break_lock=a.break_lock, storage=_storage(a), scheduler=a.scheduler, dask_workers=a.dask_workers)
    res = reencode(a.source, a.dest, opts)
    if not a.quiet:
        for n in res.notes:
            print(f"ngconvert: {n}", file=sys.stderr)
        print(f"wrote {res.dest}: {res.chunks} chunks re-encoded, {res.copied} objects copied in "
              f"{res.seconds:.1f} s", file=sys.stderr)
    return 0


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="validate a precomputed dataset (exit 0 valid, 1 with a report)",
                       description="Validate info, chunks (a sample per scale, or all with --full), shards, "
                                   "meshes and segment properties of a precomputed dataset, ours or another "
                                   "tool's. Each problem is one line; exit status 1 if there is any.")
    p.add_argument("dataset", help="folder or URL of the dataset")
    p.add_argument("--full", action="store_true", help="check every chunk and mesh, not a sample")
    p.add_argument("--sample", type=int, default=64, help="chunks per scale and meshes checked (default 64)")
    _add_storage_args(p)


def _cmd_check(a) -> int:
    if a.sample < 1:
        raise UserError(f"--sample {a.sample}: give 1 or more")
    report = check(a.dataset, _storage(a), full=a.full, sample=a.sample)
    for line in report.problems:
        print(line)
    for note in sorted(report.notes):
        print(f"ngconvert: note: {note}", file=sys.stderr)
    counted = ", ".join(f"{n} {what}" for what, n in report.checked.items()) or "info"
    if report.problems:
        print(f"{a.dataset}: {len(report.problems)} problem(s) (checked {counted})", file=sys.stderr)
        return 1
    print(f"{a.dataset}: valid (checked {counted})", file=sys.stderr)
    return 0


def _add_serving(sub) -> None:
    p = sub.add_parser("serve", help="serve datasets over HTTP for the viewer (CORS, Range, gzip)",
                       description="Serve a folder of precomputed datasets read-only over HTTP/1.1 with CORS, "
                                   "Range requests and our KEY.gz files as Content-Encoding: gzip.")
    p.add_argument("folder", help="folder to serve (datasets inside it, or one dataset)")
    p.add_argument("--port", type=int, default=9000, help="port (default 9000; 0 picks a free one)")
    p.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1: this machine only)")
    p.add_argument("--verbose", action="store_true", help="log one line per request")

    p = sub.add_parser("view", help="open the real Neuroglancer viewer locally on datasets (no internet)",
                       description="Run the Neuroglancer viewer shipped in the neuroglancer package (its own "
                                   "server, on --port) with the datasets served beside it, and open a state "
                                   "with one layer per dataset.")
    p.add_argument("datasets", nargs="+", help="dataset folders (or http(s)://, s3://, gs:// URLs)")
    p.add_argument("--port", type=int, default=9000,
                   help="the viewer's port (default 9000; 0 picks a free one); the datasets get a free one")
    p.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.add_argument("--segments", default="all", help="'all' (default) or comma-separated ids to show")
    p.add_argument("--layout", choices=["4panel", "xy", "xz", "yz", "3d", "xy-3d", "xz-3d", "yz-3d"],
                   help="panel layout (default 4panel with a segmentation, else xy)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    p.add_argument("--print-state", action="store_true",
                   help="on Ctrl-C, print the viewer's state as it was then (JSON) to stdout")
    p.add_argument("--verbose", action="store_true", help="log one line per dataset request")
    _add_storage_args(p)

    p = sub.add_parser("url", help="print a Neuroglancer URL (or state JSON) for datasets hosted elsewhere",
                       description="Build the viewer state for datasets and print the URL, the state "
                                   "percent-encoded after #!. Local folders need --base-url: where they are "
                                   "served from.")
    p.add_argument("datasets", nargs="+", help="dataset folders or URLs (http(s)://, s3://, gs://)")
    p.add_argument("--base-url", action="append", default=[],
                   help="public URL of each local dataset, in order (repeat for several)")
    p.add_argument("--viewer", default="https://neuroglancer-demo.appspot.com", help="viewer to link to")
    p.add_argument("--json", action="store_true", help="print the state as JSON instead of a URL")
    p.add_argument("--segments", default="all", help="'all' (default) or comma-separated ids to show")
    p.add_argument("--layout", choices=["4panel", "xy", "xz", "yz", "3d", "xy-3d", "xz-3d", "yz-3d"])
    _add_storage_args(p)

    p = sub.add_parser("hosting", help="print hosting setups: nginx server block, S3 or GCS CORS and policy",
                       description="Print what a host needs to serve datasets to the viewer.")
    hp = p.add_subparsers(dest="host", required=True, parser_class=_Parser)
    q = hp.add_parser("nginx", help="an nginx server block (CORS, gzip_static for .gz files, Range)")
    q.add_argument("folder", help="folder of the datasets")
    q.add_argument("--server-name", default="_")
    q.add_argument("--listen", type=int, default=80)
    q.add_argument("--location", default="/", help="URL path the folder appears at (default /)")
    q = hp.add_parser("s3", help="S3 CORS configuration and public-read bucket policy")
    q.add_argument("--bucket", required=True)
    q.add_argument("--prefix", default="", help="only objects under this prefix are public")
    q.add_argument("--apply", action="store_true", help="set the CORS rules and the policy on the bucket")
    _add_storage_args(q)
    q = hp.add_parser("gcs", help="GCS CORS configuration and public access commands")
    q.add_argument("--bucket", required=True)
    q.add_argument("--prefix", default="")


def _segments_arg(text: str):
    if text == "all":
        return "all"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--segments {text}: give all or comma-separated ids, e.g. 3,17") from None


def _cmd_serve(a) -> int:
    check_port(a.port, "--port", allow_zero=True)
    if not os.path.isdir(a.folder):
        raise UserError(f"{a.folder}: no such folder; give the folder of your datasets")
    server = DatasetServer({"/": a.folder}, bind=a.bind, port=a.port, verbose=a.verbose)
    print(f"serving {os.path.abspath(a.folder)} on {server.url}/ (read-only, CORS, Range, gzip); Ctrl-C to stop",
          file=sys.stderr)
    if os.path.isfile(os.path.join(a.folder, "info")):
        print(f"in the viewer: precomputed://{server.url}", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_view(a) -> int:
    run_view(a.datasets, port=a.port, bind=a.bind, segments=_segments_arg(a.segments), layout=a.layout,
             verbose=a.verbose, browser=not a.no_browser, storage=_storage(a), print_state=a.print_state)
    return 0


def _cmd_url(a) -> int:
    check_http_url(a.viewer)
    for base in a.base_url:
        check_http_url(base, "--base-url")
    storage = _storage(a)
    local = [d for d in a.datasets if "://" not in d]
    if len(a.base_url) != len(local):
        raise UserError(f"give one --base-url for each local folder ({len(local)} given folder(s), "
                        f"{len(a.base_url)} --base-url): where the folder is served from")
    bases = iter(a.base_url)
    loaded = []
    for d in a.datasets:
        name = os.path.basename(os.path.normpath(d.split("://", 1)[-1])) or "data"
        if "://" in d:
            ds = load_dataset(open_store(d, storage), name, source_for(d, storage.endpoint_url))
        else:
            if not os.path.isdir(d):
                raise UserError(f"{d}: no such folder")
            ds = load_dataset(FileStore(d), name, source_for(next(bases), storage.endpoint_url))
        loaded.append(ds)
    state = build_state(loaded, segments=_segments_arg(a.segments), layout=a.layout)
    if a.json:
        print(json.dumps(state, indent=2))
    else:
        print(state_url(state, a.viewer))
    return 0


def _cmd_hosting(a) -> int:
    if a.host == "nginx":
        if not os.path.isdir(a.folder):
            raise UserError(f"{a.folder}: no such folder")
        print(hosting.nginx_config(a.folder, a.server_name, a.listen, a.location), end="")
    elif a.host == "s3":
        print(hosting.s3_text(a.bucket, a.prefix), end="")
        if a.apply:
            hosting.apply_s3(a.bucket, a.prefix, _storage(a))
            print(f"applied the CORS rules and the public-read policy to s3://{a.bucket}", file=sys.stderr)
    else:
        print(hosting.gcs_text(a.bucket, a.prefix), end="")
    return 0


def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="per-scale size, chunks and stored bytes of a dataset")
    p.add_argument("dataset", help="folder of a precomputed dataset")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_storage_args(p)


def _cmd_stats(a) -> int:
    store = open_store(a.dataset, _storage(a))
    info = read_info(store)
    rows = scale_rows(info, store)
    if a.json:
        print(json.dumps({"type": info.get("type"), "data_type": info.get("data_type"),
                          "num_channels": info.get("num_channels"), "scales": rows}, indent=2))
    else:
        print(f"{a.dataset}: {info.get('type')} {info.get('data_type')} x{info.get('num_channels')}")
        print(format_rows(rows))
    return 0


def _add_preview(sub) -> None:
    p = sub.add_parser("preview", help="write a PNG of three orthogonal mid-sections (no browser)",
                       description="Draw the XY, XZ and YZ sections through the centre of a dataset side by "
                                   "side, in physical aspect, with a scale bar and the name; a segmentation "
                                   "given with an image is drawn over it. Reads only the chunks the "
                                   "sections cross, at the coarsest scale that fills the picture.")
    p.add_argument("datasets", nargs="+", metavar="DATASET", help="a dataset folder or URL (s3://, gs://, "
                                                                  "http(s)://); or an image and a segmentation")
    p.add_argument("-o", "--output", required=True, metavar="PNG", help="picture to write (.png)")
    p.add_argument("--size", type=int, default=768, metavar="PX", help="width of the picture (default 768)")
    p.add_argument("--segments", default="all", help="'all' (default) or comma-separated ids to draw")
    _add_storage_args(p)


def _cmd_preview(a) -> int:
    check_png_path(a.output)
    check_size(a.size, "--size")
    image = preview(a.datasets, size=a.size, segments=_segments_arg(a.segments), storage=_storage(a))
    write_png(image, a.output)
    print(f"wrote {a.output}: {image.shape[1]}x{image.shape[0]} pixels", file=sys.stderr)
    return 0


def _add_storage_args(p) -> None:
    g = p.add_argument_group("storage (s3:// and gs:// URLs)")
    g.add_argument("--endpoint-url", help="S3-compatible server, e.g. http://127.0.0.1:9000 (default: AWS)")
    g.add_argument("--region", help="S3 region (default: from the profile or environment, else us-east-1)")
    g.add_argument("--profile", help="AWS profile for credentials")
    g.add_argument("--credentials", metavar="FILE",
                   help='JSON credentials {"access_key": ..., "secret_key": ..., "region": ...} '
                        "(for gs://: a service-account key file)")
    g.add_argument("--anonymous", action="store_true", help="unsigned requests (public buckets)")


def _storage(a) -> StorageOptions:
    return StorageOptions(endpoint_url=a.endpoint_url, region=a.region, profile=a.profile,
                          credentials_file=a.credentials, anonymous=a.anonymous)


def _add_transfer(sub) -> None:
    for name, what in (("upload", "copy a local dataset to s3://, gs:// or another folder; .gz files "
                                  "become gzip-encoded objects"),
                       ("download", "copy a dataset from s3://, gs:// or http(s):// to a local folder; "
                                    "gzip-encoded objects become .gz files")):
        p = sub.add_parser(name, help=what, description=what[0].upper() + what[1:] + ". The info object "
                           "is written last, so an interrupted copy never looks complete.")
        p.add_argument("source")
        p.add_argument("dest")
        p.add_argument("--skip-existing", action="store_true",
                       help="skip objects whose exact key already exists at the destination")
        _add_destination_args(p.add_argument_group("run"), "replace an existing dataset at the destination (the "
                              "old one stays until the copy is complete)", "finish an interrupted copy of the "
                              "same source", "no progress bar")
        _add_storage_args(p)


def _cmd_transfer(a) -> int:
    bar = TransferBar(a.command + "ing", quiet=a.quiet)
    fn = upload if a.command == "upload" else download
    try:
        res = fn(a.source, a.dest, _storage(a), skip_existing=a.skip_existing, progress=bar, overwrite=a.overwrite,
                 resume=a.resume, break_lock=a.break_lock)
    finally:
        bar.close()
    if not a.quiet:
        print(f"{a.command}ed {res.copied} objects ({res.copied_bytes / 1e6:.1f} MB), skipped {res.skipped} "
              f"in {res.seconds:.1f} s: {res.source} -> {res.destination}", file=sys.stderr)
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a conversion described by a JSON config file",
                       description="Run a JSON config: the S3 slice workflow form (s3_bucket_name_for_download, "
                                   "sorted_filename, ...) or the native form {source, dest, options, storage}. "
                                   "See the README.")
    p.add_argument("config")
    _add_run_args(p, "replace existing datasets (as the config's \"overwrite\": true)",
                  "finish an interrupted run (a re-run always resumes)", "no progress bar or notes")
    _add_storage_args(p)


def _cmd_run(a) -> int:
    run_config(a.config, _storage(a), quiet=a.quiet, workers=a.workers,
               run=RunOptions(overwrite=a.overwrite, resume=a.resume, break_lock=a.break_lock,
                              scheduler=a.scheduler, dask_workers=a.dask_workers))
    return 0


def _add_example(sub) -> None:
    p = sub.add_parser("example", help="write a synthetic head phantom (image + labels) as NIfTI files")
    p.add_argument("folder", help="folder to write phantom.nii.gz and phantom_labels.nii.gz into")
    p.add_argument("--overwrite", action="store_true", help="write the example again over files already there")


def _cmd_example(a) -> int:
    folder = check_local_path(a.folder, "example folder")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{folder}: exists and is not a folder; give a new or existing folder for the example")
    try:
        paths = write_example(folder, overwrite=a.overwrite)
    except OSError as e:
        where = e.filename or folder
        raise UserError(f"{where}: cannot write the example ({e.strerror or e}); choose a folder you can "
                        "write to") from None
    for path in paths:
        print(path)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ngconvert", description="Volumes to Neuroglancer precomputed datasets.")
    p.add_argument("--version", action="version", version=f"ngconvert {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_convert(sub)
    _add_assemble(sub)
    _add_mesh(sub)
    _add_mesh_import(sub)
    _add_reencode(sub)
    _add_check(sub)
    _add_serving(sub)
    _add_stats(sub)
    _add_preview(sub)
    _add_transfer(sub)
    _add_run(sub)
    _add_example(sub)
    return p


COMMANDS = {"convert": _cmd_convert, "assemble": _cmd_assemble, "mesh": _cmd_mesh, "mesh-import": _cmd_mesh_import, "reencode": _cmd_reencode,
            "transfer": _cmd_reencode, "check": _cmd_check, "serve": _cmd_serve,
            "view": _cmd_view, "url": _cmd_url, "hosting": _cmd_hosting, "stats": _cmd_stats, "preview": _cmd_preview, "example": _cmd_example, "upload": _cmd_transfer,
            "download": _cmd_transfer, "run": _cmd_run}


def main(argv=None) -> int:
    from_shell = argv is None
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ngconvert: %(message)s"))
    root = logging.getLogger("ngconvert")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    import signal

    terminated = []

    def on_term(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt      # SIGTERM unwinds like Ctrl-C: temporaries go, markers stay

    if threading_main():
        signal.signal(signal.SIGTERM, on_term)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        if args.debug:
            raise
        print(f"ngconvert: error: {_fit_advice(args, str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ngconvert: {'terminated' if terminated else 'interrupted'}; {_continue_advice(args)}",
              file=sys.stderr)
        code = 143 if terminated else 130
        if from_shell:
            # the cleanups ran while the interrupt unwound; end now rather than wait at exit
            # for pool threads an interrupt may have left half way
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _fit_advice(args, message: str) -> str:
    """A library message with advice to run "with --resume", for a command without --resume."""
    if "--resume" not in message or hasattr(args, "resume"):
        return message
    if args.command == "run":
        advice = ("run it again with \"resume\": true in the config's options (the slice workflow form "
                  "resumes by itself)")
    else:
        advice = _continue_advice(args)
    return message.replace("run the same command with --resume", advice)


def _continue_advice(args) -> str:
    """How to finish an interrupted command, naming only flags the command has."""
    if hasattr(args, "resume") and not getattr(args, "split", False):
        return "run the same command with --resume to finish"
    if hasattr(args, "skip_existing"):
        return "run the same command with --skip-existing to copy only what is missing"
    return "run the same command again"


if __name__ == "__main__":
    sys.exit(main())
