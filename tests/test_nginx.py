"""The nginx server block from ``ngconvert hosting nginx``, run by a real nginx: CORS, gzip
for our KEY.gz files, Range for shards, 404s, read by tensorstore and shown by the real viewer."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

import ngconvert
from conftest import label_volume
from ngconvert.hosting.configs import nginx_config
from ngconvert.hosting.serve import DatasetServer
from ngconvert.hosting.view import CLIENT_PATH, client_dir
from ngconvert.hosting.viewer_state import build_state, load_dataset, state_url
from ngconvert.store.local import FileStore

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(run_dir: Path, user: str, server_block: str, port: int, probe: str,
                connections: int = 16) -> subprocess.Popen:
    """A real nginx (``user`` line, one server block) in ``run_dir``, checked with ``nginx -t``
    and started in the foreground; returns once ``probe`` answers (or after 20 s)."""
    temps = " ".join(f"{k}_temp_path {run_dir}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = run_dir / "nginx.conf"
    conf.write_text(f"{user}\nworker_processes 1;\nerror_log {run_dir}/error.log;\npid {run_dir}/nginx.pid;\n"
                    f"events {{ worker_connections {connections}; }}\nhttp {{\n access_log off;\n {temps}\n"
                    f"{server_block}\n}}\n")
    test = subprocess.run([NGINX, "-t", "-p", str(run_dir), "-c", str(conf)], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    proc = subprocess.Popen([NGINX, "-p", str(run_dir), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}{probe}", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    if not os.path.exists(NGINX):
        pytest.fail("nginx is missing: install Debian's nginx (apt-get install nginx; .ci/run does)")
    root = tmp_path_factory.mktemp("www")
    x = np.arange(64)
    image = np.repeat(((x[:, None] // 16) * 60 + (x[None, :] // 16) * 10 + 5).astype(np.uint8)[:, :, None], 32, 2)
    ngconvert.write_volume(image, root / "img", resolution=(1000, 1000, 1000), layer_type="image")
    seg = label_volume((64, 48, 40))
    ngconvert.write_segmentation(seg, root / "seg", resolution=(1000, 1000, 1000), sharded=True,
                                 shard_bytes=32 << 10, chunk_size=(16, 16, 16),
                                 mesh=ngconvert.MeshOptions(format="multires", sharded=True))
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    proc = start_nginx(tmp_path_factory.mktemp("nginx"), user, nginx_config(str(root), "_", port, "/"), port,
                       "/img/info", connections=64)
    url = f"http://127.0.0.1:{port}"
    yield root, url, image, seg
    proc.terminate()
    proc.wait(timeout=20)


def test_nginx_serves_our_layout(nginx):
    root, url, _image, _seg = nginx
    r = requests.get(f"{url}/img/info", headers={"Origin": "http://viewer.example"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    info = json.loads(r.content)
    key = info["scales"][0]["key"]
    stored = next((root / "img" / key).glob("*.gz"))
    raw = requests.get(f"{url}/img/{key}/{stored.name[:-3]}", headers={"Accept-Encoding": "gzip"}, stream=True)
    assert raw.status_code == 200 and raw.headers["Content-Encoding"] == "gzip"
    assert raw.raw.read(decode_content=False) == stored.read_bytes()
    plain = requests.get(f"{url}/img/{key}/{stored.name[:-3]}", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and plain.content == gzip.decompress(stored.read_bytes())
    missing = requests.get(f"{url}/img/{key}/0-1_0-1_0-1")
    assert missing.status_code == 404 and missing.headers["Access-Control-Allow-Origin"] == "*"
    pre = requests.options(f"{url}/img/info", headers={"Origin": "http://x", "Access-Control-Request-Method": "GET",
                                                       "Access-Control-Request-Headers": "range"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "range" in pre.headers["Access-Control-Allow-Headers"].lower()
    shard = next((root / "seg" / json.loads((root / "seg" / "info").read_text())["scales"][0]["key"]).glob("*.shard"))
    rel = shard.relative_to(root).as_posix()
    part = requests.get(f"{url}/{rel}", headers={"Range": "bytes=16-47", "Origin": "http://x"})
    assert part.status_code == 206 and part.content == shard.read_bytes()[16:48]
    assert "Content-Range" in part.headers["Access-Control-Expose-Headers"]
    assert requests.put(f"{url}/img/info", data=b"x").status_code in (403, 405)


def test_tensorstore_reads_through_nginx(nginx):
    _root, url, _image, seg = nginx
    import tensorstore as ts

    t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"{url}/seg/"}, read=True).result()
    np.testing.assert_array_equal(np.asarray(t.read().result())[..., 0], seg)


def test_the_viewer_shows_data_hosted_by_nginx(nginx):
    root, url, image, _seg = nginx
    from test_viewer import ARGS, CHROMIUM, pixel_at, render
    from playwright.sync_api import sync_playwright

    ds = [load_dataset(FileStore(root / "img"), "img", f"precomputed://{url}/img"),
          load_dataset(FileStore(root / "seg"), "seg", f"precomputed://{url}/seg")]
    state = build_state(ds, layout="xy")
    state.update(crossSectionScale=0.125, showAxisLines=False, showScaleBar=False)
    state["layers"] = state["layers"][:1]
    with DatasetServer({CLIENT_PATH: client_dir()}) as client_server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 800, "height": 800})
        shot, rect = render(page, state_url(state, client_server.url + CLIENT_PATH))
        st3 = build_state(ds, layout="3d")          # no label table: the ids with meshes are listed
        st3["layers"] = st3["layers"][1:]
        mesh_shot, _ = render(page, state_url(st3, client_server.url + CLIENT_PATH))
        browser.close()
    for i in range(4):
        for j in range(4):
            rgb = pixel_at(shot, rect, (16 * i + 8, 16 * j + 8), state)
            assert np.all(np.abs(rgb - int(image[16 * i + 8, 16 * j + 8, 0])) <= 3), ((i, j), rgb)
    assert st3["layers"][0]["segments"] == ["3", "7", "12", "100"]
    lit = (mesh_shot[60:-40, 60:].max(axis=2) > 60).sum()
    assert lit > 5000                                # sharded meshes drawn in the 3-D panel


def test_nginx_as_another_user_serves_sharded_datasets(tmp_path):
    """Shard files get the same mode as every other file (umask honoured), so an nginx whose
    workers run as www-data (as Debian's does) can read a sharded dataset we wrote."""
    import stat
    import tempfile

    if not os.path.exists(NGINX):
        pytest.fail("nginx is missing: install Debian's nginx (apt-get install nginx; .ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("needs root to run nginx workers as www-data")
    root = Path(tempfile.mkdtemp(prefix="ngconvert-www-", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        seg = label_volume((64, 48, 40))
        old = os.umask(0o022)
        try:
            ngconvert.write_segmentation(seg, root / "seg", resolution=(1000, 1000, 1000), sharded=True,
                                         shard_bytes=32 << 10, chunk_size=(16, 16, 16),
                                         mesh=ngconvert.MeshOptions(format="multires", sharded=True))
        finally:
            os.umask(old)
        shards = list((root / "seg").rglob("*.shard"))
        assert shards
        for p in (root / "seg").rglob("*"):
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))
        run_dir = tmp_path / "nginx"
        run_dir.mkdir()
        port = free_port()
        proc = start_nginx(run_dir, "user www-data;", nginx_config(str(root), "_", port, "/"), port, "/seg/info")
        try:
            url = f"http://127.0.0.1:{port}"
            for shard in shards:
                rel = shard.relative_to(root).as_posix()
                r = requests.get(f"{url}/{rel}", headers={"Range": "bytes=0-15"})
                assert r.status_code == 206, (rel, r.status_code)
                assert r.content == shard.read_bytes()[:16]
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    finally:
        shutil.rmtree(root, ignore_errors=True)
