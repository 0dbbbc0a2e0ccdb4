"""What every volume source is: its shape and type (SourceInfo), the reader interface (VolumeSource), and raw file regions."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import UserError
from ..core.geometry import Box


UNIT_TO_NM = {"nm": 1.0, "um": 1e3, "micron": 1e3, "µm": 1e3, "mm": 1e6, "m": 1e9, "meter": 1e9}
MAX_CHANNELS = 16


@dataclass
class SourceInfo:
    """Physical metadata a source knows about itself."""

    shape: tuple[int, int, int]
    channels: int
    dtype: np.dtype
    resolution_nm: tuple[float, float, float] | None = None
    affine: list[list[float]] | None = None      # voxel index (centre) -> world
    world_units: str | None = None
    label_hint: bool = False                       # e.g. NIfTI intent code "label"
    scaled: bool = False                           # values come from a slope/intercept
    notes: list[str] = field(default_factory=list)


class VolumeSource:
    info: SourceInfo

    def read(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (source coordinates, origin 0) as an F-ordered ``[x,y,z,c]`` array."""
        raise NotImplementedError


def _permutation(axes: str, ndim: int) -> tuple[int, ...]:
    axes = axes.lower()
    if sorted(axes.replace("c", "")) != ["x", "y", "z"] or len(set(axes)) != len(axes) or set(axes) - set("xyzc"):
        raise UserError(f"axis order {axes!r} is not a permutation of 'xyz' with an optional 'c'; "
                        "use e.g. xyz, zyx, xyzc or czyx")
    if len(axes) != ndim:
        raise UserError(f"axis order {axes!r} names {len(axes)} axes but the array has {ndim}; "
                        "add or drop 'c' to match")
    order = "xyzc" if "c" in axes else "xyz"
    return tuple(axes.index(a) for a in order)


def read_file_region(path: str, offset: int, dtype: np.dtype, shape: tuple[int, ...], order: str,
                     region: tuple[slice, ...]) -> np.ndarray:
    """Read ``region`` of an uncompressed array stored in a file, with positioned reads.

    Nothing is memory-mapped, so the pages read do not stay attached to the process.
    For each index of the slower axes one read fetches whole rows of the two fastest
    axes; the result has the file's axis order.
    """
    dtype = np.dtype(dtype)
    fast = list(range(len(shape))) if order == "F" else list(range(len(shape)))[::-1]
    dims = [shape[a] for a in fast]
    sl = [region[a].indices(shape[a])[:2] for a in fast]
    out_fast = np.empty([b - a for a, b in sl], dtype=dtype, order="F")
    if out_fast.size == 0:
        return _to_file_order(out_fast, fast)
    d0 = dims[0]
    rows = (sl[1][0], sl[1][1]) if len(dims) > 1 else (0, 1)
    plane = d0 * (dims[1] if len(dims) > 1 else 1)
    buf = np.empty((rows[1] - rows[0]) * d0, dtype=dtype)
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        outer = [range(a, b) for a, b in sl[2:]]
        for idx in itertools.product(*outer):
            lin, stride = 0, 1
            for k, i in enumerate(idx):
                stride = plane * int(np.prod(dims[2:2 + k], dtype=np.int64))
                lin += i * stride
            start = offset + (lin + rows[0] * d0) * dtype.itemsize
            view = memoryview(buf).cast("B")
            got = os.preadv(fd, [view], start)
            if got != view.nbytes:
                raise OSError(f"short read at byte {start}")
            block = buf.reshape(rows[1] - rows[0], d0)[:, sl[0][0]:sl[0][1]].T
            target = (slice(None), slice(None)) + tuple(i - a for i, (a, _b) in zip(idx, sl[2:]))
            out_fast[target[:len(dims)]] = block if len(dims) > 1 else block[:, 0]
    return _to_file_order(out_fast, fast)


def _to_file_order(arr: np.ndarray, fast: list[int]) -> np.ndarray:
    return np.transpose(arr, np.argsort(fast))


def _xyzc_view(array: np.ndarray, axes: str, origin: str) -> np.ndarray:
    """A view of ``array`` indexed ``[x, y, z, c]``."""
    if array.ndim < 2 or array.ndim > 4:
        raise UserError(f"{origin}: {array.ndim}-D data is not supported; give a 3-D volume "
                        "(or 4-D with a channel axis)")
    if array.ndim == 2:
        array = array[:, :, None] if axes in ("xyz", "xy") else array[None, :, :]
        axes = "xyz" if axes in ("xyz", "xy") else axes
    if axes == "xyz" and array.ndim == 4:
        axes = "xyzc"
    view = np.transpose(array, _permutation(axes, array.ndim))
    if view.ndim == 3:
        view = view[..., None]
    if view.dtype.names is not None:
        raise UserError(f"{origin}: structured dtype {view.dtype} is not supported; give plain numbers")
    return view


def _check_shape(origin: str, shape, channels: int) -> None:
    if any(n == 0 for n in shape) or channels == 0:
        raise UserError(f"{origin}: the volume has a zero-size axis (shape {tuple(shape)}, "
                        f"{channels} channel(s)); nothing to convert")
    if channels > MAX_CHANNELS:
        raise UserError(f"{origin}: {channels} channels (a 4th axis of {channels}) looks like a time "
                        f"series, not colour channels; extract one volume first (at most {MAX_CHANNELS} channels)")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
