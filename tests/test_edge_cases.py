"""Edge cases of the server, the checker, re-encoding and viewer states (each once a bug)."""
from __future__ import annotations

import json
import socket
import struct

import numpy as np
import requests

import ngconvert
from conftest import label_volume, read_cloudvolume, run
from ngconvert.hosting.serve import DatasetServer
from ngconvert.hosting.viewer_state import Dataset, build_state


def no_traceback(p):
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr


# ---------------------------------------------------------------- server


def test_server_edge_cases(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "ten.bin").write_bytes(b"0123456789")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    with DatasetServer({"/": tmp_path}) as server:
        url = server.url
        r = requests.get(f"{url}/empty.bin", headers={"Range": "bytes=-5"})
        assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */0"
        for header in ("bytes=5-3", "bytes=1_0-", "bytes=x-"):          # malformed: ignored
            r = requests.get(f"{url}/ten.bin", headers={"Range": header})
            assert r.status_code == 200 and r.content == b"0123456789", header
        r = requests.get(f"{url}/bad", headers={"Range": "bytes=0-4"})
        assert r.status_code == 500
        # a refused request's body is not parsed as another request on the same connection
        host, port = url[len("http://"):].split(":")
        body = b"GET /ten.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /ten.bin HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            s.settimeout(5)
            answer = b""
            try:
                while chunk := s.recv(65536):
                    answer += chunk
            except socket.timeout:
                pass
        assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 405")


# ---------------------------------------------------------------- checker


def test_check_edge_cases(tmp_path):
    a = np.zeros((64, 64, 64), np.uint8)
    a[10:15, 10:15, 10:15] = 200
    a[40, 40, 40] = 1                        # averages to 0 at the next scale: that chunk is skipped
    ngconvert.write_volume(a, tmp_path / "sparse", layer_type="image", chunk_size=(16, 16, 16), skip_empty=True,
                           max_mips=1)
    assert run("check", tmp_path / "sparse", "--full").returncode == 0

    ngconvert.write_volume(label_volume((32, 32, 32)), tmp_path / "upper", layer_type="segmentation",
                           encoding="raw", compress="none", chunk_size=(16, 16, 16))
    info = json.loads((tmp_path / "upper" / "info").read_text())
    for sc in info["scales"]:
        sc["encoding"] = "RAW"                              # encodings are case-insensitive
    (tmp_path / "upper" / "info").write_text(json.dumps(info))
    assert run("check", tmp_path / "upper", "--full").returncode == 0
    info["num_channels"] = 2
    (tmp_path / "upper" / "info").write_text(json.dumps(info))
    p = run("check", tmp_path / "upper")
    assert p.returncode == 1 and "num_channels 2; it must be 1" in p.stdout

    ngconvert.write_volume(label_volume((48, 48, 32)), tmp_path / "sh", layer_type="segmentation",
                           chunk_size=(16, 16, 16), sharded=True, shard_bytes=16 << 10)
    info = json.loads((tmp_path / "sh" / "info").read_text())
    info["scales"][0]["sharding"]["minishard_bits"] = None
    info["scales"][1]["sharding"]["shard_bits"] = 1.5
    (tmp_path / "sh" / "info").write_text(json.dumps(info))
    p = run("check", tmp_path / "sh")
    no_traceback(p)
    assert p.returncode == 1 and "minishard_bits None is not an integer" in p.stdout
    assert "shard_bits 1.5 is not an integer" in p.stdout


def test_check_damaged_gzip_inside_a_shard(tmp_path):
    ngconvert.write_volume(label_volume((48, 48, 32)), tmp_path / "sh", layer_type="segmentation",
                           chunk_size=(16, 16, 16), sharded=True, shard_bytes=16 << 10)
    info = json.loads((tmp_path / "sh" / "info").read_text())
    s0 = info["scales"][0]
    shard = sorted((tmp_path / "sh" / s0["key"]).glob("*.shard"))[0]
    data = bytearray(shard.read_bytes())
    index_end = 16 << s0["sharding"]["minishard_bits"]
    start, end = struct.unpack_from("<QQ", data, 0)
    pos = index_end + start + 12                  # inside the gzipped minishard index's deflate body
    data[pos:pos + 4] = b"\xff\xff\xff\xff"
    shard.write_bytes(bytes(data))
    p = run("check", tmp_path / "sh", "--full")
    no_traceback(p)
    assert p.returncode == 1 and "damaged" in p.stdout


