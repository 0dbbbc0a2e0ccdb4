"""Scale-out and robustness: a real Dask LocalCluster of worker processes gives the bytes of a
serial run (image pyramid, sharded segmentation with sharded meshes), survives a worker killed
mid-run; SIGKILL at several points + --resume gives the bytes of a clean run; a task that keeps
failing ends the run naming it; a flaky S3 server (503s and dropped connections) is survived."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ngconvert
from conftest import label_volume, run, smooth_volume
from s3server import FlakyProxy, fraction

pytest_plugins = ("s3server",)


def files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=50)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_image_pyramid_on_dask_equals_serial(tmp_path, client):
    a = smooth_volume((150, 130, 90), np.uint16, noise=40)
    np.save(tmp_path / "a.npy", a)
    opts = dict(layer_type="image", chunk_size=(32, 32, 32), task_bytes=1 << 20, quiet=True)
    ngconvert.convert(tmp_path / "a.npy", tmp_path / "serial", ngconvert.ConvertOptions(workers=1, **opts))
    ngconvert.convert(tmp_path / "a.npy", tmp_path / "dask", ngconvert.ConvertOptions(**opts), executor=client)
    assert files(tmp_path / "dask") == files(tmp_path / "serial")
    # an in-memory array reaches the workers too
    ngconvert.write_volume(a, tmp_path / "array", executor=client, **opts)
    ngconvert.write_volume(a, tmp_path / "array-serial", workers=1, **opts)
    assert files(tmp_path / "array") == files(tmp_path / "array-serial")


def test_sharded_segmentation_with_meshes_on_dask_equals_serial(tmp_path, client):
    a = label_volume((96, 80, 64), labels=(0, 3, 7, 12, 100, 4000))
    np.save(tmp_path / "a.npy", a)
    opts = dict(layer_type="segmentation", chunk_size=(16, 16, 16), sharded=True, shard_bytes=64 << 10,
                labels={3: "a", 7: "b", 12: "c", 100: "d"}, quiet=True,
                mesh=ngconvert.MeshOptions(format="multires", sharded=True, region=32))
    ngconvert.convert(tmp_path / "a.npy", tmp_path / "serial", ngconvert.ConvertOptions(workers=1, **opts))
    ngconvert.convert(tmp_path / "a.npy", tmp_path / "dask", ngconvert.ConvertOptions(**opts), executor=client)
    got, want = files(tmp_path / "dask"), files(tmp_path / "serial")
    assert sorted(got) == sorted(want) and got == want
    assert any(k.startswith("mesh/") and k.endswith(".shard") for k in got)


def test_a_worker_killed_mid_run_is_survived(tmp_path, client):
    a = smooth_volume((192, 160, 128), np.uint16, noise=100)
    np.save(tmp_path / "a.npy", a)
    opts = dict(layer_type="image", chunk_size=(16, 16, 16), task_bytes=1 << 18, quiet=True, gzip_level=9)
    ngconvert.convert(tmp_path / "a.npy", tmp_path / "serial", ngconvert.ConvertOptions(workers=1, **opts))
    errors = []

    def go():
        try:
            ngconvert.convert(tmp_path / "a.npy", tmp_path / "dask", ngconvert.ConvertOptions(**opts),
                              executor=client)
        except BaseException as e:      # reported below
            errors.append(e)

    t = threading.Thread(target=go)
    t.start()
    done = tmp_path / "dask" / ".ngconvert" / "done" / "0"
    deadline = time.time() + 120
    while time.time() < deadline and not (done.is_dir() and len(os.listdir(done)) >= 10):
        time.sleep(0.01)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    t.join(timeout=600)
    assert not t.is_alive() and not errors, errors
    assert files(tmp_path / "dask") == files(tmp_path / "serial")
    client.wait_for_workers(2, timeout=60)


def test_local_dask_cluster_from_the_command_line(tmp_path):
    a = smooth_volume((70, 60, 50), np.uint8)
    np.save(tmp_path / "a.npy", a)
    p = run("convert", tmp_path / "a.npy", tmp_path / "d", "--type", "image", "--dask-workers", "2", check=0)
    assert "Dask cluster with 2 worker" in p.stderr
    run("convert", tmp_path / "a.npy", tmp_path / "s", "--type", "image", "--workers", "1", "--quiet", check=0)
    assert files(tmp_path / "d") == files(tmp_path / "s")
    p = run("convert", tmp_path / "a.npy", tmp_path / "x", "--scheduler", "tcp://127.0.0.1:9")
    assert p.returncode == 2 and "scheduler" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------- crashes and failing tasks


def child_pids(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


KILL_ARGS = ["--type", "image", "--chunk-size", "16,16,16", "--task-memory", "1", "--workers", "2",
             "--gzip-level", "9", "--sharded", "--shard-size", "1", "--quiet"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    np.save(root / "v.npy", smooth_volume((224, 192, 144), np.uint16, noise=200))
    run("convert", root / "v.npy", root / "clean", *KILL_ARGS, check=0)
    p = run("convert", root / "v.npy", root / "dry", *KILL_ARGS, "--dry-run", check=0)
    stage0 = int(next(line for line in p.stdout.splitlines() if line.startswith("stage 0")).split(", ")[-1]
                 .split()[0])
    return root, files(root / "clean"), stage0


@pytest.mark.parametrize("when", ["early", "mid-way", "top scales"])
def test_sigkill_at_several_points_then_resume(tmp_path, clean_run, when):
    root, clean, stage0 = clean_run
    assert stage0 >= 8
    dest = tmp_path / "killed"
    done = dest / ".ngconvert" / "done"
    proc = subprocess.Popen([sys.executable, "-m", "ngconvert", "convert", str(root / "v.npy"), str(dest),
                             *KILL_ARGS])

    def reached() -> bool:
        if when == "early":
            return (done / "0").is_dir() and len(os.listdir(done / "0")) >= 1
        if when == "mid-way":
            return (done / "0").is_dir() and len(os.listdir(done / "0")) >= stage0 // 2
        return (done / "shards").is_dir()              # past the pyramid: writing the shards

    deadline = time.time() + 180
    while time.time() < deadline and not reached():
        time.sleep(0.002)
    assert reached(), "the run finished before the kill point"
    children = child_pids(proc.pid)
    assert children, "the run should have started pool workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10                    # the pool's workers die with the run
    while time.time() < deadline and [c for c in children if running(c)]:
        time.sleep(0.05)
    alive = [c for c in children if running(c)]
    assert not alive, f"worker processes {alive} outlived the killed run"
    assert not (dest / "info").exists()
    run("convert", root / "v.npy", dest, *KILL_ARGS, "--resume", check=0)
    assert files(dest) == clean


def test_a_task_that_keeps_failing_ends_the_run_naming_it(tmp_path, monkeypatch):
    import importlib

    conv = importlib.import_module("ngconvert.pipelines.convert")     # the module, not the function of that name

    a = smooth_volume((96, 96, 64), np.uint8)
    np.save(tmp_path / "a.npy", a)
    opts = dict(layer_type="image", chunk_size=(16, 16, 16), task_bytes=1 << 16, quiet=True, workers=1)
    ngconvert.convert(tmp_path / "a.npy", tmp_path / "clean", ngconvert.ConvertOptions(**opts))
    real = conv.run_task
    calls = {"flaky": 0, "bad": 0}

    def faulty(ctx, task):
        if task.stage == 0 and task.index == 3:          # fails once, then works: retried
            calls["flaky"] += 1
            if calls["flaky"] == 1:
                raise ConnectionResetError("connection reset by peer")
        if task.stage == 0 and task.index == 5:          # fails every time
            calls["bad"] += 1
            raise OSError("disk on fire")
        return real(ctx, task)

    monkeypatch.setattr(conv, "run_task", faulty)
    with pytest.raises(ngconvert.UserError) as e:
        ngconvert.convert(tmp_path / "a.npy", tmp_path / "out", ngconvert.ConvertOptions(**opts))
    msg = str(e.value)
    assert "stage 0 task 5" in msg and "disk on fire" in msg and "--resume" in msg
    assert calls["bad"] == 3 and calls["flaky"] == 2              # 2 retries; the flaky one recovered
    plan = ngconvert.convert(tmp_path / "a.npy", tmp_path / "dry", ngconvert.ConvertOptions(**opts),
                             dry_run=True).plan
    n_done = len(os.listdir(tmp_path / "out" / ".ngconvert" / "done" / "0"))
    assert n_done == plan.task_count(plan.stages[0]) - 1          # every other task of the stage finished
    assert not (tmp_path / "out" / "info").exists()
    monkeypatch.setattr(conv, "run_task", real)
    ngconvert.convert(tmp_path / "a.npy", tmp_path / "out", ngconvert.ConvertOptions(resume=True, **opts))
    assert files(tmp_path / "out") == files(tmp_path / "clean")


# ---------------------------------------------------------------- flaky storage


def test_conversion_through_a_flaky_s3_server(tmp_path, moto_server, bucket):
    a = label_volume((80, 70, 60))
    np.save(tmp_path / "a.npy", a)
    common = ["--type", "segmentation", "--chunk-size", "16,16,16", "--sharded", "--shard-size", "1", "--quiet",
              "--labels", tmp_path / "t.json"]
    (tmp_path / "t.json").write_text('{"3": "three", "7": "seven"}')
    run("convert", tmp_path / "a.npy", f"s3://{bucket}/clean", *common, "--endpoint-url", moto_server.url, check=0)
    host, port = moto_server.url.rsplit(":", 1)
    with FlakyProxy(int(port), fraction(0.10, seed=7), status=503, drop_when=fraction(0.02, seed=11)) as proxy:
        run("convert", tmp_path / "a.npy", f"s3://{bucket}/flaky", *common, "--endpoint-url", proxy.url, check=0)
    assert proxy.failed > 20 and proxy.dropped > 2, (proxy.failed, proxy.dropped, proxy.seen)
    s3 = moto_server.client()

    def objects(prefix):
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=o["Key"])
                out[o["Key"][len(prefix) + 1:]] = (body["Body"].read(), body.get("ContentEncoding"))
        return out

    clean, flaky = objects("clean"), objects("flaky")
    assert sorted(clean) == sorted(flaky) and clean == flaky
    assert not any(k.startswith(".ngconvert") for k in flaky)


def test_mesh_and_reencode_on_dask_equal_serial(tmp_path, client):
    a = label_volume((80, 64, 48))
    ngconvert.write_segmentation(a, tmp_path / "seg", chunk_size=(16, 16, 16))
    for name, ex in (("serial", None), ("dask", client)):
        kw = dict(workers=1) if ex is None else dict(executor=ex)
        ngconvert.reencode(tmp_path / "seg", tmp_path / f"re-{name}",
                           ngconvert.ReencodeOptions(sharded=True, shard_bytes=16 << 10, encoding="raw",
                                                     quiet=True, workers=kw.get("workers")), executor=ex)
        ngconvert.mesh_layer(tmp_path / f"re-{name}", ngconvert.MeshOptions(format="multires", region=24), **kw)
    assert files(tmp_path / "re-dask") == files(tmp_path / "re-serial")
    assert any(k.startswith("mesh/") for k in files(tmp_path / "re-dask"))
