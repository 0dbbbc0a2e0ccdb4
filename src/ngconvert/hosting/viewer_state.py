"""Neuroglancer viewer states and URLs for our datasets.

One layer per dataset (image or segmentation from its ``info``).  A segmentation lists its
segments (from ``segment_properties``, else ``segment_colors.json``) with the stored colours
(``segmentColors``), so they and their meshes show at once.  When a dataset has
``transform.json`` (made from a NIfTI affine), the layer's source transform maps its voxels
into that world space (in the affine's units), so several datasets from the same scanner
space line up and the coordinates shown are the source's world coordinates.  The position
is the centre of the first dataset, the zoom fits it in the panels.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np

from ..codecs.sharding import ShardedReader, ShardSpec
from ..core.errors import UserError
from ..sources.precomputed import PrecomputedVolume
from ..sources.precomputed_info import read_info_checked
from ..store.base import Store, load_json

UNIT_TO_M = {"nm": 1e-9, "um": 1e-6, "mm": 1e-3, "m": 1.0}
DEFAULT_VIEWER = "https://neuroglancer-demo.appspot.com"


@dataclass
class Dataset:
    """What a state needs to know about one dataset."""

    name: str
    source: str                       # the viewer's data source URL, e.g. precomputed://http://...
    info: dict
    transform: dict | None = None
    segment_ids: list[int] = field(default_factory=list)
    colors: dict[str, str] = field(default_factory=dict)
    value_range: tuple[float, float] | None = None

    @property
    def kind(self) -> str:
        return "segmentation" if self.info.get("type") == "segmentation" else "image"


def load_dataset(store: Store, name: str, source: str, read_range: bool = True) -> Dataset:
    """Read what the state needs from a dataset on any store."""

    info = read_info_checked(store)
    ds = Dataset(name, source, info, load_json(store, "transform.json"))
    if ds.kind == "segmentation":
        colors = load_json(store, "segment_colors.json") or {}
        ds.colors = dict(colors.get("colors", {}))
        ids: set[int] = set()
        if isinstance(info.get("segment_properties"), str):
            props = load_json(store, info["segment_properties"].strip("/") + "/info")
            if props:
                ids |= {int(i) for i in props.get("inline", {}).get("ids", [])}
        ids |= {int(i) for i in ds.colors}
        if not ids and isinstance(info.get("mesh"), str):
            ids = mesh_ids(store, info["mesh"].strip("/"))
        ds.segment_ids = sorted(ids - {0})
    elif read_range:
        ds.value_range = _value_range(store, info)
    return ds


MAX_LISTED = 5000


def mesh_ids(store: Store, directory: str, limit: int = MAX_LISTED) -> set[int]:
    """Segment ids that have meshes (legacy manifests, multires manifests or shard indexes),
    so that a segmentation without segment properties still shows its meshes."""
    import re


    out: set[int] = set()
    minfo = load_json(store, f"{directory}/info") or {}
    prefix = directory + "/"
    if "sharding" in minfo:
        spec = ShardSpec.from_json(minfo["sharding"])
        reader = ShardedReader(store, directory, spec)
        for key, _size in store.list(prefix):
            m = re.fullmatch(r"([0-9a-f]+)\.shard", key[len(prefix):])
            if m:
                for mini in range(1 << spec.minishard_bits):
                    try:
                        out |= set(reader.minishard(int(m.group(1), 16), mini))
                    except ValueError:
                        continue
                    if len(out) >= limit:
                        return out
        return out
    for key, _size in store.list(prefix):
        m = re.fullmatch(r"(\d+)(?::0|\.index)", key[len(prefix):])
        if m:
            out.add(int(m.group(1)))
            if len(out) >= limit:
                break
    return out


def _value_range(store: Store, info: dict) -> tuple[float, float] | None:
    """Contrast for an image layer: 0.5 and 99.5 percentiles of the coarsest scale."""

    if info.get("data_type") == "uint8" or int(info.get("num_channels", 1)) == 3:
        return None                        # the viewer's default range is right
    try:
        vol = PrecomputedVolume(store, info)
        last = len(info["scales"]) - 1
        data = vol.read(last, vol.bounds(last))
    except UserError:
        return None
    if data.size == 0:
        return None
    lo, hi = np.percentile(data.astype(np.float64), [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1
    return float(lo), float(hi)


def _world(ds: Dataset):
    """(3x4 matrix voxel -> world in world units, unit) or None."""
    t = ds.transform
    if not t or "layer_nm_to_world" not in t:
        return None
    m = np.asarray(t["layer_nm_to_world"], float)
    res = np.asarray(ds.info["scales"][0]["resolution"], float)
    return m[:3, :3] @ np.diag(res), m[:3, 3], t.get("world_units", "mm")


def _dims(scale_m) -> dict:
    return {axis: [float(f"{s:.12g}"), "m"] for axis, s in zip("xyz", scale_m)}


def layer_state(ds: Dataset, global_unit: str | None, segments="all") -> dict:
    source: dict | str = ds.source
    world = _world(ds)
    if world is not None and global_unit is not None:
        lin, off, unit = world
        scale = UNIT_TO_M.get(unit, 1e-3) / UNIT_TO_M[global_unit]
        matrix = np.concatenate([lin * scale, (off * scale)[:, None]], axis=1)
        source = {"url": ds.source, "transform": {
            "matrix": [[round(float(v), 12) for v in row] for row in matrix],
            "outputDimensions": _dims([UNIT_TO_M[global_unit]] * 3)}}
    layer: dict = {"type": ds.kind, "source": source, "name": ds.name}
    if ds.kind == "segmentation":
        if segments == "all":
            ids = ds.segment_ids
        else:
            ids = [int(i) for i in segments]
        layer["segments"] = [str(i) for i in ids]
        colors = {str(i): ds.colors[str(i)] for i in ids if str(i) in ds.colors}
        if colors:
            layer["segmentColors"] = colors
        if "mesh" not in ds.info:
            layer["selectedAlpha"] = 0.5
    elif ds.value_range is not None:
        layer["shaderControls"] = {"normalized": {"range": list(ds.value_range)}}
    return layer


def _extent(ds: Dataset, global_unit: str | None):
    """(centre, size) of the dataset's box in global coordinates."""
    s0 = ds.info["scales"][0]
    start = np.asarray(s0.get("voxel_offset", [0, 0, 0]), float)
    size = np.asarray(s0["size"], float)
    world = _world(ds)
    if world is not None and global_unit is not None:
        lin, off, unit = world
        scale = UNIT_TO_M.get(unit, 1e-3) / UNIT_TO_M[global_unit]
        corners = np.array([[start[d] + (size[d] if (c >> d) & 1 else 0) for d in range(3)] for c in range(8)])
        pts = (corners @ lin.T + off) * scale
        return (pts.min(axis=0) + pts.max(axis=0)) / 2, pts.max(axis=0) - pts.min(axis=0)
    if global_unit is not None:
        # a dataset without a world transform among others with one: its physical nm place
        to_unit = np.asarray(s0["resolution"], float) * 1e-9 / UNIT_TO_M[global_unit]
        return (start + size / 2) * to_unit, size * to_unit
    return start + size / 2, size


