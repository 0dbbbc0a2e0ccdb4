"""End to end in the real viewer: the Neuroglancer client shipped in the neuroglancer package,
served by ``ngconvert view``'s server, in headless Chromium (Debian's, driven by Playwright).

Pixels are checked against the data: grey values of a known image pattern, the stored
segment colours at known places, and meshes drawn in the 3-D panel.  The page ``view`` opens
runs on the client's own Python backend (neuroglancer's server): no "Disconnected from Python
server" alarm, nothing fetched from elsewhere, and the state the browser changes read back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ngconvert
from ngconvert.hosting.view import CLIENT_PATH, start_view
from ngconvert.hosting.viewer_state import state_url

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
READY = ("() => window.viewer && window.viewer.layerManager.managedLayers.length > 0 && "
         "window.viewer.isReady()")
N = 64
BLOCK_VALUES = np.array([[20, 60, 100, 140], [180, 220, 40, 80], [120, 160, 200, 240], [30, 90, 150, 210]],
                        np.uint8)             # [x block, y block] of 16 voxels
LABELS = {1: ("#ff0000", (8, 24), (8, 24)), 2: ("#00ff00", (40, 56), (40, 56)), 3: ("#0000ff", (40, 56), (8, 24))}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer")
    x = np.arange(N)
    image = np.repeat(BLOCK_VALUES[(x // 16)[:, None], (x // 16)[None, :]][:, :, None], N, axis=2)
    ngconvert.write_volume(image, root / "img", resolution=(1000, 1000, 1000), layer_type="image")
    labels = np.zeros((N, N, N), np.uint32)
    for label, (_c, (x0, x1), (y0, y1)) in LABELS.items():
        labels[x0:x1, y0:y1, 8:56] = label
    table = {label: {"name": f"structure {label}", "color": color} for label, (color, _x, _y) in LABELS.items()}
    ngconvert.write_segmentation(labels, root / "atlas", labels=table, resolution=(1000, 1000, 1000),
                                 mesh=ngconvert.MeshOptions(format="multires"))
    return root


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def render(page, url: str) -> tuple[np.ndarray, list[float]]:
    """Load a state, wait until the viewer has drawn everything, return the screenshot
    (RGB array) and the first data panel's rectangle."""
    page.goto(url)
    page.wait_for_function(READY, timeout=90_000)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_timeout(300)
    page.wait_for_function(READY, timeout=90_000)
    from PIL import Image
    import io

    png = page.screenshot()
    rect = page.evaluate("() => { const r = document.querySelector('.neuroglancer-rendered-data-panel')"
                         ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int), rect


def pixel_at(shot, rect, coord, state):
    """The screenshot pixel showing global coordinate (x, y) in an xy panel."""
    scale = state["crossSectionScale"]                  # global units per screen pixel
    cx, cy = rect[0] + rect[2] / 2, rect[1] + rect[3] / 2
    px = cx + (coord[0] - state["position"][0]) / scale
    py = cy + (coord[1] - state["position"][1]) / scale
    return shot[int(round(py)), int(round(px))]


@pytest.fixture(scope="module")
def served(datasets):
    server, url, state = start_view([str(datasets / "img"), str(datasets / "atlas")], port=0)
    server.start()
    yield server, url, state
    server.stop()


def test_view_state_layers_segments_and_colours(served):
    _server, url, state = served
    assert url == f"http://127.0.0.1:{_server.port}{CLIENT_PATH}"     # the state lives in the server
    assert _server.data.port != _server.port
    kinds = {layer["name"]: layer for layer in state["layers"]}
    assert kinds["img"]["type"] == "image" and kinds["atlas"]["type"] == "segmentation"
    assert kinds["atlas"]["segments"] == ["1", "2", "3"]
    assert kinds["atlas"]["segmentColors"] == {str(k): v[0] for k, v in LABELS.items()}
    assert state["position"] == [32.0, 32.0, 32.0]
    assert state["dimensions"]["x"] == [1e-6, "m"]


def test_image_values_in_the_viewer(served, browser):
    server, _url, state = served
    st = json.loads(json.dumps(state))
    st.update(layout="xy", crossSectionScale=0.125, showAxisLines=False, showScaleBar=False)
    st["layers"] = [layer for layer in st["layers"] if layer["name"] == "img"]
    page = browser.new_page(viewport={"width": 800, "height": 800})
    shot, rect = render(page, state_url(st, server.url + CLIENT_PATH))
    page.close()
    for i in range(4):
        for j in range(4):
            rgb = pixel_at(shot, rect, (16 * i + 8, 16 * j + 8), st)
            expect = int(BLOCK_VALUES[i, j])
            assert np.all(np.abs(rgb - expect) <= 3), ((i, j), rgb, expect)


def test_segment_colours_in_the_viewer(served, browser):
    server, _url, state = served
    st = json.loads(json.dumps(state))
    st.update(layout="xy", crossSectionScale=0.125, showAxisLines=False, showScaleBar=False)
    st["layers"] = [layer for layer in st["layers"] if layer["name"] == "atlas"]
    st["layers"][0]["selectedAlpha"] = 1.0
    page = browser.new_page(viewport={"width": 800, "height": 800})
    shot, rect = render(page, state_url(st, server.url + CLIENT_PATH))
    page.close()
    for label, (color, (x0, x1), (y0, y1)) in LABELS.items():
        want = np.array([int(color[k:k + 2], 16) for k in (1, 3, 5)])
        rgb = pixel_at(shot, rect, ((x0 + x1) / 2, (y0 + y1) / 2), st)
        assert np.all(np.abs(rgb - want) <= 6), (label, rgb, want)
    outside = pixel_at(shot, rect, (32, 4), st)
    assert not any(np.all(np.abs(outside - np.array([int(c[k:k + 2], 16) for k in (1, 3, 5)])) <= 30)
                   for c, _x, _y in LABELS.values())


