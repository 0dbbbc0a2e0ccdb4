"""Deterministic microscopy-like slice stacks: a folder of uint16 TIFF slices.

Each slice is a section through a block of cleared tissue imaged at isotropic voxels:

- camera background of 100 grey levels outside the tissue;
- the tissue, a lobed ellipsoid with a boundary blurred over a few voxels, carrying a
  smooth autofluorescence of 300-700 grey levels (random separable cosine waves);
- cell bodies: Gaussian blobs (sigma 1.5-3.5 voxels, peak 400-2400 grey levels above the
  tissue) at random 3-D positions inside the tissue, so neighbouring slices are correlated;
- shot-like noise: Gaussian with a standard deviation of 0.25 * sqrt(value), about 2.5
  grey levels on the background and 5-12 in the tissue, rounded to integers.

Smooth structure plus a little noise is what light-sheet or confocal stacks look like to
a compressor (raw uint16 chunks gzip to about a third).  Slices are written as plain
uncompressed, single-page TIFF files ``slice_00000.tif`` ... with tifffile, and nothing
else goes into the folder (a manifest ``FOLDER.json`` beside it says what it holds).  The same
arguments always give the same bytes: the structure comes from one seed and each slice's
noise from ``(seed, slice index)``, so slices can be made in any order by any process.

    python bench/synth_slices.py OUT_DIR --slices 512 --size 2048
"""
from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

SEED = 20250407
N_WAVES = 10
CELLS_PER_MVOXEL = 40            # cell density: blobs per 10^6 voxels of the bounding box
BACKGROUND = 100.0
VERSION = 1                      # bump when the generator's output changes


@dataclass(frozen=True)
class Stack:
    size: int        # slices are size x size pixels
    slices: int
    seed: int = SEED

    def name(self, z: int) -> str:
        return f"slice_{z:05d}.tif"

    def manifest(self) -> dict:
        return {"version": VERSION, "size": self.size, "slices": self.slices, "seed": self.seed,
                "dtype": "uint16"}


def _coords(stack: Stack):
    """Voxel centres in tissue coordinates: x, y in [-1, 1]; z with the same voxel size."""
    n, nz = stack.size, stack.slices
    u = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
    w = ((np.arange(nz, dtype=np.float32) + 0.5) - nz / 2.0) / n * 2.0
    return u, w


def _structure(stack: Stack):
    rng = np.random.default_rng([stack.seed, stack.size, stack.slices])
    waves = (rng.uniform(3.0, 14.0, size=(N_WAVES, 3)).astype(np.float32),
             rng.uniform(0.0, 2 * np.pi, size=(N_WAVES, 3)).astype(np.float32),
             rng.uniform(0.3, 1.0, size=N_WAVES).astype(np.float32))
    lobes = (rng.integers(2, 6, size=3), rng.uniform(0, 2 * np.pi, size=3), rng.uniform(0.03, 0.08, size=3))
    n, nz = stack.size, stack.slices
    count = int(CELLS_PER_MVOXEL * n * n * nz / 1e6)
    cells = {
        "x": rng.uniform(0, n, size=count).astype(np.float32),
        "y": rng.uniform(0, n, size=count).astype(np.float32),
        "z": rng.uniform(0, nz, size=count).astype(np.float32),
        "sigma": rng.uniform(1.5, 3.5, size=count).astype(np.float32),
        "peak": rng.uniform(400.0, 2400.0, size=count).astype(np.float32),
    }
    return waves, lobes, cells


def _tissue(stack: Stack, z: int, lobes) -> np.ndarray:
    """Tissue fraction of slice ``z``, [rows, cols] in [0, 1]."""
    u, w = _coords(stack)
    x, y = u[None, :], u[:, None]                   # columns are x, rows are y
    theta = np.arctan2(y, x)
    radius = np.ones_like(theta) * 0.86
    for k, phase, amp in zip(*lobes):
        radius = radius + amp * np.cos(k * theta + phase)
    r = np.sqrt((x / 1.0) ** 2 + (y / 0.8) ** 2 + (w[z] / 0.9) ** 2)
    edge = 3.0 * 2.0 / stack.size
    return (0.5 + 0.5 * np.tanh(0.5 * (radius - r) / edge)).astype(np.float32)


