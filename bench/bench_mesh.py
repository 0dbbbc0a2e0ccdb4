"""Benchmark: meshes of a segmentation layer, ngconvert against cloud-volume + igneous.

Both tools mesh the SAME synthetic label volume in the same run.  Every step is its own
subprocess, measured from outside (wall time; peak memory of its whole process tree
sampled every 20 ms, see measure.py).  The meshes are then read back with cloud-volume
(``cv.mesh.get``, independent of ngconvert) and checked against the labels.

Input (made here, deterministic, cached in --workdir): a SIZE x SIZE x SIZE/2 uint32 label
volume (default 512x512x256, 268 MB) with 20 smooth, lobed, rotated ellipsoids of 50-130
voxels (some touch, like neighbouring brain structures), ids between 1 and 999, 1 um
voxels (resolution 1000 nm), saved as ``.npy`` in x, y, z order.

Steps (each tool's defaults unless stated; ngconvert uses all cores, igneous runs its
tasks on a ``LocalTaskQueue`` of --workers processes, default all cores):

  setup (reported, not compared: the two layers differ)
    ngconvert      ngconvert convert IN.npy LAYER --type segmentation --resolution 1,1,1
                   --units um --quiet   (compressed_segmentation + gzip, full pyramid)
    cloud-volume   python bench/bench_mesh.py peer-igneous setup IN.npy LAYER:
                   CloudVolume.from_numpy(..., layer_type='segmentation',
                   encoding='compressed_segmentation', compress='gzip', chunk_size=64^3)
                   (scale 0 only)
  meshes (every run starts from a fresh copy of its tool's setup layer, or of the forge
  output; copying is not timed)
    ngconvert legacy      ngconvert mesh LAYER --format legacy --quiet
                          (simplification --max-error: half a voxel, 500 nm)
    ngconvert multires    ngconvert mesh LAYER --format multires --quiet (3 LODs, Draco,
                          10-bit vertices); and the same with --quantization-bits 16
    igneous forge         peer-igneous forge: tc.create_meshing_tasks(url, mip=0,
                          shape=(256,256,256), simplification=True,
                          max_simplification_error=E, mesh_dir='mesh'): unsharded
                          precomputed fragments and a spatial index.  E = --error-nm
                          (default 500 nm, half a voxel, ngconvert's nominal bound) and
                          E = --matched-error-nm (default 1.5 nm, which gives about as
                          many triangles as ngconvert: zmesh's error bound does not mean
                          the same at 1-voxel and 1000-nm scales, see docs/benchmarks.md)
    igneous manifests     peer-igneous manifests: tc.create_mesh_manifest_tasks(url)
    igneous merge         peer-igneous multires: tc.create_unsharded_multires_mesh_tasks(
                          url, num_lod=2, mesh_dir='mesh') on a copy of the forge output.
                          num_lod counts the LODs *below* LOD 0, so 2 asks for 3 LODs like
                          ngconvert.  The default min_chunk_size (256 voxels) gives objects
                          under 512 voxels 1 LOD; --min-chunk (default 8, ngconvert's
                          smallest LOD-0 node) gives these objects 3.
  Each forge is measured once and shared: igneous legacy = forge + manifests, igneous
  multires = forge + merge.

Columns: wall time and peak summed RSS / PSS of the step's process tree (a row of several
steps sums their walls and takes the highest peaks); files and MB (10^6 bytes) of the
layer's mesh folder (setup rows: the whole layer); viewer MB: only what a viewer reads
(info, manifests and the format's fragments; not igneous's spatial index, nor the forge
fragments left beside its multires meshes); meshes: segments with a mesh at LOD 0 out of
the labels in the volume; LODs (min-max over segments); triangles at LOD 0 and at each
segment's coarsest LOD, summed; check: the largest distance between a mesh's bounding box
and its label's voxel box (the marching-cubes surface runs through the outer voxel faces,
so 0 plus what simplification moved), mesh volume / voxel volume (min-max; negative would
mean inward-facing triangles), and for legacy meshes the open edges after welding vertices
on a 1 nm grid (0 = closed).  Setup rows check that scale 0 read back equals the input.

A run that does not finish within --timeout seconds is killed with its workers and
reported as timed out; a failed run is reported with its last log line (logs in
--workdir/logs/mesh<SIZE>/).

Needs (this script installs nothing): pip install -e '.[bench]' (cloud-volume,
igneous-pipeline, task-queue, psutil).  ngconvert is the one Python imports: to measure a
given commit, put a clean checkout's src/ first on PYTHONPATH; the revision is recorded,
and flagged if the source changes during the run.

Usage:
    python bench/bench_mesh.py --size 128 --timeout 60   # quick run (128x128x64), ~3 min: ngconvert's
                                                         # multires runs hang at this size (a bug,
                                                         # see docs/benchmarks.md) and are killed
    python bench/bench_mesh.py                           # 512x512x256, ~1 min per repeat
    python bench/bench_mesh.py --repeat 3 --markdown bench/work/mesh512.md

Input, outputs (out/mesh<SIZE>/), logs and results_mesh<SIZE>.json go to --workdir
(default bench/work, git-ignored).
"""
from __future__ import annotations

