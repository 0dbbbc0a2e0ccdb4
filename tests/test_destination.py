"""The destination policy: overwrite staged and swapped, one writer per destination, resume
that notices a changed source or options and is idempotent, meshes swapped like datasets."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ngconvert
from ngconvert.store import destination
from ngconvert.core.errors import UserError
from ngconvert.store.open import open_store
from conftest import label_volume, one_line_error, read_cloudvolume, read_info, run, smooth_volume

pytest_plugins = ("s3server",)

ARGS = ["--type", "image", "--chunk-size", "32,32,32", "--task-memory", "1", "--workers", "1",
        "--gzip-level", "9", "--quiet"]


def files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def data(root: Path) -> dict:
    """The dataset's files without its record of how it was made (which names the source)."""
    return {k: v for k, v in files(root).items() if k != "ngconvert_run.json"}


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ngconvert", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_markers(dest: Path, n: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    done = dest / ".ngconvert" / "done" / "0"
    deadline = time.time() + timeout
    while time.time() < deadline and not (done.is_dir() and len(os.listdir(done)) >= n):
        if proc is not None and proc.poll() is not None:
            return
        time.sleep(0.01)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Two different sources of the same shape, and their clean conversions."""
    d = tmp_path_factory.mktemp("volumes")
    np.save(d / "old.npy", smooth_volume((160, 160, 128), np.uint16, noise=300, seed=1))
    np.save(d / "new.npy", smooth_volume((160, 160, 128), np.uint16, noise=300, seed=2))
    run("convert", d / "old.npy", d / "clean-old", *ARGS, check=0)
    run("convert", d / "new.npy", d / "clean-new", *ARGS, check=0)
    return d


def copy_of_old(volumes, tmp_path) -> Path:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(volumes / "clean-old", out)
    return out


# -- overwrite: the old dataset or the new one is complete, never neither ------------------

@pytest.mark.parametrize("markers", [1, 6, 10 ** 6])
def test_overwrite_killed_at_any_point_keeps_a_complete_dataset(volumes, tmp_path, markers):
    out = copy_of_old(volumes, tmp_path)
    old, new = files(volumes / "clean-old"), files(volumes / "clean-new")
    proc = start("convert", volumes / "new.npy", out, *ARGS, "--overwrite")
    if markers < 10 ** 6:
        wait_for_markers(tmp_path / ".out.ngconvert-new", markers, proc)
    else:
        time.sleep(0.05 + 0.4 * np.random.default_rng().random())       # anywhere, the swap included
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert files(out) in (old, new), "after a kill the destination must hold the old or the new dataset"
    # the same command with --resume finishes the replacement (idempotently)
    run("convert", volumes / "new.npy", out, *ARGS, "--overwrite", "--resume", check=0)
    assert files(out) == new
    assert not (tmp_path / ".out.ngconvert-new").exists() and not (tmp_path / ".out.ngconvert-lock").exists()
    run("convert", volumes / "new.npy", out, *ARGS, "--resume", check=0)
    assert files(out) == new


def test_a_crash_between_the_two_renames_is_finished_by_the_next_run(volumes, tmp_path, monkeypatch):
    """Where the atomic exchange is missing, the swap is two renames; a crash between them
    leaves the new dataset complete beside, and the next run puts it in place."""
    out = copy_of_old(volumes, tmp_path)
    monkeypatch.setattr(destination, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def crash_on_second(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_rename(a, b)
    monkeypatch.setattr(destination.os, "rename", crash_on_second)
    opts = ngconvert.ConvertOptions(layer_type="image", chunk_size=(32, 32, 32), gzip_level=9, workers=1,
                                    overwrite=True, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        ngconvert.convert(volumes / "new.npy", out, opts)
    monkeypatch.setattr(destination.os, "rename", real_rename)
    assert not out.exists() and (tmp_path / ".out.ngconvert-old").is_dir()
    staged = files(tmp_path / ".out.ngconvert-new")
    assert staged.pop(".ngconvert/ready") is not None          # marked complete, ready to be swapped in
    assert staged == files(volumes / "clean-new")
    run("convert", volumes / "new.npy", out, *ARGS, "--resume", check=0)
    assert files(out) == files(volumes / "clean-new") and not (tmp_path / ".out.ngconvert-old").exists()


def test_overwrite_with_bad_input_or_a_failing_task_keeps_the_old_dataset(volumes, tmp_path):
    out = copy_of_old(volumes, tmp_path)
    old = files(out)
    for bad in (["--resolution", "0,1,1"], ["--encoding", "jpeg"], ["--gzip-level", "99"]):
        one_line_error(run("convert", volumes / "new.npy", out, *ARGS, "--overwrite", *bad))
        assert files(out) == old
    # a source inside the destination (or the destination inside the source) is refused first
    src = out / "src.npy"
    src.write_bytes((volumes / "new.npy").read_bytes())
    line = one_line_error(run("convert", src, out, *ARGS, "--overwrite"))
    assert "inside the destination" in line and src.is_file()
    from PIL import Image

    slices = tmp_path / "slices"
    slices.mkdir()
    for z in range(3):
        Image.fromarray(np.full((20, 16), z * 40, np.uint8)).save(slices / f"s{z}.png")
    line = one_line_error(run("convert", slices, slices / "inner", *ARGS))
    assert "inside the source" in line and not (slices / "inner").exists()


# -- one writer per destination -------------------------------------------------------------

def test_two_runs_into_one_destination(volumes, tmp_path):
    out = tmp_path / "out"
    np.save(tmp_path / "big.npy", smooth_volume((256, 256, 256), np.uint16, noise=300))
    slow = ARGS[:-2] + ["12", "--quiet"]
    first = start("convert", tmp_path / "big.npy", out, *slow)
    wait_for_markers(out, 1, first)
    assert first.poll() is None, "the first run must still be running"
    for second in (run("convert", volumes / "old.npy", out, *ARGS, "--overwrite"),
                   run("convert", tmp_path / "big.npy", out, *slow, "--resume")):
        line = one_line_error(second)
        assert "being written by another run" in line and f"pid {first.pid}" in line
        assert socket.gethostname() in line
    assert first.poll() is None, "the refused runs must not have changed anything"
    assert first.wait() == 0, first.stderr.read()
    assert run("check", out, "--full").returncode == 0
    assert "already complete" in run("convert", tmp_path / "big.npy", out, *slow[:-1], "--resume").stderr
    assert not (tmp_path / ".out.ngconvert-lock").exists()


def test_stale_and_foreign_locks(volumes, tmp_path):
    out = tmp_path / "out"
    lock = tmp_path / ".out.ngconvert-lock"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0, "command": "convert"}))
    run("convert", volumes / "new.npy", out, *ARGS, check=0)          # a dead process's lock is taken over
    assert files(out) == files(volumes / "clean-new") and not lock.exists()
    lock.write_text(json.dumps({"host": "another-machine", "pid": 1, "started": 0, "command": "convert"}))
    line = one_line_error(run("convert", volumes / "new.npy", out, *ARGS, "--resume"))
    assert "another-machine" in line and "--break-lock" in line and str(lock) in line
    p = run("convert", volumes / "new.npy", out, *ARGS, "--resume", "--break-lock", check=0)
    assert not lock.exists() and files(out) == files(volumes / "clean-new")


def test_lock_on_s3_is_a_conditional_create(moto_server, bucket):
    from ngconvert.store.base import StorageOptions

    target = open_store(f"s3://{bucket}/locked", StorageOptions(endpoint_url=moto_server.url))
    c = destination.claim(target, command="test")
    with pytest.raises(destination.DestinationError, match="being written by another run"):
        destination.claim(target, command="test")
    c.close()
    destination.claim(target, command="test").close()


# -- resume notices change, and is idempotent ---------------------------------------------------

def test_resume_notices_a_changed_source(volumes, tmp_path):
    src = tmp_path / "src.npy"
    src.write_bytes((volumes / "old.npy").read_bytes())
    out = tmp_path / "out"
    proc = start("convert", src, out, *ARGS)
    wait_for_markers(out, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "info").exists()
    src.write_bytes((volumes / "new.npy").read_bytes())                 # same size, other values
    line = one_line_error(run("convert", src, out, *ARGS, "--resume"))
    assert "changed" in line and "--overwrite" in line
    line = one_line_error(run("convert", volumes / "old.npy", out, *ARGS, "--resume"))
    assert "not " in line and "old.npy" in line                          # another file altogether
    run("convert", src, out, *ARGS, "--overwrite", check=0)
    assert data(out) == data(volumes / "clean-new")
    # complete: the same run is a no-op, a changed source or option is named
    before = files(out)
    assert "already complete" in run("convert", src, out, *ARGS[:-1], "--resume", check=0).stderr
    assert files(out) == before
    line = one_line_error(run("convert", src, out, *ARGS, "--resume", "--chunk-size", "64,64,64"))
    assert "chunk_size [32, 32, 32] -> [64, 64, 64]" in line
    os.utime(src, ns=(1, 1))
    assert "modified" in one_line_error(run("convert", src, out, *ARGS, "--resume"))


def test_reencode_and_copies_resume_idempotently(volumes, tmp_path):
    src = volumes / "clean-new"
    out = tmp_path / "png"
    for _ in range(2):
        run("reencode", src, out, "--encoding", "png", "--workers", "1", "--quiet", "--resume", check=0)
    assert read_info(out)["scales"][0]["encoding"] == "png"
    line = one_line_error(run("reencode", src, out, "--encoding", "png", "--png-level", "9", "--workers", "1",
                              "--resume"))
    assert "other options (scales" in line and "--overwrite" in line
    copy = tmp_path / "copy"
    run("upload", src, copy, "--quiet", check=0)
    before = files(copy)
    run("upload", src, copy, "--resume", "--quiet", check=0)
    assert files(copy) == before == files(src)
    assert "--overwrite" in one_line_error(run("upload", volumes / "clean-old", copy))
    assert "--overwrite" in one_line_error(run("download", volumes / "clean-old", copy))
    run("download", volumes / "clean-old", copy, "--overwrite", "--quiet", check=0)
    assert files(copy) == files(volumes / "clean-old")


# -- object stores: staged, then copied over the old dataset (info last) ------------------------

def test_overwrite_on_s3_replaces_only_when_complete(moto_server, bucket, tmp_path):
    from ngconvert.store.base import StorageOptions

    opts = StorageOptions(endpoint_url=moto_server.url)
    url = f"s3://{bucket}/lab"
    a = label_volume((48, 40, 24), np.uint32)
    b = label_volume((40, 40, 16), np.uint32, seed=5)
    ngconvert.write_segmentation(a, url, chunk_size=(16, 16, 16), storage=opts)
    store = open_store(url, opts)
    keys_a = {k for k, _ in store.list()}
    with pytest.raises(UserError, match="--overwrite"):
        ngconvert.write_segmentation(b, url, chunk_size=(16, 16, 16), storage=opts)
    with pytest.raises(UserError):
        ngconvert.write_segmentation(b, url, chunk_size=(0, 16, 16), storage=opts, overwrite=True)
    assert {k for k, _ in store.list()} == keys_a
    ngconvert.write_segmentation(b, url, chunk_size=(8, 8, 8), storage=opts, overwrite=True)
    keys_b = {k for k, _ in store.list()}
    assert "info" in keys_b and not any(k.startswith(".ngconvert") for k in keys_b)
    assert json.loads(store.get("info"))["scales"][0]["chunk_sizes"] == [[8, 8, 8]]
    assert not any(k.startswith("1_1_1/") and k.endswith("-16_0-16_0-16") for k in keys_b)   # old chunks gone
    local = tmp_path / "back"
    ngconvert.download(url, local, opts)
    np.testing.assert_array_equal(read_cloudvolume(local, 0)[..., 0], b)


# -- meshes are swapped like datasets ---------------------------------------------------------------

@pytest.fixture
def seg(tmp_path):
    a = np.zeros((96, 96, 96), np.uint32)
    g = np.indices(a.shape).astype(np.float32)
    for i, c in enumerate([(30, 30, 30), (60, 60, 60), (30, 65, 40)]):
        a[((g - np.array(c)[:, None, None, None]) ** 2).sum(0) < 18 ** 2] = i + 1
    np.save(tmp_path / "seg.npy", a)
    run("convert", tmp_path / "seg.npy", tmp_path / "seg", "--type", "segmentation", "--mesh", "--workers", "1",
        "--chunk-size", "32,32,32", "--quiet", check=0)
    return tmp_path / "seg"


def test_mesh_overwrite_is_swapped_in_when_complete(seg, tmp_path):
    old_meshes, info = files(seg / "mesh"), (seg / "info").read_bytes()
    proc = start("mesh", seg, "--overwrite", "--format", "multires", "--lods", "3", "--workers", "1")
    deadline = time.time() + 60
    while time.time() < deadline and not (seg / ".ngconvert" / "mesh-done").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (seg / "info").read_bytes() == info and files(seg / "mesh") == old_meshes
    assert run("check", seg).returncode == 0
    run("mesh", seg, "--overwrite", "--format", "multires", "--resume", "--workers", "1", "--quiet", check=0)
    assert read_info(seg)["mesh"] == "mesh"
    assert json.loads((seg / "mesh" / "info").read_text())["@type"] == "neuroglancer_multilod_draco"
    assert not (seg / "mesh.ngconvert-new").exists() and not (seg / ".ngconvert").exists()
    assert run("check", seg, "--full").returncode == 0
    assert "already complete" in run("mesh", seg, "--format", "multires", "--resume").stderr


def test_mesh_failing_on_a_damaged_chunk_keeps_the_old_meshes(seg):
    old_meshes, info = files(seg / "mesh"), (seg / "info").read_bytes()
    chunk = next(p for p in sorted((seg / "1_1_1").iterdir()) if p.name.endswith(".gz"))
    good = chunk.read_bytes()
    chunk.write_bytes(good[: len(good) // 2])
    line = one_line_error(run("mesh", seg, "--overwrite", "--workers", "1"))
    assert "--resume" in line
    assert (seg / "info").read_bytes() == info and files(seg / "mesh") == old_meshes
    chunk.write_bytes(good)
    run("mesh", seg, "--overwrite", "--resume", "--workers", "1", "--quiet", check=0)
    assert files(seg / "mesh").keys() == old_meshes.keys() and not (seg / ".ngconvert").exists()


def test_check_catches_dangling_references(seg):
    import shutil

    (seg / "mesh" / "info").unlink()
    assert "mesh/info: missing" in run("check", seg).stdout
    shutil.rmtree(seg / "mesh")
    assert "mesh/: missing or empty" in run("check", seg).stdout
    info = read_info(seg)
    info.pop("mesh")
    info["skeletons"] = "skeletons"
    (seg / "info").write_text(json.dumps(info))
    assert "skeletons/: missing or empty" in run("check", seg).stdout
    (seg / "skeletons").mkdir()
    (seg / "skeletons" / "1").write_bytes(b"x")
    assert "skeletons/info: missing" in run("check", seg).stdout
    shutil.rmtree(seg / "segment_properties", ignore_errors=True)
    info["segment_properties"] = "segment_properties"
    (seg / "info").write_text(json.dumps(info))
    assert "segment_properties/info: missing" in run("check", seg).stdout


# -- crashes inside the swap (regressions) ----------------------------------------------------

def test_a_crash_right_after_the_exchange_keeps_the_new_dataset(volumes, tmp_path, monkeypatch):
    out = copy_of_old(volumes, tmp_path)
    real_rename = os.rename

    def crash(a, b):
        raise KeyboardInterrupt("killed right after the exchange")
    monkeypatch.setattr(destination.os, "rename", crash)
    opts = ngconvert.ConvertOptions(layer_type="image", chunk_size=(32, 32, 32), gzip_level=9, workers=1,
                                    overwrite=True, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        ngconvert.convert(volumes / "new.npy", out, opts)
    monkeypatch.setattr(destination.os, "rename", real_rename)
    assert data(out) == data(volumes / "clean-new") | {".ngconvert/ready": b"{}"}
    # the old dataset left at the staging place is not taken for a staged new one
    p = run("convert", volumes / "new.npy", out, *ARGS, "--resume", check=0)
    assert "already complete" in p.stderr
    assert files(out) == files(volumes / "clean-new") | {"ngconvert_run.json": files(out)["ngconvert_run.json"]}
    assert not (tmp_path / ".out.ngconvert-new").exists() and not (tmp_path / ".out.ngconvert-old").exists()


def test_a_crash_after_the_mesh_exchange_is_not_swapped_back(seg, monkeypatch):
    from ngconvert.meshes import meshing

    real = meshing.shutil.rmtree

    def crash(path, *a, **k):
        raise KeyboardInterrupt("killed while the old meshes were deleted")
    monkeypatch.setattr(meshing.shutil, "rmtree", crash)
    with pytest.raises(KeyboardInterrupt):
        meshing.mesh_layer(seg, meshing.MeshOptions(format="multires"), overwrite=True, workers=1)
    monkeypatch.setattr(meshing.shutil, "rmtree", real)
    assert json.loads((seg / "mesh" / "info").read_text())["@type"] == "neuroglancer_multilod_draco"
    new = {k: v for k, v in files(seg / "mesh").items() if k != meshing.SWAP_MARK}
    run("mesh", seg, "--format", "multires", "--resume", "--workers", "1", "--quiet", check=0)
    assert files(seg / "mesh") == new and not (seg / "mesh.ngconvert-new").exists()
    assert run("check", seg, "--full").returncode == 0


def test_a_crash_while_publishing_on_s3_is_finished_by_the_next_run(moto_server, bucket, monkeypatch):
    from ngconvert.store.s3 import S3Store
    from ngconvert.store.base import StorageOptions

    opts = StorageOptions(endpoint_url=moto_server.url)
    url = f"s3://{bucket}/pub"
    a = label_volume((48, 40, 24), np.uint32)
    b = label_volume((48, 40, 24), np.uint32, seed=9)
    ngconvert.write_segmentation(a, url, chunk_size=(8, 8, 8), storage=opts)
    real_delete = S3Store.delete

    def crash(self, key):
        if "/" in key and not key.startswith(".ngconvert"):       # an old chunk (not the lock)
            raise KeyboardInterrupt("killed while old objects were deleted")
        real_delete(self, key)
    monkeypatch.setattr(S3Store, "delete", crash)
    with pytest.raises(KeyboardInterrupt):
        ngconvert.write_segmentation(b, url, chunk_size=(16, 16, 16), storage=opts, overwrite=True)
    monkeypatch.setattr(S3Store, "delete", real_delete)
    store = open_store(url, opts)
    assert store.exists(".ngconvert/publishing")
    assert "half replaced" in str(pytest.raises(UserError, ngconvert.download, url, "/tmp/never-written", opts).value)
    ngconvert.write_segmentation(b, url, chunk_size=(16, 16, 16), storage=opts, overwrite=True, resume=True)
    keys = {k for k, _ in store.list()}
    assert not any(k.startswith(".ngconvert") for k in keys)
    assert json.loads(store.get("info"))["scales"][0]["chunk_sizes"] == [[16, 16, 16]]
    assert not any("-8_" in k for k in keys if k.startswith("1_1_1/"))             # old 8^3 chunks gone


def test_resume_notices_a_changed_slice_in_a_bucket(moto_server, bucket, tmp_path):
    import io

    from PIL import Image

    client = moto_server.client()

    def put(z, value, size=(24, 20)):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(value).integers(0, 255, size, dtype=np.uint8)).save(buf, "PNG")
        client.put_object(Bucket=bucket, Key=f"stack/s{z:02d}.png", Body=buf.getvalue())
    for z in range(4):
        put(z, z)
    out = tmp_path / "out"
    args = ["convert", f"s3://{bucket}/stack/", out, "--endpoint-url", moto_server.url, "--workers", "1"]
    run(*args, "--quiet", check=0)
    assert "already complete" in run(*args, "--resume", check=0).stderr
    put(2, 99, size=(24, 20))            # the same name, other content (and another size)
    line = one_line_error(run(*args, "--resume"))
    assert "changed" in line and "--overwrite" in line