def make_slice(stack: Stack, z: int, structure=None) -> np.ndarray:
    """Slice ``z`` as a [rows, cols] uint16 array."""
    waves, lobes, cells = structure or _structure(stack)
    u, w = _coords(stack)
    freq, phase, amp = waves
    field = np.zeros((stack.size, stack.size), dtype=np.float32)
    for (fx, fy, fz), (px, py, pz), a in zip(freq, phase, amp):
        cz = np.float32(a * np.cos(fz * w[z] + pz))
        field += np.outer(np.cos(fy * u + py) * cz, np.cos(fx * u + px))
    field *= 1.0 / np.sqrt(N_WAVES / 2.0)           # about unit variance
    tissue = _tissue(stack, z, lobes)
    value = (500.0 + 200.0 * np.tanh(field)) * tissue

    near = np.abs(cells["z"] - (z + 0.5)) < 3 * cells["sigma"]
    n = stack.size
    for cx, cy, czz, s, p in zip(*(cells[k][near] for k in ("x", "y", "z", "sigma", "peak"))):
        r = int(np.ceil(3 * s))
        x0, x1 = max(0, int(cx) - r), min(n, int(cx) + r + 1)
        y0, y1 = max(0, int(cy) - r), min(n, int(cy) + r + 1)
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) ** 2
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) ** 2
        dz = (z + 0.5 - czz) ** 2
        blob = np.exp(-(dy[:, None] + dx[None, :] + dz) / (2 * s * s)) * p
        value[y0:y1, x0:x1] += blob * tissue[y0:y1, x0:x1]
    value += BACKGROUND
    noise = np.random.default_rng([stack.seed, stack.size, stack.slices, z]).standard_normal(
        value.shape, dtype=np.float32)
    value += noise * (0.25 * np.sqrt(value))
    return np.clip(np.rint(value), 0, 65535).astype(np.uint16)


_STRUCTURE: dict = {}


def _write(args) -> None:
    stack, folder, z = args
    import tifffile

    key = (stack.size, stack.slices, stack.seed)
    if key not in _STRUCTURE:
        _STRUCTURE[key] = _structure(stack)
    path = os.path.join(folder, stack.name(z))
    tmp = path + ".part"
    tifffile.imwrite(tmp, make_slice(stack, z, _STRUCTURE[key]), photometric="minisblack")
    os.replace(tmp, path)


def ensure_stack(folder: str, slices: int, size: int, workers: int | None = None) -> Stack:
    """Create the stack in ``folder`` unless a complete one of these dimensions is there."""
    stack = Stack(size, slices)
    # the manifest sits beside the folder: neuroglancer-scripts reads every file in it
    manifest_path = os.path.normpath(folder) + ".json"
    try:
        with open(manifest_path) as f:
            if json.load(f) == stack.manifest() and all(
                    os.path.isfile(os.path.join(folder, stack.name(z))) for z in range(slices)):
                return stack
    except (OSError, ValueError):
        pass
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(manifest_path):
        os.unlink(manifest_path)
    for f in os.listdir(folder):                     # a stale or partial stack
        if f.endswith((".tif", ".part")):
            os.unlink(os.path.join(folder, f))
    workers = workers or len(os.sched_getaffinity(0))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write, [(stack, folder, z) for z in range(slices)], chunksize=4))
    with open(manifest_path, "w") as f:
        json.dump(stack.manifest(), f)
    return stack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder")
    ap.add_argument("--slices", type=int, default=512)
    ap.add_argument("--size", type=int, default=2048)
    args = ap.parse_args()
    ensure_stack(args.out, args.slices, args.size)


if __name__ == "__main__":
    main()