# Only light imports here: the igneous steps run this file as their subprocess (and
# igneous's spawned workers import it again), so they must not carry the benchmark's
# own modules.
import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
SEED = 20250521
N_LABELS = 20
VOXEL_NM = 1000.0                # 1 um isotropic voxels
CHUNK = 64                       # igneous setup chunk edge
REGION = 256                     # igneous task edge (ngconvert's region edge is 256 too)
MESH_DIR = "mesh"
LODS = 3
MIN_CHUNK_VARIANT = 8
MATCHED_ERROR_NM = 1.5
VERSIONED = ("ngconvert", "cloud-volume", "cloud-files", "igneous-pipeline", "task-queue", "zmesh",
             "DracoPy", "fastremap", "mapbuffer", "numpy", "psutil")


# ---------------------------------------------------------------------------- input

def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def make_labels(size: int, n_labels: int = N_LABELS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """A ``(size, size, size // 2)`` uint32 volume of ``n_labels`` lobed ellipsoids, and their ids.

    Each blob has random radii (5-13% of ``size`` per axis), orientation and centre, and a
    smooth wobble of its radius (products of low-frequency cosines in its own frame).  A
    voxel takes the label whose scaled distance is smallest, so blobs that meet share a
    smooth boundary instead of overlapping.
    """
    shape = (size, size, size // 2)
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 1000), n_labels, replace=False)).astype(np.uint32)
    best = np.ones(shape, np.float32)          # scaled distance of the current label (1 = outside)
    labels = np.zeros(shape, np.uint32)
    ext = np.array(shape, np.float64)
    for label in ids:
        centre = ext * rng.uniform(0.2, 0.8, 3)
        radii = size * rng.uniform(0.05, 0.13, 3)
        rot = _rotation(rng)
        freq = rng.uniform(1.0, 3.0, (4, 3))
        phase = rng.uniform(0, 2 * np.pi, (4, 3))
        amp = rng.uniform(0.04, 0.1, 4)
        reach = 1.35 * radii.max()
        lo = np.maximum(np.floor(centre - reach).astype(int), 0)
        hi = np.minimum(np.ceil(centre + reach).astype(int), shape)
        ax = [np.arange(a, b, dtype=np.float32) + np.float32(0.5 - c) for a, b, c in zip(lo, hi, centre)]
        x, y, z = ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :]
        u = [(np.float32(rot[0, k]) * x + np.float32(rot[1, k]) * y + np.float32(rot[2, k]) * z)
             / np.float32(radii[k]) for k in range(3)]
        d = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
        wobble = np.zeros_like(d)
        for a, f, p in zip(amp, freq, phase):
            wobble += (np.float32(a) * np.cos(np.float32(f[0]) * u[0] + np.float32(p[0]))
                       * np.cos(np.float32(f[1]) * u[1] + np.float32(p[1]))
                       * np.cos(np.float32(f[2]) * u[2] + np.float32(p[2])))
        d *= 1 + wobble
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub = best[box]
        win = d < sub
        sub[win] = d[win]
        labels[box][win] = label
    return labels, ids


def labels_path(workdir: Path, size: int) -> Path:
    return workdir / f"labels_{size}x{size}x{size // 2}_uint32.npy"


def ensure_labels(workdir: Path, size: int) -> Path:
    """The input volume, generated (atomically) unless it exists."""
    path = labels_path(workdir, size)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        labels, ids = make_labels(size)
        present = set(np.unique(labels).tolist()) - {0}
        if present != set(ids.tolist()):
            raise SystemExit(f"generator bug: labels {sorted(set(ids.tolist()) - present)} vanished")
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as fh:
            np.save(fh, labels)
        os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------- peer

