"""Key/value stores a dataset is written to and read from.

Keys are ``/``-separated paths relative to the dataset root.  ``put`` takes the bytes
as stored plus their ``Content-Encoding``; ``get`` undoes the encoding, so callers always
see the decoded bytes; ``get_raw`` returns the stored bytes and their encoding, which is
what a transfer copies (nothing is decoded and encoded again).

What each store does with ``Content-Encoding: gzip``:

- :class:`FileStore` (a local folder) keeps the object as ``KEY.gz`` (the layout nginx
  ``gzip_static``, cloud-volume and neuroglancer-scripts share);
- :class:`MemoryStore` keeps the encoding beside the bytes;
- object stores (:mod:`ngconvert.s3`, :mod:`ngconvert.store.gcs`) keep the object under the
  exact KEY and set its ``Content-Encoding`` metadata, which is what the viewer and
  tensorstore need;
- :mod:`ngconvert.store.http` (read-only) reports the response's ``Content-Encoding``.

:func:`open_store` picks the store for a URL: a plain path or ``file://``, ``s3://``,
``gs://``, ``http(s)://``.  Network stores take a :class:`StorageOptions`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from .retry import RetryPolicy
from ..core.errors import UserError
from ..core.gzip import gzip_decompress

T = TypeVar("T")
R = TypeVar("R")

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


class RawObject(NamedTuple):
    """An object as stored: its bytes and their ``Content-Encoding`` (None: identity)."""

    data: bytes
    content_encoding: str | None


@dataclass(frozen=True)
class StoreItem:
    """One object to write with :meth:`Store.put_many`."""

    key: str
    data: bytes
    content_encoding: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class StorageOptions:
    """How to reach a network store.  Every field is JSON-able (see :meth:`to_json`).

    - ``endpoint_url``: an S3-compatible server (``http(s)://host:port``) instead of AWS
      (default for ``s3://``: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` from the
      environment, as the AWS tools read them), or a GCS emulator for ``gs://``;
    - ``region``: the S3 region (default: from the profile or the environment, else
      ``us-east-1``);
    - ``profile``: an AWS profile from ``~/.aws/credentials`` / ``~/.aws/config``;
    - ``credentials_file``: for ``s3://`` a JSON file ``{"access_key": ..., "secret_key":
      ..., "region": ...}`` (region optional); for ``gs://`` a service-account key file;
    - ``anonymous``: unsigned requests (public buckets);
    - ``max_in_flight``: requests sent at once by ``put_many``/``get_many`` and transfers;
    - ``timeout``: seconds to connect and to wait for each read;
    - ``retry_*``: the bounded backoff for transient failures (:class:`RetryPolicy`).

    Without ``profile``, ``credentials_file`` or ``anonymous``, S3 credentials come from
    the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
    the default profile, instance roles), as every AWS tool finds them.
    """

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    credentials_file: str | None = None
    anonymous: bool = False
    max_in_flight: int = 32
    timeout: float = 60.0
    retry_tries: int = 8
    retry_base_delay: float = 0.25
    retry_max_delay: float = 20.0

    def __post_init__(self) -> None:
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise UserError(f"endpoint URL {self.endpoint_url!r} must start with http:// or https://, "
                            "e.g. http://127.0.0.1:9000")
        if self.anonymous and (self.profile or self.credentials_file):
            raise UserError("anonymous access takes no credentials; drop --profile/--credentials "
                            "or the anonymous option")
        if self.profile and self.credentials_file:
            raise UserError("give either an AWS profile or a credentials file, not both")
        if self.max_in_flight < 1:
            raise UserError(f"max_in_flight must be at least 1, not {self.max_in_flight}")
        if self.timeout <= 0:
            raise UserError(f"timeout must be positive, not {self.timeout}")
        self.retry_policy()   # validates the retry fields

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retry_tries, self.retry_base_delay, self.retry_max_delay)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "StorageOptions":
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - set(fields))
        if unknown:
            raise UserError(f"unknown storage option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(fields))}")
        for name, value in obj.items():
            _check_type(name, value, fields[name])
        return cls(**obj)

    def given(self) -> list[str]:
        """The location/credential options set (used to refuse ones a store cannot use)."""
        names = ("endpoint_url", "region", "profile", "credentials_file", "anonymous")
        return [n for n in names if getattr(self, n)]


def _check_type(name: str, value, default) -> None:
    """A JSON value for an option whose default is ``default`` (None means text)."""
    if default is None:
        ok, kind = value is None or isinstance(value, str), "text or null"
    elif isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    else:
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    if not ok:
        raise UserError(f"storage option {name} must be {kind}, not {value!r}")


def content_type_for(key: str) -> str:
    """``application/json`` for ``info`` and ``*.json`` keys, else ``application/octet-stream``."""
    name = key.rsplit("/", 1)[-1]
    return JSON_TYPE if name == "info" or name.endswith(".json") else BINARY_TYPE


def normal_encoding(header: str | None) -> str | None:
    """A ``Content-Encoding`` value as stores report it: lower case, None for identity."""
    value = (header or "").strip().lower()
    return None if value in ("", "identity") else value


def decode(raw: RawObject, where: str) -> bytes:
    """The decoded bytes of a stored object (gzip undone)."""
    if normal_encoding(raw.content_encoding) is None:
        return raw.data
    if normal_encoding(raw.content_encoding) == "gzip":
        try:
            return gzip_decompress(raw.data)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{where} is marked Content-Encoding: gzip but is not valid gzip ({e}); "
                            "re-upload it") from None
    raise UserError(f"{where} has Content-Encoding {raw.content_encoding!r}, which ngconvert cannot "
                    "decode (only gzip)")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads, results in completion order.

    At most ``2 * workers`` items are submitted ahead, so a long iterable is never held in
    memory at once.  The first exception propagates; items not yet started are dropped.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="ngconvert-io")
    pending: set[Future] = set()
    try:
        for item in items:
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
            pending.add(pool.submit(fn, item))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Store:
    """A flat key/value space under one dataset root (see the module docstring)."""

    url: str
    #: requests ``put_many``/``get_many`` keep in flight (1: one after another)
    max_in_flight: int = 1

    def put(self, key: str, data: bytes, content_encoding: str | None = None,
            content_type: str | None = None) -> None:
        raise NotImplementedError

    def get_raw(self, key: str) -> RawObject | None:
        """The object as stored (bytes and Content-Encoding), or None when absent."""
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        """The decoded bytes (gzip undone), or None when absent."""
        raw = self.get_raw(key)
        return None if raw is None else decode(raw, self.describe(key))

    def exists(self, key: str) -> bool:
        return self.get_raw(key) is not None

    def get_range(self, key: str, start: int, stop: int) -> bytes | None:
        """Bytes ``[start, stop)`` of an object stored without Content-Encoding (shards,
        multires fragments), or None when absent.  Stores override this with a ranged read."""
        raw = self.get_raw(key)
        if raw is None:
            return None
        if raw.content_encoding:
            raise UserError(f"{self.describe(key)} is stored with Content-Encoding {raw.content_encoding}; "
                            "objects read by byte range must be stored uncompressed")
        return raw.data[start:stop]

    def put_file(self, key: str, path: str, content_type: str | None = None) -> None:
        """Store a local file's bytes at ``key`` (the file is consumed: moved or deleted)."""
        with open(path, "rb") as fh:
            data = fh.read()
        self.put(key, data, content_type=content_type)
        os.remove(path)

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> None:
        for key in [k for k, _size in self.list(prefix)]:
            self.delete(key)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """Stored keys under ``prefix`` (with any ``.gz`` suffix removed), with stored sizes."""
        raise NotImplementedError

    def is_empty(self) -> bool:
        return next(iter(self.list("")), None) is None

    def list_etags(self, prefix: str = "") -> dict[str, str]:
        """``{key: ETag}`` under ``prefix`` from one listing, where the store has them
        (S3); {} elsewhere."""
        return {}

    def is_empty_prefix(self, prefix: str) -> bool:
        """True when no key starts with ``prefix``."""
        return next(iter(self.list(prefix)), None) is None

    def clear(self) -> None:
        """Remove every object under the root (used by ``--overwrite``)."""
        self.delete_prefix("")

    def check_writable(self) -> None:
        """Raise a one-line :class:`UserError` unless objects can be written here."""
        raise NotImplementedError

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist; False when it does.  Stores override
        this with an atomic conditional create (this fallback checks, then writes)."""
        if self.exists(key):
            return False
        self.put(key, data, content_type=content_type_for(key))
        return True

    def child(self, prefix: str) -> "Store":
        """The store of the keys under ``prefix/``."""
        raise NotImplementedError

    def check_readable(self) -> None:
        """Raise a one-line :class:`UserError` unless the root can be read (and listed)."""
        next(iter(self.list("")), None)

    def put_many(self, items: Iterable[StoreItem]) -> int:
        """Write every item, ``max_in_flight`` at a time; returns the bytes written."""
        def one(item: StoreItem) -> int:
            self.put(item.key, item.data, item.content_encoding, item.content_type)
            return len(item.data)
        return sum(parallel_map(one, items, self.max_in_flight))

    def get_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes | None]]:
        """``(key, decoded bytes or None)`` for every key, in completion order."""
        return parallel_map(lambda k: (k, self.get(k)), keys, self.max_in_flight)

    def describe(self, key: str) -> str:
        """The full address of ``key``, for messages."""
        return f"{self.url.rstrip('/')}/{key}"


TMP_DIR = ".ngconvert/tmp"
_CLIENT_LOCK = threading.Lock()


def _reset_client_lock_after_fork() -> None:
    global _CLIENT_LOCK
    _CLIENT_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_client_lock_after_fork)


class PerProcessClient:
    """For network stores: the client is made lazily, once per process, and shared by that
    process's threads; pickling drops it, so a store can go to workers and be used after
    ``fork``.  Subclasses implement :meth:`_make_client`."""

    _client_state: tuple | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client_state"] = None
        return state

    def _make_client(self):
        raise NotImplementedError

    def _client(self):
        state = self._client_state
        if state is not None and state[0] == os.getpid():
            return state[1]
        with _CLIENT_LOCK:
            state = self._client_state
            if state is None or state[0] != os.getpid():
                self._client_state = state = (os.getpid(), self._make_client())
        return state[1]


class ReadOnlyStore(Store):
    """Base of stores that can only be read: every write is a one-line UserError."""

    def _refuse(self) -> UserError:
        return UserError(f"{self.url} is read-only (plain HTTP cannot be written); "
                         "write to a local folder, s3:// or gs:// instead")

    def put(self, key, data, content_encoding=None, content_type=None):
        raise self._refuse()

    def delete(self, key):
        raise self._refuse()

    def delete_prefix(self, prefix):
        raise self._refuse()

    def clear(self) -> None:
        raise self._refuse()

    def check_writable(self) -> None:
        raise self._refuse()


def split_bucket_url(url: str, scheme: str) -> tuple[str, str]:
    """``("bucket", "prefix/inside")`` for ``scheme://bucket/prefix/inside/``."""
    rest = url[len(scheme) + 3:]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UserError(f"{url}: no bucket name; write {scheme}://BUCKET/PATH")
    return bucket, prefix.strip("/")


def load_json(store: Store, key: str):
    """The JSON object stored at ``key``, or None when there is none (a UserError if it is not JSON)."""
    blob = store.get(key)
    if blob is None:
        return None
    try:
        return json.loads(blob)
    except ValueError:
        raise UserError(f"{store.describe(key)} is not valid JSON") from None
