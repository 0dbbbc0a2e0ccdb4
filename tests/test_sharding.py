"""The sharded format: keys and hashes against independent computations, sharded volumes and
meshes read by tensorstore and cloud-volume, reencode/transfer (also through a real S3
server), and the dataset checker on good and deliberately broken datasets."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import mmh3
import numpy as np
import pytest

import ngconvert
from checks import check_dataset
from conftest import label_volume, read_cloudvolume, read_info, run, smooth_volume
from ngconvert.meshes.meshing import MeshOptions
from ngconvert.codecs.sharding import ShardSpec, compressed_morton

pytest_plugins = ("s3server",)


# ---------------------------------------------------------------- keys and hashes


def morton_reference(pos, shape) -> int:
    """Compressed Morton code as the spec describes it: walk bit levels from the lowest; at
    each level take x, y, z in turn, skipping a dimension once its bits are used up."""
    bits = [int(np.ceil(np.log2(n))) if n > 1 else 0 for n in shape]
    code, out = 0, 0
    for level in range(max(bits)):
        for d in range(3):
            if level < bits[d]:
                code |= ((pos[d] >> level) & 1) << out
                out += 1
    return code


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 2), (16, 16, 16), (7, 1, 33), (2, 130, 9)])
def test_compressed_morton_matches_the_spec(shape):
    rng = np.random.default_rng(1)
    pos = np.stack([rng.integers(0, n, 200) for n in shape], 1)
    ours = compressed_morton(pos, shape)
    assert [int(c) for c in ours] == [morton_reference(p, shape) for p in pos]
    # all positions get distinct codes
    every = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    assert len(set(compressed_morton(every, shape).tolist())) == len(every)


def test_known_morton_values():
    # grid 4x4x4: x0 y0 z0 x1 y1 z1 bit order
    assert int(compressed_morton(np.array([[1, 0, 0]]), (4, 4, 4))[0]) == 0b000001
    assert int(compressed_morton(np.array([[0, 0, 2]]), (4, 4, 4))[0]) == 0b100000
    # grid 4x1x2: y has no bits, z one: x0 z0 x1
    assert int(compressed_morton(np.array([[2, 0, 1]]), (4, 1, 2))[0]) == 0b110


def test_murmurhash_matches_mmh3_128():
    spec = ShardSpec(preshift_bits=3, hash="murmurhash3_x86_128", minishard_bits=4, shard_bits=5)
    for key in (0, 1, 7, 8, 12345, 2 ** 40 + 17, 2 ** 64 - 1):
        digest = mmh3.hash128(struct.pack("<Q", key >> 3), seed=0, x64arch=False, signed=False)
        low = digest & ((1 << 64) - 1)                       # the first 8 bytes of the digest
        assert spec.hashed(key) == low
        assert spec.locate(key) == ((low >> 4) & 31, low & 15)
    ident = ShardSpec(preshift_bits=2, hash="identity", minishard_bits=3, shard_bits=4)
    assert ident.locate(0b1101_101_11) == (0b1101, 0b101)
    assert ShardSpec(shard_bits=0).shard_name(0) == "0.shard"
    assert ShardSpec(shard_bits=10).shard_name(0x2a) == "02a.shard"


# ---------------------------------------------------------------- sharded volumes

SMALL_SHARDS = dict(sharded=True, shard_bytes=64 << 10, chunk_size=(16, 16, 16))


@pytest.mark.parametrize("kind", ["raw-gzip", "jpeg", "cseg", "murmur", "raw-plain"])
def test_sharded_volume_read_by_tensorstore_and_cloudvolume(tmp_path, kind):
    off = (7, -5, 3)
    if kind == "cseg":
        a = label_volume((83, 61, 47))
        opts = dict(layer_type="segmentation")
    elif kind == "jpeg":
        a = smooth_volume((83, 61, 47), np.uint8)
        opts = dict(layer_type="image", encoding="jpeg", jpeg_quality=95)
    else:
        a = smooth_volume((83, 61, 47), np.uint16, noise=30)
        opts = dict(layer_type="image", compress="none" if kind == "raw-plain" else "gzip")
        if kind == "murmur":
            opts["sharding"] = {"preshift_bits": 1, "hash": "murmurhash3_x86_128", "minishard_bits": 2,
                                "shard_bits": 3, "minishard_index_encoding": "gzip", "data_encoding": "gzip"}
    dest = tmp_path / kind
    ngconvert.write_volume(a, dest, voxel_offset=off, **SMALL_SHARDS, **opts)
    info = read_info(dest)
    assert len(info["scales"]) >= 3 and all("sharding" in s for s in info["scales"])
    s0 = info["scales"][0]["sharding"]
    assert s0["shard_bits"] > 0 and (s0["minishard_bits"] > 0 or s0["preshift_bits"] > 0)
    assert len(list((dest / info["scales"][0]["key"]).glob("*.shard"))) > 1
    assert not (dest / ".ngconvert").exists()
    method = "mode" if kind == "cseg" else "average"
    tol = (2.0, 30) if kind == "jpeg" else None
    check_dataset(dest, a, "tensorstore", method, offset=off, jpeg_tol=tol)
    check_dataset(dest, a, "cloudvolume", method, offset=off, jpeg_tol=tol)
    assert run("check", dest, "--full").returncode == 0


def read_shard_value(path: Path, spec: dict, key: int) -> bytes | None:
    """One value from a shard file, following the spec's layout step by step (not the library)."""
    data = path.read_bytes()
    m = spec["minishard_bits"]
    index_end = 16 << m
    h = key >> spec["preshift_bits"]
    if spec["hash"] != "identity":
        h = mmh3.hash64(struct.pack("<Q", h), seed=0, x64arch=False, signed=False)[0]
    mini = h & ((1 << m) - 1)
    start, end = struct.unpack_from("<QQ", data, 16 * mini)
    raw = data[index_end + start:index_end + end]
    if spec["minishard_index_encoding"] == "gzip":
        raw = gzip.decompress(raw)
    rows = np.frombuffer(raw, "<u8").reshape(3, -1)
    keys = np.cumsum(rows[0])
    pos = index_end
    for i in range(rows.shape[1]):
        pos += int(rows[1, i])
        if int(keys[i]) == key:
            blob = data[pos:pos + int(rows[2, i])]
            return gzip.decompress(blob) if spec["data_encoding"] == "gzip" else blob
        pos += int(rows[2, i])
    return None