def peer_main(argv: list[str]) -> None:
    """``peer-igneous {setup,forge,manifests,multires}``: one cloud-volume/igneous step."""
    ap = argparse.ArgumentParser(prog="bench_mesh.py peer-igneous")
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("setup", help="write the segmentation layer with CloudVolume.from_numpy")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--chunk", type=int, default=CHUNK)
    p = sub.add_parser("forge", help="igneous meshing tasks (unsharded legacy fragments)")
    p.add_argument("dest")
    p.add_argument("--shape", type=int, default=REGION)
    p.add_argument("--error", type=float, required=True, help="max_simplification_error, nm")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p = sub.add_parser("manifests", help="igneous legacy mesh manifests")
    p.add_argument("dest")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p = sub.add_parser("multires", help="igneous unsharded multi-resolution merge")
    p.add_argument("dest")
    p.add_argument("--num-lod", type=int, required=True, help="igneous num_lod: LODs below LOD 0")
    p.add_argument("--min-chunk", type=int, help="min_chunk_size edge (default: igneous's)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args(argv)

    url = "file://" + os.path.abspath(args.dest)
    if args.step == "setup":
        from cloudvolume import CloudVolume

        volume = np.load(args.source)
        CloudVolume.from_numpy(volume, vol_path=url, resolution=(VOXEL_NM,) * 3,
                               chunk_size=(args.chunk,) * 3, layer_type="segmentation",
                               encoding="compressed_segmentation", compress="gzip")
        return

    import igneous.task_creation as tc
    from taskqueue import LocalTaskQueue

    if args.step == "forge":
        tasks = tc.create_meshing_tasks(url, mip=0, shape=(args.shape,) * 3, simplification=True,
                                        max_simplification_error=args.error, mesh_dir=MESH_DIR)
    elif args.step == "manifests":
        tasks = tc.create_mesh_manifest_tasks(url, mesh_dir=MESH_DIR)
    else:
        extra = {} if args.min_chunk is None else {"min_chunk_size": (args.min_chunk,) * 3}
        tasks = tc.create_unsharded_multires_mesh_tasks(url, num_lod=args.num_lod, mesh_dir=MESH_DIR,
                                                        **extra)
    # one task (the filesystem manifest task) needs no pool of spawned processes
    workers = 1 if isinstance(tasks, list) and len(tasks) == 1 else args.workers
    queue = LocalTaskQueue(parallel=workers, progress=False)
    queue.insert(tasks)
    queue.execute(progress=False)


# ---------------------------------------------------------------------------- steps

@dataclass
class Step:
    key: str
    name: str
    cmd: list[str]
    layer: Path                    # the layer this step writes into
    copy_from: Path | None = None  # copied to ``layer`` before every run (not timed)


@dataclass
class Row:
    tool: str
    kind: str                      # "setup", "legacy" or "multires"
    label: str                     # the step column
    steps: list[str]               # keys of the steps it sums
    settings: str
    shared: tuple[str, ...] = ()   # steps measured once and shared with another row


def plan_steps(source: Path, out: Path, workers: int, error_nm: float, matched_nm: float,
               min_chunk: int, peers: bool) -> tuple[list[Step], list[Row]]:
    """The steps in the order they run, and the table rows that sum them."""
    ngc, ign = out / "ngconvert-layer", out / "igneous-layer"
    peer = [sys.executable, str(BENCH_DIR / "bench_mesh.py"), "peer-igneous"]
    setup = [Step("ngc-setup", "convert",
                  ["ngconvert", "convert", str(source), str(ngc), "--type", "segmentation",
                   "--resolution", "1,1,1", "--units", "um", "--quiet"], ngc)]
    meshing = [Step("ngc-legacy", "mesh legacy",
                    ["ngconvert", "mesh", str(out / "ngconvert-legacy"), "--format", "legacy", "--quiet"],
                    out / "ngconvert-legacy", ngc),
               Step("ngc-multires", "mesh multires",
                    ["ngconvert", "mesh", str(out / "ngconvert-multires"), "--format", "multires", "--quiet"],
                    out / "ngconvert-multires", ngc),
               Step("ngc-multires-q16", "mesh multires, 16-bit vertices",
                    ["ngconvert", "mesh", str(out / "ngconvert-multires-q16"), "--format", "multires",
                     "--quantization-bits", "16", "--quiet"], out / "ngconvert-multires-q16", ngc)]
    half = f"{VOXEL_NM / 2:g} nm"
    legacy = [Row("ngconvert", "legacy", "legacy", ["ngc-legacy"],
                  f"defaults: --max-error {half} (half a voxel), {REGION}^3 regions, all cores")]
    multires = [Row("ngconvert", "multires", "multires", ["ngc-multires"],
                    f"defaults: {LODS} LODs, --max-error {half}, Draco level 7, 10-bit vertices, all cores"),
                Row("ngconvert", "multires", "multires, 16-bit", ["ngc-multires-q16"],
                    "defaults but --quantization-bits 16 (igneous's default precision)")]
    rows_setup = [Row("ngconvert", "setup", "setup: convert", ["ngc-setup"],
                      "compressed_segmentation + gzip, full pyramid (mode), all cores")]
    if peers:
        setup.append(Step("ign-setup", "from_numpy", peer + ["setup", str(source), str(ign)], ign))
        rows_setup.append(Row("cloud-volume", "setup", "setup: from_numpy", ["ign-setup"],
                              f"compressed_segmentation + gzip, {CHUNK}^3 chunks, scale 0 only"))
        settings = [(error_nm, [None, min_chunk])]
        if matched_nm > 0:
            settings.append((matched_nm, [min_chunk]))
        for err, chunks in settings:
            tag = f"e{err:g}"
            forge = out / f"igneous-forge-{tag}"
            fkey, mkey = f"ign-forge-{tag}", f"ign-manifests-{tag}"
            meshing += [Step(fkey, f"forge {err:g} nm",
                             peer + ["forge", str(forge), "--error", f"{err:g}", "--workers", str(workers)],
                             forge, ign),
                        Step(mkey, "manifests", peer + ["manifests", str(out / f"igneous-legacy-{tag}"),
                                                        "--workers", str(workers)],
                             out / f"igneous-legacy-{tag}", forge)]
            base = f"forge: {REGION}^3 tasks, max_simplification_error {err:g} nm, LocalTaskQueue({workers})"
            legacy.append(Row("igneous", "legacy", f"legacy, {err:g} nm", [fkey, mkey],
                              base + "; then the mesh manifest task"))
            for chunk in chunks:
                ctag = f"min{chunk}" if chunk else "min256"
                key = f"ign-merge-{tag}-{ctag}"
                layer = out / f"igneous-multires-{tag}-{ctag}"
                extra = ["--min-chunk", str(chunk)] if chunk else []
                meshing.append(Step(key, f"merge, min chunk {chunk or 256}",
                                    peer + ["multires", str(layer), "--num-lod", str(LODS - 1), *extra,
                                            "--workers", str(workers)], layer, forge))
                multires.append(Row("igneous", "multires", f"multires, {err:g} nm, min chunk {chunk or 256}",
                                    [fkey, key],
                                    base + f"; then unsharded merge, num_lod={LODS - 1}, min_chunk_size "
                                    f"{chunk or 256}^3{'' if chunk else ' (default)'}, Draco level 1, "
                                    "16-bit vertices", shared=(fkey,)))
    return setup + meshing, rows_setup + legacy + multires


# ---------------------------------------------------------------------------- running

@dataclass
class StepResult:
    key: str
    name: str
    command: str
    walls: list[float] = field(default_factory=list)
    other_cpu: list[float] = field(default_factory=list)   # CPU-s other processes used per run
    measurement: object = None     # measure.Measurement of the reported run
    error: str | None = None


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class TreeCpu:
    """CPU time used by this process and all its descendants while it runs, sampled every
    50 ms from /proc (descendants that igneous's pools never wait for count too)."""

    def __init__(self):
        import threading

        self._seen: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._start = os.times()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.05):
            for p in me.children(recursive=True):
                try:
                    with p.oneshot():
                        key, t = (p.pid, p.create_time()), p.cpu_times()
                        self._seen[key] = t.user + t.system
                except psutil.Error:
                    continue

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        end = os.times()
        return sum(self._seen.values()) + (end.user - self._start.user) + (end.system - self._start.system)


