"""The two precomputed mesh formats, written from meshes in nanometres (the layer's frame).

* legacy: per segment a JSON manifest ``<id>:0`` listing fragment files; a fragment is
  ``uint32 n | n x 3 float32 xyz | uint32 triangles``, all little-endian;
* multi-resolution (``neuroglancer_multilod_draco``): per segment a binary manifest
  ``<id>.index`` and the concatenated Draco fragments ``<id>``; each level of detail is cut
  into an octree of nodes (nodes of level ``l`` are ``chunk_shape * 2**l`` wide), nodes are
  listed in Morton order and, for ``l > 0``, cut by their 2x2x2 children's planes.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from .geometry import Mesh, concat, cut_into_cells, weld
# DracoPy: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

LEGACY_INFO = {"@type": "neuroglancer_legacy_mesh"}
IDENTITY_3X4 = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]


# ---------------------------------------------------------------- legacy


def legacy_fragment(v: np.ndarray, f: np.ndarray) -> bytes:
    v = np.asarray(v, "<f4")
    f = np.asarray(f, "<u4")
    return struct.pack("<I", len(v)) + v.tobytes() + f.tobytes()


def read_legacy_fragment(data: bytes) -> Mesh:
    (n,) = struct.unpack_from("<I", data)
    v = np.frombuffer(data, "<f4", n * 3, 4).reshape(n, 3)
    rest = data[4 + 12 * n:]
    if len(rest) % 12:
        raise ValueError(f"fragment has {len(rest)} bytes of triangles, not a multiple of 12")
    f = np.frombuffer(rest, "<u4").reshape(-1, 3)
    if len(f) and f.max() >= n:
        raise ValueError("a triangle index is out of range")
    return v.astype(np.float64), f.astype(np.int64)


def legacy_manifest(fragments: list[str]) -> bytes:
    return json.dumps({"fragments": fragments}).encode()


def mesh_info(fmt: str, segment_properties: str | None = None, quantization_bits: int = 10,
              sharding: dict | None = None) -> dict:
    if fmt == "legacy":
        info = dict(LEGACY_INFO)
    else:
        info = {"@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": quantization_bits,
                "transform": list(IDENTITY_3X4), "lod_scale_multiplier": 1.0}
        if sharding is not None:
            info["sharding"] = sharding
    if segment_properties:
        info["segment_properties"] = segment_properties
    return info


# ---------------------------------------------------------------- multi-resolution


def morton_order(pos: np.ndarray) -> np.ndarray:
    """Indices sorting integer ``[n, 3]`` positions by their interleaved (z-curve) code,
    x in the lowest bit."""
    pos = np.asarray(pos, np.uint64)
    code = np.zeros(len(pos), np.uint64)
    for bit in range(21):
        for axis in range(3):
            code |= ((pos[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return np.argsort(code, kind="stable")


def draco_fragment(q: np.ndarray, f: np.ndarray, bits: int) -> bytes:
    """A Draco triangle mesh whose position values are exactly the integers ``q``.

    Draco's quantizer maps ``x -> round((x - origin) * (2^bits - 1) / range)``; with origin 0
    and range ``2^bits - 1`` it stores ``q`` itself, which is what the viewer reads (it
    skips the dequantisation) and what a dequantising decoder returns."""
    import DracoPy

    top = float(2 ** bits - 1)
    return bytes(DracoPy.encode(np.asarray(q, np.float64), np.asarray(f, np.uint32), quantization_bits=bits,
                                compression_level=7, quantization_range=top,
                                quantization_origin=np.zeros(3), preserve_order=False))


def collapse_quantized(q: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices that quantise to the same point and drop the triangles that collapse
    (Draco refuses a mesh whose triangles are all degenerate)."""
    uniq, inverse = np.unique(q, axis=0, return_inverse=True)
    f = inverse.reshape(-1)[np.asarray(f, np.int64)]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    f = f[keep]
    if len(f) == 0:
        return uniq[:0], f
    used, remap = np.unique(f.reshape(-1), return_inverse=True)
    return uniq[used], remap.reshape(-1, 3)


@dataclass
class MultiresSegment:
    manifest: bytes
    fragments: bytes
    lods: int
    fragment_count: int


