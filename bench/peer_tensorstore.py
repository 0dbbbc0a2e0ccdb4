"""Peer run: tensorstore writes every scale with its neuroglancer_precomputed driver.

    python bench/peer_tensorstore.py IN.nii OUT_DIR --levels 3 [--chunk 64]

Raw encoding, no compression: tensorstore has no option to write gzipped ``KEY.gz``
chunk files, so its output is about three times larger than the others'.  Each
downsampled scale is the ``mean`` of 2x2x2 blocks of the scale written before it (the
``downsample`` driver reading the previous scale back), so it is a full pyramid.
"""
from __future__ import annotations

import argparse
import os

import nibabel as nib
import numpy as np


def scale_spec(path: str, size, resolution, chunk: int, dtype: str) -> dict:
    key = "_".join(str(int(r)) for r in resolution)
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": path},
        "multiscale_metadata": {"type": "image", "data_type": dtype, "num_channels": 1},
        "scale_metadata": {"key": key, "size": list(size), "resolution": list(resolution),
                           "voxel_offset": [0, 0, 0], "chunk_size": [chunk] * 3,
                           "encoding": "raw"},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("dest")
    ap.add_argument("--levels", type=int, required=True, help="downsampled levels to compute")
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args()

    import tensorstore as ts

    img = nib.load(args.source)
    volume = np.asanyarray(img.dataobj)
    size = list(volume.shape[:3])
    resolution = [float(z) * 1e6 for z in img.header.get_zooms()[:3]]   # mm -> nm
    path = os.path.abspath(args.dest)
    dtype = volume.dtype.name

    store = ts.open(scale_spec(path, size, resolution, args.chunk, dtype),
                    create=True, open=True).result()
    store[..., 0].write(volume).result()
    for _ in range(args.levels):
        size = [-(-n // 2) for n in size]
        resolution = [r * 2 for r in resolution]
        coarse = ts.open(scale_spec(path, size, resolution, args.chunk, dtype),
                         create=True, open=True).result()
        coarse.write(ts.downsample(store, [2, 2, 2, 1], method="mean")).result()
        store = coarse


if __name__ == "__main__":
    main()
