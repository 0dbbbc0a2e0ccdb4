"""Benchmark: the same conversion on the local pool and on local Dask clusters.

Input: the deterministic brain-like NIfTI of bench/synth_volume.py (default 512^3 uint8), to a
full raw+gzip pyramid.  Rows (each its own process, measured from outside, see measure.py):

  local pool, 2 processes   ngconvert convert IN OUT --workers 2 --quiet
  dask, 1 worker process    ngconvert convert IN OUT --dask-workers 1 --quiet
  dask, 2 worker processes  ngconvert convert IN OUT --dask-workers 2 --quiet
  serial                    ngconvert convert IN OUT --workers 1 --quiet

Dask rows include starting the local cluster (about 1-2 s).  Every output is compared with
the serial run's files byte for byte.

    python bench/bench_dask.py
    python bench/bench_dask.py --size 256 --markdown bench/work/dask.md
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import format_table, output_stats, run_measured  # noqa: E402

HERE = Path(__file__).parent


def files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--input", type=Path, help="convert this NIfTI instead of a synthetic one")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row (the fastest is shown)")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "dask")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    src = args.input or work / f"brain{args.size}.nii"
    if not src.exists():
        run_measured([sys.executable, str(HERE / "synth_volume.py"), str(src), "--size", str(args.size)],
                     work / "synth.log")
    mb = src.stat().st_size / 1e6
    ng = [sys.executable, "-m", "ngconvert", "convert", str(src)]
    rows_spec = [("serial", ["--workers", "1"]), ("local pool, 2 processes", ["--workers", "2"]),
                 ("dask, 1 worker process", ["--dask-workers", "1"]),
                 ("dask, 2 worker processes", ["--dask-workers", "2"])]
    rows, reference = [], None
    for name, extra in rows_spec:
        out = work / name.split(",")[0].replace(" ", "-") / extra[-1]
        best = None
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            m = run_measured(ng + [str(out), *extra, "--quiet"], work / "runs.log")
            if best is None or m.wall < best.wall:
                best = m
        got = files(out)
        if reference is None:
            reference = got
        st = output_stats(out)
        rows.append([name, f"{best.wall:.2f}", f"{mb / best.wall:.0f}", f"{best.peak_rss / 2 ** 20:.0f}",
                     str(st.files), "yes" if got == reference and best.returncode == 0 else "NO"])
    cols = ["executor", "wall s", "MB/s in", "peak RSS MiB", "files", "same bytes as serial"]
    print(f"{src.name} ({mb:.0f} MB) -> full raw+gzip pyramid, {os.cpu_count()} cores")
    table = format_table(cols, rows)
    print(table)
    if args.markdown:
        md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]
        args.markdown.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