def run_step(step: Step, log_dir: Path, repeat: int, timeout: float) -> StepResult:
    from bench_pyramid import _log_tail, _slug, display_command
    from measure import Measurement, run_measured

    result = StepResult(step.key, step.name, display_command(step.cmd))
    log = log_dir / (_slug(step.key) + ".log")
    log.unlink(missing_ok=True)
    # coreutils timeout signals the command's whole process group (workers included)
    cmd = ["timeout", "--kill-after=10", f"{timeout:g}", *step.cmd] if timeout > 0 else step.cmd
    runs = []
    for _ in range(repeat):
        shutil.rmtree(step.layer, ignore_errors=True)
        if step.copy_from is not None:
            shutil.copytree(step.copy_from, step.layer)
        busy, tree = _busy_cpu_seconds(), TreeCpu()
        m = run_measured(cmd, log)
        # what the rest of the machine used meanwhile: a check on the timing's cleanliness
        own = tree.stop()
        result.other_cpu.append(max(0.0, (_busy_cpu_seconds() - busy) - own))
        if m.returncode != 0:
            result.other_cpu.pop()             # a killed run's orphaned workers would count here
        if m.returncode in (124, 137) and timeout > 0:
            result.error = f"TIMED OUT: killed after {m.wall:.0f} s (--timeout {timeout:g})"
            result.walls = [m.wall]
            return result
        if m.returncode != 0:
            result.error = f"FAILED after {m.wall:.1f} s, exit code {m.returncode}: {_log_tail(log, 1)}"
            result.walls = [m.wall]
            return result
        runs.append(m)
    result.walls = [m.wall for m in runs]
    result.measurement = Measurement(
        wall=statistics.median_low(result.walls), peak_rss=max(m.peak_rss for m in runs),
        peak_pss=max(m.peak_pss for m in runs), peak_anon=max(m.peak_anon for m in runs),
        max_proc_rss=max(m.max_proc_rss for m in runs), returncode=0)
    return result


