"""A real S3-compatible server for the storage tests, and a proxy that makes it misbehave.

``moto_server`` runs moto's standalone server (``python -m moto.server``, from
``moto[server]``) as a subprocess on 127.0.0.1 and a free port, for the whole session, and
stops it by its process handle.  Clients reach it over real HTTP, exactly like any S3
endpoint.  ``s3_env`` sets dummy credentials in the environment (boto3 and tensorstore
read them from there) and hides any real AWS configuration of the machine.

``FlakyProxy`` sits between a client and the server on 127.0.0.1 and answers the first N
requests itself (a 503 SlowDown, a 500, or a dropped connection) before forwarding.

A test module gets the fixtures with ``pytest_plugins = ("s3server",)``, which registers
them once for the session (one server however many modules use it).  The module is
imported before pytest registers it, so it opts out of assertion rewriting:
PYTEST_DONT_REWRITE
"""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
HIDDEN_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
              "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_CA_BUNDLE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    return free_port()


@dataclass
class MotoServer:
    """One ``moto.server`` process on 127.0.0.1."""

    env: dict = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MotoServer":
        for _attempt in range(3):    # the free port may be taken between probe and bind
            self.port = free_port()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                env={**os.environ, **DUMMY_ENV, **self.env},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError("moto server did not start")

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/moto-api/")
                conn.getresponse().read()
                conn.close()
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self, **kwargs):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}), **kwargs)


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory):
    """Dummy AWS credentials in the environment; the machine's AWS files hidden."""
    empty = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for name in HIDDEN_ENV:
            mp.delenv(name, raising=False)
        for name, value in DUMMY_ENV.items():
            mp.setenv(name, value)
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield DUMMY_ENV


@pytest.fixture(scope="session")
def moto_server(s3_env):
    """A moto S3 server for the session (no authentication: any key is accepted)."""
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def bucket(moto_server) -> str:
    """A new, empty bucket on the session's server."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    moto_server.client().create_bucket(Bucket=name)
    return name


ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
             '<Message>{message}</Message><RequestId>proxy</RequestId></Error>')


class FlakyProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` (``host``, ``port``).

    Request number ``i`` (1-based) for which ``fail_when(i)`` is true gets ``status`` with
    an S3 error body of ``code``, or, with ``status=0``, a connection closed without any
    answer; other requests are forwarded unchanged.  ``seen`` counts requests, ``failed``
    the ones it failed.  See :func:`first`, :func:`always`, :func:`every`.
    """

    def __init__(self, upstream_port: int, fail_when: Callable[[int], bool], status: int = 503,
                 code: str = "SlowDown", message: str = "Please reduce your request rate.",
                 drop_when: Callable[[int], bool] | None = None):
        self.upstream_port = upstream_port
        self.fail_when = fail_when
        self.drop_when = drop_when          # these requests lose their connection instead
        self.dropped = 0
        self.failed = 0
        self.status, self.code, self.message = status, code, message
        self.seen = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FlakyProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def _should_fail(self) -> bool | str:
        with self.lock:
            self.seen += 1
            if self.drop_when is not None and self.drop_when(self.seen):
                self.dropped += 1
                return "drop"
            fail = self.fail_when(self.seen)
            self.failed += fail
            return fail

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _answer(self) -> None:
                body = self._body()
                verdict = proxy._should_fail()
                if verdict:
                    self._fail(drop=verdict == "drop")
                else:
                    self._forward(body)

            def _fail(self, drop: bool = False) -> None:
                if proxy.status == 0 or drop:       # drop the connection: a reset to the client
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = ERROR_XML.format(code=proxy.code, message=proxy.message).encode()
                self.send_response(proxy.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else len(payload)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

        return Handler


def first(n: int) -> Callable[[int], bool]:
    """Fail the first ``n`` requests."""
    return lambda i: i <= n


def always(i: int) -> bool:
    """Fail every request."""
    return True


def fraction(p: float, seed: int) -> Callable[[int], bool]:
    """Fail a pseudo-random fraction ``p`` of requests (the same ones for the same seed)."""
    import random

    rng = random.Random(seed)
    draws: dict[int, bool] = {}

    def decide(i: int) -> bool:
        while len(draws) < i:
            draws[len(draws) + 1] = rng.random() < p
        return draws[i]
    return decide


def every(k: int) -> Callable[[int], bool]:
    """Fail every ``k``-th request."""
    return lambda i: i % k == 0
