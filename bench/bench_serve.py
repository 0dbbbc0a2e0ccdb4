"""Benchmark: `ngconvert serve` under load from many concurrent clients.

A real dataset (the brain-like volume of bench/synth_volume.py, default 256^3 uint8, converted
twice: unsharded with 32^3 chunks stored as KEY.gz, and sharded) is served by
``python -m ngconvert serve SITE --port 0`` in its own process.  N clients (asyncio, raw
sockets, in this process) make REQUESTS GETs between them, drawn at random with a fixed seed:
two thirds are whole chunks of the unsharded copy (answered from KEY.gz with
``Content-Encoding: gzip``), one third are ``Range`` requests of up to 64 KiB into the shard
files.  Every answer is checked against the bytes on disk; a wrong status, wrong bytes, a
dropped connection or no answer within --timeout seconds counts as a failure.

Two connection modes: ``keep-alive`` (each client keeps one HTTP/1.1 connection and reconnects
only when it is closed, as a browser does) and ``new`` (a new connection for every request,
as clients without a connection pool do).  Each row starts a fresh server; its peak RSS and
thread count are sampled every 50 ms.  Columns: requests per second (answers / wall time),
latency percentiles of the answered requests (from connecting or sending to the last byte),
failures, the server's CPU time (user + system) over the row, its peak RSS and threads.

    python bench/bench_serve.py                              # N = 20, 100, 200; 4,000 requests; both modes
    python bench/bench_serve.py --clients 200 --mode keep-alive --markdown bench/work/serve.md
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from measure import format_table, run_measured  # noqa: E402

HERE = Path(__file__).parent
RANGE_MAX = 64 << 10


def prepare(work: Path, size: int, chunk: int) -> Path:
    """SITE with img/ (unsharded, KEY.gz chunks) and shard/ (sharded) conversions of one volume."""
    site = work / f"site{size}_{chunk}"
    if (site / "img" / "info").is_file() and (site / "shard" / "info").is_file():
        return site
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"brain{size}.nii"
    if not src.exists():
        run_measured([sys.executable, str(HERE / "synth_volume.py"), str(src), "--size", str(size)],
                     work / "synth.log")
    ng = [sys.executable, "-m", "ngconvert", "convert", str(src)]
    cs = ["--chunk-size", ",".join([str(chunk)] * 3), "--quiet"]
    for name, extra in (("img", []), ("shard", ["--sharded"])):
        m = run_measured(ng + [str(site / name), *cs, *extra], work / f"convert_{name}.log")
        if m.returncode:
            sys.exit(f"conversion failed, see {work / f'convert_{name}.log'}")
    return site


def plan_requests(site: Path, n: int, seed: int) -> list[tuple[str, str | None, bytes]]:
    """(URL path, Range header or None, expected body) for n requests."""
    chunks, shards = [], []
    for p in sorted((site / "img").rglob("*.gz")):
        chunks.append(("/" + p.relative_to(site).as_posix()[:-3], p.read_bytes()))
    for p in sorted((site / "shard").rglob("*.shard")):
        shards.append(("/" + p.relative_to(site).as_posix(), p.read_bytes()))
    if not chunks or not shards:
        sys.exit(f"{site}: no chunk or shard files")
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 2:
            path, data = rnd.choice(shards)
            start = rnd.randrange(len(data))
            stop = min(len(data), start + rnd.randint(1, RANGE_MAX))
            out.append((path, f"bytes={start}-{stop - 1}", data[start:stop]))
        else:
            path, data = rnd.choice(chunks)
            out.append((path, None, data))
    rnd.shuffle(out)
    return out


def start_server(site: Path) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen([sys.executable, "-m", "ngconvert", "serve", str(site), "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    line = proc.stderr.readline()
    m = re.search(r"http://([\d.]+):(\d+)", line)
    if not m:
        proc.kill()
        sys.exit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, m.group(1), int(m.group(2))


async def _fetch(reader, writer, path, rng, expected) -> bool:
    head = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept-Encoding: gzip\r\n"
    if rng:
        head += f"Range: {rng}\r\n"
    writer.write((head + "\r\n").encode())
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for h in lines[1:]:
        if ":" in h:
            k, v = h.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    ok = status == (206 if rng else 200) and body == expected
    return ok, headers.get("connection", "").lower() == "close"


async def load(host: str, port: int, reqs, clients: int, keep_alive: bool, timeout: float, pid: int):
    todo = iter(range(len(reqs)))
    latencies, failures = [], []
    peak = {"rss": 0, "threads": 0}
    proc = psutil.Process(pid)
    done = asyncio.Event()

    async def sample():
        while not done.is_set():
            try:
                peak["rss"] = max(peak["rss"], proc.memory_info().rss)
                peak["threads"] = max(peak["threads"], proc.num_threads())
            except psutil.Error:
                pass
            await asyncio.sleep(0.05)

    async def client():
        conn = None
        for i in todo:
            path, rng, expected = reqs[i]
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    if conn is None:
                        conn = await asyncio.open_connection(host, port)
                    ok, closing = await _fetch(*conn, path, rng, expected)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    IndexError, TimeoutError) as e:
                failures.append(f"{path} {rng}: {type(e).__name__} {e}")
                ok, closing = None, True
            if ok:
                latencies.append(time.perf_counter() - t0)
            elif ok is not None:
                failures.append(f"{path} {rng}: wrong answer")
            if closing or not keep_alive:
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    sampler = asyncio.create_task(sample())
    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    peak["cpu"] = sum(proc.cpu_times()[:2]) - cpu0
    done.set()
    await sampler
    return wall, latencies, failures, peak


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ":/src"], cwd=HERE, capture_output=True,
                               text=True).stdout.strip()
        return rev + (" + local changes in src/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="edge of the test volume (default 256)")
    ap.add_argument("--chunk", type=int, default=32, help="chunk edge (default 32)")
    ap.add_argument("--clients", default="20,100,200", help="comma-separated client counts (default 20,100,200)")
    ap.add_argument("--requests", type=int, default=4000, help="requests per row (default 4000)")
    ap.add_argument("--mode", choices=["keep-alive", "new", "both"], default="both")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as failed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "serve")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = ap.parse_args()

    site = prepare(args.work, args.size, args.chunk)
    reqs = plan_requests(site, args.requests, args.seed)
    modes = ["keep-alive", "new"] if args.mode == "both" else [args.mode]
    rows = []
    for mode in modes:
        for n in [int(x) for x in args.clients.split(",")]:
            proc, host, port = start_server(site)
            try:
                wall, lat, fails, peak = asyncio.run(load(host, port, reqs, n, mode == "keep-alive",
                                                          args.timeout, proc.pid))
            finally:
                proc.terminate()
                proc.wait()
            ms = lambda s: f"{s * 1000:.0f}"  # noqa: E731
            rows.append([mode, str(n), str(len(reqs)), f"{len(lat) / wall:.0f}",
                         ms(statistics.median(lat)) if lat else "-", ms(pct(lat, 99)), ms(max(lat, default=0)),
                         str(len(fails)), f"{peak['cpu']:.1f}", f"{peak['rss'] / 2 ** 20:.0f}",
                         str(peak["threads"])])
            print("  ".join(rows[-1]), *fails[:3], sep="\n    " if fails else "", flush=True)
    cols = ["connections", "clients", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "failures",
            "server CPU s", "server RSS MiB", "server threads"]
    table = format_table(cols, rows)
    print(f"\nngconvert {revision()}, {os.cpu_count()} cores, {args.size}^3 uint8, {args.chunk}^3 chunks, "
          f"timeout {args.timeout:g} s")
    print(table)
    if args.markdown:
        md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