def build_state(datasets: list[Dataset], segments="all", layout: str | None = None) -> dict:
    if not datasets:
        raise UserError("no datasets to show")
    first = datasets[0]
    worlds = [_world(d) for d in datasets]
    global_unit = None
    if any(w is not None for w in worlds):
        global_unit = next(w[2] for w in worlds if w is not None)
        if global_unit not in UNIT_TO_M:
            global_unit = "mm"
        dims = _dims([UNIT_TO_M[global_unit]] * 3)
    else:
        dims = _dims([r * 1e-9 for r in first.info["scales"][0]["resolution"]])
    centre, size = _extent(first, global_unit)     # without world units: the first dataset's voxels
    span = float(max(size.max(), 1.0))
    state = {
        "dimensions": dims,
        "position": [float(c) for c in centre],
        "crossSectionScale": span / 400.0 * 1.05,
        "projectionScale": span * 2.5,
        "projectionOrientation": [-0.25, 0.4, 0.12, 0.87],
        "layers": [layer_state(d, global_unit, segments) for d in datasets],
        "layout": layout or ("4panel" if any(d.kind == "segmentation" for d in datasets) else "xy"),
        "showDefaultAnnotations": False,
    }
    return state


def check_http_url(url: str, flag: str = "--viewer") -> str:
    """An ``http(s)://host[...]`` URL without spaces, else one :class:`UserError` line."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(str(url))
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)
        parts.port        # raises ValueError for a bad port
    except ValueError:
        ok = False
    if not ok:
        example = DEFAULT_VIEWER if flag == "--viewer" else "https://data.example.org/atlas"
        raise UserError(f"{flag} {url!r}: give an http:// or https:// URL, e.g. {example}")
    return url


def state_url(state: dict, viewer: str = DEFAULT_VIEWER) -> str:
    check_http_url(viewer)
    text = json.dumps(state, separators=(",", ":"))
    return viewer.rstrip("/") + "/#!" + quote(text, safe="")


def source_for(url: str, endpoint_url: str | None = None) -> str:
    """The viewer's data source for where a dataset is hosted."""
    u = url.rstrip("/")
    if u.startswith(("http://", "https://")):
        return "precomputed://" + u
    if u.startswith("gs://"):
        return "precomputed://" + u
    if u.startswith("s3://"):
        if endpoint_url:
            # the viewer reads S3-compatible servers anonymously, as plain HTTP(S)
            scheme = "s3+https" if endpoint_url.startswith("https") else "s3+http"
            host = endpoint_url.split("://", 1)[1].rstrip("/")
            return f"precomputed://{scheme}://{host}/{u[5:]}"
        return "precomputed://" + u
    raise UserError(f"{url}: not a URL the viewer can read; give http(s)://, s3:// or gs://")
