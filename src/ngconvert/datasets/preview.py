"""A picture of a dataset without a browser: three orthogonal mid-sections in one PNG.

``preview(datasets)`` returns an RGB ``uint8`` array ``[row, column, rgb]``:

* a top band with the dataset name(s) and a title over each panel (``XY z=N`` and the
  scale index read, N in full-resolution voxels);
* three panels side by side, separated by ``GAP`` pixels: **XY** (x to the right, y down) at
  the middle z, **XZ** (x right, z down) at the middle y, **YZ** (y right, z down) at the
  middle x; the middle is the centre of the base dataset's box;
* a bottom band with a scale bar of a round physical length (1, 2 or 5 x 10^k nm, um, mm
  or m) and its label.

Every panel has the same number of pixels per nm along both of its axes (physical aspect:
anisotropic voxels are stretched by their resolution).  The picture's longer side is
``size`` pixels.  Each panel is read at the coarsest scale whose voxels are no larger than
its pixels (so it still fills the panel), and only the chunks that intersect the panel's
plane (a slab one voxel thick) are read.  Pixels sample voxels nearest-neighbour.

Image layers are windowed to the 1st-99th percentile of the values shown (3 channels are
RGB, otherwise the first channel is shown).  Segmentations draw each segment in its colour
from ``segment_colors.json``, else :func:`ngconvert.properties.labels.auto_color` (the rule the
converter uses for ids without a table colour); id 0 is black.  With an image and a
segmentation the segmentation is overlaid on the image (``ALPHA``, id 0 transparent); the
two are matched by physical coordinates (voxel times resolution, in nm) and must overlap.

:func:`preview_layout` returns the panel rectangles and the mapping between pixels and
physical coordinates without reading any chunk.

Over 450 lines because the drawing (panels, layout, colours) still sits with the reading;
the split into datasets/render.py was left for a later change so that this move stays purely
a move.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

from ..core.errors import UserError
from ..core.geometry import Box, ChunkGrid
from ..sources.precomputed import PrecomputedVolume      # loaded with the package anyway
from ..properties.labels import auto_color
from ..properties.segment_properties import COLORS_KEY
from ..store.base import Store, load_json
from ..store.open import open_store
# Pillow (PIL): imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

log = logging.getLogger(__name__)

ALPHA = 0.45                 # opacity of an overlaid segmentation
PAD = 8                      # margin around the panels, pixels
GAP = 8                      # between panels
TOP = 36                     # band above the panels: name and panel titles
BOTTOM = 30                  # band below the panels: the scale bar
MIN_SIZE, MAX_SIZE = 96, 16384
DEFAULT_SIZE = 768
BACKGROUND = (28, 28, 28)
TEXT = (235, 235, 235)
PLANES = (("xy", 0, 1, 2), ("xz", 0, 2, 1), ("yz", 1, 2, 0))      # name, horizontal, vertical, normal
AXES = "xyz"


@dataclass(frozen=True)
class Panel:
    """One section in the picture.

    ``x0, y0, width, height``: its pixel rectangle (column, row of the top-left pixel).
    ``axes``: the volume axes (0 x, 1 y, 2 z) along the panel's columns and rows;
    ``normal``: the axis across it.  ``lo``/``hi``: the physical range (nm) shown along
    ``axes``; ``plane_nm``: where the section is along ``normal`` (nm).  ``scales``: the
    scale index read for each dataset (base first).
    """

    name: str
    axes: tuple[int, int]
    normal: int
    x0: int
    y0: int
    width: int
    height: int
    lo: tuple[float, float]
    hi: tuple[float, float]
    plane_nm: float
    scales: tuple[int, ...] = ()

    @property
    def rect(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` with exclusive ``x1, y1``."""
        return self.x0, self.y0, self.x0 + self.width, self.y0 + self.height

    @property
    def nm_per_pixel(self) -> tuple[float, float]:
        return ((self.hi[0] - self.lo[0]) / self.width, (self.hi[1] - self.lo[1]) / self.height)

    def pixel(self, point_nm) -> tuple[int, int]:
        """The picture's ``(column, row)`` of the pixel showing the physical point (nm,
        x, y, z; the coordinate along ``normal`` is ignored)."""
        h, v = self.axes
        ph, pv = self.nm_per_pixel
        return (self.x0 + int(math.floor((point_nm[h] - self.lo[0]) / ph)),
                self.y0 + int(math.floor((point_nm[v] - self.lo[1]) / pv)))

    def point(self, column: int, row: int) -> tuple[float, float, float]:
        """The physical point (nm) at the centre of a picture pixel of this panel."""
        ph, pv = self.nm_per_pixel
        out = [0.0, 0.0, 0.0]
        out[self.axes[0]] = self.lo[0] + (column - self.x0 + 0.5) * ph
        out[self.axes[1]] = self.lo[1] + (row - self.y0 + 0.5) * pv
        out[self.normal] = self.plane_nm
        return tuple(out)