def plan_octree(lo: np.ndarray, hi: np.ndarray, voxel_nm: float, lods: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(grid_origin, chunk_shape, number of LODs) for a segment's box: the coarsest LOD is a
    single node covering it; LOD 0 nodes are no smaller than 8 voxels."""
    extent = np.maximum(hi - lo, voxel_nm)
    n = max(1, min(lods, 1 + int(math.floor(math.log2(max(1.0, float(extent.max()) / (8 * voxel_nm)))))))
    chunk = extent * (1 + 1e-6) / 2 ** (n - 1)
    origin = lo - extent * 5e-7
    return origin, chunk, n


def multires_segment(levels: list[Mesh], voxel_nm: float, bits: int = 10, lods: int | None = None) -> MultiresSegment:
    """Encode one segment from its meshes per level of detail (``levels[0]`` finest, in nm)."""
    levels = [lv for lv in levels if len(lv[1])] or levels[:1]
    every = np.concatenate([lv[0] for lv in levels])      # simplified levels may bulge a little
    lo, hi = every.min(axis=0), every.max(axis=0)
    origin, chunk, n = plan_octree(lo, hi, voxel_nm, lods or len(levels))
    levels = (levels + [levels[-1]] * n)[:n]
    top = 2 ** bits - 1
    blobs: list[bytes] = []
    per_lod: list[tuple[np.ndarray, list[int]]] = []
    for lod, (v, f) in enumerate(levels):
        node = chunk * 2 ** lod
        cut = chunk * 2 ** max(lod - 1, 0)          # children's planes for lod > 0
        pieces = cut_into_cells(v, f, origin, cut)
        nodes: dict[tuple[int, int, int], list[Mesh]] = {}
        step = 2 if lod > 0 else 1
        for key, piece in pieces.items():
            nodes.setdefault(tuple(k // step for k in key), []).append(piece)
        per_lod.append((nodes, node))
    # every node's parent exists at the next LOD (an empty fragment when it has no geometry)
    for lod in range(n - 1):
        parents = {tuple(k // 2 for k in key) for key in per_lod[lod][0]}
        for p in parents:
            per_lod[lod + 1][0].setdefault(p, [])
    positions_out, sizes_out = [], []
    for lod, (nodes, node) in enumerate(per_lod):
        keys = sorted(nodes)
        pos = np.array(keys, dtype=np.int64).reshape(-1, 3)
        if len(pos) and pos.min() < 0:
            raise ValueError("octree position below the grid origin")
        order = morton_order(pos) if len(pos) else np.zeros(0, int)
        pos = pos[order]
        sizes = []
        for p in pos:
            parts = nodes[tuple(int(x) for x in p)]
            if not parts:
                sizes.append(0)
                continue
            v, f = weld(*concat(parts))
            if len(f) == 0:
                sizes.append(0)
                continue
            start = origin + p * node
            q = np.clip(np.floor((v - start) / node * top + 0.5), 0, top)
            q, f = collapse_quantized(q, f)
            if len(f) == 0:                # everything in this node is smaller than one step
                sizes.append(0)
                continue
            blob = draco_fragment(q, f, bits)
            blobs.append(blob)
            sizes.append(len(blob))
        positions_out.append(pos)
        sizes_out.append(sizes)
    out = [struct.pack("<3f", *chunk), struct.pack("<3f", *origin), struct.pack("<I", n),
           struct.pack(f"<{n}f", *[voxel_nm * 2 ** lod for lod in range(n)]),
           np.zeros((n, 3), "<f4").tobytes(),
           struct.pack(f"<{n}I", *[len(p) for p in positions_out])]
    for pos, sizes in zip(positions_out, sizes_out):
        out.append(np.ascontiguousarray(pos.T, dtype="<u4").tobytes())
        out.append(np.asarray(sizes, "<u4").tobytes())
    manifest = b"".join(out)
    total = sum(len(p) for p in positions_out)
    assert len(manifest) == 28 + 20 * n + 16 * total
    return MultiresSegment(manifest, b"".join(blobs), n, total)


def parse_multires_manifest(data: bytes) -> dict:
    """The manifest's fields; ``ValueError`` unless its length is exactly what it declares."""
    if len(data) < 28:
        raise ValueError(f"manifest of {len(data)} bytes is shorter than its 28-byte header")
    chunk = struct.unpack_from("<3f", data, 0)
    origin = struct.unpack_from("<3f", data, 12)
    (n,) = struct.unpack_from("<I", data, 24)
    if len(data) < 28 + 20 * n:
        raise ValueError(f"manifest declares {n} LODs but has only {len(data)} bytes")
    scales = struct.unpack_from(f"<{n}f", data, 28)
    offsets = np.frombuffer(data, "<f4", 3 * n, 28 + 4 * n).reshape(n, 3)
    counts = struct.unpack_from(f"<{n}I", data, 28 + 16 * n)
    expect = 28 + 20 * n + 16 * sum(counts)
    if len(data) != expect:
        raise ValueError(f"manifest is {len(data)} bytes; its LOD and fragment counts need exactly {expect}")
    pos, sizes, at = [], [], 28 + 20 * n
    for c in counts:
        pos.append(np.frombuffer(data, "<u4", 3 * c, at).reshape(3, c).T)
        at += 12 * c
        sizes.append(np.frombuffer(data, "<u4", c, at))
        at += 4 * c
    return {"chunk_shape": chunk, "grid_origin": origin, "num_lods": n, "lod_scales": scales,
            "vertex_offsets": offsets, "positions": pos, "sizes": sizes}
