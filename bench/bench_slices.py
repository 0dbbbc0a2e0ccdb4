"""Benchmark: a folder of TIFF slices -> full precomputed pyramid, ngconvert against
neuroglancer-scripts' slice workflow, in one run on the same input.

The input is a deterministic, microscopy-like stack (bench/synth_slices.py): by default
512 uncompressed uint16 TIFF slices of 2048x2048 (4.3 GB), 1 um isotropic voxels.

Tools (each at its defaults; every command is its own process, measured from outside:
wall time, and the peak memory of its whole process tree sampled every 20 ms, see
measure.py):

  ngconvert        ngconvert convert FOLDER OUT --resolution 1,1,1 --units um --quiet
                   (all cores, raw + gzip level 1 via libdeflate)
  neuroglancer-scripts   the documented slice workflow, three commands in a row:
                   generate-scales-info FULLRES_INFO.json OUT    (info with all scales)
                   slices-to-precomputed --flat FOLDER OUT        (scale 0)
                   compute-scales --flat OUT                      (the other scales)
                   gzip level 9 via zlib (its default), one process.  --flat gives the
                   KEY/x0-x1_y0-y1_z0-z1.gz layout the other tools and cloud-volume use.
                   Its wall time is the sum of the three, its memory the highest peak.
  neuroglancer-scripts gzip 1   the same with --compresslevel 1 (only with --peers all)

Each output is then checked with cloud-volume: its scales and chunk files, and a sample
of z planes of every scale (--check-planes per scale, first/middle/last) compared with the
slices: scale 0 must be identical, a coarser scale is compared with the exact mean of the
full-resolution voxels under it.

Usage:
    python bench/bench_slices.py                          # 512 x 2048^2, ngconvert + neuroglancer-scripts
    python bench/bench_slices.py --slices 64 --size 1024  # a quick run
    python bench/bench_slices.py --peers all --markdown bench/work/slices.md

Needs (this script installs nothing): pip install -e '.[bench]'.  Inputs, outputs and
logs go to --workdir (default bench/work, git-ignored); a stack is generated only if it is
missing.  Page cache: the stack was just written or read, so every tool reads it from RAM.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench_pyramid import (_log_tail, _slug, display_command, machine_info, ngconvert_fingerprint,
                           ngconvert_revision)
from measure import package_versions, format_table, Measurement, output_stats, run_measured
from synth_slices import Stack, ensure_stack

BENCH_DIR = Path(__file__).resolve().parent
MIB = 2 ** 20
TARGET_RSS = 1.5 * 2 ** 30          # the goal for ngconvert's summed peak RSS
REFERENCE = "ngconvert"
VERSIONED = ("ngconvert", "neuroglancer-scripts", "scikit-image", "tifffile", "imagecodecs", "numpy",
             "deflate", "cloud-volume", "psutil")


# ---------------------------------------------------------------------------- tools

@dataclass
class Job:
    folder: Path          # the slices
    dest: Path
    resolution_um: tuple[float, float, float]
    stack: Stack


@dataclass
class Step:
    name: str
    cmd: list[str]


@dataclass
class Tool:
    name: str
    settings: str
    steps: callable       # Job -> list[Step]
    requires: tuple[str, ...]
    slow: bool = False    # run once whatever --repeat says

    def missing(self) -> str | None:
        for exe in self.requires:
            if shutil.which(exe) is None:
                return f"command {exe!r} not found"
        return None


def ngconvert_steps(job: Job) -> list[Step]:
    res = ",".join(f"{r:g}" for r in job.resolution_um)
    return [Step("convert", ["ngconvert", "convert", str(job.folder), str(job.dest),
                             "--resolution", res, "--units", "um", "--quiet"])]


def fullres_info(job: Job) -> dict:
    """The one-scale info that neuroglancer-scripts' generate-scales-info expands."""
    s = job.stack
    return {"type": "image", "data_type": "uint16", "num_channels": 1,
            "scales": [{"size": [s.size, s.size, s.slices], "voxel_offset": [0, 0, 0],
                        "resolution": [r * 1000.0 for r in job.resolution_um], "encoding": "raw"}]}


def ngscripts_steps(level: int | None):
    def steps(job: Job) -> list[Step]:
        info_path = job.dest.parent / (job.dest.name + ".fullres_info.json")
        info_path.parent.mkdir(parents=True, exist_ok=True)
        info_path.write_text(json.dumps(fullres_info(job), indent=1))
        gz = [] if level is None else ["--compresslevel", str(level)]
        return [Step("generate-scales-info", ["generate-scales-info", str(info_path), str(job.dest)]),
                Step("slices-to-precomputed", ["slices-to-precomputed", "--flat", *gz, str(job.folder),
                                               str(job.dest)]),
                Step("compute-scales", ["compute-scales", "--flat", *gz, str(job.dest)])]
    return steps