# ---------------------------------------------------------------- reencode


def test_reencode_refuses_its_own_source(tmp_path):
    ngconvert.write_volume(label_volume((32, 32, 32)), tmp_path / "seg", layer_type="segmentation")
    before = sorted(p.name for p in (tmp_path / "seg").rglob("*"))
    for dest in (tmp_path / "seg", tmp_path / "seg" / "inner", tmp_path):
        p = run("reencode", tmp_path / "seg", dest, "--encoding", "raw", "--overwrite")
        assert p.returncode == 2 and "source" in p.stderr, p.stderr
    assert sorted(p.name for p in (tmp_path / "seg").rglob("*")) == before


def test_reencode_scale_keys_with_slashes(tmp_path):
    import tensorstore as ts

    a = label_volume((40, 30, 20)).astype(np.uint32)
    spec = {"driver": "neuroglancer_precomputed", "kvstore": f"file://{tmp_path / 'nk'}",
            "multiscale_metadata": {"type": "segmentation", "data_type": "uint32", "num_channels": 1},
            "scale_metadata": {"key": "data/s0", "size": [40, 30, 20], "resolution": [1, 1, 1],
                               "encoding": "compressed_segmentation", "chunk_size": [16, 16, 16],
                               "compressed_segmentation_block_size": [8, 8, 8]}, "create": True}
    ts.open(spec).result()[...] = a[..., None]
    run("reencode", tmp_path / "nk", tmp_path / "raw", "--encoding", "raw", "--compress", "none", "--quiet",
        check=0)
    t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{tmp_path / 'raw'}"}, read=True).result()
    np.testing.assert_array_equal(np.asarray(t.read().result())[..., 0], a)


def test_reencode_new_shard_parameters_and_http_source(tmp_path):
    a = label_volume((64, 48, 32))
    ngconvert.write_segmentation(a, tmp_path / "sh", labels={3: "x"}, chunk_size=(16, 16, 16), sharded=True,
                                 shard_bytes=16 << 10)
    run("reencode", tmp_path / "sh", tmp_path / "mm", "--sharded", "--shard-hash", "murmurhash3_x86_128",
        "--shard-size", "1", "--quiet", check=0)
    info = json.loads((tmp_path / "mm" / "info").read_text())
    assert {s["sharding"]["hash"] for s in info["scales"]} == {"murmurhash3_x86_128"}
    np.testing.assert_array_equal(read_cloudvolume(tmp_path / "mm", 0)[..., 0], a)
    with DatasetServer({"/": tmp_path}) as server:
        run("reencode", f"{server.url}/sh", tmp_path / "fromhttp", "--unsharded", "--quiet", check=0)
    np.testing.assert_array_equal(read_cloudvolume(tmp_path / "fromhttp", 0)[..., 0], a)
    assert (tmp_path / "fromhttp" / "segment_properties" / "info").exists()


# ---------------------------------------------------------------- viewer states


def test_state_centre_with_and_without_world_transforms():
    info = {"type": "image", "data_type": "uint8", "num_channels": 1,
            "scales": [{"key": "a", "size": [50, 40, 30], "resolution": [4000, 4000, 40000],
                        "voxel_offset": [0, 0, 0], "chunk_sizes": [[64, 64, 64]], "encoding": "raw"}]}
    plain = Dataset("a", "precomputed://x", info)
    world = Dataset("b", "precomputed://y", info, {"layer_nm_to_world": np.diag([1e-6, 1e-6, 1e-6, 1]).tolist(),
                                                   "world_units": "mm"})
    st = build_state([plain, world])
    np.testing.assert_allclose(st["position"], [0.1, 0.08, 0.6])            # mm, where the data is
    assert st["dimensions"]["x"] == [0.001, "m"]
    assert st["crossSectionScale"] < 0.01
