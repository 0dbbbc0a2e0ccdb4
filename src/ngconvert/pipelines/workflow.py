"""``ngconvert run CONFIG.json``: conversions described by a JSON file.

Two forms are accepted.

The **S3 slice workflow** form is the one an existing S3 utility reads (download ordered
slices from a bucket, convert them, upload the dataset to a bucket):

    {"s3_creds_file": "s3-creds.json", "s3_bucket_name_for_download": "in-bucket",
     "sorted_filename": "MD585_sorted_filenames.txt", "ext": ".jpg",
     "s3_prefix": "MD585/prep2/", "s3_parts": "_prep2_down8_grayJpeg",
     "folder_to_write_to": "work/MD585", "folder_to_convert_from": "work/MD585",
     "folder_to_convert_to": "work/MD585_precomputed",
     "s3_bucket_name_for_upload": "out-bucket", "s3_dir_to_write_to": "precomputed/MD585",
     "voxel_resolution": [3680, 3680, 20000], "voxel_offset": [0, 0, 0], "overwrite": false}

Slice ``z`` named ``NAME`` in the order file is the object ``s3_prefix + NAME + s3_parts +
ext``, matched exactly (never as a pattern).  The bucket is listed once; names with no
object are an error listing up to ten.  ``overwrite: false`` skips objects that already
exist under the exact same key when uploading.  An ``endpoint_url`` field (or
``--endpoint-url``) points at an S3-compatible server.

The **native** form names a source, a destination and any conversion or storage option:

    {"source": "s3://in-bucket/MD585/", "dest": "s3://out-bucket/precomputed/MD585",
     "options": {"resolution": [3680, 3680, 20000], "units": "nm", "encoding": "jpeg"},
     "storage": {"endpoint_url": "http://127.0.0.1:9000", "credentials_file": "s3-creds.json"}}

``options`` takes the fields of :class:`ngconvert.ConvertOptions`, ``storage`` those of
:class:`ngconvert.store.StorageOptions`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
from dataclasses import dataclass

from .convert import ConvertOptions, convert
from ..core.errors import UserError, read_text_file
from ..datasets.transfer import upload
from ..meshes.meshing import MeshOptions
from ..sources.slices import parse_order
from ..store.base import StorageOptions
from ..store.open import open_store

LEGACY_REQUIRED = ("s3_creds_file", "s3_bucket_name_for_download", "sorted_filename", "folder_to_write_to",
                   "folder_to_convert_to", "s3_bucket_name_for_upload", "s3_dir_to_write_to",
                   "voxel_resolution")


@dataclass(frozen=True)
class SliceWorkflow:
    """The S3 slice workflow's fields, checked."""

    s3_creds_file: str
    s3_bucket_name_for_download: str
    sorted_filename: str
    folder_to_write_to: str
    folder_to_convert_to: str
    s3_bucket_name_for_upload: str
    s3_dir_to_write_to: str
    voxel_resolution: tuple[float, float, float]
    folder_to_convert_from: str = ""
    ext: str = ".tif"
    s3_prefix: str = ""
    s3_parts: str = ""
    voxel_offset: tuple[int, int, int] = (0, 0, 0)
    overwrite: bool = False
    endpoint_url: str | None = None


def _vector(path: str, name: str, value, kind) -> tuple:
    if not isinstance(value, list) or len(value) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise UserError(f"{path}: '{name}' must be a list of three numbers, e.g. [3680, 3680, 20000]")
    if kind is int and not all(float(v).is_integer() for v in value):
        raise UserError(f"{path}: '{name}' must hold whole numbers of voxels")
    return tuple(kind(v) for v in value)


def parse_slice_workflow(obj: dict, path: str) -> SliceWorkflow:
    known = {f.name for f in dataclasses.fields(SliceWorkflow)}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise UserError(f"{path}: unknown field(s) {', '.join(unknown)}; the fields are "
                        f"{', '.join(sorted(known))}")
    missing = [k for k in LEGACY_REQUIRED if k not in obj]
    if missing:
        raise UserError(f"{path}: missing field(s) {', '.join(missing)}")
    values = dict(obj)
    for name in known - {"voxel_resolution", "voxel_offset", "overwrite", "endpoint_url"}:
        if name in values and not isinstance(values[name], str):
            raise UserError(f"{path}: '{name}' must be a string, not {json.dumps(values[name])}")
    if "overwrite" in values and not isinstance(values["overwrite"], bool):
        raise UserError(f"{path}: 'overwrite' must be true or false")
    if values.get("endpoint_url") is not None and not isinstance(values["endpoint_url"], str):
        raise UserError(f"{path}: 'endpoint_url' must be a string")
    values["voxel_resolution"] = _vector(path, "voxel_resolution", values["voxel_resolution"], float)
    if "voxel_offset" in values:
        values["voxel_offset"] = _vector(path, "voxel_offset", values["voxel_offset"], int)
    base = os.path.dirname(os.path.abspath(path))
    for name in ("s3_creds_file", "sorted_filename", "folder_to_write_to", "folder_to_convert_from",
                 "folder_to_convert_to"):
        if values.get(name):
            values[name] = os.path.join(base, values[name])   # relative to the config file
    return SliceWorkflow(**values)