def test_shard_files_hold_the_unsharded_chunks(tmp_path):
    a = label_volume((70, 50, 40))
    ngconvert.write_volume(a, tmp_path / "flat", layer_type="segmentation", chunk_size=(16, 16, 16),
                           compress="none")
    ngconvert.write_volume(a, tmp_path / "sharded", layer_type="segmentation", **SMALL_SHARDS)
    info = read_info(tmp_path / "sharded")
    s = info["scales"][0]
    spec = ShardSpec.from_json(s["sharding"])
    shape = [-(-n // 16) for n in s["size"]]
    checked = 0
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                code = morton_reference((i, j, k), shape)
                shard, _m = spec.locate(code)
                name = tmp_path / "sharded" / s["key"] / spec.shard_name(shard)
                got = read_shard_value(name, s["sharding"], code)
                lo = [16 * i, 16 * j, 16 * k]
                hi = [min(x + 16, n) for x, n in zip(lo, s["size"])]
                key = "_".join(f"{x}-{y}" for x, y in zip(lo, hi))
                assert got == (tmp_path / "flat" / s["key"] / key).read_bytes()
                checked += 1
    assert checked == shape[0] * shape[1] * shape[2]


def test_explicit_sharding_spec_and_bad_specs(tmp_path):
    a = smooth_volume((40, 40, 40), np.uint8)
    np.save(tmp_path / "a.npy", a)
    spec = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 1, "hash": "murmurhash3_x86_128",
            "minishard_bits": 2, "shard_bits": 2, "minishard_index_encoding": "raw", "data_encoding": "gzip"}
    run("convert", tmp_path / "a.npy", tmp_path / "o", "--chunk-size", "8,8,8", "--sharding", json.dumps(spec),
        "--quiet", check=0)
    assert all(s["sharding"] == spec for s in read_info(tmp_path / "o")["scales"])
    check_dataset(tmp_path / "o", a, "tensorstore", "average")
    bad = dict(spec, hash="md5")
    p = run("convert", tmp_path / "a.npy", tmp_path / "x", "--sharding", json.dumps(bad))
    assert p.returncode == 2 and "md5" in p.stderr and "Traceback" not in p.stderr
    p = run("convert", tmp_path / "a.npy", tmp_path / "x", "--sharding", "{nope")
    assert p.returncode == 2 and "JSON" in p.stderr
    p = run("stats", tmp_path / "o", check=0)
    assert "shards" in p.stdout


def test_sharded_segmentation_with_sharded_meshes(tmp_path):
    a = label_volume((64, 64, 48), labels=(0, 3, 7, 12, 100, 2 ** 20))
    dest = tmp_path / "seg"
    ngconvert.write_segmentation(a, dest, resolution=(8, 8, 8), offset=(4, 4, 4), **SMALL_SHARDS,
                                 mesh=MeshOptions(format="multires", sharded=True))
    mesh_info = json.loads((dest / "mesh" / "info").read_text())
    assert mesh_info["sharding"]["hash"] == "murmurhash3_x86_128"
    assert list((dest / "mesh").glob("*.shard")) and not list((dest / "mesh").glob("*.index"))
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{dest}", progress=False)
    for label in (3, 7, 12, 100, 2 ** 20):
        m = cv.mesh.get(label)
        m = m[label] if isinstance(m, dict) else m
        assert len(m.faces) > 0
        vox = np.argwhere(a == label)
        lo = (vox.min(axis=0) + 4) * 8
        hi = (vox.max(axis=0) + 5) * 8
        assert np.all(m.vertices.min(axis=0) >= lo - 8) and np.all(m.vertices.max(axis=0) <= hi + 8)
    assert run("check", dest, "--full").returncode == 0


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_kill_then_resume_a_sharded_conversion(tmp_path):
    a = smooth_volume((192, 192, 160), np.uint16, noise=100)
    np.save(tmp_path / "v.npy", a)
    args = ["--type", "image", "--chunk-size", "16,16,16", "--task-memory", "1", "--workers", "1", "--sharded",
            "--shard-size", "1", "--quiet"]
    run("convert", tmp_path / "v.npy", tmp_path / "clean", *args, check=0)
    dest = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ngconvert", "convert", str(tmp_path / "v.npy"), str(dest),
                             *args])
    marks = dest / ".ngconvert" / "done" / "shards" / "0"
    deadline = time.time() + 120
    while time.time() < deadline and not (marks.is_dir() and len(os.listdir(marks)) >= 2):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (dest / "info").exists()
    run("convert", tmp_path / "v.npy", dest, *args, "--resume", check=0)
    assert _files(dest) == _files(tmp_path / "clean")


