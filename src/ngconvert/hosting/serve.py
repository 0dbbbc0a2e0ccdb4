"""A small read-only HTTP/1.1 server for precomputed datasets (and the viewer's files).

What the viewer needs, and nothing more:

* CORS on every answer (``Access-Control-Allow-Origin: *``, the range and encoding headers
  exposed) and ``OPTIONS`` preflights;
* ``Range`` requests (206; 416 with ``Content-Range: bytes */SIZE`` when unsatisfiable), for
  shards and multi-resolution mesh fragments;
* ``KEY`` answered from ``KEY.gz`` with ``Content-Encoding: gzip`` when only the gzipped file
  exists (our on-disk layout); a ranged request for such a key, or a client whose
  ``Accept-Encoding`` does not take gzip (or that sends none, as nginx's ``gunzip`` assumes),
  gets the decompressed object (the requested bytes of it);
* ``404`` for missing chunks (the viewer treats them as empty), JSON content type for
  ``info`` files;
* read only (GET, HEAD, OPTIONS), bound to 127.0.0.1 unless told otherwise, and never outside
  its folders: ``..``, absolute paths and symlinks that lead out are refused (the check is made
  on the opened file).

Several folders can be mounted under URL prefixes (``view`` serves each dataset and the
viewer's client side by side).

Under load: one asyncio event loop in one thread serves every connection (HTTP/1.1
keep-alive and pipelining), so an idle connection costs a socket and a few KB, never a thread.
Small files (a chunk, a range of a shard) are read with ``os.pread`` in the loop, from the page
cache; bodies over ``SMALL`` bytes are read in blocks by a pool of ``WORKERS`` threads, and so
is gzip decompression.  The listen backlog is ``BACKLOG``; a connection that sends no complete
request head for ``timeout`` seconds (an idle keep-alive connection, or a client trickling its
headers) is closed, and so is one whose client stops reading the answer for that long; at
``max_connections`` open connections the longest-waiting idle one is closed to make room.

Over 450 lines because the HTTP parsing helpers still sit with DatasetServer; the split into
hosting/http.py was left for a later change so that this move stays purely a move.
"""
from __future__ import annotations

import asyncio
import errno
import gzip
import http
import os
import posixpath
import re
import socket
import stat
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..core.errors import UserError

EXPOSED = "Content-Range, Content-Encoding, Content-Length, Accept-Ranges, Content-Type"
TYPES = {".json": "application/json", ".html": "text/html; charset=utf-8", ".js": "text/javascript",
         ".mjs": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".png": "image/png",
         ".svg": "image/svg+xml", ".ico": "image/x-icon", ".map": "application/json", ".txt": "text/plain"}
