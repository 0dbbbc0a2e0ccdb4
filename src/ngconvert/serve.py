"""A small read-only HTTP/1.1 server for precomputed datasets (and the viewer's files).

What the viewer needs, and nothing more:

* CORS on every answer (``Access-Control-Allow-Origin: *``, the range and encoding headers
  exposed) and ``OPTIONS`` preflights;
* ``Range`` requests (206; 416 with ``Content-Range: bytes */SIZE`` when unsatisfiable), for
  shards and multi-resolution mesh fragments;
* ``KEY`` answered from ``KEY.gz`` with ``Content-Encoding: gzip`` when only the gzipped file
  exists (our on-disk layout); a ranged request for such a key gets the requested bytes of the
  decompressed object;
* ``404`` for missing chunks (the viewer treats them as empty), JSON content type for
  ``info`` files;
* read only (GET, HEAD, OPTIONS), bound to 127.0.0.1 unless told otherwise, and never outside
  its folders: ``..``, absolute paths and symlinks that lead out are refused.

Several folders can be mounted under URL prefixes (``view`` serves each dataset and the
viewer's client side by side).
"""
from __future__ import annotations

import errno
import gzip
import re
import zlib
import os
import posixpath
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import UserError

EXPOSED = "Content-Range, Content-Encoding, Content-Length, Accept-Ranges, Content-Type"
TYPES = {".json": "application/json", ".html": "text/html; charset=utf-8", ".js": "text/javascript",
         ".mjs": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".png": "image/png",
         ".svg": "image/svg+xml", ".ico": "image/x-icon", ".map": "application/json", ".txt": "text/plain"}
BLOCK = 1 << 20


def content_type(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    if base == "info":
        return "application/json"
    return TYPES.get(os.path.splitext(base)[1].lower(), "application/octet-stream")


def parse_range(header: str, size: int):
    """(start, stop) for a single ``bytes=`` range, "invalid" when unsatisfiable, None when
    the header is absent, malformed or asks for several ranges (then the whole file is sent)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[6:].strip()
    m = re.fullmatch(r"(\d*)-(\d*)", spec)
    if not m or not (m.group(1) or m.group(2)):
        return None                              # malformed: ignored, the whole file is sent
    a, b = m.groups()
    if a == "":
        n = int(b)
        if n <= 0 or size == 0:
            return "invalid"
        return max(0, size - n), size
    start = int(a)
    if b and int(b) < start:
        return None                              # last < first: syntactically invalid, ignored
    stop = int(b) + 1 if b else size
    if start >= size:
        return "invalid"
    return start, min(stop, size)


class Mounts:
    """URL prefixes -> folders; resolves request paths safely."""

    def __init__(self, mounts: dict[str, str | os.PathLike]):
        self.items = sorted(((("/" + p.strip("/") + "/") if p.strip("/") else "/"), Path(d).resolve())
                            for p, d in mounts.items())
        self.items.sort(key=lambda pd: -len(pd[0]))

    def resolve(self, url_path: str) -> tuple[Path | None, Path | None]:
        """(file, folder mounted) for a request path, or (None, None) when outside every mount."""
        path = unquote(urlsplit(url_path).path)
        if "\x00" in path or "\\" in path:
            return None, None
        for prefix, root in self.items:
            if path == prefix.rstrip("/") or path.startswith(prefix):
                rel = path[len(prefix):] if path.startswith(prefix) else ""
                parts = rel.split("/")
                if any(p == ".." for p in parts) or rel.startswith("/"):
                    return None, None
                norm = posixpath.normpath("/" + rel).lstrip("/")
                return (root / norm if norm not in ("", ".") else root), root
        return None, None


def _inside(path: Path, root: Path) -> bool:
    try:
        real = Path(os.path.realpath(path))
    except OSError:
        return False
    return real == root or root in real.parents


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ngconvert"
    mounts: Mounts
    verbose = False

    def log_message(self, format, *args):       # noqa: A002 (the base class' name)
        if self.verbose:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", EXPOSED)

    def _simple(self, code: int, text: str, extra: dict | None = None) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        self._cors()
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_OPTIONS(self):   # noqa: N802 (http.server's naming)
        self.send_response(204)
        self._cors()
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers",
                         self.headers.get("Access-Control-Request-Headers") or "Range, Content-Type")
        self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):   # noqa: N802
        self.do_GET()

    def _refuse(self):
        self.close_connection = True             # its body is not read: never parse it as a request
        self._simple(405, "read-only server", {"Allow": "GET, HEAD, OPTIONS", "Connection": "close"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse   # noqa: N815

    def do_GET(self):   # noqa: N802
        target, root = self.mounts.resolve(self.path)
        if target is None:
            self._simple(404, "not found")
            return
        if target.is_dir():
            index = target / "index.html"
            if index.is_file() and _inside(index, root) and self.path.split("?")[0].endswith("/"):
                target = index
            else:
                self._simple(404, "not found")
                return
        gz = Path(str(target) + ".gz")
        if target.is_file() and _inside(target, root):
            self._send_file(target, None)
        elif not target.exists() and gz.is_file() and _inside(gz, root):
            self._send_file(gz, "gzip", name=str(target))
        else:
            self._simple(404, "not found")

    def _send_file(self, path: Path, encoding: str | None, name: str | None = None) -> None:
        name = name or str(path)
        rng_header = self.headers.get("Range")
        data = None
        size = path.stat().st_size
        if encoding == "gzip" and rng_header:
            try:
                data = gzip.decompress(path.read_bytes())     # a range of the object, not of its gzip form
            except (OSError, EOFError, zlib.error):
                self._simple(500, "stored gzip data is damaged")
                return
            size, encoding = len(data), None
        rng = parse_range(rng_header, size) if rng_header else None
        if rng == "invalid":
            self._simple(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
            return
        start, stop = rng if rng else (0, size)
        self.send_response(206 if rng else 200)
        self._cors()
        self.send_header("Content-Type", content_type(name))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Cache-Control", "no-cache")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            if data is not None:
                self.wfile.write(data[start:stop])
                return
            with open(path, "rb") as fh:
                fh.seek(start)
                left = stop - start
                while left > 0:
                    block = fh.read(min(BLOCK, left))
                    if not block:
                        break
                    self.wfile.write(block)
                    left -= len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass


class DatasetServer:
    """``with DatasetServer({"/": folder}) as s: s.url`` serves in a background thread."""

    def __init__(self, mounts: dict[str, str | os.PathLike], bind: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False):
        for prefix, folder in mounts.items():
            if not Path(folder).is_dir():
                raise UserError(f"{folder}: not a folder; give the folder to serve")
        handler = type("MountedHandler", (Handler,), {"mounts": Mounts(mounts), "verbose": verbose})
        try:
            self.httpd = ThreadingHTTPServer((bind, port), handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {bind} is in use; pass another --port (or 0 for any free one)") \
                    from None
            if e.errno in (errno.EADDRNOTAVAIL, -2, -3, -5):
                raise UserError(f"cannot bind to {bind}: {e.strerror or e}; give an address of this machine") \
                    from None
            raise UserError(f"cannot serve on {bind}:{port}: {e.strerror or e}") from None
        self.httpd.daemon_threads = True
        self.bind = bind
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.bind if self.bind not in ("0.0.0.0", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> "DatasetServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