# ---------------------------------------------------------------- reencode and transfer


def test_reencode_and_transfer_round_trips_through_s3(tmp_path, moto_server, bucket):
    a = label_volume((70, 60, 50))
    local = tmp_path / "seg"
    ngconvert.write_segmentation(a, local, labels={3: "three", 7: {"name": "seven", "color": "#00ff00"}, 12: "a",
                                                   100: "b"},
                                 chunk_size=(32, 32, 32), mesh=MeshOptions(format="legacy"))
    storage = ["--endpoint-url", moto_server.url]
    url = f"s3://{bucket}/seg"
    run("transfer", local, url, "--sharded", "--shard-size", "1", *storage, "--quiet", check=0)
    assert run("check", url, "--full", *storage).returncode == 0
    back = tmp_path / "back"
    run("reencode", url, back, "--unsharded", "--encoding", "raw", "--chunk-size", "16,16,16", *storage,
        "--quiet", check=0)
    info = read_info(back)
    assert all(s["encoding"] == "raw" and s["chunk_sizes"] == [[16, 16, 16]] and "sharding" not in s
               for s in info["scales"])
    for i, s in enumerate(read_info(local)["scales"]):
        np.testing.assert_array_equal(read_cloudvolume(back, i), read_cloudvolume(local, i))
    for key in ("segment_properties/info", "segment_colors.json", "mesh/info", "mesh/3:0"):
        assert (back / key).read_bytes() == (local / key).read_bytes(), key
    assert info["mesh"] == "mesh" and info["segment_properties"] == "segment_properties"
    # the sharded copy on S3 is read voxel for voxel by tensorstore's s3 driver too
    import tensorstore as ts

    spec = {"driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "s3", "bucket": bucket, "path": "seg/", "endpoint": moto_server.url,
                        "aws_region": "us-east-1"}, "scale_index": 0}
    got = np.asarray(ts.open(spec, read=True).result().read().result())
    np.testing.assert_array_equal(got[..., 0], a)


