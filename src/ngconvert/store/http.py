"""A dataset served over plain HTTP(S), read-only.

``HTTPStore("https://host/path/to/dataset")`` GETs ``URL/KEY``.  Content-Encoding: the
request sends ``Accept-Encoding: gzip``; ``get_raw`` returns the body as sent with the
response's ``Content-Encoding`` (so a server with pre-gzipped files, e.g. nginx
``gzip_static``, gives the gzip bytes and ``"gzip"``), and ``get`` gunzips it.  A 404 is
"absent" (None), as in the viewer.  HTTP has no listing, so ``list`` (and with it
:func:`ngconvert.datasets.transfer.download`) refuses with one line; writes are refused too.

Requests go through :func:`ngconvert.store.retry.call_with_retry` on 429, 5xx, connection
failures and timeouts.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from .base import RawObject, ReadOnlyStore, StorageOptions, normal_encoding
from .retry import RetriesExhausted, RetryPolicy, StorageUnavailable, call_with_retry
from ..core.errors import UserError
# requests: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

T = TypeVar("T")

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class HTTPStatusError(Exception):
    """A response with an unexpected status (kept for classification and messages)."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}".strip())
        self.status = status


def is_transient(e: BaseException) -> bool:
    import requests

    if isinstance(e, HTTPStatusError):
        return e.status in _TRANSIENT_STATUS
    if isinstance(e, requests.exceptions.SSLError):
        return False
    return isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.ChunkedEncodingError))


class HTTPStore(ReadOnlyStore):
    """A read-only dataset at an ``http(s)://`` URL (see the module docstring)."""

    def __init__(self, url: str, options: StorageOptions | None = None):
        options = options or StorageOptions()
        self.url = url.rstrip("/")
        self.options = options
        self.max_in_flight = options.max_in_flight
        self.policy: RetryPolicy = options.retry_policy()
        self._local = threading.local()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def _session(self):
        """One requests session per thread and process (sessions are not thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None or self._local.pid != os.getpid():
            import requests
            session = requests.Session()
            self._local.session, self._local.pid = session, os.getpid()
        return session

    def _url(self, key: str) -> str:
        return f"{self.url}/{quote(key)}"

    def _call(self, op: str, key: str, fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
        import requests

        try:
            return call_with_retry(fn, policy=policy or self.policy, is_transient=is_transient)
        except RetriesExhausted as e:
            if isinstance(e.last, requests.exceptions.ConnectionError):
                raise StorageUnavailable(f"cannot reach {self.url} after {e.tries} tries ({e.last}); "
                                         "check the URL and that the server is running") from e
            raise StorageUnavailable(f"{op} {self._url(key)} failed {e.tries} times (last error: "
                                     f"{e.last}); the server keeps failing; try again later") from e
        except HTTPStatusError as e:
            if e.status in (401, 403):
                raise UserError(f"access denied: {op} {self._url(key)} answered {e}; the data must "
                                "be publicly readable over HTTP") from e
            raise UserError(f"{op} {self._url(key)} failed: {e}") from e
        except requests.exceptions.RequestException as e:
            raise UserError(f"{op} {self._url(key)} failed: {e}") from e

    def _request(self, method: str, key: str) -> Any:
        r = self._session().request(method, self._url(key), headers={"Accept-Encoding": "gzip"},
                                    stream=True, timeout=self.options.timeout)
        if r.status_code == 404:
            r.close()
            return None
        if r.status_code != 200:
            r.close()
            raise HTTPStatusError(r.status_code, r.reason or "")
        return r

    def get_raw(self, key):
        def fetch() -> RawObject | None:
            r = self._request("GET", key)
            if r is None:
                return None
            with r:
                data = r.raw.read(decode_content=False)
            return RawObject(data, normal_encoding(r.headers.get("Content-Encoding")))
        return self._call("GET", key, fetch)

    def get_range(self, key, start, stop):
        if stop <= start:
            return b""

        def fetch() -> bytes | None:
            r = self._session().get(self._url(key), headers={"Range": f"bytes={start}-{stop - 1}"},
                                    stream=True, timeout=self.options.timeout)
            with r:
                if r.status_code == 404:
                    return None
                if r.status_code == 206:
                    return r.raw.read(decode_content=False)
                if r.status_code == 200:      # a server without Range support sends everything
                    return r.raw.read(decode_content=False)[start:stop]
                raise HTTPStatusError(r.status_code, r.reason or "")
        return self._call("GET", key, fetch)

    def exists(self, key):
        return self._exists(key, self.policy)

    def _exists(self, key: str, policy: RetryPolicy) -> bool:
        def head() -> bool:
            r = self._request("HEAD", key)
            if r is None:
                return False
            r.close()
            return True
        return self._call("HEAD", key, head, policy)

    def list(self, prefix=""):
        raise UserError(f"{self.url}: plain HTTP cannot list objects; download from the "
                        "s3:// or gs:// location the dataset is served from")

    def check_readable(self) -> None:
        """HEAD ``info`` (fails fast on an unreachable server); a missing ``info`` is an error."""
        if not self._exists("info", self.policy.for_probe()):
            raise UserError(f"{self._url('info')} was not found; give the URL of a precomputed dataset")

    def describe(self, key: str) -> str:
        return self._url(key)
