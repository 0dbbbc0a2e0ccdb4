"""Volume sources: lazily read regions of an ``[x, y, z, c]`` array with physical metadata.

A source is described by a small JSON-able reference (``SourceRef``) so that a task in
another process can reopen it; :func:`open_source` turns a reference into a reader and
caches it per process.

Over 450 lines because the array, NIfTI and oriented readers still live beside the
references that open them; the split into sources/arrays.py and sources/nifti.py was left
for a later change so that this move stays purely a move.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .base import SourceInfo, UNIT_TO_NM, VolumeSource, _check_shape, _one_line, _permutation, _xyzc_view, read_file_region
from .slices import SLICE_EXTENSIONS, _is_pattern, is_url, list_slice_files, natural_key, match_order, parse_order, Orientation, SliceStackSource, TiffStackSource
from ..core.errors import UserError, check_local_path, read_text_file
from ..core.geometry import Box
from ..store.open import open_store
# nibabel, tifffile: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

# in-memory arrays handed to the Python API, reachable by id from forked workers
_ARRAYS: dict[str, np.ndarray] = {}
_OPEN: dict[str, "VolumeSource"] = {}
_LOCK = threading.Lock()

NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh", ".img", ".hdr", ".img.gz", ".hdr.gz")


@dataclass
class SourceRef:
    """Everything needed to reopen a source in any process."""

    kind: str                      # "nibabel", "npy", "array", "slices" or "tiff"
    path: str = ""                 # file read (a decompressed copy for gzipped files)
    origin: str = ""               # what the user named
    axes: str = "xyz"              # axis order of the stored array ("xyz", "zyx", "xyzc", "czyx", ...)
    array_id: str = ""
    files: list | None = None      # slice stacks: the file or URL of each z (None: an empty slice)
    storage: dict | None = None    # how to reach URL slices (StorageOptions as JSON)
    pad: str = ""                  # slice stacks: "", "origin" or "center"
    flip: str = ""                 # slices: axes to reverse, any of "xyz"
    transpose: bool = False        # slices: swap x and y

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, obj) -> "SourceRef":
        return cls(**obj)

    def key(self) -> str:
        return (f"{self.kind}:{self.path}:{self.axes}:{self.array_id}:{self.pad}:{self.flip}:{self.transpose}:"
                f"{len(self.files or [])}")


def header_voxel_size(hdr) -> tuple[list[float], str, list[str]]:
    """Voxel size, its unit and notes from a nibabel header.  Headers hold float32: the
    shortest decimal that round-trips is taken (0.8, not 0.800000011920929)."""
    zooms = [float(str(np.float32(z))) for z in hdr.get_zooms()[:3]]
    while len(zooms) < 3:
        zooms.append(1.0)
    units, notes = "mm", []
    if hasattr(hdr, "get_xyzt_units"):
        u = hdr.get_xyzt_units()[0]
        units = {"mm": "mm", "micron": "um", "meter": "m"}.get(u, "mm")
        if u == "unknown":
            notes.append("the header gives no spatial unit; assuming millimetres")
    return zooms, units, notes


class ArraySource(VolumeSource):
    """A numpy array (in memory) in any axis order."""

    def __init__(self, array: np.ndarray, axes: str = "xyz", origin: str = "array"):
        view = _xyzc_view(array, axes, origin)
        self.array = view
        shape = tuple(int(n) for n in view.shape[:3])
        self.info = SourceInfo(shape=shape, channels=int(view.shape[3]), dtype=view.dtype)
        _check_shape(origin, shape, self.info.channels)

    def read(self, box: Box) -> np.ndarray:
        sx, sy, sz = box.slices((0, 0, 0))
        return np.asfortranarray(self.array[sx, sy, sz, :])


class NpySource(VolumeSource):
    """A ``.npy`` file, C or Fortran order, any axis order; regions are read from disk."""

    def __init__(self, path: str, axes: str, origin: str):
        self.path, self.axes, self.origin = path, axes, origin
        try:   # the header only: the map is dropped straight away
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
        except EOFError:
            raise UserError(f"{origin}: the .npy file is empty; save the array again with numpy.save") from None
        except (ValueError, OSError) as e:
            text = _one_line(e)
            hint = ("it is truncated, save or copy it again" if "larger than" in text or "mmap length" in text
                    else "check that it is complete and was saved with numpy.save")
            raise UserError(f"{origin}: not a readable .npy file ({text}); {hint}") from None
        self.shape, self.dtype, self.offset = tuple(mm.shape), mm.dtype, int(mm.offset)
        self.order = "F" if mm.flags.f_contiguous and not mm.flags.c_contiguous else "C"
        del mm
        if len(self.shape) == 2:                  # one slice: small, read whole
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            self._whole = ArraySource(np.array(arr), axes, origin)
            self.info = self._whole.info
            return
        self._whole = None
        probe = _xyzc_view(np.empty((0,) * len(self.shape), dtype=self.dtype), axes, origin)
        self.perm = _permutation(axes if not (axes == "xyz" and len(self.shape) == 4) else "xyzc",
                                 len(self.shape))
        xyzc = [self.shape[a] for a in self.perm] + ([1] if len(self.shape) == 3 else [])
        self.info = SourceInfo(shape=tuple(int(n) for n in xyzc[:3]), channels=int(xyzc[3]),
                               dtype=probe.dtype.newbyteorder("="))
        _check_shape(origin, self.info.shape, self.info.channels)

    def read(self, box: Box) -> np.ndarray:
        if self._whole is not None:
            return self._whole.read(box)
        wanted = list(box.slices((0, 0, 0))) + [slice(None)]
        region = [slice(None)] * len(self.shape)
        for out_axis, src_axis in enumerate(self.perm):
            region[src_axis] = wanted[out_axis]
        data = read_file_region(self.path, self.offset, self.dtype, self.shape, self.order, tuple(region))
        data = np.transpose(data, self.perm)
        if data.ndim == 3:
            data = data[..., None]
        if not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        return np.asfortranarray(data)


def _is_gzipped(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def decompress_to_temp(path: str) -> str:
    """Stream a gzipped file to an uncompressed copy in a temporary folder."""
    name = Path(path).name
    for suffix, repl in ((".nii.gz", ".nii"), (".mgz", ".mgh"), (".img.gz", ".img"), (".gz", "")):
        if name.endswith(suffix):
            name = name[: -len(suffix)] + repl
            break
    tmpdir = tempfile.mkdtemp(prefix="ngconvert-src-")
    out = os.path.join(tmpdir, name)
    d = zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as src, open(out, "wb") as dst:
            while True:
                block = src.read(16 << 20)
                if not block:
                    break
                dst.write(d.decompress(block))
                while d.eof and d.unused_data:   # concatenated gzip members
                    rest = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                    dst.write(d.decompress(rest))
            dst.write(d.flush())
        if not d.eof:
            raise UserError(f"{path}: the gzip stream is truncated; the file is incomplete, "
                            "copy or download it again")
    except zlib.error as e:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise UserError(f"{path}: corrupt gzip data ({e}); the file is damaged, copy or download it again") from None
    except OSError as e:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise UserError(f"{path}: cannot decompress to {tmpdir} ({e.strerror or e}); "
                        "free space in the temporary folder or set TMPDIR") from None
    except BaseException:            # bad input, Ctrl-C or SIGTERM: no temporary copy is left
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return out


class NibabelSource(VolumeSource):
    """NIfTI-1/2, MGH/MGZ, Analyze: memory-mapped, with the header's affine and voxel size."""

    def __init__(self, path: str, origin: str):
        import nibabel as nib

        self.path, self.origin = path, origin
        try:
            img = nib.load(path)
        except Exception as e:  # nibabel raises many types for bad files
            raise UserError(f"{origin}: not a readable NIfTI/MGH/Analyze volume ({_one_line(e)}); "
                            "check that the file is complete and in a format nibabel reads") from None
        proxy = img.dataobj
        if not hasattr(proxy, "offset"):
            raise UserError(f"{origin}: unsupported image layout; convert it to NIfTI first")
        shape = tuple(int(n) for n in proxy.shape)
        raw_dtype = np.dtype(proxy.dtype)
        channels = 1
        if raw_dtype.names is not None:          # RGB24 / RGBA32 NIfTI
            channels = len(raw_dtype.names)
            base = raw_dtype[0]
        else:
            base = raw_dtype
        geo = list(shape)
        while len(geo) < 3:
            geo.append(1)
        if len(geo) == 5 and geo[3] == 1:        # NIfTI vector data: x, y, z, t=1, c
            geo = geo[:3] + [geo[4]]
        if len(geo) > 4:
            raise UserError(f"{origin}: {len(shape)}-D data (shape {shape}) is not supported; "
                            "give a 3-D volume or 4-D with channels last")
        if len(geo) == 4:
            if channels != 1:
                raise UserError(f"{origin}: 4-D RGB data (shape {shape}) is not supported; give one RGB volume")
            channels = geo[3]
        self._layout = (raw_dtype, int(proxy.offset), tuple(shape), getattr(proxy, "order", "F"),
                        tuple(geo[:3]), channels, base)
        expected = int(proxy.offset) + int(np.prod(shape, dtype=np.int64)) * raw_dtype.itemsize
        if os.path.getsize(path) < expected:
            raise UserError(f"{origin}: the file is shorter than its header says; it is truncated, "
                            "copy or download it again")
        slope, inter = _scaling(proxy)
        self.slope, self.inter = slope, inter
        hdr = img.header
        zooms, units, notes = header_voxel_size(hdr)
        label_hint = False
        try:
            label_hint = int(hdr["intent_code"]) == 1002
        except Exception:
            pass
        scaled = (slope, inter) != (1.0, 0.0)
        dtype = np.dtype(np.float32) if scaled else np.dtype(base)
        if scaled:
            notes.append(f"values are scaled by the header (slope {slope:g}, intercept {inter:g}); "
                         "writing scaled values as float32")
        self.info = SourceInfo(
            shape=tuple(geo[:3]), channels=channels, dtype=dtype,
            resolution_nm=tuple(z * UNIT_TO_NM[units] for z in zooms),
            affine=np.asarray(img.affine, dtype=float).tolist(), world_units=units,
            label_hint=label_hint, scaled=scaled, notes=notes)
        _check_shape(origin, self.info.shape, channels)

    def _region(self, box: Box) -> tuple[slice, ...]:
        """The box as slices of the stored array (its trailing axes are channels)."""
        raw_dtype, offset, shape, order, geo, channels, base = self._layout
        region = list(box.slices((0, 0, 0)))[:len(shape)]
        while len(region) < len(shape):
            region.append(slice(None))
        return tuple(region)

    def read(self, box: Box) -> np.ndarray:
        raw_dtype, offset, shape, order, geo, channels, base = self._layout
        try:
            data = read_file_region(self.path, offset, raw_dtype, shape, order, self._region(box))
        except OSError as e:
            raise UserError(f"{self.origin}: read failed ({e.strerror or e}); the file may be truncated") from None
        bx, by, bz = box.shape
        if raw_dtype.names is not None:            # RGB24/RGBA32 records -> channel axis
            data = np.ascontiguousarray(data.reshape(bx, by, bz)).view(base).reshape(bx, by, bz, channels)
        else:
            data = data.reshape(bx, by, bz, channels, order="F") if data.ndim != 4 else data
        data = np.asfortranarray(data)
        if not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        if (self.slope, self.inter) != (1.0, 0.0):
            data = (data * np.float64(self.slope) + np.float64(self.inter)).astype(np.float32, order="F")
        return data