def test_reencode_jpeg_and_lossless_layout_changes(tmp_path):
    a = smooth_volume((90, 70, 40), np.uint8)
    ngconvert.write_volume(a, tmp_path / "raw", layer_type="image", chunk_size=(32, 32, 32))
    run("reencode", tmp_path / "raw", tmp_path / "jpg", "--encoding", "jpeg", "--jpeg-quality", "92", "--quiet",
        check=0)
    check_dataset(tmp_path / "jpg", a, "tensorstore", "average", jpeg_tol=(1.5, 24))
    # sharding and unsharding a JPEG dataset moves the stored chunks: no second JPEG pass
    run("transfer", tmp_path / "jpg", tmp_path / "jpg-sharded", "--sharded", "--quiet", check=0)
    run("transfer", tmp_path / "jpg-sharded", tmp_path / "jpg-again", "--unsharded", "--quiet", check=0)
    key = read_info(tmp_path / "jpg")["scales"][0]["key"]
    for f in (tmp_path / "jpg" / key).iterdir():
        assert (tmp_path / "jpg-again" / key / f.name).read_bytes() == f.read_bytes()
    p = run("reencode", tmp_path / "raw", tmp_path / "x")
    assert p.returncode == 2 and "needs a change" in p.stderr
    seg = tmp_path / "seg"
    ngconvert.write_volume(label_volume((20, 20, 20)), seg, layer_type="segmentation")
    p = run("reencode", seg, tmp_path / "y", "--encoding", "jpeg")
    assert p.returncode == 2 and "lossy" in p.stderr
    p = run("reencode", tmp_path / "raw", tmp_path / "jpg", "--encoding", "png")
    assert p.returncode == 2 and "--overwrite" in p.stderr


def test_reencode_reads_a_tensorstore_dataset(tmp_path):
    import tensorstore as ts

    a = label_volume((50, 40, 30)).astype(np.uint64)
    path = tmp_path / "ts"
    spec = {"driver": "neuroglancer_precomputed", "kvstore": f"file://{path}",
            "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
            "scale_metadata": {"size": [50, 40, 30], "resolution": [4, 4, 40], "encoding": "compressed_segmentation",
                               "chunk_size": [16, 16, 8], "compressed_segmentation_block_size": [8, 8, 8],
                               "sharding": {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 2,
                                            "hash": "murmurhash3_x86_128", "minishard_bits": 2, "shard_bits": 2,
                                            "minishard_index_encoding": "gzip", "data_encoding": "gzip"}},
            "create": True}
    t = ts.open(spec).result()
    t[...] = a[..., None]
    p = run("check", path, "--full")
    assert p.returncode == 0, p.stdout + p.stderr
    run("reencode", path, tmp_path / "flat", "--unsharded", "--chunk-size", "32,32,32", "--quiet", check=0)
    np.testing.assert_array_equal(read_cloudvolume(tmp_path / "flat", 0)[..., 0], a)
    plain = tmp_path / "ts-plain"
    spec2 = json.loads(json.dumps(spec))
    spec2["kvstore"] = f"file://{plain}"
    del spec2["scale_metadata"]["sharding"]
    ts.open(spec2).result()[...] = a[..., None]
    assert run("check", plain, "--full").returncode == 0


