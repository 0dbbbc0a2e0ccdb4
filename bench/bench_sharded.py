"""Benchmark: the same volume converted unsharded and sharded, and re-sharded by transfer.

Input: the deterministic brain-like NIfTI of bench/synth_volume.py (default 512^3 uint8).
Rows (each its own process, measured from outside, see measure.py):

  unsharded        ngconvert convert IN OUT --chunk-size 32,32,32 --quiet
  sharded          ngconvert convert IN OUT --chunk-size 32,32,32 --sharded --quiet
  transfer         ngconvert transfer UNSHARDED OUT --sharded --quiet   (stored chunks moved, no re-encoding)
  tensorstore      tensorstore writes scale 0 sharded (identity hash, same chunk size), for scale

32^3 chunks (not the 64^3 default) make the file count the point of the comparison: a
512^3 volume has 4096 chunks at full resolution.  Columns: wall time, peak memory of the
process tree, files written, bytes, and whether scale 0 reads back equal to the input
(cloud-volume).

    python bench/bench_sharded.py                 # 512^3
    python bench/bench_sharded.py --size 256 --markdown bench/work/sharded.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from measure import format_table, output_stats, run_measured  # noqa: E402

HERE = Path(__file__).parent

_TENSORSTORE = """
import sys, json, numpy as np, nibabel as nib, tensorstore as ts
src, dst, chunk, shard_bits_hint = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
a = np.asarray(nib.load(src).dataobj)
spec = {"driver": "neuroglancer_precomputed", "kvstore": "file://" + dst,
        "multiscale_metadata": {"type": "image", "data_type": str(a.dtype), "num_channels": 1},
        "scale_metadata": {"size": list(a.shape), "resolution": [1e6, 1e6, 1e6], "encoding": "raw",
                           "chunk_size": [chunk] * 3, "sharding": json.loads(shard_bits_hint)},
        "create": True, "delete_existing": True}
t = ts.open(spec).result()
t[...] = a[..., None]
"""


def read_scale0(path: Path) -> np.ndarray:
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{path.resolve()}", progress=False)
    b = cv.bounds
    return np.asarray(cv[b.minpt[0]:b.maxpt[0], b.minpt[1]:b.maxpt[1], b.minpt[2]:b.maxpt[2]])[..., 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "sharded")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = ap.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"brain{args.size}.nii"
    if not src.exists():
        run_measured([sys.executable, str(HERE / "synth_volume.py"), str(src), "--size", str(args.size)],
                     work / "synth.log")
    volume = np.asarray(nib.load(str(src)).dataobj)
    chunk = ["--chunk-size", ",".join([str(args.chunk)] * 3)]
    outs = {name: work / name for name in ("unsharded", "sharded", "transfer", "tensorstore")}
    for p in outs.values():
        shutil.rmtree(p, ignore_errors=True)
    ng = [sys.executable, "-m", "ngconvert"]
    runs = {
        "unsharded": ng + ["convert", str(src), str(outs["unsharded"]), *chunk, "--quiet"],
        "sharded": ng + ["convert", str(src), str(outs["sharded"]), *chunk, "--sharded", "--quiet"],
        "transfer": ng + ["transfer", str(outs["unsharded"]), str(outs["transfer"]), "--sharded", "--quiet"],
    }
    rows = []
    results = {}
    for name, cmd in runs.items():
        m = run_measured(cmd, work / f"{name}.log")
        results[name] = m
    ours = json.loads((outs["sharded"] / "info").read_text())["scales"][0]["sharding"]
    m = run_measured([sys.executable, "-c", _TENSORSTORE, str(src), str(outs["tensorstore"]), str(args.chunk),
                      json.dumps(ours)], work / "tensorstore.log")
    results["tensorstore (scale 0 only)"] = m
    outs["tensorstore (scale 0 only)"] = outs.pop("tensorstore")
    for name, m in results.items():
        st = output_stats(outs[name])
        ok = "yes" if m.returncode == 0 and np.array_equal(read_scale0(outs[name]), volume) else "NO"
        rows.append([name, f"{m.wall:.1f}", f"{m.peak_rss / 2 ** 20:.0f}", str(st.files), f"{st.bytes / 1e6:.1f}",
                     str(st.scales), ok])
    cols = ["run", "wall s", "peak RSS MiB", "files", "MB", "scales", "scale 0 equal"]
    table = format_table(cols, rows)
    print(f"{args.size}^3 uint8, {args.chunk}^3 chunks, {os.cpu_count()} cores; sharding of scale 0: {ours}")
    print(table)
    if args.markdown:
        md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        args.markdown.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
