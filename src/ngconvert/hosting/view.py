"""``ngconvert view``: the real Neuroglancer viewer, locally, with the datasets.

The web client shipped in the ``neuroglancer`` Python package is its Python-integration build:
it always opens an event stream to the Python backend it was built for (``/events/<token>``)
and says "Disconnected from Python server" while there is none.  So the viewer runs on that
backend, the ``neuroglancer`` package's own server (``--port``): it serves the client from the
package (nothing is fetched from the internet) under ``/v/ngconvert/`` and holds the viewer's
state, which Python can read while it runs (``--print-state``).  The datasets are served beside
it by a ``DatasetServer`` (CORS, Range, gzip) on a free port, under ``/data/<name>/``.
"""
from __future__ import annotations

import errno
import json
import os
import re
import sys
import threading
from pathlib import Path

from .configs import check_port
from .serve import DatasetServer
from .viewer_state import build_state, load_dataset, source_for
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


TOKEN = CLIENT_PATH.strip("/").split("/")[1]


class View:
    """A running ``view``: neuroglancer's server (the client and its Python backend, holding the
    state) and the ``DatasetServer`` with the datasets.  ``url`` is the viewer server's root,
    ``url + CLIENT_PATH`` the viewer; ``stop()`` stops both."""

    def __init__(self, data: DatasetServer, viewer, url: str, port: int):
        self.data = data
        self.viewer = viewer
        self.url = url
        self.port = port
        self._stopped = threading.Event()

    @property
    def state(self) -> dict:
        """The viewer's live state (what the browser shows, as it changes), as JSON."""
        return self.viewer.state.to_json()

    def start(self) -> "View":        # both servers already serve (kept for ``with``/old callers)
        return self

    def serve_forever(self) -> None:
        """Block until ``stop()`` or Ctrl-C (KeyboardInterrupt goes to the caller)."""
        while not self._stopped.wait(0.5):
            pass

    def stop(self) -> None:
        import neuroglancer

        self._stopped.set()
        neuroglancer.stop()
        self.data.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _start_viewer_server(bind: str, port: int, state: dict):
    """neuroglancer's own server on ``bind:port`` with one viewer showing ``state``."""
    import neuroglancer

    if neuroglancer.server.is_server_running():
        neuroglancer.stop()               # this process's viewer server is ours: start it afresh
    neuroglancer.set_server_bind_address(bind, port)
    try:
        neuroglancer.server.start()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {bind} is in use; pass another --port (or 0 for any free one)") \
                from None
        raise UserError(f"cannot serve the viewer on {bind}:{port}: {e.strerror or e}") from None
    viewer = neuroglancer.Viewer(token=TOKEN)          # a fixed token: no credentials handed out
    viewer.set_state(neuroglancer.ViewerState(state))
    return viewer, neuroglancer.server.get_server_url(), neuroglancer.server.global_server.port


def start_view(datasets: list[str], port: int = 0, bind: str = "127.0.0.1", segments="all",
               layout: str | None = None, verbose: bool = False, storage: StorageOptions | None = None):
    """Start serving; returns (view, viewer URL, state).  Local folders are served, URLs
    (http(s)://, s3://, gs://) are read from where they are.  The viewer's server is this
    process's ``neuroglancer`` server (one a process: an earlier one is stopped)."""

    if not datasets:
        raise UserError("give one or more datasets to view")
    check_port(port, "--port", allow_zero=True)
    client_dir()                                       # the package and its built client are there
    names = _names(datasets)
    mounts: dict[str, str] = {}
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
    loaded = []
    for path, name in zip(datasets, names):
        if path in local:
            loaded.append((path, name, FileStore(local[path]), None))
        else:
            loaded.append((path, name, open_store(path, storage),
                           source_for(path, storage.endpoint_url if storage else None)))
    if port:                    # refuse a busy --port before anything starts
        DatasetServer._listen(bind, port).close()
    data = DatasetServer(mounts, bind=bind, port=0, verbose=verbose)      # none mounted: URLs only
    try:
        state = build_state([load_dataset(store, name, source or f"precomputed://{data.url}/data/{name}")
                             for _path, name, store, source in loaded], segments=segments, layout=layout)
        data.start()
        viewer, url, actual_port = _start_viewer_server(bind, port, state)
    except BaseException:
        data.stop()
        raise
    view = View(data, viewer, url, actual_port)
    return view, url + CLIENT_PATH, state


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
             browser=True, storage=None, print_state=False) -> None:
    view, url, _state = start_view(datasets, port, bind, segments, layout, verbose, storage)
    print(url, flush=True)
    print(f"serving the viewer on {view.url} and {len(datasets)} dataset(s) on {view.data.url}; Ctrl-C to stop",
          file=sys.stderr)
    if browser and not open_browser(url):
        print("no web browser found here: open the URL above in one", file=sys.stderr)
    try:
        view.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if print_state:
            print(json.dumps(view.state, indent=1))
        view.stop()