def _safe_name(z: int, name: str, ext: str) -> str:
    return f"{z:04d}_{name.replace('/', '_')}{ext}"


def download_ordered_slices(wf: SliceWorkflow, storage: StorageOptions, quiet: bool) -> list[str | None]:
    """Download the slices the order file names; return the local file of each z."""
    try:
        order = parse_order(read_text_file(wf.sorted_filename, "order file"), wf.sorted_filename)
    except OSError as e:
        raise UserError(f"{wf.sorted_filename}: cannot read the order file ({e.strerror or e})") from None
    src = open_store(f"s3://{wf.s3_bucket_name_for_download}", storage)
    src.check_readable()
    listed = dict(src.list(wf.s3_prefix))                 # one listing of the prefix
    keys = [None if name is None else f"{wf.s3_prefix}{name}{wf.s3_parts}{wf.ext}" for name in order]
    missing = [k for k in keys if k is not None and k not in listed]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise UserError(f"{wf.sorted_filename}: {len(missing)} slice(s) have no object in "
                        f"s3://{wf.s3_bucket_name_for_download}: {shown}")
    os.makedirs(wf.folder_to_write_to, exist_ok=True)
    local: list[str | None] = []
    todo = []
    for z, (name, key) in enumerate(zip(order, keys)):
        if key is None:
            local.append(None)
            continue
        path = os.path.join(wf.folder_to_write_to, _safe_name(z, name, wf.ext))
        local.append(path)
        if not (os.path.isfile(path) and os.path.getsize(path) == listed[key]):
            todo.append((key, path))
    if not quiet:
        print(f"ngconvert: downloading {len(todo)} of {len(keys) - keys.count(None)} slices "
              f"from s3://{wf.s3_bucket_name_for_download}/{wf.s3_prefix}", file=sys.stderr)
    paths = dict(todo)
    for key, data in src.get_many(k for k, _p in todo):
        if data is None:
            raise UserError(f"s3://{wf.s3_bucket_name_for_download}/{key} disappeared during the download")
        tmp = paths[key] + ".part"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, paths[key])
    return local


@dataclass(frozen=True)
class RunOptions:
    """The run flags of ``ngconvert run`` (the same as every task-running command's)."""

    overwrite: bool = False
    resume: bool = False
    break_lock: bool = False
    scheduler: str | None = None
    dask_workers: int | None = None

    def convert_fields(self) -> dict:
        """The ConvertOptions fields these flags set (only those given)."""
        out = {k: v for k, v in (("scheduler", self.scheduler), ("dask_workers", self.dask_workers)) if v}
        out.update({k: True for k in ("overwrite", "resume", "break_lock") if getattr(self, k)})
        return out


def run_slice_workflow(wf: SliceWorkflow, storage: StorageOptions, quiet: bool = False, workers=None,
                       run: RunOptions = RunOptions()):

    if wf.endpoint_url and not storage.endpoint_url:
        storage = dataclasses.replace(storage, endpoint_url=wf.endpoint_url)
    storage = dataclasses.replace(storage, credentials_file=wf.s3_creds_file)
    files = download_ordered_slices(wf, storage, quiet)
    source = files
    if wf.folder_to_convert_from and os.path.abspath(wf.folder_to_convert_from) != os.path.abspath(
            wf.folder_to_write_to):
        source = wf.folder_to_convert_from
        if not quiet:
            print(f"ngconvert: converting the folder {source} (natural order), as folder_to_convert_from "
                  "differs from folder_to_write_to", file=sys.stderr)
    # re-running a finished workflow changes nothing: the conversion and the upload resume
    # (a complete dataset from the same slices and options is left as it is)
    opts = ConvertOptions(resolution=wf.voxel_resolution, units="nm", voxel_offset=wf.voxel_offset,
                          layer_type="image", overwrite=wf.overwrite or run.overwrite, resume=True, quiet=quiet,
                          workers=workers, break_lock=run.break_lock, scheduler=run.scheduler,
                          dask_workers=run.dask_workers)
    converted = convert(source, wf.folder_to_convert_to, opts)
    dest = f"s3://{wf.s3_bucket_name_for_upload}/{wf.s3_dir_to_write_to.strip('/')}"
    uploaded = upload(wf.folder_to_convert_to, dest, storage, resume=True, break_lock=run.break_lock,
                      overwrite=(wf.overwrite or run.overwrite) and not converted.already_complete)
    if not quiet:
        what = "already converted" if converted.already_complete else f"converted ({converted.chunks} chunks)"
        sent = (f"uploaded {uploaded.copied} objects" if uploaded.copied else "nothing to upload")
        print(f"ngconvert: {wf.folder_to_convert_to}: {what}; {dest}: {sent}", file=sys.stderr)
    return uploaded