@dataclass(frozen=True)
class Layout:
    """Where everything is in the picture (see the module docstring)."""

    width: int
    height: int
    names: tuple[str, ...]             # base dataset first
    panels: dict[str, Panel]           # "xy", "xz", "yz"
    bounds_nm: tuple[tuple[float, float, float], tuple[float, float, float]]   # base box (nm)
    pixels_per_nm: float
    scale_bar_nm: float
    scale_bar_label: str
    scale_bar_rect: tuple[int, int, int, int]      # x0, y0, x1, y1


@dataclass
class _Source:
    name: str
    url: str
    volume: object                     # PrecomputedVolume
    kind: str                          # "image" or "segmentation"
    colors: dict[str, str] = field(default_factory=dict)

    def bounds_nm(self):
        vol = self.volume
        b, r = vol.bounds(0), vol.resolution(0)
        return (tuple(a * x for a, x in zip(b.start, r)), tuple(a * x for a, x in zip(b.stop, r)))


class _Volume(PrecomputedVolume):
    """A reader that keeps the chunks more than one of the expected reads needs (where two
    sections cross) until their last use, so that each chunk is fetched once."""

    def expect(self, reads) -> None:
        """``reads``: the ``(scale index, box)`` reads to come."""
        from collections import Counter

        uses: Counter = Counter()
        for index, box in reads:
            chunk = tuple(int(c) for c in self.scale(index)["chunk_sizes"][0])
            uses.update((index, cell) for cell in ChunkGrid(self.bounds(index), chunk).cells_in(box))
        self._left = {k: n for k, n in uses.items() if n > 1}      # reads still to use a kept chunk
        self._kept: dict = {}

    def chunks(self, index, grid, cells):
        left, kept = getattr(self, "_left", {}), getattr(self, "_kept", {})
        todo = []
        for cell in cells:
            if (index, cell) not in kept:
                todo.append(cell)
                continue
            key, data = kept[(index, cell)]
            left[(index, cell)] -= 1
            if left[(index, cell)] <= 0:
                del kept[(index, cell)]
            yield cell, key, data
        for cell, key, data in super().chunks(index, grid, todo):
            if (index, cell) in left:
                left[(index, cell)] -= 1
                kept[(index, cell)] = (key, data)
            yield cell, key, data


def check_size(size, flag: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"{flag} {size!r}: give the picture's width in pixels, {MIN_SIZE} to {MAX_SIZE} "
                        f"(default {DEFAULT_SIZE})")
    return size


def check_png_path(path, flag: str = "-o") -> str:
    """A local path ending in ``.png`` whose folder exists, else one :class:`UserError` line."""
    text = os.fspath(path)
    if not text.lower().endswith(".png"):
        raise UserError(f"{flag} {text}: the picture is written as PNG; give a name ending in .png, e.g. preview.png")
    if "://" in text:
        raise UserError(f"{flag} {text}: give a local file name (the picture is written on this machine)")
    if os.path.isdir(text):
        raise UserError(f"{flag} {text}: is a folder; give a file name ending in .png")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise UserError(f"{flag} {text}: the folder {folder} does not exist; create it or choose another")
    return text


def _name(d) -> str:
    text = d.url if isinstance(d, Store) else os.fspath(d)
    return os.path.basename(os.path.normpath(text.split("://", 1)[-1].rstrip("/"))) or "data"


def _open(d, storage) -> _Source:
    if isinstance(d, Store):
        store = d
    else:
        text = os.fspath(d)
        store = open_store(text, storage if "://" in text else None)
    vol = _Volume(store)
    kind = "segmentation" if vol.info.get("type") == "segmentation" else "image"
    src = _Source(_name(d), store.url, vol, kind)
    if kind == "segmentation":

        table = load_json(store, COLORS_KEY) or {}
        colors = table.get("colors", {}) if isinstance(table, dict) else {}
        src.colors = {str(k): v for k, v in colors.items()} if isinstance(colors, dict) else {}
    return src