def _scaling(proxy) -> tuple[float, float]:
    slope = getattr(proxy, "slope", 1.0)
    inter = getattr(proxy, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


@dataclass(frozen=True)
class SliceOptions:
    """How to read 2-D slices: order file, padding and orientation."""

    order_file: str | None = None
    pad: str = ""
    flip: str = ""
    transpose: bool = False
    storage: object = None         # StorageOptions for slices at s3://, gs:// or http(s):// URLs


def ref_for(source, axes: str = "xyz", slices: SliceOptions = SliceOptions()) -> SourceRef:
    """A reference for what the user gave: a path, a folder or pattern of slices, a list of
    slice files, or a numpy array (or a reference made by the caller)."""
    if isinstance(source, SourceRef):
        return source
    if isinstance(source, (list, tuple)):
        # a list of slice files in z order; None is an empty slice
        return _slice_ref([None if f is None else os.fspath(f) for f in source], "slice list", slices)
    if isinstance(source, np.ndarray):
        array_id = f"a{id(source):x}"
        _ARRAYS[array_id] = source
        return SourceRef(kind="array", origin="array", axes=axes, array_id=array_id, flip=_flip(slices.flip),
                         transpose=slices.transpose)
    path = os.fspath(source)

    if not is_url(path):
        check_local_path(path, "source")

    if is_url(path):
        return _remote_slice_ref(path, slices)
    if os.path.isdir(path) or (_is_pattern(path) and not os.path.exists(path)):
        return _slice_ref(list_slice_files(path), path, slices)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file; check the path")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: permission denied; make the file readable")
    lower = path.lower()
    if lower.endswith(".npy"):
        return SourceRef(kind="npy", path=path, origin=path, axes=axes, flip=_flip(slices.flip),
                         transpose=slices.transpose)
    if lower.endswith(NIBABEL_SUFFIXES):
        return SourceRef(kind="nibabel", path=path, origin=path, flip=_flip(slices.flip), transpose=slices.transpose)
    if lower.endswith((".tif", ".tiff")) and _tiff_pages(path) > 1:
        return SourceRef(kind="tiff", path=path, origin=path, flip=_flip(slices.flip), transpose=slices.transpose)
    if lower.endswith(SLICE_EXTENSIONS):
        return _slice_ref([path], path, slices)
    raise UserError(f"{path}: unknown volume format; give .nii, .nii.gz, .mgz, .mgh, .img/.hdr, .npy, "
                    "a multi-page .tif, or a folder or pattern of .tif/.png/.jpg slices")