# ---------------------------------------------------------------- check on broken datasets


@pytest.fixture
def good(tmp_path):
    a = label_volume((64, 48, 40))
    dest = tmp_path / "good"
    ngconvert.write_segmentation(a, dest, labels={3: "three", 7: "seven", 12: "twelve", 100: "hundred"},
                                 chunk_size=(16, 16, 16), mesh=MeshOptions(format="multires"))
    sharded = tmp_path / "sharded"
    ngconvert.write_segmentation(a, sharded, **SMALL_SHARDS)
    return dest, sharded


def broken(src: Path, dst: Path, fn) -> Path:
    shutil.copytree(src, dst)
    fn(dst)
    return dst


def _edit_json(path: Path, fn):
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def test_check_passes_on_good_datasets(good):
    for d in good:
        p = run("check", d, "--full")
        assert p.returncode == 0 and "valid" in p.stderr and p.stdout == "", p.stdout


def test_check_reports_each_kind_of_damage(tmp_path, good):
    dest, sharded = good
    key0 = read_info(dest)["scales"][0]["key"]
    first_chunk = max((dest / key0).iterdir(), key=lambda f: f.stat().st_size)    # one holding data

    def truncate(d):
        f = d / key0 / first_chunk.name
        f.write_bytes(f.read_bytes()[:20])

    def bad_shard_index(d):
        s = read_info(d)["scales"][0]
        f = sorted((d / s["key"]).glob("*.shard"))[0]
        data = bytearray(f.read_bytes())
        data[8:16] = struct.pack("<Q", 10 ** 9)             # end of minishard 0's index
        f.write_bytes(bytes(data))

    def bad_manifest(d):
        f = sorted((d / "mesh").glob("*.index"))[0]
        f.write_bytes(f.read_bytes() + b"\0\0\0\0")

    def bad_props(d):
        _edit_json(d / "segment_properties" / "info",
                   lambda o: o["inline"]["properties"][0]["values"].pop())

    cases = [
        (dest, "no-info-key", lambda d: _edit_json(d / "info", lambda o: o.pop("data_type")), "info: data_type"),
        (dest, "no-scales", lambda d: _edit_json(d / "info", lambda o: o.pop("scales")), "scales is missing"),
        (dest, "truncated", truncate, f"{key0}/{first_chunk.name.removesuffix('.gz')}:"),
        (sharded, "shard-index", bad_shard_index, "points outside the file"),
        (dest, "manifest", bad_manifest, "need exactly"),
        (dest, "props", bad_props, "values must be a list as long as ids"),
        (dest, "missing-chunk", lambda d: (d / key0 / first_chunk.name).unlink(), "missing, but scale"),
        (dest, "bad-encoding", lambda d: _edit_json(d / "info", lambda o: o["scales"][0].update(encoding="jpeg")),
         "encoding jpeg stores uint8"),
    ]
    for src, name, fn, text in cases:
        d = broken(src, tmp_path / name, fn)
        p = run("check", d, "--full")
        assert p.returncode == 1, (name, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr
        assert text in p.stdout, (name, p.stdout)
    assert run("check", tmp_path / "nowhere").returncode == 2