NGCONVERT = Tool("ngconvert", "defaults: all cores, raw + gzip level 1 via libdeflate", ngconvert_steps,
                 ("ngconvert",))
NGSCRIPTS = Tool("neuroglancer-scripts", "defaults: gzip level 9 via zlib, 64^3 chunks, one process; --flat",
                 ngscripts_steps(None), ("generate-scales-info", "slices-to-precomputed", "compute-scales"),
                 slow=True)
NGSCRIPTS_1 = Tool("neuroglancer-scripts gzip 1", "gzip level 1 via zlib, 64^3 chunks, one process; --flat",
                   ngscripts_steps(1), NGSCRIPTS.requires, slow=True)


# ---------------------------------------------------------------------------- running

@dataclass
class Result:
    tool: str
    settings: str
    commands: list[str] = field(default_factory=list)
    measurement: Measurement | None = None          # the whole workflow
    steps: list[tuple[str, Measurement]] = field(default_factory=list)   # the run reported
    walls: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    error: str | None = None


def combine(parts: list[Measurement]) -> Measurement:
    """Steps run one after another: times add up, the peaks are the highest step's."""
    return Measurement(wall=sum(m.wall for m in parts), peak_rss=max(m.peak_rss for m in parts),
                       peak_pss=max(m.peak_pss for m in parts), peak_anon=max(m.peak_anon for m in parts),
                       max_proc_rss=max(m.max_proc_rss for m in parts), returncode=0)


def run_tool(tool: Tool, job: Job, log_dir: Path, repeat: int) -> Result:
    result = Result(tool.name, tool.settings)
    steps = tool.steps(job)
    result.commands = [display_command(s.cmd) for s in steps]
    reason = tool.missing()
    if reason:
        result.error = f"not run: {reason}"
        return result
    log = log_dir / (_slug(tool.name) + ".log")
    log.unlink(missing_ok=True)
    runs: list[list[Measurement]] = []
    for _ in range(1 if tool.slow else repeat):
        shutil.rmtree(job.dest, ignore_errors=True)
        parts = []
        for step in steps:
            m = run_measured(step.cmd, log)
            if m.returncode != 0:
                result.error = f"{step.name}: exit code {m.returncode}: {_log_tail(log)}"
                return result
            parts.append(m)
        runs.append(parts)
    totals = [combine(p) for p in runs]
    result.walls = [m.wall for m in totals]
    result.measurement = Measurement(
        wall=statistics.median_low(result.walls), peak_rss=max(m.peak_rss for m in totals),
        peak_pss=max(m.peak_pss for m in totals), peak_anon=max(m.peak_anon for m in totals),
        max_proc_rss=max(m.max_proc_rss for m in totals), returncode=0)
    median_run = runs[result.walls.index(result.measurement.wall)]
    result.steps = [(s.name, m) for s, m in zip(steps, median_run)]
    result.stats = output_stats(job.dest).to_json()
    return result


# ------------------------------------------------------------------------ data check

def read_slice(stack: Stack, folder: Path, z: int) -> np.ndarray:
    import tifffile

    return tifffile.imread(folder / stack.name(z))          # [rows = y, cols = x]