def _sources(datasets, storage) -> list[_Source]:
    if isinstance(datasets, (str, os.PathLike, Store)):
        datasets = [datasets]
    datasets = list(datasets)
    if not 1 <= len(datasets) <= 2:
        raise UserError(f"{len(datasets)} datasets given: give one, or an image and a segmentation to overlay")
    srcs = [_open(d, storage) for d in datasets]
    if len(srcs) == 2:
        if all(s.kind == "image" for s in srcs):
            raise UserError(f"{srcs[0].name} and {srcs[1].name} are both image layers: give one image and a "
                            "segmentation (the segmentation is drawn over the image)")
        if srcs[1].kind == "image":
            srcs.reverse()                 # the image is the base, the segmentation goes on top
        (alo, ahi), (blo, bhi) = srcs[0].bounds_nm(), srcs[1].bounds_nm()
        if any(min(ah, bh) <= max(al, bl) for al, ah, bl, bh in zip(alo, ahi, blo, bhi)):
            def box(lo, hi):
                return " x ".join(f"{a:g}-{b:g}" for a, b in zip(lo, hi))
            raise UserError(f"{srcs[0].name} ({box(alo, ahi)} nm) and {srcs[1].name} ({box(blo, bhi)} nm) do "
                            "not overlap in space (voxel times resolution); check their resolution and "
                            "voxel_offset")
    return srcs


def _nice_length(max_nm: float) -> float:
    """The largest 1, 2 or 5 x 10^k nm that is at most ``max_nm``."""
    k = math.floor(math.log10(max_nm))
    for m in (5, 2, 1):
        if m * 10.0 ** k <= max_nm * (1 + 1e-9):
            return m * 10.0 ** k
    return 10.0 ** k


def _length_label(nm: float) -> str:
    for unit, f in (("m", 1e9), ("mm", 1e6), ("um", 1e3), ("nm", 1.0)):
        if nm >= f * (1 - 1e-9):
            return f"{nm / f:.4g} {unit}"
    return f"{nm:.4g} nm"


def _choose_scale(vol, axes, nm_per_px) -> int:
    """The coarsest scale whose voxels along ``axes`` are no larger than the pixels."""
    best, best_vox = None, -1.0
    finest, finest_size = 0, math.inf
    for i in range(len(vol.info["scales"])):
        r = vol.resolution(i)
        size = max(r[a] for a in axes)
        if size < finest_size:
            finest, finest_size = i, size
        if all(r[a] <= p * (1 + 1e-6) for a, p in zip(axes, nm_per_px)):
            vox = r[0] * r[1] * r[2]
            if vox > best_vox:
                best, best_vox = i, vox
    return finest if best is None else best


def _layout(srcs: list[_Source], size: int) -> Layout:
    lo, hi = srcs[0].bounds_nm()
    ext = [b - a for a, b in zip(lo, hi)]
    widths = [ext[h] for _n, h, _v, _a in PLANES]
    heights = [ext[v] for _n, _h, v, _a in PLANES]
    avail_w = size - 2 * PAD - 2 * GAP
    avail_h = size - TOP - BOTTOM
    s = min(avail_w / sum(widths), avail_h / max(heights))
    pw = [max(1, int(math.floor(w * s))) for w in widths]
    ph = [max(1, int(math.floor(h * s))) for h in heights]
    width = 2 * PAD + 2 * GAP + sum(pw)
    if avail_w / sum(widths) <= avail_h / max(heights):
        width = size                        # limited by the width: exactly size wide
    height = TOP + max(ph) + BOTTOM
    panels = {}
    x = PAD
    for (name, h, v, n), w, hh in zip(PLANES, pw, ph):
        nm_px = (ext[h] / w, ext[v] / hh)
        scales = tuple(_choose_scale(src.volume, (h, v), nm_px) for src in srcs)
        panels[name] = Panel(name, (h, v), n, x, TOP, w, hh, (lo[h], lo[v]), (hi[h], hi[v]),
                             (lo[n] + hi[n]) / 2, scales)
        x += w + GAP
    bar_nm = _nice_length(max(1e-3, min(160.0, 0.3 * width) / s))
    bar_px = max(1, int(round(bar_nm * s)))
    by = TOP + max(ph) + 12
    return Layout(width, height, tuple(src.name for src in srcs), panels, (tuple(lo), tuple(hi)), s,
                  bar_nm, _length_label(bar_nm), (PAD, by, PAD + bar_px, by + 4))