# ---------------------------------------------------------------------------- inspecting

def folder_stats(root: Path) -> dict:
    files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def _on_disk(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / (name + ".gz"), folder / (name + ".br")):
        if cand.is_file():
            return cand
    return None


def viewer_bytes(mesh_dir: Path, fmt: str, ids) -> int:
    """Bytes of the files a viewer reads: info, manifests and the format's fragments."""
    total = 0
    info = _on_disk(mesh_dir, "info")
    total += info.stat().st_size if info else 0
    for label in ids:
        if fmt == "legacy":
            man = _on_disk(mesh_dir, f"{label}:0")
            if man is None:
                continue
            total += man.stat().st_size
            import gzip
            raw = man.read_bytes()
            raw = gzip.decompress(raw) if man.suffix == ".gz" else raw
            for frag in json.loads(raw)["fragments"]:
                p = _on_disk(mesh_dir, frag)
                total += p.stat().st_size if p else 0
        else:
            for name in (f"{label}", f"{label}.index"):
                p = _on_disk(mesh_dir, name)
                total += p.stat().st_size if p else 0
    return total


def label_boxes(labels: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, int]]:
    """``{label: (first voxel, last voxel + 1, voxel count)}`` in one pass per axis."""
    import fastremap

    ids, counts = fastremap.unique(labels, return_counts=True)
    lo = {int(i): np.full(3, 1 << 30) for i in ids if i}
    hi = {int(i): np.full(3, -1) for i in ids if i}
    for axis in range(3):
        for k in range(labels.shape[axis]):
            for label in fastremap.unique(np.take(labels, k, axis=axis)).tolist():
                if label:
                    lo[label][axis] = min(lo[label][axis], k)
                    hi[label][axis] = max(hi[label][axis], k + 1)
    return {int(i): (lo[int(i)], hi[int(i)], int(c)) for i, c in zip(ids, counts) if i}