def _remote_slice_ref(url: str, opts: SliceOptions) -> SourceRef:
    """Slices directly under a bucket prefix (``s3://``, ``gs://``), listed once."""

    if url.lower().endswith(SLICE_EXTENSIONS + NIBABEL_SUFFIXES + (".npy",)):
        raise UserError(f"{url}: reading single files from a URL is not supported; download it first, "
                        "or give the prefix of a folder of slices")
    store = open_store(url.rstrip("/"), opts.storage)
    store.check_readable()
    names = [k for k, _size in store.list("") if "/" not in k and k.lower().endswith(SLICE_EXTENSIONS)]
    if not names:
        raise UserError(f"{url}: no .tif, .png or .jpg slices directly under this prefix")
    base = url.rstrip("/") + "/"
    files = [base + n for n in sorted(names, key=natural_key)]
    ref = _slice_ref(files, url, SliceOptions(opts.order_file, opts.pad, opts.flip, opts.transpose), local=False)
    ref.storage = opts.storage.to_json() if opts.storage is not None else None
    return ref


def normalize_flip(text: str) -> str:
    """``--flip`` as the axes it names, in ``xyz`` order (``"x,z"`` -> ``"xz"``)."""
    axes = str(text).replace(",", "").replace(" ", "").lower()
    if set(axes) - set("xyz"):
        raise UserError(f"--flip {text}: name axes among x, y and z, e.g. --flip y or --flip x,z")
    return "".join(a for a in "xyz" if a in axes)


