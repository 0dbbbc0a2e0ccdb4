"""Peer run: cloud-volume writes the base scale, igneous computes the pyramid.

    python bench/peer_igneous.py IN.nii OUT_DIR --levels 3 [--chunk 64] [--workers 2]

The base scale is written by ``CloudVolume.from_numpy`` (raw encoding, gzip, which
cloud-files does with libdeflate at level 9 by default); cloud-volume's own parallel
writer is not used (it wrote wrong chunks in a trial here).  The downsampled scales come
from igneous ``create_downsampling_tasks`` (2x2x2 averaging) executed by a
``LocalTaskQueue`` with ``--workers`` processes, in passes of at most two levels whose
tasks cover 4x4x4 chunks, so that a 512^3 volume gives 8 tasks for the two cores.
"""
from __future__ import annotations

import argparse
import os

import nibabel as nib
import numpy as np

MIPS_PER_PASS = 2


def memory_target(chunk: int, itemsize: int, mips: int) -> int:
    """A memory target for which igneous sizes tasks to (chunk * 2**mips)^3 voxels.

    igneous derives the task shape from the memory target; the 1.5 margin sits between
    the thresholds of ``mips`` and ``mips + 1`` levels.
    """
    return int(itemsize * chunk ** 3 * 8 ** mips * 8 / 7 * 1.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("dest")
    ap.add_argument("--levels", type=int, required=True, help="downsampled levels to compute")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()

    from cloudvolume import CloudVolume
    import igneous.task_creation as tc
    from taskqueue import LocalTaskQueue

    img = nib.load(args.source)
    volume = np.asanyarray(img.dataobj)
    resolution = tuple(float(z) * 1e6 for z in img.header.get_zooms()[:3])   # mm -> nm
    url = "file://" + os.path.abspath(args.dest)
    CloudVolume.from_numpy(volume, vol_path=url, resolution=resolution,
                           chunk_size=(args.chunk,) * 3, layer_type="image",
                           encoding="raw", compress="gzip")

    queue = LocalTaskQueue(parallel=args.workers, progress=False)
    target = memory_target(args.chunk, volume.dtype.itemsize, MIPS_PER_PASS)
    mip = 0
    while mip < args.levels:
        mips = min(MIPS_PER_PASS, args.levels - mip)
        tasks = tc.create_downsampling_tasks(url, mip=mip, num_mips=mips, factor=(2, 2, 2),
                                             compress="gzip", memory_target=target)
        queue.insert(tasks)
        queue.execute(progress=False)
        mip += mips


if __name__ == "__main__":
    main()
