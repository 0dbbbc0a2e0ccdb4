"""The dataset server over real HTTP, viewer URLs and states, hosting setups."""
from __future__ import annotations

import gzip
import json
import os
import socket
import time
from urllib.parse import unquote

import numpy as np
import pytest
import requests

import ngconvert
from conftest import label_volume, run, smooth_volume
from ngconvert.core.errors import UserError
from ngconvert.hosting.serve import DatasetServer, parse_range

pytest_plugins = ("s3server",)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    ngconvert.write_volume(smooth_volume((40, 30, 20), np.uint8), root / "img", layer_type="image")
    ngconvert.write_volume(label_volume((40, 30, 20)), root / "seg", layer_type="segmentation", sharded=True)
    (root / "plain.bin").write_bytes(bytes(range(256)) * 4)
    (root / "img" / "only.gz").write_bytes(gzip.compress(b"hello range world"))
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside / "secret.txt", root / "link.txt")
    os.symlink(outside, root / "linkdir")
    with DatasetServer({"/": root}) as server:
        yield root, server.url


def test_cors_content_types_and_gzip(site):
    root, url = site
    r = requests.get(f"{url}/img/info", headers={"Origin": "http://elsewhere"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Content-Type"] == "application/json" and json.loads(r.content)["type"] == "image"
    assert "Content-Range" in r.headers["Access-Control-Expose-Headers"]
    key = json.loads(r.content)["scales"][0]["key"]
    chunk = next((root / "img" / key).iterdir()).name          # stored as KEY.gz
    assert chunk.endswith(".gz")
    raw = requests.get(f"{url}/img/{key}/{chunk[:-3]}", stream=True)
    assert raw.status_code == 200 and raw.headers["Content-Encoding"] == "gzip"
    assert raw.raw.read(decode_content=False) == (root / "img" / key / chunk).read_bytes()
    assert requests.get(f"{url}/img/{key}/0-1_0-1_0-1").status_code == 404      # missing chunk
    miss = requests.get(f"{url}/img/{key}/0-1_0-1_0-1")
    assert miss.headers["Access-Control-Allow-Origin"] == "*"
    head = requests.head(f"{url}/plain.bin")
    assert head.status_code == 200 and head.headers["Content-Length"] == "1024" and head.content == b""


def test_preflight_and_read_only(site):
    _root, url = site
    r = requests.options(f"{url}/img/info", headers={"Origin": "http://x", "Access-Control-Request-Method": "GET",
                                                     "Access-Control-Request-Headers": "range"})
    assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in r.headers["Access-Control-Allow-Methods"] and "range" in r.headers["Access-Control-Allow-Headers"]
    for method in ("PUT", "POST", "DELETE"):
        assert requests.request(method, f"{url}/img/info", data=b"x").status_code == 405


def test_range_requests(site):
    root, url = site
    data = (root / "plain.bin").read_bytes()
    r = requests.get(f"{url}/plain.bin", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["Content-Range"] == "bytes 10-19/1024" and r.headers["Content-Length"] == "10"
    assert requests.get(f"{url}/plain.bin", headers={"Range": "bytes=1000-"}).content == data[1000:]
    assert requests.get(f"{url}/plain.bin", headers={"Range": "bytes=-24"}).content == data[-24:]
    assert requests.get(f"{url}/plain.bin", headers={"Range": "bytes=1020-5000"}).content == data[1020:]
    bad = requests.get(f"{url}/plain.bin", headers={"Range": "bytes=2000-3000"})
    assert bad.status_code == 416 and bad.headers["Content-Range"] == "bytes */1024"
    assert requests.get(f"{url}/plain.bin", headers={"Range": "bytes=0-1,5-6"}).status_code == 200
    # a range of an object stored only as .gz: bytes of the object itself
    r = requests.get(f"{url}/img/only", headers={"Range": "bytes=6-10"})
    assert r.status_code == 206 and r.content == b"range" and "Content-Encoding" not in r.headers
    assert parse_range("bytes=5-", 3) == "invalid" and parse_range("items=1-2", 10) is None


def test_sharded_dataset_read_through_the_server(site):
    _root, url = site
    import tensorstore as ts

    t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"{url}/seg/"}, read=True).result()
    np.testing.assert_array_equal(np.asarray(t.read().result())[..., 0], label_volume((40, 30, 20)))


@pytest.mark.parametrize("path", ["/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/img/../../etc/passwd",
                                  "/link.txt", "/linkdir/secret.txt", "//etc/passwd", "/img/%00info",
                                  "/..%2fsecret"])
def test_never_outside_the_root(site, path):
    _root, url = site
    host, port = url[len("http://"):].split(":")
    with socket.create_connection((host, int(port))) as s:      # raw request: no client-side normalising
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.split(b" ")[1] == b"404", answer[:200]
    assert b"secret" not in answer.split(b"\r\n\r\n", 1)[1] and b"root:" not in answer


def test_port_in_use_and_bad_folders(site, tmp_path):
    _root, url = site
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(UserError, match="in use"):
        DatasetServer({"/": tmp_path}, port=port)
    p = run("serve", tmp_path / "nope")
    assert p.returncode == 2 and "no such folder" in p.stderr
    p = run("view", tmp_path, "--no-browser", "--port", "0")
    assert p.returncode == 2 and "no info" in p.stderr and "Traceback" not in p.stderr
    p = run("serve", tmp_path, "--port", str(port))
    assert p.returncode == 2 and "in use" in p.stderr


def test_url_command_states(tmp_path):
    a = label_volume((30, 30, 30))
    ngconvert.write_segmentation(a, tmp_path / "atlas", labels={3: {"name": "x", "color": "#123456"}, 7: "y"},
                                 resolution=(4, 4, 40))
    p = run("url", tmp_path / "atlas", "--base-url", "https://data.example.org/atlas", check=0)
    url = p.stdout.strip()
    assert url.startswith("https://neuroglancer-demo.appspot.com/#!")
    state = json.loads(unquote(url.split("#!", 1)[1]))
    layer = state["layers"][0]
    assert layer["source"] == "precomputed://https://data.example.org/atlas"
    assert layer["segments"] == ["3", "7", "12", "100"] and layer["segmentColors"]["3"] == "#123456"
    assert state["dimensions"]["z"] == [4e-8, "m"]
    p = run("url", tmp_path / "atlas", "--base-url", "https://h/a", "--segments", "7", "--json",
            "--viewer", "http://localhost:8080", check=0)
    assert json.loads(p.stdout)["layers"][0]["segments"] == ["7"]
    p = run("url", tmp_path / "atlas")
    assert p.returncode == 2 and "--base-url" in p.stderr
    p = run("url", "ftp://host/x")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_url_for_s3_dataset_and_world_transform(tmp_path, moto_server, bucket):
    import nibabel as nib

    img = nib.Nifti1Image(smooth_volume((20, 20, 10), np.uint16, noise=50),
                          np.array([[0.5, 0, 0, -5], [0, 0.5, 0, -5], [0, 0, 2, -10], [0, 0, 0, 1]]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(tmp_path / "a.nii.gz"))
    run("convert", tmp_path / "a.nii.gz", f"s3://{bucket}/vol", "--endpoint-url", moto_server.url, "--quiet",
        check=0)
    p = run("url", f"s3://{bucket}/vol", "--endpoint-url", moto_server.url, "--json", check=0)
    state = json.loads(p.stdout)
    layer = state["layers"][0]
    host = moto_server.url.split("://", 1)[1]
    assert layer["source"]["url"] == f"precomputed://s3+http://{host}/{bucket}/vol"
    m = np.array(layer["source"]["transform"]["matrix"])
    # voxel corner p (layer voxels) -> world mm: affine applied to the voxel index p - 0.5
    np.testing.assert_allclose(m[:, :3], np.diag([0.5, 0.5, 2.0]))
    np.testing.assert_allclose(m[:, 3], [-5.25, -5.25, -11.0])
    assert state["dimensions"]["x"] == [0.001, "m"]
    lo, hi = layer["shaderControls"]["normalized"]["range"]
    assert 0 <= lo < hi
    assert run("url", "gs://bucket/x", "--json").returncode == 2     # no such bucket: one line


def test_hosting_outputs(tmp_path, moto_server, bucket):
    p = run("hosting", "nginx", tmp_path, "--server-name", "data.example.org", check=0)
    conf = p.stdout
    assert "gzip_static always" in conf and "Access-Control-Allow-Origin" in conf and str(tmp_path) in conf
    assert "Content-Range" in conf and "OPTIONS" in conf
    p = run("hosting", "s3", "--bucket", bucket, "--prefix", "data", check=0)
    assert f"arn:aws:s3:::{bucket}/data/*" in p.stdout and "put-bucket-cors" in p.stdout
    run("hosting", "s3", "--bucket", bucket, "--apply", "--endpoint-url", moto_server.url, check=0)
    client = moto_server.client()
    rules = client.get_bucket_cors(Bucket=bucket)["CORSRules"]
    assert rules[0]["AllowedOrigins"] == ["*"] and "Content-Range" in rules[0]["ExposeHeaders"]
    policy = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
    assert policy["Statement"][0]["Action"] == ["s3:GetObject"]
    p = run("hosting", "gcs", "--bucket", "my-atlas", check=0)
    assert "allUsers" in p.stdout and "responseHeader" in p.stdout


def test_check_over_plain_http(site):
    _root, url = site
    p = run("check", f"{url}/seg", "--full")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "cannot list" in p.stderr and "valid" in p.stderr


# ---------------------------------------------------------------- under load


def _raw(url: str) -> tuple[str, int]:
    host, port = url[len("http://"):].split(":")
    return host, int(port)


def _recv_by(s: socket.socket, deadline: float, n: int = 65536) -> bytes:
    """recv, waiting no later than ``deadline`` (time.monotonic()) so a test stops by itself."""
    s.settimeout(max(0.01, deadline - time.monotonic()))
    return s.recv(n)


async def _exchange(reader, writer, path: str, headers: dict) -> tuple[int, dict, bytes]:
    """One GET on an open connection: (status, headers in lower case, body)."""
    head = f"GET {path} HTTP/1.1\r\nHost: t\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write((head + "\r\n").encode())
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    got = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    return int(lines[0].split(" ")[1]), got, await reader.readexactly(int(got["content-length"]))


@pytest.fixture(scope="module")
def load_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    ngconvert.write_volume(smooth_volume((96, 96, 64), np.uint8), root / "img", layer_type="image",
                           chunk_size=(16, 16, 16))
    ngconvert.write_volume(label_volume((64, 64, 64)), root / "seg", layer_type="segmentation", sharded=True,
                           chunk_size=(16, 16, 16))
    chunks = [("/" + p.relative_to(root).as_posix()[:-3], p.read_bytes()) for p in sorted(root.glob("img/*/*.gz"))]
    shards = [("/" + p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(root.rglob("*.shard"))]
    assert len(chunks) > 100 and shards
    return root, chunks, shards


def test_many_concurrent_clients(load_site):
    """200 clients, 4,000 GETs of random chunks (a third with Range, some not taking gzip), over
    keep-alive and fresh connections: every answer complete and equal to the bytes on disk."""
    import asyncio
    import random
    import threading

    root, chunks, shards = load_site
    rnd = random.Random(7)
    plan = []
    for i in range(4000):
        if i % 3 == 2:                                   # a range of a shard, or of a chunk stored as .gz
            path, data = rnd.choice(shards) if i % 2 else rnd.choice(chunks)
            if path.startswith("/img"):
                data = gzip.decompress(data)
            a = rnd.randrange(len(data))
            b = min(len(data), a + rnd.randint(1, 20000))
            plan.append((path, {"Range": f"bytes={a}-{b - 1}", "Accept-Encoding": "gzip"}, 206, data[a:b]))
        elif i % 10 == 1:                                # a client that does not take gzip: decompressed
            path, data = rnd.choice(chunks)
            plan.append((path, {"Accept-Encoding": "identity"}, 200, gzip.decompress(data)))
        else:
            path, data = rnd.choice(chunks)
            plan.append((path, {"Accept-Encoding": "gzip, deflate"}, 200, data))
    errors, answered = [], [0]
    before = set(threading.enumerate())
    with DatasetServer({"/": root}) as server:
        host, port = _raw(server.url)

        async def client(todo, k):
            conn = None
            for n, (path, headers, code, expected) in enumerate(todo):
                try:
                    async with asyncio.timeout(15):
                        if conn is None:
                            conn = await asyncio.open_connection(host, port)
                        status, got, body = await _exchange(*conn, path, headers)
                except Exception as e:          # noqa: BLE001 (every failure is reported)
                    errors.append(f"{path} {headers}: {type(e).__name__} {e}")
                    conn = None
                    continue
                if status != code or body != expected:
                    errors.append(f"{path} {headers}: {status}, {len(body)} bytes, wanted {code}, {len(expected)}")
                answered[0] += 1
                if k % 4 == 0 or n % 7 == 6 or got.get("connection") == "close":   # some clients reconnect
                    conn[1].close()
                    conn = None
            if conn is not None:
                conn[1].close()

        async def main():
            async with asyncio.timeout(60):
                await asyncio.gather(*(client(plan[k::200], k) for k in range(200)))

        asyncio.run(main())
        threads = set(threading.enumerate()) - before
    assert not errors, f"{len(errors)} failures, e.g. {errors[:5]}"
    assert answered[0] == 4000
    assert len(threads) <= 5, threads                    # the event loop and its pool, whatever the load


def test_keep_alive_and_pipelining(site):
    root, url = site
    data = (root / "plain.bin").read_bytes()
    with socket.create_connection(_raw(url)) as s:
        s.settimeout(10)
        one = b"GET /plain.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n"
        s.sendall(one * 3 + b"HEAD /img/info HTTP/1.1\r\nHost: x\r\n\r\n")        # pipelined
        answer = b""
        while answer.count(b"HTTP/1.1 ") < 4 or not answer.endswith(b"\r\n\r\n"):
            answer += s.recv(65536)
        assert answer.count(b"HTTP/1.1 206") == 3 and answer.count(data[:10]) == 3
        s.sendall(b"GET /plain.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")   # the same connection
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
        assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(data)
    with requests.Session() as session:
        for _ in range(5):
            assert session.get(f"{url}/plain.bin").content == data


def test_accept_encoding(site):
    root, url = site
    for accept, encoded in (("gzip", True), ("deflate, gzip;q=0.5", True), ("*", True), ("identity", False),
                            ("gzip;q=0, deflate", False), ("br", False)):
        r = requests.get(f"{url}/img/only", headers={"Accept-Encoding": accept}, stream=True)
        body = r.raw.read(decode_content=False)
        assert r.status_code == 200 and r.headers["Vary"] == "Accept-Encoding", accept
        if encoded:
            assert r.headers["Content-Encoding"] == "gzip" and body == (root / "img" / "only.gz").read_bytes()
        else:
            assert "Content-Encoding" not in r.headers and body == b"hello range world", accept
    r = requests.head(f"{url}/img/only", headers={"Accept-Encoding": "identity"})
    assert r.headers["Content-Length"] == str(len(b"hello range world"))
    with socket.create_connection(_raw(url)) as s:              # no Accept-Encoding at all: plain bytes
        s.sendall(b"GET /img/only HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.endswith(b"\r\n\r\nhello range world") and b"\r\nContent-Encoding:" not in answer


def test_idle_and_trickling_clients_do_not_block_others(site):
    """Idle keep-alive connections and clients sending their headers byte by byte cost no thread:
    others are served meanwhile, and the server closes them after its timeout."""
    root, _url = site
    data = (root / "plain.bin").read_bytes()
    with DatasetServer({"/": root}, timeout=1.0) as server:
        addr = _raw(server.url)
        idle = [socket.create_connection(addr) for _ in range(150)]
        for s in idle[::2]:
            s.sendall(b"GET /plain.bin HTTP/1.1\r\nHost: ")            # a request head never finished
        with requests.Session() as session:
            for _ in range(20):
                assert session.get(f"{server.url}/plain.bin", timeout=5).content == data
        deadline = time.monotonic() + 10
        for s in idle:
            answer = _recv_by(s, deadline)          # the server closes the connection: EOF
            assert answer == b"", answer[:100]
            s.close()


def test_connection_cap_closes_the_oldest_idle_connection(site):
    root, _url = site
    with DatasetServer({"/": root}, max_connections=10) as server:
        addr = _raw(server.url)
        idle = [socket.create_connection(addr) for _ in range(10)]
        for s in idle:          # each one is accepted and waiting before the next arrives
            s.sendall(b"HEAD /plain.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert requests.get(f"{server.url}/plain.bin", timeout=5).status_code == 200
        idle[0].settimeout(5)
        assert idle[0].recv(100) == b""          # made room for the new one
        for s in idle:
            s.close()


def test_large_backlog(site):
    """Connections made before the server accepts any wait in the listen queue (the stdlib's
    default backlog of 5 had the kernel drop them and the clients retry after 1-3 s)."""
    root, _url = site
    server = DatasetServer({"/": root})
    try:
        socks = []
        for _ in range(300):
            s = socket.socket()
            s.settimeout(0.5)
            s.connect(_raw(server.url))              # completed by the kernel: nobody accepts yet
            socks.append(s)
        server.start()
        for s in socks:
            s.sendall(b"HEAD /plain.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        deadline = time.monotonic() + 20
        for s in socks:
            assert _recv_by(s, deadline).startswith(b"HTTP/1.1 200")
            s.close()
    finally:
        server.stop()


def test_large_files_and_stalled_readers(tmp_path):
    """Bodies over one block are read by the pool; a client that stops reading is dropped after the
    timeout instead of holding the answer's memory forever."""
    data = np.random.default_rng(3).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "big.bin").write_bytes(data)
    with DatasetServer({"/": tmp_path}, timeout=1.0) as server:
        assert requests.get(f"{server.url}/big.bin").content == data
        r = requests.get(f"{server.url}/big.bin", headers={"Range": "bytes=1000-9000000"})
        assert r.status_code == 206 and r.content == data[1000:9000001]
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        s.connect(_raw(server.url))
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(2.5)                          # not reading
        got, deadline = 0, time.monotonic() + 20
        try:
            while chunk := _recv_by(s, deadline):
                got += len(chunk)
        except ConnectionResetError:
            pass
        s.close()
        assert 0 < got < len(data)
        assert requests.get(f"{server.url}/big.bin", headers={"Range": "bytes=-10"}).content == data[-10:]
