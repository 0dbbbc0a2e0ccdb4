"""Measuring a command (wall time, peak memory) and inspecting the dataset it wrote.

The command runs under a small wrapper process (a bare Python interpreter, about 10 MB
and 20 ms, counted in the wall time but not in the memory sums).  Memory is sampled
every ``SAMPLE_SECONDS`` over the command and all its live descendants:

- ``peak_rss``: the largest sum of RSS.  It over-counts: a page shared by several
  processes (forked workers, a memory-mapped input) counts in each of them, and a
  process that maps the same file several times counts the pages once per mapping
  (on this kernel a fault maps a whole large folio, up to 2 MB, of a file's page cache).
- ``peak_pss``: the largest sum of PSS (proportional set size): a page mapped k times
  counts 1/k each time, so the sum is the tree's real footprint, page cache included.
- ``peak_anon``: the largest sum of RSS without file-backed and shared pages (RSS minus
  ``shared``): memory the processes allocated, not input pages in the page cache.
  Copy-on-write pages a worker inherited from its parent still count in both.
- ``max_proc_rss``: the largest single process, from the kernel's ``ru_maxrss`` as seen
  by the wrapper (exact rather than sampled; not a sum).
"""
from __future__ import annotations

import json
import subprocess
import sys
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
    peak_pss: int = 0             # bytes, sampled, summed, shared pages counted once
    peak_anon: int = 0            # bytes, sampled, summed, without file-backed/shared pages
    max_proc_rss: int = 0         # bytes, largest single process (kernel maxrss)
    returncode: int = 0


def _tree_memory(root: psutil.Process) -> tuple[int, int, int]:
    """Sums of (RSS, PSS, anonymous RSS) over the live descendants of ``root``."""
    try:
        procs = root.children(recursive=True)
    except psutil.Error:
        return 0, 0, 0
    rss = pss = anon = 0
    for p in procs:
        try:
            mi = p.memory_full_info()     # Linux: reads /proc/PID/smaps_rollup, ~0.2 ms
        except psutil.Error:              # exited between listing and reading
            continue
        rss += mi.rss
        pss += mi.pss
        anon += mi.rss - mi.shared
    return rss, pss, anon


# A fresh, small Python process runs the command and reports the largest maxrss of its
# descendants.  Asking the kernel about our own children directly would be wrong: a
# child starts with the RSS high-water mark of the process that forked it, and this
# benchmark process holds the input volume.
_WRAPPER = """
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(json.dumps({"returncode": code, "maxrss_kb": kb}))
sys.exit(code)
"""


def run_measured(cmd: list[str], log_path: Path, cwd: str | None = None) -> Measurement:
    """Run ``cmd`` to completion, its output going to ``log_path``, and measure it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    report = log_path.with_suffix(".rusage.json")
    report.unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        start = time.perf_counter()
        wrapper = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(report), *cmd],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        root = psutil.Process(wrapper.pid)
        peaks = [0, 0, 0]
        while wrapper.poll() is None:
            peaks = [max(a, b) for a, b in zip(peaks, _tree_memory(root))]
            time.sleep(SAMPLE_SECONDS)
        wall = time.perf_counter() - start
    usage = json.loads(report.read_text()) if report.exists() else {"maxrss_kb": 0}
    return Measurement(wall=wall, peak_rss=peaks[0], peak_pss=peaks[1], peak_anon=peaks[2],
                       max_proc_rss=usage["maxrss_kb"] * 1024, returncode=wrapper.returncode)


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


def format_table(columns: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with a header rule, columns padded to their widest cell."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows])


def package_versions(names, revision: str) -> dict:
    """Installed versions of ``names``; ngconvert's carries the git revision."""
    import importlib.metadata

    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    if "ngconvert" in out:
        out["ngconvert"] += f" (git {revision})"
    return out