_flip = normalize_flip


class OrientedSource(VolumeSource):
    """Another source seen with x and y swapped (``transpose``), then the ``flip`` axes reversed.

    Regions are mapped to the region of the inner source that holds them and only that is read
    (then reversed/swapped), so tasks stay lazy.  An affine is adjusted so every voxel keeps its
    world position."""

    def __init__(self, inner: VolumeSource, flip: str = "", transpose: bool = False):
        self.inner, self.flip, self.transpose = inner, normalize_flip(flip), bool(transpose)
        i = inner.info
        shape = (i.shape[1], i.shape[0], i.shape[2]) if self.transpose else tuple(i.shape)
        res = i.resolution_nm
        if res is not None and self.transpose:
            res = (res[1], res[0], res[2])
        affine = None
        if i.affine is not None:
            # output voxel j -> inner voxel: reverse the flipped axes, then swap x and y
            m = np.eye(4)
            for k, a in enumerate("xyz"):
                if a in self.flip:
                    m[k, k], m[k, 3] = -1.0, shape[k] - 1
            if self.transpose:
                m = m[[1, 0, 2, 3]]
            affine = (np.asarray(i.affine, dtype=float) @ m).tolist()
        what = ", ".join(w for w in (f"flipped {self.flip}" if self.flip else "",
                                      "x and y swapped" if self.transpose else "") if w)
        self.info = SourceInfo(shape=shape, channels=i.channels, dtype=i.dtype, resolution_nm=res,
                               affine=affine, world_units=i.world_units, label_hint=i.label_hint,
                               scaled=i.scaled, notes=list(i.notes) + ([f"{what} as asked"] if what else []))

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)

    def read(self, box: Box) -> np.ndarray:
        start, stop = list(box.start), list(box.stop)
        for k, a in enumerate("xyz"):
            if a in self.flip:
                n = self.info.shape[k]
                start[k], stop[k] = n - box.stop[k], n - box.start[k]
        if self.transpose:
            start[0], start[1], stop[0], stop[1] = start[1], start[0], stop[1], stop[0]
        data = self.inner.read(Box(tuple(start), tuple(stop)))
        if self.transpose:
            data = data.swapaxes(0, 1)
        rev = tuple(slice(None, None, -1) if a in self.flip else slice(None) for a in "xyz")
        return np.asfortranarray(data[rev])