def _open_edges(v: np.ndarray, f: np.ndarray) -> int:
    """Edges used by one triangle only, after welding vertices on a 1 nm grid."""
    if len(f) == 0:
        return 0
    _u, inv = np.unique(np.round(v), axis=0, return_inverse=True)
    f = inv.reshape(-1)[f]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _e, counts = np.unique(e, axis=0, return_counts=True)
    return int((counts == 1).sum())


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def check_meshes(layer: Path, fmt: str, boxes: dict) -> dict:
    """Read every segment's mesh back with cloud-volume and compare it with its label."""
    from cloudvolume import CloudVolume

    cv = CloudVolume("file://" + str(layer.resolve()), progress=False)
    ids = sorted(boxes)
    res = np.asarray(cv.resolution, np.float64)
    out = {"meshed": 0, "labels": len(ids), "tris_lod0": 0, "tris_coarsest": 0, "lods": [],
           "bbox_dev_vox": 0.0, "vol_ratio": [], "open_edges": None, "missing": [], "per_segment": {}}
    if fmt == "legacy":
        present = [i for i, path in cv.mesh.exists(ids).items() if path]
        present = [int(i) for i in present]
        meshes = cv.mesh.get(present, fuse=False) if present else {}
        out["open_edges"] = 0
        levels = {i: (meshes[i], meshes[i], 1) for i in meshes}
    else:
        manifests = {}
        for label in ids:
            try:
                m = cv.mesh.get_manifest(label)
            except Exception:          # noqa: BLE001 - a missing or unreadable manifest
                m = None
            if m is not None:
                manifests[label] = m
        levels = {}
        for label, man in manifests.items():
            fine = cv.mesh.get(label, lod=0).get(label)
            coarse = cv.mesh.get(label, lod=man.num_lods - 1).get(label) if man.num_lods > 1 else fine
            if fine is not None:
                levels[label] = (fine, coarse, int(man.num_lods))
    for label in ids:
        if label not in levels or len(levels[label][0].faces) == 0:
            out["missing"].append(label)
            continue
        fine, coarse, nlods = levels[label]
        v, f = np.asarray(fine.vertices, np.float64), np.asarray(fine.faces, np.int64)
        lo, hi, count = boxes[label]
        dev = max(np.abs(v.min(axis=0) - lo * res).max(), np.abs(v.max(axis=0) - hi * res).max())
        ratio = _signed_volume(v, f) / (count * float(np.prod(res)))
        out["meshed"] += 1
        out["tris_lod0"] += len(f)
        out["tris_coarsest"] += len(coarse.faces)
        out["lods"].append(nlods)
        out["bbox_dev_vox"] = max(out["bbox_dev_vox"], float(dev / res.min()))
        out["vol_ratio"].append(ratio)
        seg = {"tris_lod0": len(f), "tris_coarsest": len(coarse.faces), "lods": nlods,
               "bbox_dev_vox": round(float(dev / res.min()), 3), "vol_ratio": round(ratio, 4)}
        if fmt == "legacy":
            seg["open_edges"] = _open_edges(v, f)
            out["open_edges"] += seg["open_edges"]
        out["per_segment"][label] = seg
    return out


def check_setup(layer: Path, labels: np.ndarray) -> dict:
    from cloudvolume import CloudVolume

    cv = CloudVolume("file://" + str(layer.resolve()), mip=0, progress=False, fill_missing=False)
    data = np.asarray(cv[:, :, :])[..., 0]
    return {"base_exact": bool(data.shape == labels.shape and np.array_equal(data, labels)),
            "scales": len(cv.info["scales"]), "chunk": cv.info["scales"][0]["chunk_sizes"][0],
            "encoding": cv.info["scales"][0]["encoding"]}


# ---------------------------------------------------------------------------- reporting

COLUMNS = ("tool", "step", "wall s", "peak RSS MB", "peak PSS MB", "files", "MB", "viewer MB",
           "meshes", "LODs", "LOD0 triangles", "coarsest-LOD triangles", "check")


def _check_cell(kind: str, c: dict) -> str:
    if not c:
        return "-"
    if kind == "setup":
        return ("scale 0 exact" if c["base_exact"] else "SCALE 0 DIFFERS") + \
            f", {c['scales']} scale(s), {'x'.join(map(str, c['chunk']))} chunks"
    parts = []
    if c["meshed"]:
        parts.append(f"bbox dev <= {c['bbox_dev_vox']:.2f} vox")
        parts.append(f"vol {min(c['vol_ratio']):.3f}-{max(c['vol_ratio']):.3f}")
    if c["open_edges"] is not None:
        parts.append(f"open edges {c['open_edges']}")
    if c["missing"]:
        parts.append("NO MESH: " + ",".join(map(str, c["missing"])))
    return ", ".join(parts)