def test_meshes_in_the_3d_panel(served, browser):
    server, _url, state = served
    st = json.loads(json.dumps(state))
    st.update(layout="3d", showAxisLines=False, showScaleBar=False)
    st["layers"] = [layer for layer in st["layers"] if layer["name"] == "atlas"]
    page = browser.new_page(viewport={"width": 800, "height": 800})
    shot, rect = render(page, state_url(st, server.url + CLIENT_PATH))
    st["layers"][0]["segments"] = []                    # the same view without meshes
    empty, _ = render(page, state_url(st, server.url + CLIENT_PATH))
    page.close()
    x, y, w, h = (int(v) for v in rect)
    crop = (slice(y + 60, y + h - 30), slice(x + 60, x + w))      # the panel without its corner legend
    shot, empty = shot[crop], empty[crop]
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    red = (r > 60) & (r > 2 * g + 20) & (r > 2 * b + 20)
    green = (g > 60) & (g > 2 * r + 20) & (g > 2 * b + 20)
    blue = (b > 60) & (b > 2 * r + 20) & (b > 2 * g + 20)
    assert red.sum() > 2000 and green.sum() > 2000 and blue.sum() > 2000, (red.sum(), green.sum(), blue.sum())
    er, eg = empty[..., 0], empty[..., 1]
    assert ((er > 60) & (er > 2 * eg + 20)).sum() < 50         # nothing red without the segments


def test_default_view_with_both_layers_renders(served, browser):
    _server, url, _state = served
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    messages = []
    page.on("console", lambda m: messages.append(m.text))
    shot, _rect = render(page, url)
    names = page.evaluate("() => window.viewer.layerManager.managedLayers.map(l => l.name)")
    page.close()
    assert names == ["img", "atlas"]
    assert not [m for m in messages if "rror" in m and "python" not in m.lower() and "404" not in m]
    red = (shot[..., 0] > 150) & (shot[..., 1] < 90) & (shot[..., 2] < 90)
    assert red.sum() > 500                               # the red structure, in slices and in 3-D


ALARMS = ("Disconnected from Python server", "Retrying", "Connecting to Python server")


def test_view_page_shows_no_backend_alarm(served, browser):
    """The page ``view`` prints: drawn from its state, its status line free of the
    "Disconnected from Python server.  Retrying in N seconds." the client shows without its
    Python backend, for several seconds; every request to this machine's two servers."""
    server, url, _state = served
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    shot, _rect = render(page, url)
    red = (shot[..., 0] > 150) & (shot[..., 1] < 90) & (shot[..., 2] < 90)
    assert red.sum() > 500                               # drawn: the red structure
    texts = []
    for _ in range(8):                                   # the retry timer ticks every second
        page.wait_for_timeout(1000)
        texts.append(page.evaluate("() => document.body.innerText"))
    html = page.content()
    page.close()
    for text in texts:                                   # shown text (innerText: nothing hidden)
        assert not [a for a in ALARMS if a in text], [line for line in text.splitlines() if "ython" in line]
    assert "Disconnected" not in html and "Retrying" not in html         # not even hidden
    assert any("/events/" in r for r in requests)      # the client did look for its backend ...
    mine = (server.url, server.data.url)
    assert requests and all(r.startswith(mine) or r.startswith(("data:", "blob:")) for r in requests), \
        [r for r in requests if not r.startswith(mine)][:5]


def test_the_client_without_its_backend_shows_the_alarm(browser):
    """The same client served as plain files (what ``view`` did before): the alarm is there, so
    the test above would see it."""
    from ngconvert.hosting.serve import DatasetServer
    from ngconvert.hosting.view import client_dir

    with DatasetServer({CLIENT_PATH: client_dir()}) as plain:
        page = browser.new_page(viewport={"width": 800, "height": 600})
        page.goto(state_url({"layers": [], "layout": "xy"}, plain.url + CLIENT_PATH))
        page.wait_for_function("() => document.body.innerText.includes('Disconnected from Python server')",
                               timeout=30_000)
        page.close()


def test_live_state_read_back(served, browser):
    """The viewer's state is the browser's: a change made in the page reaches Python."""
    server, url, _state = served
    page = browser.new_page(viewport={"width": 800, "height": 600})
    render(page, url)
    page.evaluate("() => { window.viewer.layout.restoreState('xy'); }")
    import time

    deadline = time.monotonic() + 20
    while server.state.get("layout") != "xy" and time.monotonic() < deadline:
        time.sleep(0.2)
    layout = server.state.get("layout")
    page.evaluate("() => { window.viewer.layout.restoreState('4panel'); }")
    page.close()
    assert layout == "xy"
    assert [layer["name"] for layer in server.state["layers"]] == ["img", "atlas"]


def test_view_command_serves_and_prints_the_state_on_ctrl_c(datasets):
    """``ngconvert view --no-browser --print-state``: the URL on stdout, the client and the
    datasets served, Ctrl-C stops it (exit 0) and prints the state."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    env = {**os.environ, "PYTHONPATH": str(Path(ngconvert.__file__).parent.parent)}
    p = subprocess.Popen([sys.executable, "-m", "ngconvert", "view", str(datasets / "atlas"), "--no-browser",
                          "--port", "0", "--print-state", "--segments", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = p.stdout.readline().strip()
        assert url.endswith(CLIENT_PATH), url
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"<script" in r.read()
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    state = json.loads(out)
    layer = state["layers"][0]
    assert layer["segments"] == ["2"] and layer["source"].startswith("precomputed://http://127.0.0.1:")
    with pytest.raises(OSError):                         # both servers gone
        urllib.request.urlopen(url, timeout=5)
