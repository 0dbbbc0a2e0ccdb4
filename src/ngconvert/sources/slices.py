"""Stacks of 2-D images (TIFF, PNG, JPEG) and multi-page / OME-TIFF files as volume sources.

A slice image is ``rows x columns``; in the volume, columns are x, rows are y and the
slice's position in the stack is z.  ``transpose`` swaps x and y of every slice and
``flip`` reverses any of x, y, z, so a stack can be matched to an atlas' orientation.

Slices are decoded whole (their formats allow nothing else), so the planner gives tasks
whole-slice slabs; a task reads its slices in parallel threads.

Over 450 lines because the slice-file helpers (listing, ordering, decoding one slice) still
sit with the stack readers; the split into sources/slice_files.py was left for a later
change so that this move stays purely a move.
"""
from __future__ import annotations

import glob
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .base import SourceInfo, VolumeSource, _check_shape, _one_line, read_file_region
from ..core.errors import UserError
from ..core.geometry import Box
from ..store.base import StorageOptions
from ..store.open import open_store
# tifffile, imagecodecs, Pillow (PIL): imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

SLICE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
READ_THREADS = 4


def natural_key(name: str):
    """Sort key in which ``img2`` comes before ``img10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def list_slice_files(spec: str) -> list[str]:
    """The image files of a folder or a glob pattern, in natural order."""
    if _is_pattern(spec):
        files = [f for f in glob.glob(spec) if os.path.isfile(f)]
        if not files:
            raise UserError(f"{spec}: the pattern matches no files; check the pattern and quote it")
    else:
        if not os.path.isdir(spec):
            raise UserError(f"{spec}: no such folder; check the path")
        files = [os.path.join(spec, f) for f in os.listdir(spec)
                 if f.lower().endswith(SLICE_EXTENSIONS) and os.path.isfile(os.path.join(spec, f))]
        if not files:
            raise UserError(f"{spec}: the folder holds no .tif, .tiff, .png or .jpg images")
    return sorted(files, key=lambda f: natural_key(os.path.basename(f)))


MAX_Z_INDEX = 1_000_000


def max_z_index(named: int) -> int:
    """The largest z an order file naming ``named`` slices may give: 100 per named slice
    (at least 1000), never beyond :data:`MAX_Z_INDEX`."""
    return min(MAX_Z_INDEX, max(1000, 100 * named))


def parse_order(text: str, origin: str) -> list[str | None]:
    """Slice names by z position from an order file; ``None`` is an empty slice.

    Each line is ``<name> <index>`` (index = z position) or just ``<name>`` (z = line
    number).  A name containing ``Placeholder`` (any case) is an empty slice at its z, and
    so is a z that no line names; neither shifts later slices.  Blank lines and ``#`` comments
    are skipped.  Names are taken literally (they may contain spaces).
    """
    entries: list[tuple[str, int | None, int]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and re.fullmatch(r"-?\d+", parts[1]):
            name, index = parts[0], int(parts[1])
            if index < 0:
                raise UserError(f"{origin}:{lineno}: z index {index} is negative; indices start at 0")
        else:
            name, index = line, None
        entries.append((name, index, lineno))
    if not entries:
        raise UserError(f"{origin}: the order file names no slices")
    indexed = [e for e in entries if e[1] is not None]
    if indexed and len(indexed) != len(entries):
        _name, _i, lineno = next(e for e in entries if e[1] is None)
        raise UserError(f"{origin}:{lineno}: a line without a z index in a file whose other lines have one; "
                        "give every line '<name> <index>' or none")
    if not indexed:
        return [None if _is_placeholder(n) else n for n, _i, _l in entries]
    limit = max_z_index(len(entries))
    far = max(entries, key=lambda e: e[1])
    if far[1] > limit:
        raise UserError(f"{origin}:{far[2]}: z index {far[1]} is beyond the limit of {limit} for {len(entries)} "
                        f"named slice(s) (at most {MAX_Z_INDEX}, and 100 times the slices named, at least 1000); "
                        "give z positions in slices, counted from 0")
    order: list[str | None] = [None] * (max(i for _n, i, _l in entries) + 1)
    seen: dict[int, int] = {}
    for name, index, lineno in entries:
        if index in seen:
            raise UserError(f"{origin}:{lineno}: z index {index} is already used on line {seen[index]}")
        seen[index] = lineno
        order[index] = None if _is_placeholder(name) else name
    return order


def _is_placeholder(name: str) -> bool:
    return "placeholder" in name.lower()


def match_order(order: list[str | None], files: list[str], origin: str) -> list[str | None]:
    """Map order-file names to files, literally by relative path or by base name."""
    by_name: dict[str, str] = {}
    for f in files:
        by_name.setdefault(os.path.basename(f), f)
        by_name.setdefault(f, f)
    out, missing = [], []
    for name in order:
        if name is None:
            out.append(None)
        elif name in by_name:
            out.append(by_name[name])
        else:
            missing.append(name)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise UserError(f"{origin}: {len(missing)} slice(s) named in the order file are not among the input "
                        f"files: {shown}")
    return out


def is_url(path: str) -> bool:
    return "://" in path


_STORES: dict = {}


def read_slice_bytes(path: str, storage: dict | None = None) -> bytes:
    """The bytes of a slice file, local or at an ``s3://``, ``gs://`` or ``http(s)://`` URL."""
    if not is_url(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror or e})") from None

    parent, name = path.rsplit("/", 1)
    key = (parent, repr(sorted((storage or {}).items())))
    store = _STORES.get(key)
    if store is None:
        store = _STORES[key] = open_store(parent, StorageOptions.from_json(storage) if storage else None)
    data = store.get(name)
    if data is None:
        raise UserError(f"{path}: the slice is missing; it was listed when the conversion started")
    return data