def build_rows(rows: list[Row], results: dict[str, StepResult], checks: dict, sizes: dict) -> list[list[str]]:
    from measure import MB

    table = []
    for row in rows:
        parts = [results.get(k) for k in row.steps]
        errors = [p.error for p in parts if p is None or p.error] if all(parts) else ["not run"]
        if errors:
            table.append([row.tool, row.label, "; ".join(e or "?" for e in errors)] + [""] * (len(COLUMNS) - 3))
            continue
        ms = [p.measurement for p in parts]
        c, st = checks.get(row.label + row.tool, {}), sizes.get(row.label + row.tool, {})
        lods = (f"{min(c['lods'])}-{max(c['lods'])}" if c.get("lods") and min(c["lods"]) != max(c["lods"])
                else str(c["lods"][0]) if c.get("lods") else "-")
        mesh_cells = ([f"{c['meshed']}/{c['labels']}", lods, str(c["tris_lod0"]), str(c["tris_coarsest"])]
                      if row.kind != "setup" and c else ["-"] * 4)
        table.append([row.tool, row.label, f"{sum(m.wall for m in ms):.1f}",
                      f"{max(m.peak_rss for m in ms) / MB:.0f}", f"{max(m.peak_pss for m in ms) / MB:.0f}",
                      str(st.get("files", "-")), f"{st.get('bytes', 0) / MB:.2f}",
                      f"{st['viewer'] / MB:.2f}" if "viewer" in st else "-",
                      *mesh_cells, _check_cell(row.kind, c)])
        if len(parts) > 1:
            for k, p in zip(row.steps, parts):
                note = " (shared)" if k in row.shared else ""
                table.append(["", "  " + p.name + note, f"{p.measurement.wall:.1f}",
                              f"{p.measurement.peak_rss / MB:.0f}", f"{p.measurement.peak_pss / MB:.0f}"]
                             + [""] * (len(COLUMNS) - 5))
    return table