def preview_layout(datasets, size: int = DEFAULT_SIZE, storage=None) -> Layout:
    """The :class:`Layout` of ``preview(datasets, size)``: reads only the ``info`` files."""
    check_size(size)
    return _layout(_sources(datasets, storage), size)


def _sampling(src: _Source, panel: Panel, index: int):
    """How one dataset fills a panel: ``(scale, box to read or None, columns, rows, valid
    columns, valid rows)``; columns and rows are the voxel index each pixel samples."""
    import numpy as np


    vol = src.volume
    k = panel.scales[index]
    res, bounds = vol.resolution(k), vol.bounds(k)
    h, v = panel.axes
    n = panel.normal
    ph, pv = panel.nm_per_pixel
    cols = np.floor((panel.lo[0] + (np.arange(panel.width) + 0.5) * ph) / res[h]).astype(np.int64)
    rows = np.floor((panel.lo[1] + (np.arange(panel.height) + 0.5) * pv) / res[v]).astype(np.int64)
    plane = int(math.floor(panel.plane_nm / res[n]))
    if index == 0:
        plane = min(max(plane, bounds.start[n]), bounds.stop[n] - 1)       # the base's own box
    ok_c = (cols >= bounds.start[h]) & (cols < bounds.stop[h])
    ok_r = (rows >= bounds.start[v]) & (rows < bounds.stop[v])
    if not (bounds.start[n] <= plane < bounds.stop[n]) or not ok_c.any() or not ok_r.any():
        return k, None, cols, rows, ok_c, ok_r
    start, stop = [0, 0, 0], [0, 0, 0]
    start[h], stop[h] = int(cols[ok_c].min()), int(cols[ok_c].max()) + 1
    start[v], stop[v] = int(rows[ok_r].min()), int(rows[ok_r].max()) + 1
    start[n], stop[n] = plane, plane + 1
    return k, Box(tuple(start), tuple(stop)), cols, rows, ok_c, ok_r


def _section(src: _Source, panel: Panel, sampling):
    """The panel's pixels of one dataset: ``(values [rows, cols, channels], valid [rows, cols])``."""
    import numpy as np

    vol = src.volume
    k, box, cols, rows, ok_c, ok_r = sampling
    if box is None:
        return np.zeros((panel.height, panel.width, vol.channels), vol.dtype), np.zeros((panel.height, panel.width), bool)
    h, v = panel.axes
    log.debug("%s: %s section at scale %d, voxels %s", src.name, panel.name, k, box)
    slab = np.take(vol.read(k, box), 0, axis=panel.normal)          # [h, v, c]: one voxel thick
    ci = np.clip(cols - box.start[h], 0, slab.shape[0] - 1)
    ri = np.clip(rows - box.start[v], 0, slab.shape[1] - 1)
    return slab[ci[None, :], ri[:, None]], ok_r[:, None] & ok_c[None, :]


def _window(sections) -> tuple[float, float]:
    import numpy as np

    shown = [vals[ok].astype(np.float64).ravel() for vals, ok in sections if ok.any()]
    data = np.concatenate(shown) if shown else np.zeros(1)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(data, [1, 99])
    if hi <= lo:
        hi = lo + 1
    return float(lo), float(hi)


def _grey(values, lo: float, hi: float):
    import numpy as np

    v = values.astype(np.float64)
    v = np.nan_to_num((v - lo) / (hi - lo), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(v, 0.0, 1.0) * 255).astype(np.uint8)


def _parse_color(text) -> tuple[int, int, int] | None:
    t = str(text).strip().lstrip("#")
    if len(t) != 6:
        return None
    try:
        return int(t[0:2], 16), int(t[2:4], 16), int(t[4:6], 16)
    except ValueError:
        return None


def _colorize(ids, colors: dict[str, str]):
    """RGB of every id (``[rows, cols]``): the stored colour, else the automatic one; 0 black."""
    import numpy as np


    uniq, inverse = np.unique(ids, return_inverse=True)
    lut = np.zeros((len(uniq), 3), np.uint8)
    for i, label in enumerate(uniq.tolist()):
        if label == 0:
            continue
        rgb = _parse_color(colors.get(str(label), ""))
        lut[i] = rgb if rgb is not None else auto_color(int(label))
    return lut[inverse.reshape(ids.shape)]


