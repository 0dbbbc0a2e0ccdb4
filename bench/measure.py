"""Measuring a command (wall time, peak memory) and inspecting the dataset it wrote.

Memory is sampled every ``SAMPLE_SECONDS`` over the whole process tree of the command
(the command and every descendant alive at that moment):

- ``peak_rss``: the largest sum of RSS over the tree.  Pages shared between forked
  workers are counted once per process, so this over-counts a little for pools.
- ``peak_anon``: the same sum without file-backed and shared pages (RSS minus
  ``shared``), i.e. memory the tree really allocated.  It differs from ``peak_rss`` when
  a tool memory-maps its input: mapped file pages count as RSS but are page cache.
- ``max_proc_rss``: the largest single process of the tree, from the kernel's
  ``ru_maxrss`` returned by ``wait4`` (exact, not sampled; not a sum).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

SAMPLE_SECONDS = 0.02
MB = 1e6


@dataclass
class Measurement:
    wall: float = 0.0             # seconds
    peak_rss: int = 0             # bytes, sampled, summed over the process tree
    peak_anon: int = 0            # bytes, sampled, summed, without file-backed/shared pages
    max_proc_rss: int = 0         # bytes, largest single process (kernel maxrss)
    returncode: int = 0

    def merge(self, other: "Measurement") -> "Measurement":
        """Steps run one after another: times add up, peaks take the maximum."""
        return Measurement(
            wall=self.wall + other.wall,
            peak_rss=max(self.peak_rss, other.peak_rss),
            peak_anon=max(self.peak_anon, other.peak_anon),
            max_proc_rss=max(self.max_proc_rss, other.max_proc_rss),
            returncode=self.returncode or other.returncode,
        )


def _tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(sum of RSS, sum of anonymous RSS) over ``root`` and its live descendants."""
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0, 0
    rss = anon = 0
    for p in procs:
        try:
            mi = p.memory_info()
        except psutil.Error:          # exited between listing and reading
            continue
        rss += mi.rss
        anon += mi.rss - getattr(mi, "shared", 0)
    return rss, anon


def run_measured(cmd: list[str], log_path: Path, cwd: str | None = None) -> Measurement:
    """Run ``cmd`` to completion, its output going to ``log_path``, and measure it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        root = psutil.Process(proc.pid)
        peak_rss = peak_anon = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss, anon = _tree_memory(root)
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
            time.sleep(SAMPLE_SECONDS)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)   # reaped by wait4, tell Popen
    return Measurement(wall=wall, peak_rss=peak_rss, peak_anon=peak_anon,
                       max_proc_rss=usage.ru_maxrss * 1024, returncode=proc.returncode)


# ---------------------------------------------------------------------------- outputs

@dataclass
class OutputStats:
    files: int = 0
    bytes: int = 0                # sum of file sizes
    disk_bytes: int = 0           # allocated blocks (what `du` reports)
    scales: int = 0
    scale_sizes: list = field(default_factory=list)
    chunks_expected: int = 0
    chunks_found: int = 0
    full_pyramid: bool = False    # the coarsest scale fits in one chunk
    complete: bool = False        # every scale has all its chunk files

    def to_json(self) -> dict:
        return asdict(self)


def _ceildiv(a: int, b: int) -> int:
    return -(-a // b)


def output_stats(root: Path) -> OutputStats:
    st = OutputStats()
    for path in root.rglob("*"):
        if path.is_file():
            s = path.stat()
            st.files += 1
            st.bytes += s.st_size
            st.disk_bytes += s.st_blocks * 512
    info_path = root / "info"
    if not info_path.is_file():
        return st
    info = json.loads(info_path.read_text())
    for scale in info["scales"]:
        size, chunk = scale["size"], scale["chunk_sizes"][0]
        expected = int(np.prod([_ceildiv(n, c) for n, c in zip(size, chunk)]))
        scale_dir = root / scale["key"]
        found = sum(1 for p in scale_dir.rglob("*") if p.is_file()) if scale_dir.is_dir() else 0
        st.chunks_expected += expected
        st.chunks_found += found
        st.scale_sizes.append(list(size))
    st.scales = len(info["scales"])
    top = info["scales"][-1]
    st.full_pyramid = all(n <= c for n, c in zip(top["size"], top["chunk_sizes"][0]))
    st.complete = st.chunks_found == st.chunks_expected
    return st


# ------------------------------------------------------------------------ data check

def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Exact mean of ``factor``^3 blocks (the part of the volume divisible by it)."""
    n = [s // factor for s in volume.shape]
    v = volume[: n[0] * factor, : n[1] * factor, : n[2] * factor]
    v = v.reshape(n[0], factor, n[1], factor, n[2], factor)
    return v.mean(axis=(1, 3, 5), dtype=np.float64)


def check_data(root: Path, volume: np.ndarray) -> dict:
    """Read every scale back with cloud-volume and compare it with the input.

    Scale 0 must equal the input exactly; a downsampled scale is compared with the exact
    block mean of the input (tools round and chain levels differently, so a deviation
    of one or two grey levels is normal; a wrong chunk shows up as tens).
    """
    from cloudvolume import CloudVolume

    url = "file://" + str(root.resolve())
    info = json.loads((root / "info").read_text())
    result = {"base_exact": False, "max_dev": 0.0}
    for mip, scale in enumerate(info["scales"]):
        cv = CloudVolume(url, mip=mip, progress=False, fill_missing=False)
        data = np.asarray(cv[:, :, :])[..., 0]
        if mip == 0:
            result["base_exact"] = bool(data.shape == volume.shape and np.array_equal(data, volume))
            continue
        factor = round(scale["resolution"][0] / info["scales"][0]["resolution"][0])
        ref = block_mean(volume, factor)
        got = data[: ref.shape[0], : ref.shape[1], : ref.shape[2]].astype(np.float64)
        result["max_dev"] = max(result["max_dev"], float(np.abs(got - ref).max()))
    return result