def format_markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [cell.replace("|", "\\|") for cell in r]
        if cells[1].startswith("  "):
            cells[1] = "&nbsp;&nbsp;" + cells[1].strip()
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def versions(revision: str) -> dict:
    from measure import package_versions

    return package_versions(VERSIONED, revision)


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Command: `{report['argv']}`", "",
             f"Machine: {m['cpu']}, nproc {m['nproc']}, {m['ram_gib']} GiB RAM, Python {m['python']}, "
             f"{m['platform']}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", "",
             f"Input: {report['input']}", "", format_markdown_table(report["rows"]), "",
             "Settings:", ""]
    lines += [f"- {r['tool']} {r['label']}: {r['settings']}" for r in report["row_settings"]]
    lines += ["", "Commands (each its own process, from the repository root):", ""]
    lines += [f"- {s['name']}: `{s['command']}`" for s in report["steps"]]
    lines += ["", "Wall time of every run (s):", ""]
    lines += [f"- {s['name']}: " + (", ".join(f"{w:.2f}" for w in s["walls"]) or s["error"] or "-")
              + (f" (other processes meanwhile: {', '.join(f'{c:.1f}' for c in s['other_cpu'])} CPU-s)"
                 if s["other_cpu"] else "")
              for s in report["steps"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512,
                    help="x and y edge of the label volume, z is half of it (default 512)")
    ap.add_argument("--workdir", type=Path, default=BENCH_DIR / "work",
                    help="input, outputs and logs (default bench/work)")
    ap.add_argument("--peers", choices=("all", "none"), default="all",
                    help="all: also cloud-volume + igneous (default); none: ngconvert only")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="igneous LocalTaskQueue processes (ngconvert uses its default: all cores)")
    ap.add_argument("--error-nm", type=float, default=VOXEL_NM / 2,
                    help="igneous max_simplification_error in nm (default 500: half a voxel, "
                         "ngconvert's default)")
    ap.add_argument("--matched-error-nm", type=float, default=MATCHED_ERROR_NM,
                    help="igneous max_simplification_error of a second igneous forge whose triangle "
                         "count is close to ngconvert's (default 1.5; 0: leave it out)")
    ap.add_argument("--min-chunk", type=int, default=MIN_CHUNK_VARIANT,
                    help="min_chunk_size edge of the second igneous multires merge (default 8)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per step; the median wall time and the highest peaks are reported")
    ap.add_argument("--timeout", type=float, default=1800,
                    help="kill a run after this many seconds and report it as timed out (0: never; "
                         "default 1800)")
    ap.add_argument("--no-check", dest="check", action="store_false",
                    help="skip reading the layers and meshes back")
    ap.add_argument("--markdown", type=Path, help="also write the results as markdown to this file")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    from bench_pyramid import display_command, machine_info, ngconvert_fingerprint, ngconvert_revision
    from measure import format_table

    args = parse_args(argv)
    if args.size < 16 or args.size % 2:
        raise SystemExit("--size: give an even number of 16 or more")
    started = time.time()
    revision, fingerprint = ngconvert_revision(), ngconvert_fingerprint()
    print(f"preparing the input in {args.workdir} ...", flush=True)
    source = ensure_labels(args.workdir, args.size)
    labels = np.load(source)
    boxes = label_boxes(labels) if args.check else {}
    tag = f"mesh{args.size}"
    out = args.workdir / "out" / tag
    steps, rows = plan_steps(source, out, args.workers, args.error_nm, args.matched_error_nm,
                             args.min_chunk, args.peers == "all")

    results: dict[str, StepResult] = {}
    for step in steps:
        if step.copy_from is not None and not (results.get(_producer(steps, step.copy_from)) or
                                               StepResult("", "", "")).measurement:
            results[step.key] = StepResult(step.key, step.name, display_command(step.cmd),
                                           error="not run: its input step failed")
            continue
        print(f"[{tag}] {step.key}: {step.name} ...", flush=True)
        r = run_step(step, args.workdir / "logs" / tag, args.repeat, args.timeout)
        results[step.key] = r
        if r.error:
            print(f"    {r.error}", flush=True)
        else:
            print(f"    {r.measurement.wall:.1f} s, peak RSS {r.measurement.peak_rss / 1e6:.0f} MB, "
                  f"others used {max(r.other_cpu):.1f} CPU-s", flush=True)

    checks, sizes = {}, {}
    for row in rows:
        last = next(s for s in steps if s.key == row.steps[-1])
        if not all(results.get(k) and results[k].measurement for k in row.steps):
            continue
        key = row.label + row.tool
        if row.kind == "setup":
            sizes[key] = folder_stats(last.layer)
            if args.check:
                checks[key] = check_setup(last.layer, labels)
            continue
        sizes[key] = folder_stats(last.layer / MESH_DIR)
        sizes[key]["viewer"] = viewer_bytes(last.layer / MESH_DIR, row.kind, sorted(boxes or {}))
        if args.check:
            print(f"checking {row.tool} {row.label} ...", flush=True)
            checks[key] = check_meshes(last.layer, row.kind, boxes)

    table = build_rows(rows, results, checks, sizes)
    print("\n" + format_table(list(COLUMNS), table) + "\n", flush=True)

    end_revision = ngconvert_revision()
    if (end_revision, ngconvert_fingerprint()) != (revision, fingerprint):
        revision = (f"{revision} at the start, {end_revision} at the end: "
                    "THE NGCONVERT SOURCE CHANGED DURING THE RUN")
        print(f"warning: ngconvert {revision}", file=sys.stderr, flush=True)
    import importlib.util
    shape = "x".join(map(str, labels.shape))
    report = {
        "argv": shlex.join(["python", "bench/bench_mesh.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(), "versions": versions(revision),
        "ngconvert_path": str(Path(importlib.util.find_spec("ngconvert").origin).parent),
        "input": (f"`{display_command([str(source)])}`: {shape} uint32, {len(boxes) or N_LABELS} labels, "
                  f"{VOXEL_NM:g} nm voxels, {source.stat().st_size / 1e6:.0f} MB"),
        "rows": table,
        "row_settings": [{"tool": r.tool, "label": r.label, "settings": r.settings} for r in rows],
        "steps": [{"key": s.key, "name": results[s.key].name, "command": results[s.key].command,
                   "walls": results[s.key].walls, "other_cpu": results[s.key].other_cpu,
                   "error": results[s.key].error,
                   "measurement": vars(results[s.key].measurement) if results[s.key].measurement else None}
                  for s in steps],
        "checks": checks, "sizes": sizes, "elapsed_s": round(time.time() - started, 1)}
    (args.workdir / f"results_{tag}.json").write_text(json.dumps(report, indent=2, default=str))
    if args.markdown:
        args.markdown.write_text(render_markdown(report))
        print(f"markdown written to {args.markdown}")


def _producer(steps: list[Step], layer: Path) -> str | None:
    """The step that writes ``layer``."""
    return next((s.key for s in steps if s.layer == layer), None)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "peer-igneous":
        peer_main(sys.argv[2:])
    else:
        main()
