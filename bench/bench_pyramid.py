"""Benchmark: NIfTI volume -> full precomputed pyramid, ngconvert against its peers.

Every tool converts the SAME input in the same run, each as its own subprocess, and is
measured from outside (wall time; peak memory of its whole process tree sampled every
20 ms, see measure.py).  Each output is then checked: number of scales in its info
file, every chunk file present, scale 0 identical to the input and the downsampled
scales close to the exact block mean.

Tools (each at its defaults unless stated):
  ngconvert          ngconvert convert IN OUT --quiet   (all cores, raw + gzip level 1)
  neuroglancer-scripts volume-to-precomputed-pyramid --flat IN OUT   (gzip level 9)
                     and the same with --compresslevel 1
  cloud-volume+igneous  bench/peer_igneous.py (CloudVolume.from_numpy, gzip; igneous
                     downsampling tasks on a LocalTaskQueue of 2 processes)
  tensorstore        bench/peer_tensorstore.py (neuroglancer_precomputed driver, raw,
                     uncompressed; downsample driver, mean)

Needs (this script installs nothing):
    pip install -e '.[bench]'    # neuroglancer-scripts, cloud-volume, igneous-pipeline,
                                 # tensorstore, psutil

Usage:
    python bench/bench_pyramid.py                       # 512^3 uint8, all peers
    python bench/bench_pyramid.py --peers fast          # skip the ~150 s gzip-9 run
    python bench/bench_pyramid.py --big                 # also 1024^3 uint16 (2 GiB)
    python bench/bench_pyramid.py --markdown results.md # also write the results as markdown

The input volumes are generated deterministically into --workdir (default bench/work,
git-ignored) when missing; outputs and logs go there too.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import psutil

from measure import package_versions, format_table, MB, Measurement, check_data, output_stats, run_measured
from synth_volume import ensure_volume

BENCH_DIR = Path(__file__).resolve().parent
CHUNK = 64
BASELINE = "cloud-volume+igneous"        # sizes are reported relative to this tool
REFERENCE = "ngconvert"                  # speedups are reported for this tool
BIG_SIZE, BIG_DTYPE = 1024, "uint16"
VERSIONED = ("ngconvert", "neuroglancer-scripts", "cloud-volume", "cloud-files",
             "igneous-pipeline", "task-queue", "tensorstore", "numpy", "nibabel",
             "deflate", "psutil")


# ---------------------------------------------------------------------------- tools

@dataclass
class Job:
    """What one tool run needs to know."""

    source: Path
    dest: Path
    levels: int                     # downsampled levels of a full pyramid
    workers: int


@dataclass
class Tool:
    name: str
    settings: str                                   # one line for the table
    command: Callable[[Job], list[str]]
    requires: tuple[str, ...] = ()                  # executables or modules it needs
    slow: bool = False                              # left out by --peers fast

    def missing(self) -> str | None:
        for need in self.requires:
            if need.startswith("exe:"):
                if shutil.which(need[4:]) is None:
                    return f"command {need[4:]!r} not found"
            elif importlib.util.find_spec(need) is None:
                return f"python module {need!r} not installed"
        return None


def _ngconvert(job: Job) -> list[str]:
    return ["ngconvert", "convert", str(job.source), str(job.dest), "--quiet"]


def _ngscripts(level: int | None) -> Callable[[Job], list[str]]:
    def command(job: Job) -> list[str]:
        extra = [] if level is None else ["--compresslevel", str(level)]
        return ["volume-to-precomputed-pyramid", "--flat", *extra, str(job.source), str(job.dest)]
    return command


def _python_peer(script: str, *extra: str) -> Callable[[Job], list[str]]:
    def command(job: Job) -> list[str]:
        return [sys.executable, str(BENCH_DIR / script), str(job.source), str(job.dest),
                "--levels", str(job.levels), "--chunk", str(CHUNK), *extra]
    return command


def _igneous(job: Job) -> list[str]:
    return _python_peer("peer_igneous.py")(job) + ["--workers", str(job.workers)]


NGCONVERT = Tool("ngconvert", "defaults: all cores, raw + gzip level 1 via libdeflate",
                 _ngconvert, ("exe:ngconvert",))
PEERS = [
    Tool("neuroglancer-scripts", "defaults: gzip level 9 via zlib; --flat; 1 process",
         _ngscripts(None), ("exe:volume-to-precomputed-pyramid",), slow=True),
    Tool("neuroglancer-scripts gzip 1", "gzip level 1 via zlib; --flat; 1 process",
         _ngscripts(1), ("exe:volume-to-precomputed-pyramid",)),
    Tool(BASELINE, "from_numpy raw + gzip level 9 via libdeflate; igneous 2x2x2 average, 2 processes",
         _igneous, ("cloudvolume", "igneous", "taskqueue")),
    Tool("tensorstore", "raw without gzip, it cannot write KEY.gz; downsample driver, mean",
         _python_peer("peer_tensorstore.py"), ("tensorstore",)),
]


def pyramid_levels(shape, chunk: int = CHUNK) -> int:
    """Halvings until the volume fits in one chunk (ngconvert's rule for cubic voxels)."""
    levels, size = 0, list(shape)
    while any(n > chunk for n in size):
        size = [-(-n // 2) for n in size]
        levels += 1
    return levels


# ---------------------------------------------------------------------------- running

@dataclass
class Result:
    tool: str
    settings: str
    commands: list[str] = field(default_factory=list)
    measurement: Measurement | None = None
    walls: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    error: str | None = None


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def display_command(cmd: list[str]) -> str:
    """The command as one would type it from the current folder."""
    cwd = Path.cwd()
    words = []
    for word in cmd:
        if word == sys.executable:
            word = "python"
        elif Path(word).is_absolute() and Path(word).is_relative_to(cwd):
            word = str(Path(word).relative_to(cwd))
        words.append(word)
    return shlex.join(words)


def _log_tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:])


def run_tool(tool: Tool, job: Job, log_dir: Path, repeat: int, check: bool,
             volume: np.ndarray | None) -> Result:
    result = Result(tool.name, tool.settings)
    cmd = tool.command(job)
    result.commands = [display_command(cmd)]
    reason = tool.missing()
    if reason:
        result.error = f"not run: {reason}"
        return result
    log = log_dir / (_slug(tool.name) + ".log")
    log.unlink(missing_ok=True)
    runs = []
    for _ in range(1 if tool.slow else repeat):
        shutil.rmtree(job.dest, ignore_errors=True)
        m = run_measured(cmd, log)
        if m.returncode != 0:
            result.error = f"exit code {m.returncode}: {_log_tail(log)}"
            return result
        runs.append(m)
    result.walls = [m.wall for m in runs]
    result.measurement = Measurement(
        wall=statistics.median_low(result.walls), peak_rss=max(m.peak_rss for m in runs),
        peak_pss=max(m.peak_pss for m in runs),
        peak_anon=max(m.peak_anon for m in runs),
        max_proc_rss=max(m.max_proc_rss for m in runs), returncode=0)
    result.stats = output_stats(job.dest).to_json()
    if check and volume is not None:
        result.check = check_data(job.dest, volume)
    return result


def run_suite(tools: list[Tool], source: Path, workdir: Path, args, tag: str) -> list[Result]:
    img = nib.load(str(source))
    volume = np.asanyarray(img.dataobj) if args.check else None
    levels = pyramid_levels(img.shape[:3])
    results = []
    for tool in tools:
        job = Job(source=source, dest=workdir / "out" / tag / _slug(tool.name),
                  levels=levels, workers=args.workers)
        print(f"[{tag}] {tool.name} ...", flush=True)
        r = run_tool(tool, job, workdir / "logs" / tag, args.repeat, args.check, volume)
        _print_progress(r)
        results.append(r)
    return results


def _print_progress(r: Result) -> None:
    if r.error:
        print(f"    {r.error}", flush=True)
        return
    m = r.measurement
    print(f"    {m.wall:.1f} s, peak RSS {m.peak_rss / MB:.0f} MB, PSS {m.peak_pss / MB:.0f} MB, "
          f"{r.stats['scales']} scales, {r.stats['files']} files, "
          f"{r.stats['bytes'] / MB:.1f} MB  {r.check or ''}", flush=True)


# ---------------------------------------------------------------------------- reporting

COLUMNS = ("tool", "scales", "chunks", "wall s", "ngconvert speedup", "peak RSS MB",
           "peak PSS MB", "peak anon MB", "max proc MB", "files", "size MB",
           "size vs igneous", "check")


def _scales_cell(st: dict) -> str:
    top = "x".join(map(str, st["scale_sizes"][-1])) if st["scale_sizes"] else "-"
    return f"{st['scales']} ({'full' if st['full_pyramid'] else 'stops at'} {top})"


def _check_cell(c: dict) -> str:
    if not c:
        return "-"
    base = "base exact" if c["base_exact"] else "BASE DIFFERS"
    return f"{base}, max dev {c['max_dev']:.2f}"


def table_rows(results: list[Result]) -> list[list[str]]:
    by_name = {r.tool: r for r in results if r.measurement}
    ref = by_name.get(REFERENCE)
    base = by_name.get(BASELINE)
    rows = []
    for r in results:
        if r.error:
            rows.append([r.tool] + [r.error] + [""] * (len(COLUMNS) - 2))
            continue
        m, st = r.measurement, r.stats
        speedup = "-" if ref is None or r.tool.startswith(REFERENCE) else f"{m.wall / ref.measurement.wall:.1f}x"
        rel = f"{st['bytes'] / base.stats['bytes']:.2f}" if base else "-"
        rows.append([
            r.tool, _scales_cell(st), f"{st['chunks_found']}/{st['chunks_expected']}",
            f"{m.wall:.1f}", speedup, f"{m.peak_rss / MB:.0f}", f"{m.peak_pss / MB:.0f}",
            f"{m.peak_anon / MB:.0f}",
            f"{m.max_proc_rss / MB:.0f}", str(st["files"]), f"{st['bytes'] / MB:.1f}", rel,
            _check_cell(r.check)])
    return rows


def format_text(rows: list[list[str]]) -> str:
    return format_table(COLUMNS, rows)


def format_markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
    return "\n".join(out)


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _ngconvert_dir() -> Path:
    return Path(importlib.util.find_spec("ngconvert").origin).parent


def ngconvert_fingerprint() -> str:
    """A hash of the ngconvert package's files, to notice a checkout edited during the run."""
    digest = hashlib.sha1()
    for path in sorted(_ngconvert_dir().rglob("*.py")):
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def ngconvert_revision() -> str:
    """The git commit of the ngconvert checkout measured ("+dirty" if src/ has changes)."""
    src = _ngconvert_dir()
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=src, text=True,
                               capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def versions(revision: str) -> dict:
    return package_versions(VERSIONED, revision)


def describe_input(path: Path) -> str:
    img = nib.load(str(path))
    zooms = "x".join(f"{float(z):g}" for z in img.header.get_zooms()[:3])
    shape = "x".join(map(str, img.shape))
    return (f"`{display_command([str(path)])}`: {shape} {img.get_data_dtype()}, {zooms} mm voxels, "
            f"{path.stat().st_size / MB:.1f} MB")


def render_markdown(report: dict) -> str:
    lines = [f"Command: `{report['argv']}`", "",
             f"Machine: {report['machine']['cpu']}, nproc {report['machine']['nproc']}, "
             f"{report['machine']['ram_gib']} GiB RAM, Python {report['machine']['python']}, "
             f"{report['machine']['platform']}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "."]
    for suite in report["suites"]:
        lines += ["", f"### {suite['title']}", "", f"Input: {suite['input']}", "",
                  format_markdown_table(suite["rows"]), "", "Commands:", ""]
        for r in suite["results"]:
            for c in r["commands"]:
                lines.append(f"- {r['tool']} ({r['settings']}): `{c}`")
        lines += ["", "Wall time of every run (s):", ""]
        for r in suite["results"]:
            walls = ", ".join(f"{w:.2f}" for w in r["walls"]) or "-"
            lines.append(f"- {r['tool']}: {walls}")
    return "\n".join(lines) + "\n"


def result_json(r: Result) -> dict:
    return {"tool": r.tool, "settings": r.settings, "commands": r.commands,
            "walls": r.walls, "error": r.error, "stats": r.stats, "check": r.check,
            "measurement": vars(r.measurement) if r.measurement else None}


# ---------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="edge of the uint8 test cube (default 512)")
    ap.add_argument("--workdir", type=Path, default=BENCH_DIR / "work",
                    help="inputs, outputs and logs (default bench/work)")
    ap.add_argument("--peers", choices=("all", "fast", "none"), default="all",
                    help="all peers (default), fast: without the slow gzip-9 "
                         "neuroglancer-scripts run, none: ngconvert only")
    ap.add_argument("--gz", action="store_true", help="also convert the .nii.gz copy with ngconvert")
    ap.add_argument("--big", action="store_true",
                    help=f"also run ngconvert alone on a {BIG_SIZE}^3 {BIG_DTYPE} volume (2 GiB)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="processes for igneous (ngconvert uses its own default: all cores)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per tool, the median wall time is reported (the slow gzip-9 "
                         "neuroglancer-scripts run is done once)")
    ap.add_argument("--no-check", dest="check", action="store_false",
                    help="skip reading the outputs back to compare with the input")
    ap.add_argument("--markdown", type=Path, help="write the results as markdown to this file")
    return ap.parse_args(argv)


def choose_peers(mode: str) -> list[Tool]:
    if mode == "none":
        return []
    return [p for p in PEERS if mode == "all" or not p.slow]


def make_suite(title: str, source: Path, tools: list[Tool], workdir: Path, args, tag: str) -> dict:
    results = run_suite(tools, source, workdir, args, tag)
    rows = table_rows(results)
    print(f"\n{title}\n{format_text(rows)}\n", flush=True)
    return {"title": title, "input": describe_input(source), "rows": rows,
            "results": [result_json(r) for r in results]}


def main(argv=None) -> None:
    args = parse_args(argv)
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # The revision is read before the runs and checked after them: a checkout edited during
    # the run would otherwise be reported as whatever state it ended in.
    revision, fingerprint = ngconvert_revision(), ngconvert_fingerprint()

    print(f"preparing inputs in {workdir} ...", flush=True)
    source = Path(ensure_volume(str(workdir / f"brain{args.size}_uint8.nii"), args.size))
    tools = [NGCONVERT]
    if args.gz:
        gz = Path(ensure_volume(str(source) + ".gz", args.size))
        tools.append(Tool("ngconvert (.nii.gz input)", NGCONVERT.settings,
                          lambda job: _ngconvert(Job(gz, job.dest, job.levels, job.workers)),
                          NGCONVERT.requires))
    tools += choose_peers(args.peers)

    suites = [make_suite(f"{args.size}^3 uint8, full pyramid, {CHUNK}^3 chunks",
                         source, tools, workdir, args, f"s{args.size}")]
    if args.big:
        big = Path(ensure_volume(str(workdir / f"brain{BIG_SIZE}_{BIG_DTYPE}.nii"), BIG_SIZE, BIG_DTYPE))
        suites.append(make_suite(f"{BIG_SIZE}^3 {BIG_DTYPE} (2 GiB), ngconvert alone",
                                 big, [NGCONVERT], workdir, args, f"big{BIG_SIZE}"))

    end_revision = ngconvert_revision()
    if (end_revision, ngconvert_fingerprint()) != (revision, fingerprint):
        revision = (f"{revision} at the start, {end_revision} at the end: "
                    "THE NGCONVERT SOURCE CHANGED DURING THE RUN")
        print(f"warning: ngconvert {revision}", file=sys.stderr, flush=True)
    report = {"argv": shlex.join(["python", "bench/bench_pyramid.py", *(argv or sys.argv[1:])]),
              "machine": machine_info(), "versions": versions(revision), "suites": suites,
              "elapsed_s": round(time.time() - started, 1)}
    (workdir / "results.json").write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(render_markdown(report))
        print(f"markdown written to {args.markdown}")


if __name__ == "__main__":
    main()