def _header_of(img: np.ndarray) -> "SliceHeader":
    return SliceHeader(img.shape[0], img.shape[1], img.shape[2], img.dtype)


@dataclass(frozen=True)
class SliceHeader:
    rows: int
    cols: int
    channels: int
    dtype: np.dtype


def decode_slice(data: bytes, name: str) -> np.ndarray:
    """A slice as ``[rows, cols, channels]``."""
    import imagecodecs
    import tifffile

    lower = name.lower()
    try:
        if lower.endswith((".tif", ".tiff")):
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                img = tif.pages[0].asarray()
        elif lower.endswith(".png"):
            img = imagecodecs.png_decode(data)
        elif lower.endswith((".jpg", ".jpeg")):
            img = imagecodecs.jpeg8_decode(data)
        else:
            raise UserError(f"{name}: not a .tif, .png or .jpg image")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{name}: cannot decode the image ({_one_line(e)}); the file may be damaged") from None
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise UserError(f"{name}: image of shape {img.shape} is not a 2-D grey or colour slice")
    if img.dtype == np.bool_:
        img = img.astype(np.uint8)
    return img


def probe_slice(path: str) -> SliceHeader:
    """Shape and type of a local slice, reading only its header where the format allows."""
    lower = path.lower()
    try:
        if lower.endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                shape, dtype = page.shape, np.dtype(page.dtype)
                rows, cols = shape[0], shape[1]
                channels = shape[2] if len(shape) == 3 else 1
                return SliceHeader(rows, cols, channels, dtype if dtype != np.bool_ else np.dtype(np.uint8))
        from PIL import Image

        with Image.open(path) as im:
            mode_types = {"L": ("uint8", 1), "RGB": ("uint8", 3), "RGBA": ("uint8", 4), "LA": ("uint8", 2),
                          "I;16": ("uint16", 1), "I;16B": ("uint16", 1), "I": ("int32", 1), "1": ("uint8", 1),
                          "F": ("float32", 1)}
            if im.mode not in mode_types:
                raise UserError(f"{path}: image mode {im.mode} (e.g. a palette image) is not supported; "
                                "save it as grey or RGB")
            dtype, channels = mode_types[im.mode]
            if im.mode == "I" and im.format == "PNG":
                dtype = "uint16"        # 16-bit PNGs open as mode I in some Pillow versions
            return SliceHeader(im.height, im.width, channels, np.dtype(dtype))
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"{path}: cannot read the image ({_one_line(e)}); check the file") from None
    except Exception as e:
        raise UserError(f"{path}: not a readable image ({_one_line(e)}); the file may be damaged") from None