def _segment_ids(values, segments):
    import numpy as np

    ids = values[..., 0]
    if segments != "all":
        ids = np.where(np.isin(ids, np.asarray(list(segments), dtype=ids.dtype)), ids, 0)
    return ids


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:                      # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def _render(srcs: list[_Source], layout: Layout, segments):
    import numpy as np
    from PIL import Image, ImageDraw

    canvas = np.empty((layout.height, layout.width, 3), np.uint8)
    canvas[:] = BACKGROUND
    plans = {name: [_sampling(src, p, i) for i, src in enumerate(srcs)] for name, p in layout.panels.items()}
    for i, src in enumerate(srcs):     # chunks two sections cross are read once
        src.volume.expect([(plan[i][0], plan[i][1]) for plan in plans.values() if plan[i][1] is not None])
    sections = {name: [_section(src, p, plan) for src, plan in zip(srcs, plans[name])]
                for name, p in layout.panels.items()}
    base = srcs[0]
    window = _window([s[0] for s in sections.values()]) if base.kind == "image" else None
    for name, p in layout.panels.items():
        (values, ok), *over = sections[name]
        if base.kind == "image":
            g = _grey(values, *window)
            rgb = g[..., :3] if g.shape[2] == 3 else np.repeat(g[..., :1], 3, axis=2)
        else:
            rgb = _colorize(_segment_ids(values, segments), base.colors)
        rgb = np.where(ok[..., None], rgb, 0).astype(np.uint8)
        for src, (ovals, ook) in zip(srcs[1:], over):
            ids = _segment_ids(ovals, segments)
            mask = ook & (ids != 0)
            if mask.any():
                color = _colorize(ids, src.colors).astype(np.float64)
                blend = np.round(rgb.astype(np.float64) * (1 - ALPHA) + color * ALPHA).astype(np.uint8)
                rgb = np.where(mask[..., None], blend, rgb)
        x0, y0, x1, y1 = p.rect
        canvas[y0:y1, x0:x1] = rgb

    img = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    draw.text((PAD, 3), " + ".join(layout.names), fill=TEXT, font=font)
    res0 = base.volume.resolution(0)
    for name, p in layout.panels.items():
        n = p.normal
        at = int(math.floor(p.plane_nm / res0[n]))
        title = f"{name.upper()} {AXES[n]}={at}  (scale {p.scales[0]})"
        draw.text((p.x0, TOP - 15), title, fill=TEXT, font=small)
    x0, y0, x1, y1 = layout.scale_bar_rect
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=TEXT)
    draw.text((x1 + 8, y0 - 6), layout.scale_bar_label, fill=TEXT, font=small)
    return np.asarray(img, dtype=np.uint8).copy()


def preview(datasets, size: int = DEFAULT_SIZE, segments="all", storage=None):
    """A picture of one dataset, or of an image with a segmentation over it.

    ``datasets``: a folder, URL (``s3://``, ``gs://``, ``http(s)://``) or :class:`Store`, or a
    list of one or two of them.  ``size``: the picture's longer side (its width unless the
    volume is very tall) in pixels.  ``segments``: ``"all"`` or the segment ids to draw.
    ``storage``: :class:`ngconvert.StorageOptions` for URLs.  Returns an RGB ``uint8`` array
    ``[row, column, channel]``; :func:`preview_layout` tells where the panels are.
    """
    check_size(size)
    if segments != "all":
        try:
            segments = sorted({int(s) for s in segments})
        except (TypeError, ValueError):
            raise UserError(f"segments {segments!r}: give 'all' or a list of segment ids") from None
    srcs = _sources(datasets, storage)
    return _render(srcs, _layout(srcs, size), segments)


def write_png(image, path) -> str:
    """Write an RGB array as PNG at ``path`` (checked with :func:`check_png_path`)."""
    from PIL import Image

    path = check_png_path(path)
    try:
        Image.fromarray(image, "RGB").save(path, format="PNG")
    except OSError as e:
        raise UserError(f"{path}: cannot write the picture ({e.strerror or e}); choose a folder you can "
                        "write to") from None
    return path
