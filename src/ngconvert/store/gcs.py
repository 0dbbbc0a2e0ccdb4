"""Google Cloud Storage through google-cloud-storage (JSON API).

``GCSStore("gs://bucket/prefix", options)`` keeps key ``K`` as the object ``prefix/K``.
Content-Encoding: an object put with ``content_encoding="gzip"`` is uploaded as given
(already gzipped) with ``contentEncoding: gzip`` metadata, so GCS serves it with
``Content-Encoding: gzip`` (or transcodes it for clients that do not accept gzip), which
is what the viewer needs.  ``get_raw`` reads the object's metadata first and then its
stored bytes (``raw_download``, pinned to the same generation), so it returns exactly
what was stored with its encoding; ``get`` gunzips.  ``Content-Type`` is
``application/json`` for ``info`` and ``*.json`` keys and ``application/octet-stream``
otherwise, unless the caller gives one.

Options: ``endpoint_url`` points at an emulator (or another JSON-API server);
``credentials_file`` is a service-account key file; ``anonymous`` sends unauthenticated
requests (public buckets); otherwise Application Default Credentials are used.  AWS
options (``profile``, ``region``) are refused by :func:`ngconvert.store.open_store`.

The library's own retries are switched off (``retry=None``); every request goes through
:func:`ngconvert.store.retry.call_with_retry` on 429, 5xx, connection failures and timeouts.

Tests: run against gcp-storage-emulator (PyPI, a local JSON-API server on 127.0.0.1).
That emulator keeps ``contentEncoding`` metadata but does not send the
``Content-Encoding`` header on downloads, which is why ``get_raw`` takes the encoding
from the metadata; how real GCS transcodes for readers cannot be tested here.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from .base import PerProcessClient, RawObject, StorageOptions, Store, content_type_for, normal_encoding, parallel_map, split_bucket_url
from .retry import RetriesExhausted, RetryPolicy, StorageUnavailable, call_with_retry
from ..core.errors import UserError
# google-cloud-storage, requests: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

T = TypeVar("T")


_CREDENTIALS_HINT = ("run 'gcloud auth application-default login', set "
                     "GOOGLE_APPLICATION_CREDENTIALS, or pass --credentials KEYFILE.json")


def is_transient(e: BaseException) -> bool:
    """429, 5xx, a generation that changed under a read, connection failures, timeouts."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import TransportError

    if isinstance(e, gexc.GoogleAPICallError):
        return e.code in (408, 429, 500, 502, 503, 504) or isinstance(e, gexc.PreconditionFailed)
    if isinstance(e, requests.exceptions.SSLError):
        return False
    return isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.ChunkedEncodingError, TransportError, ConnectionError))