BLOCK = 256 << 10                   # bytes per read of a large body (in the thread pool)
SMALL = 256 << 10                   # bodies up to this are read in one pread in the event loop
BACKLOG = max(1024, socket.SOMAXCONN)
WORKERS = 4                         # threads for large reads and decompression
TIMEOUT = 20.0                      # seconds: idle keep-alive, a request head, a stalled reader
MAX_CONNECTIONS = 1024
MAX_HEAD = 64 << 10                 # request line + headers
MAX_DISCARD = 1 << 20               # a GET's body up to this is read and dropped, a longer one closes
SERVER = "ngconvert"
REFUSED = {"POST", "PUT", "DELETE", "PATCH"}
_PROC_FD = os.path.isdir("/proc/self/fd")


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
        self._items = [(prefix, root, str(root)) for prefix, root in self.items]

    def resolve(self, url_path: str) -> tuple[Path | None, Path | None]:
        """(file, folder mounted) for a request path, or (None, None) when outside every mount."""
        path, root = self.resolve_str(url_path)
        return (Path(path), Path(root)) if path is not None else (None, None)

    def resolve_str(self, url_path: str) -> tuple[str | None, str | None]:
        """``resolve`` with strings (the server's path, a request costs no Path objects)."""
        path = unquote(urlsplit(url_path).path)
        if "\x00" in path or "\\" in path:
            return None, None
        for prefix, root, root_str in self._items:
            if path == prefix.rstrip("/") or path.startswith(prefix):
                rel = path[len(prefix):] if path.startswith(prefix) else ""
                parts = rel.split("/")
                if any(p == ".." for p in parts) or rel.startswith("/"):
                    return None, None
                norm = posixpath.normpath("/" + rel).lstrip("/")
                return (os.path.join(root_str, norm) if norm not in ("", ".") else root_str), root_str
        return None, None


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value takes gzip (``gzip``/``x-gzip`` or ``*`` with q > 0).
    No header: no (a client that says nothing gets the plain bytes, as from nginx's gunzip)."""
    if header is None:
        return False
    gz = star = None
    for item in header.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if name in ("gzip", "x-gzip"):
            gz = q if gz is None else max(gz, q)
        elif name == "*":
            star = q
    if gz is not None:
        return gz > 0
    return star is not None and star > 0


def _real(fd: int, path: str) -> str:
    """The real path of an open file (what it is, whatever symlinks led to it)."""
    if _PROC_FD:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return os.path.realpath(path)


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


def _open_regular(path: str, root: str) -> tuple[int, int] | None:
    """(fd, size) of a regular file inside ``root``, or None (no such file, not a regular file, outside)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and _inside(_real(fd, path), root):
            return fd, st.st_size
    except OSError:
        pass
    os.close(fd)
    return None


class _Answer:
    """A response: status, headers, and a body (bytes, or ``count`` bytes of ``fd`` from ``offset``)."""

    __slots__ = ("code", "headers", "body", "fd", "offset", "count", "close")

    def __init__(self, code: int, headers: list[tuple[str, str]], body: bytes = b"", fd: int | None = None,
                 offset: int = 0, count: int = 0, close: bool = False):
        self.code, self.headers, self.body = code, headers, body
        self.fd, self.offset, self.count, self.close = fd, offset, count, close


def _simple(code: int, text: str, extra: dict | None = None, close: bool = False) -> _Answer:
    body = (text + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    headers += list((extra or {}).items())
    return _Answer(code, headers, body, close=close)


_CORS = f"Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: {EXPOSED}\r\n"
_date_cache = [0, ""]


def _date() -> str:
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]


class _Bad(Exception):
    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code, self.text = code, text


def _parse(head: bytes):
    """(request line, method, target, keep-alive, body length, headers) of a request head."""
    text = head[:-4].decode("latin-1")
    lines = text.split("\r\n")
    while lines and not lines[0]:              # empty lines before a request are ignored
        lines.pop(0)
    if not lines:
        raise _Bad(400, "empty request")
    line = lines[0]
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _Bad(400, "bad request line")
    method, target, version = parts
    headers = {}
    for h in lines[1:]:
        k, sep, v = h.partition(":")
        if not sep or not k or k != k.strip():
            raise _Bad(400, "bad header line")
        k = k.lower()
        headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
    conn = headers.get("connection", "").lower()
    if version == "HTTP/1.1":
        keep = "close" not in conn
    elif version == "HTTP/1.0":
        keep = "keep-alive" in conn
    else:
        raise _Bad(505, "HTTP version not supported")
    if "transfer-encoding" in headers:
        keep, length = False, 0
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _Bad(400, "bad Content-Length") from None
        if length < 0:
            raise _Bad(400, "bad Content-Length")
    if method not in ("GET", "HEAD", "OPTIONS") and method not in REFUSED:
        raise _Bad(501, f"unsupported method {method[:20]!r}")
    return line, method, target, keep, length, headers


class DatasetServer:
    """``with DatasetServer({"/": folder}) as s: s.url`` serves in a background thread;
    ``serve_forever()`` serves in the calling thread until ``stop()`` (or Ctrl-C)."""

    def __init__(self, mounts: dict[str, str | os.PathLike], bind: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False, timeout: float = TIMEOUT, max_connections: int = MAX_CONNECTIONS):
        for prefix, folder in mounts.items():
            if not Path(folder).is_dir():
                raise UserError(f"{folder}: not a folder; give the folder to serve")
        self.mounts = Mounts(mounts)
        self.verbose = verbose
        self.timeout = timeout
        self.max_connections = max_connections
        self.bind = bind
        self._sock = self._listen(bind, port)
        self.port = self._sock.getsockname()[1]
        self.server_address = self._sock.getsockname()[:2]
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._running = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._connections: dict[asyncio.StreamWriter, None] = {}
        self._idle: dict[asyncio.StreamWriter, None] = {}      # waiting for a request head, oldest first

    @staticmethod
    def _listen(bind: str, port: int) -> socket.socket:
        try:
            infos = socket.getaddrinfo(bind or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            infos.sort(key=lambda i: i[0] != socket.AF_INET)          # IPv4 first, as before
            family, kind, proto, _name, address = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            return sock
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {bind} is in use; pass another --port (or 0 for any free one)") \
                    from None
            if e.errno in (errno.EADDRNOTAVAIL, -2, -3, -5, -9):
                raise UserError(f"cannot bind to {bind}: {e.strerror or e}; give an address of this machine") \
                    from None
            raise UserError(f"cannot serve on {bind}:{port}: {e.strerror or e}") from None

    @property
    def url(self) -> str:
        host = self.bind if self.bind not in ("0.0.0.0", "", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def httpd(self) -> "DatasetServer":
        """The object with ``server_close()`` and ``shutdown()`` (it used to be http.server's)."""
        return self

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "DatasetServer":
        self._done.clear()
        self._thread = threading.Thread(target=self._run, name="ngconvert-serve", daemon=True)
        self._thread.start()
        self._running.wait(10)
        return self

    def serve_forever(self) -> None:
        self._done.clear()
        self._run()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._running.clear()
            self._done.set()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ngconvert-serve-io")
        loop.set_default_executor(pool)
        self._stopping = asyncio.Event()
        self._loop = loop
        server = await asyncio.start_server(self._connection, sock=self._sock, backlog=BACKLOG, limit=MAX_HEAD)
        self._running.set()
        try:
            await self._stopping.wait()
        finally:
            self._loop = None
            server.close()
            for writer in list(self._connections):
                writer.transport.abort()
            await asyncio.sleep(0)
            pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        """Stop serving (from another thread than the one serving); the socket stays open."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:          # the loop closed in between
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
            self._thread = None
        elif self._thread is None:
            self._done.wait(10)

    def server_close(self) -> None:
        self._sock.close()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ connections

    def _log(self, host: str, line: str, code: int) -> None:
        if self.verbose:
            sys.stderr.write(f'{host} "{line}" {code} -\n')

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections and self._idle:
            oldest = next(iter(self._idle))          # make room: close the longest-waiting idle one
            self._idle.pop(oldest, None)
            self._connections.pop(oldest, None)
            oldest.transport.abort()
        self._connections[writer] = None
        peer = writer.get_extra_info("peername")
        host = peer[0] if peer else "-"
        try:
            if len(self._connections) > self.max_connections:
                await self._write(writer, _simple(503, "too many connections", {"Connection": "close"}), "GET")
                return
            while await self._one_request(reader, writer, host):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, OSError):
            pass
        except Exception as e:          # a bug must not stop the server; only this connection goes
            sys.stderr.write(f"ngconvert serve: {type(e).__name__}: {e}\n")
        finally:
            self._connections.pop(writer, None)
            self._idle.pop(writer, None)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()
            else:
                writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> bool:
        """Read one request and answer it; whether the connection goes on."""
        self._idle[writer] = None
        try:
            async with asyncio.timeout(self.timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._write(writer, _simple(431, "request head too large", {"Connection": "close"}), "GET")
            return False
        finally:
            self._idle.pop(writer, None)
        line, method, keep, headers = "", "GET", False, {}
        try:
            line, method, target, keep, length, headers = _parse(head)
            if method in REFUSED:               # its body is not read: never parse it as a request
                answer = _simple(405, "read-only server", {"Allow": "GET, HEAD, OPTIONS", "Connection": "close"},
                                 close=True)
            else:
                if length > MAX_DISCARD:
                    keep = False
                elif length:
                    async with asyncio.timeout(self.timeout):
                        await reader.readexactly(length)
                answer = await self._answer(method, target, headers)
        except _Bad as e:
            method = "GET"
            answer = _simple(e.code, e.text, {"Connection": "close"}, close=True)
            line = line or head.split(b"\r\n", 1)[0].decode("latin-1")[:200]
        self._log(host, line, answer.code)
        if not keep and not answer.close:
            answer.headers.append(("Connection", "close"))
            answer.close = True
        elif keep and not answer.close and headers.get("connection", "").lower() == "keep-alive":
            answer.headers.append(("Connection", "keep-alive"))
        await self._write(writer, answer, method)
        return not answer.close

    async def _write(self, writer: asyncio.StreamWriter, answer: _Answer, method: str) -> None:
        head = [f"HTTP/1.1 {answer.code} {http.HTTPStatus(answer.code).phrase}\r\nServer: {SERVER}\r\n"
                f"Date: {_date()}\r\n{_CORS}"]
        head += [f"{k}: {v}\r\n" for k, v in answer.headers]
        head.append("\r\n")
        data = "".join(head).encode("latin-1")
        fd = answer.fd
        try:
            if method == "HEAD":
                writer.write(data)
            elif fd is None:
                writer.write(data + answer.body)
            elif answer.count <= SMALL:
                block = os.pread(fd, answer.count, answer.offset)
                if len(block) < answer.count:        # the file shrank since: the connection cannot go on
                    answer.close = True
                writer.write(data + block)
            else:
                writer.write(data)
                loop = asyncio.get_running_loop()
                offset, left = answer.offset, answer.count
                while left > 0:
                    block = await loop.run_in_executor(None, os.pread, fd, min(BLOCK, left), offset)
                    if not block:
                        answer.close = True
                        break
                    writer.write(block)
                    offset += len(block)
                    left -= len(block)
                    async with asyncio.timeout(self.timeout):
                        await writer.drain()
        finally:
            if fd is not None:
                os.close(fd)
        async with asyncio.timeout(self.timeout):
            await writer.drain()

    # ------------------------------------------------------------------ answers

    async def _answer(self, method: str, target: str, headers: dict) -> _Answer:
        if method == "OPTIONS":
            return _Answer(204, [("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"),
                                 ("Access-Control-Allow-Headers",
                                  headers.get("access-control-request-headers") or "Range, Content-Type"),
                                 ("Access-Control-Max-Age", "86400"), ("Content-Length", "0")])
        path, root = self.mounts.resolve_str(target)
        if path is None:
            return _simple(404, "not found")
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            if not target.split("?")[0].endswith("/"):
                return _simple(404, "not found")
            path = os.path.join(path, "index.html")
        elif st is None:
            opened = _open_regular(path + ".gz", root)
            if opened is None:
                return _simple(404, "not found")
            return await self._gzipped(opened, path, headers)
        opened = _open_regular(path, root)
        if opened is None:
            return _simple(404, "not found")
        fd, size = opened
        return self._ranged(headers.get("range"), size, path, fd=fd)

    def _ranged(self, rng_header: str | None, size: int, name: str, fd: int | None = None, data: bytes = b"",
                encoding: str | None = None, vary: bool = False) -> _Answer:
        rng = parse_range(rng_header, size) if rng_header else None
        if rng == "invalid":
            if fd is not None:
                os.close(fd)
            return _simple(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
        start, stop = rng if rng else (0, size)
        headers = [("Content-Type", content_type(name)), ("Accept-Ranges", "bytes"),
                   ("Content-Length", str(stop - start)), ("Cache-Control", "no-cache")]
        if rng:
            headers.append(("Content-Range", f"bytes {start}-{stop - 1}/{size}"))
        if encoding:
            headers.append(("Content-Encoding", encoding))
        if vary:
            headers.append(("Vary", "Accept-Encoding"))
        if fd is not None:
            return _Answer(206 if rng else 200, headers, fd=fd, offset=start, count=stop - start)
        return _Answer(206 if rng else 200, headers, data[start:stop] if rng else data)

    async def _gzipped(self, opened: tuple[int, int], name: str, headers: dict) -> _Answer:
        """``name`` answered from ``name.gz``: as stored with Content-Encoding: gzip, or decompressed
        (a Range request: bytes of the object, not of its gzip form; or a client not taking gzip)."""
        fd, size = opened
        rng_header = headers.get("range")
        if not rng_header and accepts_gzip(headers.get("accept-encoding")):
            return self._ranged(None, size, name, fd=fd, encoding="gzip", vary=True)
        try:
            loop = asyncio.get_running_loop()
            try:
                data = await loop.run_in_executor(None, _gunzip_fd, fd, size)
            except (OSError, EOFError, zlib.error):
                return _simple(500, "stored gzip data is damaged")
        finally:
            os.close(fd)
        return self._ranged(rng_header, len(data), name, data=data, vary=True)


def _gunzip_fd(fd: int, size: int) -> bytes:
    return gzip.decompress(os.pread(fd, size, 0))