@dataclass(frozen=True)
class Orientation:
    """How slices map to the volume: swap x/y, then reverse the named axes."""

    transpose: bool = False
    flip: str = ""          # any of "x", "y", "z"

    def to_volume(self, img: np.ndarray) -> np.ndarray:
        """``[rows, cols, c]`` -> ``[x, y, c]`` with this orientation."""
        xy = img if self.transpose else img.transpose(1, 0, 2)
        if "x" in self.flip:
            xy = xy[::-1]
        if "y" in self.flip:
            xy = xy[:, ::-1]
        return xy


class SliceStackSource(VolumeSource):
    """An ordered list of slice files (``None`` for an empty slice)."""

    whole_slices = True

    def __init__(self, files: list[str | None], origin: str, pad: str = "", orientation=Orientation(),
                 headers: list[SliceHeader | None] | None = None, storage: dict | None = None):
        if pad not in ("", "origin", "center"):
            raise UserError(f"--pad {pad}: choose origin or center")
        self.files = list(files)
        self.origin, self.pad, self.orientation = origin, pad, orientation
        self.storage = storage
        real = [f for f in self.files if f is not None]
        if not real:
            raise UserError(f"{origin}: every slice is a placeholder; nothing to convert")
        if headers is None and not pad and is_url(real[0]):
            # remote slices: the first one gives the frame; the others are checked as they are read
            first = _header_of(decode_slice(read_slice_bytes(real[0], storage), real[0]))
            headers = [None if f is None else first for f in self.files]
        if headers is None:
            def probe(f):
                if f is None:
                    return None
                if is_url(f):
                    return _header_of(decode_slice(read_slice_bytes(f, storage), f))
                return probe_slice(f)

            with ThreadPoolExecutor(READ_THREADS) as pool:
                headers = list(pool.map(probe, self.files))
        first_i = next(i for i, h in enumerate(headers) if h is not None)
        ref = headers[first_i]
        rows, cols = ref.rows, ref.cols
        for f, h in zip(self.files, headers):
            if h is None:
                continue
            what = []
            if h.dtype != ref.dtype:
                what.append(f"type {h.dtype} instead of {ref.dtype}")
            if h.channels != ref.channels:
                what.append(f"{h.channels} channel(s) instead of {ref.channels}")
            if what:
                raise UserError(f"{f}: {', '.join(what)} (as in {self.files[first_i]}); convert the slices to "
                                "one type and channel count")
            if (h.rows, h.cols) != (ref.rows, ref.cols):
                if not pad:
                    raise UserError(f"{f}: {h.cols}x{h.rows} pixels instead of {ref.cols}x{ref.rows} "
                                    f"(as in {self.files[first_i]}); pass --pad origin or --pad center "
                                    "to place smaller slices in the largest frame")
                rows, cols = max(rows, h.rows), max(cols, h.cols)
        self.rows, self.cols = rows, cols
        x, y = (rows, cols) if orientation.transpose else (cols, rows)
        shape = (x, y, len(self.files))
        self.info = SourceInfo(shape=shape, channels=ref.channels, dtype=ref.dtype)
        _check_shape(origin, shape, ref.channels)

    def _path(self, z: int) -> str | None:
        if "z" in self.orientation.flip:
            z = len(self.files) - 1 - z
        return self.files[z]

    def _slice(self, z: int) -> np.ndarray:
        """Slice ``z`` of the volume (after flips) as ``[x, y, c]`` of the full frame."""
        path = self._path(z)
        if path is None:
            frame = np.zeros((self.rows, self.cols, self.info.channels), dtype=self.info.dtype)
            return self.orientation.to_volume(frame)
        data = read_slice_bytes(path, self.storage)
        img = decode_slice(data, path)
        del data
        if img.dtype != self.info.dtype or img.shape[2] != self.info.channels:
            raise UserError(f"{path}: decodes to {img.dtype} x{img.shape[2]}, not {self.info.dtype} "
                            f"x{self.info.channels} like the other slices; convert the slices to one type")
        h, w = img.shape[:2]
        if (h, w) != (self.rows, self.cols):
            if not self.pad:
                raise UserError(f"{path}: {w}x{h} pixels instead of {self.cols}x{self.rows}; pass --pad")
            if h > self.rows or w > self.cols:
                raise UserError(f"{path}: {w}x{h} pixels is larger than the frame {self.cols}x{self.rows}")
            frame = np.zeros((self.rows, self.cols, self.info.channels), dtype=self.info.dtype)
            r0 = (self.rows - h) // 2 if self.pad == "center" else 0
            c0 = (self.cols - w) // 2 if self.pad == "center" else 0
            frame[r0:r0 + h, c0:c0 + w] = img
            img = frame
        return self.orientation.to_volume(img)

    def _direct(self, box: Box) -> bool:
        """Whether whole slices of ``box`` can be decoded straight into the output array.

        The output is ``[x, y, z, c]`` in Fortran order, so one z of a single channel is a
        C-ordered ``[rows, cols]`` image: exactly what a decoder writes when slices are not
        transposed or flipped in x or y.
        """
        return (self.info.channels == 1 and not self.orientation.transpose
                and not any(a in self.orientation.flip for a in "xy")
                and box.start[:2] == (0, 0) and tuple(box.stop[:2]) == tuple(self.info.shape[:2]))

    def _read_tiff_into(self, path: str, target: np.ndarray) -> bool:
        """Decode a single-image TIFF of the frame's size into ``target`` ([rows, cols]).

        False (nothing written) when the file is not such a TIFF: the general path then
        reads it and gives the usual messages for padding, types and damage.
        """
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                if (tuple(page.shape) != (self.rows, self.cols) or np.dtype(page.dtype) != self.info.dtype
                        or page.dtype == np.bool_):
                    return False
                page.asarray(out=target, maxworkers=1)
            return True
        except Exception:
            return False

    def _fill(self, z: int, plane: np.ndarray, direct: bool, sx, sy) -> None:
        """Write slice ``z`` of the volume into ``plane`` ([x, y, c] of the output)."""
        if direct:
            path = self._path(z)
            target = plane[:, :, 0].T                 # a C-contiguous [rows, cols] view
            if path is None:
                target.fill(0)
                return
            if (path.lower().endswith((".tif", ".tiff")) and not is_url(path)
                    and self._read_tiff_into(path, target)):
                return
        plane[...] = self._slice(z)[sx, sy]

    def read(self, box: Box) -> np.ndarray:
        sx, sy, sz = box.slices((0, 0, 0))
        out = np.empty(box.shape + (self.info.channels,), dtype=self.info.dtype, order="F")
        direct = self._direct(box)

        def fill(k):
            self._fill(k, out[:, :, k - box.start[2], :], direct, sx, sy)

        zs = range(box.start[2], box.stop[2])
        if len(zs) == 1:
            fill(zs[0])
        else:
            with ThreadPoolExecutor(min(READ_THREADS, len(zs))) as pool:
                list(pool.map(fill, zs))
        return out