def run_native(obj: dict, path: str, storage: StorageOptions, quiet: bool, workers=None,
               run: RunOptions = RunOptions()):
    unknown = sorted(set(obj) - {"source", "dest", "options", "storage"})
    if unknown:
        raise UserError(f"{path}: unknown field(s) {', '.join(unknown)}; the fields are source, dest, "
                        "options, storage")
    for name in ("source", "dest"):
        if not isinstance(obj.get(name), str):
            raise UserError(f"{path}: '{name}' must be given as a string")
    fields = {f.name for f in dataclasses.fields(ConvertOptions)}
    given = obj.get("options", {})
    if not isinstance(given, dict) or set(given) - fields:
        bad = sorted(set(given) - fields) if isinstance(given, dict) else ["(not an object)"]
        raise UserError(f"{path}: unknown conversion option(s) {', '.join(bad)}")
    if "storage" in given:
        raise UserError(f"{path}: options.storage: give 'storage' at the top level of the config, beside 'options'")
    given = {name: _option_value(name, value, path) for name, value in given.items()}
    base = os.path.dirname(os.path.abspath(path))
    for name in ("labels", "order_file"):
        if isinstance(given.get(name), str):
            given[name] = _beside(given[name], base)
    stored = StorageOptions.from_json(obj["storage"]) if "storage" in obj else storage
    opts = ConvertOptions(**{"quiet": quiet, "workers": workers, **given, **run.convert_fields(), "storage": stored})
    dest = _beside(obj["dest"], base)
    result = convert(_beside(obj["source"], base), dest, opts)
    if not quiet:
        what = ("already complete (same source and options); nothing to do" if result.already_complete else
                f"converted: {result.chunks} chunks, {result.bytes_written / 1e6:.1f} MB in {result.seconds:.1f} s")
        print(f"ngconvert: {dest}: {what}", file=sys.stderr)
    return result


def _beside(value: str, base: str) -> str:
    """A relative local path of a config, taken from the config file's folder (URLs as they are)."""
    if "://" in value or value == "" or os.path.isabs(value):
        return value
    return os.path.join(base, value)


def _describe_type(hint) -> str:
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args) + " or null"
    if typing.get_origin(hint) is tuple:
        kind = "integers" if args and args[0] is int else "numbers"
        return f"a list of {len(args)} {kind}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
            list: "a list"}.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(hint, value) -> bool:
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(a, value) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(
            _matches(a, v) for a, v in zip(args, value))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, dict, list):
        return isinstance(value, hint)
    return True          # object: checked where it is used


def _option_value(name: str, value, path: str):
    """A config option checked against the type of its ConvertOptions field (lists become tuples)."""
    import typing

    hint = typing.get_type_hints(ConvertOptions)[name]
    if name == "mesh":

        if value is None or value is False:
            return None
        if value is True:
            return MeshOptions()
        known = {f.name for f in dataclasses.fields(MeshOptions)}
        if not isinstance(value, dict) or set(value) - known:
            raise UserError(f"{path}: options.mesh must be true or an object with fields {', '.join(sorted(known))}")
        hints = typing.get_type_hints(MeshOptions)
        for k, v in value.items():
            if not _matches(hints[k], v):
                raise UserError(f"{path}: options.mesh.{k} is {json.dumps(v)}; give {_describe_type(hints[k])}")
        m = MeshOptions(**value)
        m.check()
        return m
    if not _matches(hint, value):
        raise UserError(f"{path}: options.{name} is {json.dumps(value)}; give {_describe_type(hint)}")
    if typing.get_origin(hint) is tuple or (isinstance(value, list) and "tuple" in str(hint)):
        return tuple(value)
    return value


def run_config(path: str, storage: StorageOptions | None = None, quiet: bool = False, workers=None,
               run: RunOptions = RunOptions()):
    """Run the conversion a JSON config file describes (either form)."""
    try:
        obj = json.loads(read_text_file(path, "config file"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: the config must be a JSON object")
    storage = storage or StorageOptions()
    if "s3_bucket_name_for_download" in obj or "s3_creds_file" in obj:
        return run_slice_workflow(parse_slice_workflow(obj, path), storage, quiet, workers, run)
    return run_native(obj, path, storage, quiet, workers, run)
