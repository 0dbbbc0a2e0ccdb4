"""``ngconvert view``: the real Neuroglancer client, served locally with the datasets.

The client is the one shipped in the ``neuroglancer`` Python package (its built web files),
so nothing is fetched from the internet.  It must be served under ``/v/<name>/``; datasets
are served next to it under ``/data/<name>/`` by the same server (CORS, Range, gzip).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from .configs import check_port
from .serve import DatasetServer
from .viewer_state import build_state, load_dataset, source_for, state_url
from ..core.errors import UserError
from ..store.base import StorageOptions
from ..store.local import FileStore
from ..store.open import open_store
# neuroglancer: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

CLIENT_PATH = "/v/ngconvert/"


def client_dir() -> Path:
    try:
        import neuroglancer
    except ImportError:
        raise UserError("the viewer's files come from the neuroglancer package; pip install neuroglancer") from None
    d = Path(neuroglancer.__file__).parent / "static" / "client"
    if not (d / "index.html").is_file():
        raise UserError(f"{d} holds no built viewer (index.html); reinstall the neuroglancer package")
    return d


def _names(paths: list[str]) -> list[str]:
    out, seen = [], {}
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(p)) or "data")
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}_{n + 1}")
    return out


def start_view(datasets: list[str], port: int = 0, bind: str = "127.0.0.1", segments="all",
               layout: str | None = None, verbose: bool = False, storage: StorageOptions | None = None):
    """Start the server; returns (server, viewer URL, state).  Local folders are served,
    URLs (http(s)://, s3://, gs://) are read from where they are."""

    if not datasets:
        raise UserError("give one or more datasets to view")
    check_port(port, "--port", allow_zero=True)
    names = _names(datasets)
    mounts: dict[str, str] = {CLIENT_PATH: str(client_dir())}
    local = {}
    for path, name in zip(datasets, names):
        if "://" in path and not path.startswith("file://"):
            continue
        folder = path[len("file://"):] if path.startswith("file://") else path
        if not os.path.isdir(folder):
            raise UserError(f"{path}: no such folder; give the folder of a precomputed dataset")
        if not (Path(folder) / "info").is_file():
            raise UserError(f"{path} has no info file; give the folder of a precomputed dataset (finished "
                            "conversions have one)")
        mounts[f"/data/{name}/"] = folder
        local[path] = folder
    server = DatasetServer(mounts, bind=bind, port=port, verbose=verbose)
    loaded = []
    for path, name in zip(datasets, names):
        if path in local:
            store = FileStore(local[path])
            source = f"precomputed://{server.url}/data/{name}"
        else:
            store = open_store(path, storage)
            source = source_for(path, storage.endpoint_url if storage else None)
        loaded.append(load_dataset(store, name, source))
    state = build_state(loaded, segments=segments, layout=layout)
    return server, state_url(state, server.url + CLIENT_PATH), state


def open_browser(url: str) -> bool:
    """Open a graphical browser when there is one (never a text browser that would take over
    the terminal the server runs in)."""
    import webbrowser

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False

    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    try:
        return bool(browser.open(url))
    except Exception:       # a broken browser setup must not stop the server
        return False


def run_view(datasets, port=9000, bind="127.0.0.1", segments="all", layout=None, verbose=False,
             browser=True, storage=None) -> None:
    server, url, _state = start_view(datasets, port, bind, segments, layout, verbose, storage)
    print(url)
    print(f"serving {len(datasets)} dataset(s) and the viewer on {server.url}; Ctrl-C to stop", file=sys.stderr)
    if browser and not open_browser(url):
        print("no web browser found here: open the URL above in one", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