def _tiff_pages(path: str) -> int:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.pages)
    except Exception as e:
        raise UserError(f"{path}: not a readable TIFF ({_one_line(e)}); check the file") from None


def _slice_ref(files: list[str], origin: str, opts: SliceOptions, local: bool = True) -> SourceRef:
    ordered: list = list(files)
    if opts.order_file:

        text = read_text_file(opts.order_file, "order file")
        ordered = match_order(parse_order(text, opts.order_file), [f for f in files if f is not None],
                              opts.order_file)
    for f in ordered if local else ():
        if f is not None and not os.access(f, os.R_OK):
            raise UserError(f"{f}: cannot read the slice; check that it exists and is readable")
    return SourceRef(kind="slices", origin=origin, files=ordered, pad=opts.pad, flip=_flip(opts.flip),
                     transpose=opts.transpose)


def prepare(ref: SourceRef) -> SourceRef:
    """Make a reference cheap to read from anywhere (gzipped files get an uncompressed copy)."""
    if ref.kind == "nibabel" and os.path.isfile(ref.path) and _is_gzipped(ref.path):
        return replace(ref, path=decompress_to_temp(ref.path))
    return ref


def release(ref: SourceRef) -> None:
    """Forget an opened source and remove a temporary copy made by :func:`prepare`."""
    with _LOCK:
        _OPEN.pop(ref.key(), None)
    if ref.kind == "nibabel" and ref.path != ref.origin:
        shutil.rmtree(os.path.dirname(ref.path), ignore_errors=True)
    if ref.kind == "array":
        _ARRAYS.pop(ref.array_id, None)


def open_source(ref: SourceRef) -> VolumeSource:
    key = ref.key()
    with _LOCK:
        src = _OPEN.get(key)
    if src is not None:
        return src
    if ref.kind == "array":
        if ref.array_id not in _ARRAYS:
            raise RuntimeError("in-memory array is not available in this process")
        src = ArraySource(_ARRAYS[ref.array_id], ref.axes, origin="array")
    elif ref.kind == "npy":
        src = NpySource(ref.path, ref.axes, ref.origin)
    elif ref.kind == "nibabel":
        src = NibabelSource(ref.path, ref.origin)
    elif ref.kind == "slices":

        src = SliceStackSource(ref.files, ref.origin, ref.pad, Orientation(ref.transpose, ref.flip),
                               storage=ref.storage)
    elif ref.kind == "tiff":

        src = TiffStackSource(ref.path, ref.origin, Orientation(ref.transpose, ref.flip))
    else:
        raise ValueError(f"unknown source kind {ref.kind!r}")
    if ref.kind in ("array", "npy", "nibabel") and (ref.flip or ref.transpose):
        src = OrientedSource(src, ref.flip, ref.transpose)     # slice stacks orient each slice themselves
    with _LOCK:
        _OPEN[key] = src
    return src