class TiffStackSource(VolumeSource):
    """A multi-page or OME-TIFF file: pages are z (and channels); read page by page.

    Uncompressed, contiguous files are read straight from their byte offset (no decode);
    compressed pages (LZW, deflate, ...) are decoded one at a time.
    """

    whole_slices = True

    def __init__(self, path: str, origin: str, orientation=Orientation()):
        import tifffile

        self.path, self.origin, self.orientation = path, origin, orientation
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes, shape = series.axes.upper(), tuple(series.shape)
                dtype = np.dtype(series.dtype)
                self.dataoffset = series.dataoffset
                self.npages = len(tif.pages)
        except Exception as e:
            raise UserError(f"{origin}: not a readable TIFF ({_one_line(e)}); check the file") from None
        keep = [(a, n) for a, n in zip(axes, shape) if n > 1 or a in "YX"]
        names = "".join(a for a, _n in keep)
        if not re.fullmatch(r"[ZQ]?[CS]?YX[S]?|[CS]?[ZQ]YX[S]?", names):
            raise UserError(f"{origin}: TIFF axes {axes} (shape {shape}) are not a z-stack of 2-D images; "
                            "give one series with Z, Y, X and optionally channels")
        sizes = dict(keep)
        self.axes, self.shape = axes, shape
        self.page_axes = [a for a in axes if a not in "YXS"]
        self.depth = sizes.get("Z", sizes.get("Q", 1))
        ch_axis = "C" if "C" in sizes else ("S" if "S" in sizes else None)
        self.channels = sizes.get(ch_axis, 1) if ch_axis else 1
        self.rows, self.cols = sizes["Y"], sizes["X"]
        x, y = (self.rows, self.cols) if orientation.transpose else (self.cols, self.rows)
        self.info = SourceInfo(shape=(x, y, self.depth), channels=self.channels,
                               dtype=dtype if dtype != np.bool_ else np.dtype(np.uint8))
        _check_shape(origin, self.info.shape, self.channels)

    def _index(self, z: int, c: int) -> tuple:
        """Index into the series array for (z, channel c), slicing Y, X (and S)."""
        idx = []
        for a in self.axes:
            if a in ("Z", "Q"):
                idx.append(z)
            elif a == "C":
                idx.append(c)
            elif a in "YX" or (a == "S" and self.channels > 1):
                idx.append(slice(None))
            else:
                idx.append(0)
        return tuple(idx)

    def _slice(self, tif, z: int) -> np.ndarray:
        if "z" in self.orientation.flip:
            z = self.depth - 1 - z
        planes = []
        for c in range(self.channels if "C" in self.axes else 1):
            idx = self._index(z, c)
            if self.dataoffset is not None:
                region = tuple(i if isinstance(i, slice) else slice(i, i + 1) for i in idx)
                dtype = np.dtype(tif.series[0].dtype).newbyteorder(tif.byteorder)
                arr = read_file_region(self.path, self.dataoffset, dtype, self.shape, "C", region)
                plane = arr.reshape(self.rows, self.cols, -1)
            else:
                key = int(np.ravel_multi_index([i for i, a in zip(idx, self.axes) if a not in "YXS"],
                                               [n for n, a in zip(self.shape, self.axes) if a not in "YXS"]))
                plane = tif.pages[key].asarray()
            planes.append(plane if plane.ndim == 3 else plane[:, :, None])
        img = np.concatenate(planes, axis=2) if len(planes) > 1 else planes[0]
        if not img.dtype.isnative:
            img = img.astype(img.dtype.newbyteorder("="))
        return self.orientation.to_volume(img)

    def read(self, box: Box) -> np.ndarray:
        import tifffile

        sx, sy, _sz = box.slices((0, 0, 0))
        out = np.empty(box.shape + (self.channels,), dtype=self.info.dtype, order="F")
        with tifffile.TiffFile(self.path) as tif:
            for k in range(box.start[2], box.stop[2]):
                out[:, :, k - box.start[2], :] = self._slice(tif, k)[sx, sy]
        return out