def exact_mean_plane(stack: Stack, folder: Path, k: int, factor) -> np.ndarray:
    """Exact mean, [x, y] float64, of the full-resolution voxels under coarse plane ``k``."""
    fx, fy, fz = factor
    zs = range(k * fz, min((k + 1) * fz, stack.slices))
    total = np.zeros((stack.size, stack.size), np.uint64)
    for z in zs:
        total += read_slice(stack, folder, z)
    n = stack.size
    ny, nx = -(-n // fy), -(-n // fx)
    padded = np.zeros((ny * fy, nx * fx), np.uint64)
    padded[:n, :n] = total
    sums = padded.reshape(ny, fy, nx, fx).sum(axis=(1, 3)).astype(np.float64)
    cy = np.minimum((np.arange(ny) + 1) * fy, n) - np.arange(ny) * fy
    cx = np.minimum((np.arange(nx) + 1) * fx, n) - np.arange(nx) * fx
    return (sums / (cy[:, None] * cx[None, :] * len(zs))).T


def check_output(root: Path, stack: Stack, folder: Path, planes: int) -> dict:
    """Read ``planes`` z planes of every scale back with cloud-volume and compare."""
    from cloudvolume import CloudVolume

    info = json.loads((root / "info").read_text())
    url = "file://" + str(root.resolve())
    res0 = info["scales"][0]["resolution"]
    out = {"base_exact": True, "base_planes": [], "max_dev": 0.0, "planes_checked": 0}
    for mip, scale in enumerate(info["scales"]):
        factor = tuple(round(r / r0) for r, r0 in zip(scale["resolution"], res0))
        nz = scale["size"][2]
        ks = sorted({int(round(v)) for v in np.linspace(0, nz - 1, planes)}) if planes > 1 else [nz // 2]
        cv = CloudVolume(url, mip=mip, progress=False, fill_missing=False, parallel=1)
        for k in ks:
            got = np.asarray(cv[:, :, k:k + 1])[:, :, 0, 0]
            out["planes_checked"] += 1
            if mip == 0:
                ok = bool(np.array_equal(got, read_slice(stack, folder, k).T))
                out["base_planes"].append(k)
                out["base_exact"] = out["base_exact"] and ok
            else:
                ref = exact_mean_plane(stack, folder, k, factor)
                if got.shape != ref.shape:
                    out["max_dev"] = float("inf")
                    continue
                out["max_dev"] = max(out["max_dev"], float(np.abs(got.astype(np.float64) - ref).max()))
        del cv
    return out


# ---------------------------------------------------------------------------- reporting

COLUMNS = ("tool", "scales", "chunks", "wall s", "ngconvert speedup", "peak RSS MiB", "peak PSS MiB",
           "peak anon MiB", "max proc MiB", "files", "size MB", "check")


def _scales_cell(st: dict) -> str:
    top = "x".join(map(str, st["scale_sizes"][-1])) if st.get("scale_sizes") else "-"
    return f"{st.get('scales', 0)} (to {top})"


def _check_cell(c: dict) -> str:
    if not c:
        return "-"
    base = "base exact" if c["base_exact"] else "BASE DIFFERS"
    return f"{base}, max dev {c['max_dev']:.2f} ({c['planes_checked']} planes)"


def _mem(m: Measurement) -> list[str]:
    return [f"{m.peak_rss / MIB:.0f}", f"{m.peak_pss / MIB:.0f}", f"{m.peak_anon / MIB:.0f}",
            f"{m.max_proc_rss / MIB:.0f}"]


def table_rows(results: list[Result]) -> list[list[str]]:
    ref = next((r for r in results if r.tool == REFERENCE and r.measurement), None)
    rows = []
    for r in results:
        if r.error:
            rows.append([r.tool, r.error] + [""] * (len(COLUMNS) - 2))
            continue
        m, st = r.measurement, r.stats
        speedup = "-" if ref is None or r is ref else f"{m.wall / ref.measurement.wall:.1f}x"
        rows.append([r.tool, _scales_cell(st), f"{st['chunks_found']}/{st['chunks_expected']}",
                     f"{m.wall:.1f}", speedup, *_mem(m), str(st["files"]), f"{st['bytes'] / 1e6:.0f}",
                     _check_cell(r.check)])
        if len(r.steps) > 1:
            for name, sm in r.steps:
                rows.append([f"  {name}", "", "", f"{sm.wall:.1f}", "", *_mem(sm), "", "", ""])
    return rows


def format_text(rows: list[list[str]]) -> str:
    return format_table(COLUMNS, rows)


def format_markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in r]
        if cells[0].startswith("  "):
            cells[0] = "&nbsp;&nbsp;" + cells[0].strip()
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def versions(revision: str) -> dict:
    return package_versions(VERSIONED, revision)


def verdict(results: list[Result]) -> str:
    ref = next((r for r in results if r.tool == REFERENCE and r.measurement), None)
    if ref is None:
        return "ngconvert did not run"
    m = ref.measurement
    parts = [f"ngconvert peak summed RSS {m.peak_rss / MIB:.0f} MiB: "
             f"{'under' if m.peak_rss < TARGET_RSS else 'OVER'} the 1.5 GiB target"]
    for r in results:
        if r is not ref and r.measurement:
            parts.append(f"{r.measurement.wall / m.wall:.1f}x faster than {r.tool}" if r.measurement.wall > m.wall
                         else f"SLOWER than {r.tool}")
    return "; ".join(parts)


def render_markdown(report: dict) -> str:
    mach = report["machine"]
    lines = [f"Command: `{report['argv']}`", "",
             f"Machine: {mach['cpu']}, nproc {mach['nproc']}, {mach['ram_gib']} GiB RAM, "
             f"Python {mach['python']}, {mach['platform']}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", "",
             f"Input: {report['input']}", "",
             "neuroglancer-scripts' full-resolution info (input of generate-scales-info): "
             f"`{json.dumps(report['fullres_info'])}`", "",
             format_markdown_table(report["rows"]), "", f"Result: {report['verdict']}.", "", "Commands:", ""]
    for r in report["results"]:
        for c in r["commands"]:
            lines.append(f"- {r['tool']}: `{c}`")
    lines += ["", "Wall time of every run (s):", ""]
    for r in report["results"]:
        lines.append(f"- {r['tool']}: {', '.join(f'{w:.1f}' for w in r['walls']) or '-'}")
    return "\n".join(lines) + "\n"


def result_json(r: Result) -> dict:
    return {"tool": r.tool, "settings": r.settings, "commands": r.commands, "walls": r.walls,
            "error": r.error, "stats": r.stats, "check": r.check,
            "measurement": vars(r.measurement) if r.measurement else None,
            "steps": [{"step": n, **vars(m)} for n, m in r.steps]}


# ---------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=512, help="slices in the stack (default 512)")
    ap.add_argument("--size", type=int, default=2048, help="slice width and height in pixels (default 2048)")
    ap.add_argument("--resolution", default="1,1,1", help="voxel size in um, x,y,z (default 1,1,1)")
    ap.add_argument("--workdir", type=Path, default=BENCH_DIR / "work",
                    help="inputs, outputs and logs (default bench/work)")
    ap.add_argument("--peers", choices=("default", "all", "none"), default="default",
                    help="default: neuroglancer-scripts at its defaults; all: also with --compresslevel 1; "
                         "none: ngconvert only")
    ap.add_argument("--repeat", type=int, default=1,
                    help="ngconvert runs, the median wall time is reported (peers run once)")
    ap.add_argument("--check-planes", type=int, default=3,
                    help="z planes of every scale read back and compared (default 3: first, middle, last)")
    ap.add_argument("--no-check", dest="check", action="store_false", help="skip reading the outputs back")
    ap.add_argument("--markdown", type=Path, help="write the results as markdown to this file")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    resolution = tuple(float(v) for v in args.resolution.split(","))
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    revision, fingerprint = ngconvert_revision(), ngconvert_fingerprint()

    tag = f"slices_{args.size}x{args.slices}"
    folder = workdir / tag
    print(f"preparing {args.slices} slices of {args.size}x{args.size} uint16 in {folder} ...", flush=True)
    stack = ensure_stack(str(folder), args.slices, args.size)
    input_bytes = sum(f.stat().st_size for f in folder.iterdir())

    tools = [NGCONVERT] + {"none": [], "default": [NGSCRIPTS], "all": [NGSCRIPTS, NGSCRIPTS_1]}[args.peers]
    results = []
    for tool in tools:
        job = Job(folder, workdir / "out" / tag / _slug(tool.name), resolution, stack)
        print(f"[{tag}] {tool.name} ...", flush=True)
        r = run_tool(tool, job, workdir / "logs" / tag, args.repeat)
        if r.error is None and args.check:
            print("    checking ...", flush=True)
            r.check = check_output(job.dest, stack, folder, args.check_planes)
        if r.error:
            print(f"    {r.error}", flush=True)
        else:
            m = r.measurement
            print(f"    {m.wall:.1f} s, peak RSS {m.peak_rss / MIB:.0f} MiB, PSS {m.peak_pss / MIB:.0f} MiB, "
                  f"max proc {m.max_proc_rss / MIB:.0f} MiB, {r.stats['files']} files, "
                  f"{r.stats['bytes'] / 1e6:.0f} MB  {_check_cell(r.check)}", flush=True)
        results.append(r)

    end_revision = ngconvert_revision()
    if (end_revision, ngconvert_fingerprint()) != (revision, fingerprint):
        revision = (f"{revision} at the start, {end_revision} at the end: "
                    "THE NGCONVERT SOURCE CHANGED DURING THE RUN")
        print(f"warning: ngconvert {revision}", file=sys.stderr, flush=True)
    rows = table_rows(results)
    print(f"\n{args.slices} slices of {args.size}x{args.size} uint16 TIFF -> full pyramid\n{format_text(rows)}\n")
    print(verdict(results))
    res = "x".join(f"{r:g}" for r in resolution)
    report = {
        "argv": shlex.join(["python", "bench/bench_slices.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(), "versions": versions(revision),
        "input": (f"`{display_command([str(folder)])}`: {args.slices} uncompressed single-page uint16 TIFF "
                  f"slices of {args.size}x{args.size} ({input_bytes / 1e9:.2f} GB), {res} um voxels, "
                  "made by bench/synth_slices.py"),
        "fullres_info": fullres_info(Job(folder, workdir, resolution, stack)),
        "rows": rows, "verdict": verdict(results), "results": [result_json(r) for r in results],
        "elapsed_s": round(time.time() - started, 1)}
    (workdir / f"results_{tag}.json").write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(render_markdown(report))
        print(f"markdown written to {args.markdown}")


if __name__ == "__main__":
    main()
