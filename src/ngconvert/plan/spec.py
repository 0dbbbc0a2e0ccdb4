"""The layer spec: everything a conversion writes, as one JSON-able object."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .pyramid import scale_boxes
from ..codecs.chunks import EncodingOptions
from ..core.geometry import Box, Vec

LAYER_TYPES = ("image", "segmentation")


def format_number(r: float) -> str:
    r = float(r)
    return str(int(r)) if r.is_integer() else repr(r)


@dataclass(frozen=True)
class Scale:
    """One level of the pyramid."""

    index: int
    key: str
    bounds: Box
    resolution: tuple[float, float, float]
    factor: Vec          # from the previous level
    cumulative: Vec      # from level 0


@dataclass
class LayerSpec:
    layer_type: str
    data_type: str
    num_channels: int
    size: Vec
    voxel_offset: Vec
    resolution: tuple[float, float, float]
    chunk_size: Vec
    factors: list[Vec]
    encoding: str = "raw"
    compress: str = "gzip"           # "gzip" or "none": transport compression of stored chunks
    gzip_level: int = 1
    jpeg_quality: int = 85
    png_level: int = 6
    cseg_block_size: Vec = (8, 8, 8)
    downsample: str = "average"
    skip_empty: bool = False
    transform: dict | None = field(default=None)
    segments: dict | None = None             # label table (LabelTable JSON): segment properties + colours
    keep_labels: list[int] | None = None     # --only: every other label becomes 0
    drop_labels: list[int] | None = None     # --exclude: these labels become 0
    all_labels: bool = False                 # list table ids absent from the volume too
    mesh: dict | None = None                 # MeshOptions JSON: meshes written after the volume
    sharding: list[dict] | None = None       # per scale: the sharding spec (None: unsharded layer)

    @property
    def bounds(self) -> Box:
        return Box(tuple(self.voxel_offset), tuple(o + s for o, s in zip(self.voxel_offset, self.size)))

    @property
    def encoding_options(self) -> EncodingOptions:
        return EncodingOptions(self.encoding, self.jpeg_quality, self.png_level, tuple(self.cseg_block_size))

    def scales(self) -> list[Scale]:
        boxes = scale_boxes(self.bounds, [tuple(f) for f in self.factors])
        out, res, cum = [], tuple(float(r) for r in self.resolution), (1, 1, 1)
        for i, box in enumerate(boxes):
            f = tuple(self.factors[i - 1]) if i else (1, 1, 1)
            res = tuple(r * ff for r, ff in zip(res, f))
            cum = tuple(c * ff for c, ff in zip(cum, f))
            out.append(Scale(i, "_".join(format_number(r) for r in res), box, res, f, cum))
        return out

    def info(self) -> dict:
        scales = []
        for s in self.scales():
            entry = {
                "key": s.key,
                "size": list(s.bounds.shape),
                "voxel_offset": list(s.bounds.start),
                "resolution": list(s.resolution),
                "chunk_sizes": [list(self.chunk_size)],
                "encoding": self.encoding,
            }
            if self.encoding == "compressed_segmentation":
                entry["compressed_segmentation_block_size"] = list(self.cseg_block_size)
            if self.encoding == "jpeg":
                entry["jpeg_quality"] = self.jpeg_quality
            if self.encoding == "png":
                entry["png_level"] = self.png_level
            if self.sharding is not None:
                entry["sharding"] = dict(self.sharding[s.index])
            scales.append(entry)
        info = {
            "@type": "neuroglancer_multiscale_volume",
            "type": self.layer_type,
            "data_type": self.data_type,
            "num_channels": self.num_channels,
            "scales": scales,
        }
        if self.segments is not None:
            info["segment_properties"] = "segment_properties"
        if self.mesh is not None:
            info["mesh"] = self.mesh.get("directory", "mesh")
        return info

    @property
    def selects_labels(self) -> bool:
        return self.keep_labels is not None or self.drop_labels is not None

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("size", "voxel_offset", "resolution", "chunk_size", "cseg_block_size"):
            d[k] = list(d[k])
        d["factors"] = [list(f) for f in self.factors]
        return d

    @classmethod
    def from_json(cls, obj: dict) -> "LayerSpec":
        obj = dict(obj)
        for k in ("size", "voxel_offset", "chunk_size", "cseg_block_size"):
            obj[k] = tuple(int(v) for v in obj[k])
        obj["resolution"] = tuple(float(v) for v in obj["resolution"])
        obj["factors"] = [tuple(f) for f in obj["factors"]]
        return cls(**obj)