def _credentials(options: StorageOptions):
    """``(credentials, project)`` for the options, failing early with one line."""
    from google.auth.credentials import AnonymousCredentials

    if options.anonymous:
        return AnonymousCredentials(), None
    if options.credentials_file:
        from google.oauth2 import service_account
        try:
            creds = service_account.Credentials.from_service_account_file(
                options.credentials_file, scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
        except (OSError, ValueError) as e:
            raise UserError(f"{options.credentials_file} is not a readable Google service-account "
                            f"key file ({e}); download one from the Cloud console") from None
        return creds, creds.project_id
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    try:
        return google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
    except DefaultCredentialsError:
        raise UserError(f"no Google credentials found; {_CREDENTIALS_HINT}, or use anonymous "
                        "access for a public bucket") from None


class GCSStore(PerProcessClient, Store):
    """A dataset under ``gs://bucket/prefix`` (see the module docstring)."""

    def __init__(self, url: str, options: StorageOptions | None = None):
        options = options or StorageOptions()
        self.bucket, self.prefix = split_bucket_url(url, "gs")
        self.url = f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"
        self.options = options
        self.max_in_flight = options.max_in_flight
        self.policy: RetryPolicy = options.retry_policy()
        self._client_state: tuple[int, Any] | None = None
        if options.credentials_file:
            _credentials(options)   # a bad key file fails here, not in a worker

    # -- plumbing ---------------------------------------------------------------------

    def _make_client(self):
        from google.auth.transport.requests import AuthorizedSession
        from google.cloud import storage
        from requests.adapters import HTTPAdapter

        creds, project = _credentials(self.options)
        session = AuthorizedSession(creds)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(10, self.options.max_in_flight))
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        client_options = {"api_endpoint": self.options.endpoint_url} if self.options.endpoint_url else None
        return storage.Client(project=project, credentials=creds, client_options=client_options,
                              _http=session)

    def _bucket(self):
        return self._client().bucket(self.bucket)

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _endpoint(self) -> str:
        return self.options.endpoint_url or "Google Cloud Storage"

    def _where(self, key: str | None) -> str:
        return f"gs://{self.bucket}/{self._name(key)}" if key is not None else self.url

    def _call(self, op: str, key: str | None, fn: Callable[[], T],
              policy: RetryPolicy | None = None) -> T:
        """``fn()`` with retries; every failure leaves as a one-line UserError."""
        import requests
        from google.api_core.exceptions import GoogleAPICallError
        from google.auth.exceptions import GoogleAuthError

        try:
            return call_with_retry(fn, policy=policy or self.policy, is_transient=is_transient)
        except RetriesExhausted as e:
            raise self._exhausted(op, key, e) from e
        except (GoogleAPICallError, GoogleAuthError, requests.exceptions.RequestException) as e:
            raise self._error(op, key, e) from e

    def _exhausted(self, op: str, key: str | None, e: RetriesExhausted) -> UserError:
        import requests

        if isinstance(e.last, requests.exceptions.ConnectionError):
            return StorageUnavailable(
                f"cannot reach {self._endpoint()} for {self.url} after {e.tries} tries "
                f"({_describe(e.last)}); check --endpoint-url and the network")
        return StorageUnavailable(
            f"{op} {self._where(key)} failed {e.tries} times (last error: {_describe(e.last)}); "
            "the server keeps failing; try again later")

    def _error(self, op: str, key: str | None, e: BaseException) -> UserError:
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import GoogleAuthError

        if isinstance(e, gexc.NotFound) and key is None:
            return UserError(f"bucket {self.bucket!r} does not exist at {self._endpoint()}; "
                             "create it first, or check the bucket name")
        if isinstance(e, (gexc.Unauthorized, GoogleAuthError)):
            return UserError(f"{self._endpoint()} rejected the credentials for {self.url} "
                             f"({_describe(e)}); {_CREDENTIALS_HINT}")
        if isinstance(e, gexc.Forbidden):
            return UserError(f"access denied: {op} {self._where(key)} ({_describe(e)}); use an "
                             "account allowed to do this in the bucket, or change its permissions")
        return UserError(f"{op} {self._where(key)} failed: {_describe(e)}")

    # -- the Store interface ----------------------------------------------------------

    def put(self, key, data, content_encoding=None, content_type=None):
        def upload() -> None:
            blob = self._bucket().blob(self._name(key))
            blob.content_encoding = content_encoding
            blob.upload_from_string(bytes(data), content_type=content_type or content_type_for(key),
                                    retry=None, timeout=self.options.timeout)
        self._call("PUT", key, upload)

    def create_exclusive(self, key, data):
        """A conditional create (``ifGenerationMatch=0``): False when the key exists."""
        from google.api_core.exceptions import PreconditionFailed

        def upload() -> bool:
            blob = self._bucket().blob(self._name(key))
            try:
                blob.upload_from_string(bytes(data), content_type=content_type_for(key), if_generation_match=0,
                                        retry=None, timeout=self.options.timeout)
            except PreconditionFailed:
                return False
            return True
        return self._call("PUT", key, upload)

    def child(self, prefix):
        return GCSStore(f"{self.url.rstrip('/')}/{prefix.strip('/')}", self.options)

    def get_range(self, key, start, stop):
        from google.api_core.exceptions import NotFound

        if stop <= start:
            return b""

        def fetch() -> bytes | None:
            blob = self._bucket().blob(self._name(key))
            try:
                return blob.download_as_bytes(start=start, end=stop - 1, raw_download=True, retry=None,
                                              timeout=self.options.timeout)
            except NotFound:
                return None
        return self._call("GET", key, fetch)

    def put_file(self, key, path, content_type=None):
        def upload() -> None:
            blob = self._bucket().blob(self._name(key))
            blob.upload_from_filename(path, content_type=content_type or content_type_for(key), retry=None,
                                      timeout=self.options.timeout)
        self._call("PUT", key, upload)
        os.remove(path)

    def get_raw(self, key):
        from google.api_core.exceptions import NotFound

        def fetch() -> RawObject | None:
            blob = self._bucket().get_blob(self._name(key), retry=None, timeout=self.options.timeout)
            if blob is None:
                return None
            encoding, generation = blob.content_encoding, blob.generation
            try:
                data = blob.download_as_bytes(raw_download=True, if_generation_match=generation,
                                              retry=None, timeout=self.options.timeout)
            except NotFound:
                return None
            return RawObject(data, normal_encoding(encoding))
        return self._call("GET", key, fetch)

    def exists(self, key):
        return self._call("HEAD", key, lambda: self._bucket().blob(self._name(key)).exists(
            retry=None, timeout=self.options.timeout))

    def delete(self, key):
        from google.api_core.exceptions import NotFound

        def remove() -> None:
            try:
                self._bucket().blob(self._name(key)).delete(retry=None, timeout=self.options.timeout)
            except NotFound:
                pass
        self._call("DELETE", key, remove)

    def list(self, prefix=""):
        """Every object whose name starts with ``prefix`` (a string prefix: give a trailing
        ``/`` for a folder), with its stored size."""
        root = self._root()
        token: str | None = None
        while True:
            names, token = self._list_page(root + prefix, token)
            for name, size in names:
                yield name[len(root):], size
            if not token:
                return

    def _list_page(self, full_prefix: str, token: str | None, max_results: int = 1000,
                   policy: RetryPolicy | None = None) -> tuple[list[tuple[str, int]], str | None]:
        def page() -> tuple[list[tuple[str, int]], str | None]:
            it = self._client().list_blobs(self.bucket, prefix=full_prefix, page_token=token,
                                           max_results=max_results, retry=None,
                                           timeout=self.options.timeout)
            items = next(it.pages, [])
            return [(b.name, int(b.size or 0)) for b in items], it.next_page_token
        return self._call("LIST", None, page, policy)

    def delete_prefix(self, prefix):
        """Delete every object whose name starts with ``prefix``, ``max_in_flight`` at once."""
        keys = [k for k, _size in self.list(prefix)]
        for _ in parallel_map(self.delete, keys, self.max_in_flight):
            pass

    def clear(self) -> None:
        """Delete every object under the prefix (the whole bucket when there is none)."""
        self.delete_prefix("")

    def check_readable(self) -> None:
        """List one object: fails fast on a missing bucket, refused credentials or an
        unreachable endpoint."""
        self._list_page(self._root(), None, max_results=1, policy=self.policy.for_probe())

    def check_writable(self) -> None:
        """Write and delete a probe object under the prefix (needs no bucket-level
        permission); a missing bucket, refused credentials or an unreachable endpoint
        fail here."""
        probe = self.policy.for_probe()
        blob = self._bucket().blob(self._name(f".ngconvert-probe-{uuid.uuid4().hex}"))
        # key None: a 404 here means the bucket is missing
        self._call("PUT", None, lambda: blob.upload_from_string(
            b"", retry=None, timeout=self.options.timeout), probe)
        self._call("DELETE", None, lambda: blob.delete(retry=None, timeout=self.options.timeout), probe)

    def describe(self, key: str) -> str:
        return self._where(key)


def _describe(e: BaseException) -> str:
    """One line for a google-api-core or requests error."""
    from google.api_core.exceptions import GoogleAPICallError

    if isinstance(e, GoogleAPICallError):
        return f"{e.code} {e.message}".split("\n")[0][:300]
    return " ".join(str(e).split())[:300]
