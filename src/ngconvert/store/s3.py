"""S3 and S3-compatible object storage (AWS, MinIO, Ceph, moto, ...) through boto3.

``S3Store("s3://bucket/prefix", options)`` keeps key ``K`` as the object
``prefix/K``.  Content-Encoding: an object put with ``content_encoding="gzip"`` is stored
as given (already gzipped) under the exact key with ``Content-Encoding: gzip`` metadata,
which S3 returns on every GET, so the viewer and tensorstore decode it; ``get`` gunzips it
and ``get_raw`` returns the stored bytes with their encoding.  ``Content-Type`` is
``application/json`` for ``info`` and ``*.json`` keys and ``application/octet-stream``
otherwise, unless the caller gives one.

botocore's own retries are switched off; every request goes through
:func:`ngconvert.store.retry.call_with_retry` (bounded exponential backoff with jitter) on
throttling (429, 503 SlowDown), other 5xx, connection failures, resets and timeouts.
Anything else, and a request that keeps failing, becomes a one-line :class:`UserError`
naming the bucket, the object and the fix.

The store can be pickled and used after ``fork``: the boto3 client is made lazily, once
per process, and shared by that process's threads (boto3 clients are thread-safe).
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .base import PerProcessClient, RawObject, StorageOptions, Store, content_type_for, normal_encoding, split_bucket_url
from .retry import RetriesExhausted, RetryPolicy, StorageUnavailable, call_with_retry
from ..core.errors import UserError
# boto3, botocore: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

T = TypeVar("T")

DEFAULT_REGION = "us-east-1"
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                    "RequestLimitExceeded", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "OperationAborted"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                     "ExpiredToken", "TokenRefreshRequired", "InvalidSecurity"}
_CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or pass --profile NAME "
                     "or --credentials FILE")



@dataclass(frozen=True)
class S3Credentials:
    """Keys read from a credentials file (``--credentials``)."""

    access_key: str
    secret_key: str
    region: str | None = None
    session_token: str | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "S3Credentials":
        """Read ``{"access_key": ..., "secret_key": ..., "region": ...}`` (region and
        session_token optional; other fields are refused so a typo is not ignored)."""
        where = f"credentials file {path}"
        try:
            obj = json.loads(Path(path).read_text())
        except OSError as e:
            raise UserError(f"{where} cannot be read ({e.strerror or e}); check the path") from None
        except ValueError as e:
            raise UserError(f"{where} is not valid JSON ({e}); write "
                            '{"access_key": "...", "secret_key": "..."}') from None
        if not isinstance(obj, dict):
            raise UserError(f"{where} must hold a JSON object with access_key and secret_key")
        missing = [k for k in ("access_key", "secret_key") if not obj.get(k)]
        if missing:
            raise UserError(f"{where} lacks {' and '.join(missing)}; write "
                            '{"access_key": "...", "secret_key": "...", "region": "..."}')
        known = {"access_key", "secret_key", "region", "session_token"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        bad = [k for k, v in obj.items() if v is not None and not isinstance(v, str)]
        if bad:
            raise UserError(f"{where}: {', '.join(bad)} must be text")
        return cls(**obj)


@dataclass(frozen=True)
class _SessionSpec:
    """Everything needed to build a boto3 session in any process (picklable)."""

    profile: str | None
    credentials: S3Credentials | None
    region: str
    credentials_source: str

    def session(self):
        import boto3
        from botocore.exceptions import ProfileNotFound

        if self.credentials is not None:
            c = self.credentials
            return boto3.Session(aws_access_key_id=c.access_key, aws_secret_access_key=c.secret_key,
                                 aws_session_token=c.session_token, region_name=self.region or None)
        try:
            return boto3.Session(profile_name=self.profile, region_name=self.region or None)
        except ProfileNotFound:
            name = self.profile or os.environ.get("AWS_PROFILE")
            raise UserError(f"AWS profile {name!r} is not in ~/.aws/config or "
                            "~/.aws/credentials; list them with 'aws configure list-profiles'") from None


def _session_spec(options: StorageOptions) -> _SessionSpec:
    """Resolve the credentials source and the region once, failing early on bad input."""
    creds = S3Credentials.from_file(options.credentials_file) if options.credentials_file else None
    if options.anonymous:
        source = "anonymous"
    elif creds is not None:
        source = f"credentials file {options.credentials_file}"
    elif options.profile:
        source = f"AWS profile {options.profile!r}"
    else:
        source = "credentials from the environment"
    region = options.region or (creds.region if creds else None)
    spec = _SessionSpec(options.profile, creds, region or "", source)
    if not region:   # from the profile or AWS_DEFAULT_REGION, as the AWS CLI does
        region = spec.session().region_name or DEFAULT_REGION
    else:
        spec.session()   # an unknown profile fails here, not in a worker
    return _SessionSpec(options.profile, creds, region, source)


def resolve_endpoint(options: StorageOptions) -> str | None:
    """``options.endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` from
    the environment (as every AWS tool reads them), else None (AWS itself)."""
    url = (options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
           or os.environ.get("AWS_ENDPOINT_URL") or None)
    if url and not url.startswith(("http://", "https://")):
        raise UserError(f"endpoint URL {url!r} (from the environment) must start with http:// or https://")
    return url


def _client_config(options: StorageOptions, region: str, endpoint_url: str | None):
    from botocore import UNSIGNED
    from botocore.config import Config

    extra: dict[str, Any] = {}
    if endpoint_url:
        # S3-compatible servers address buckets by path and often reject the newer
        # default checksums; send them only where the API requires them.
        extra.update(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                     response_checksum_validation="when_required")
    if options.anonymous:
        extra["signature_version"] = UNSIGNED
    return Config(region_name=region, retries={"total_max_attempts": 1},
                  max_pool_connections=max(10, options.max_in_flight),
                  connect_timeout=options.timeout, read_timeout=options.timeout, **extra)


def _status(e: BaseException) -> int | None:
    return (getattr(e, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")


def _code(e: BaseException) -> str:
    return str((getattr(e, "response", None) or {}).get("Error", {}).get("Code", ""))


def is_transient(e: BaseException) -> bool:
    """Throttling, 5xx, connection failures, resets and timeouts (not TLS errors)."""
    from botocore.exceptions import (ClientError, ConnectionError, HTTPClientError,
                                     IncompleteReadError, SSLError)

    if isinstance(e, ClientError):
        return _status(e) in _TRANSIENT_STATUS or _code(e) in _TRANSIENT_CODES
    if isinstance(e, SSLError):
        return False
    if type(e).__name__ == "S3UploadFailedError":     # upload_file wraps the error it met as text
        cause = e.__cause__ or e.__context__
        if cause is not None and cause is not e:
            return is_transient(cause)
        text = str(e)
        return any(c in text for c in _TRANSIENT_CODES) or any(f"({s})" in text for s in map(str, _TRANSIENT_STATUS))
    return isinstance(e, (ConnectionError, HTTPClientError, IncompleteReadError))


class S3Store(PerProcessClient, Store):
    """A dataset under ``s3://bucket/prefix`` (see the module docstring)."""

    def __init__(self, url: str, options: StorageOptions | None = None):
        options = options or StorageOptions()
        self.bucket, self.prefix = split_bucket_url(url, "s3")
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.options = options
        self.max_in_flight = options.max_in_flight
        self.policy: RetryPolicy = options.retry_policy()
        self.endpoint_url = resolve_endpoint(options)
        self._spec = _session_spec(options)
        self._client_state: tuple[int, Any] | None = None

    # -- plumbing ---------------------------------------------------------------------

    def _make_client(self):
        return self._spec.session().client(
            "s3", endpoint_url=self.endpoint_url,
            config=_client_config(self.options, self._spec.region, self.endpoint_url))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _endpoint(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self._spec.region})"

    def _call(self, op: str, key: str | None, fn: Callable[[], T],
              policy: RetryPolicy | None = None) -> T:
        """``fn()`` with retries; every failure leaves as a one-line UserError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call_with_retry(fn, policy=policy or self.policy, is_transient=is_transient)
        except RetriesExhausted as e:
            raise self._exhausted(op, key, e) from e
        except (ClientError, BotoCoreError) as e:
            raise self._error(op, key, e) from e

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{self._key(key)}" if key is not None else self.url

    def _exhausted(self, op: str, key: str | None, e: RetriesExhausted) -> UserError:
        from botocore.exceptions import EndpointConnectionError

        if isinstance(e.last, EndpointConnectionError):
            return StorageUnavailable(
                f"cannot reach {self._endpoint()} for {self.url} after {e.tries} tries ({e.last}); "
                "check --endpoint-url and that the server is running")
        return StorageUnavailable(
            f"{op} {self._where(key)} failed {e.tries} times (last error: {_describe(e.last)}); "
            "the server keeps failing; try again later")

    def _error(self, op: str, key: str | None, e: BaseException) -> UserError:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError, SSLError

        where = self._where(key)
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return UserError(f"{self.url}: no AWS credentials found ({e}); {_CREDENTIALS_HINT}, "
                             "or use anonymous access for a public bucket")
        if isinstance(e, SSLError):
            return UserError(f"{self.url}: TLS error talking to {self._endpoint()} ({e}); "
                             "check --endpoint-url (http:// or https://)")
        code, status = _code(e), _status(e)
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and key is None):
            return UserError(f"bucket {self.bucket!r} does not exist at {self._endpoint()}; "
                             "create it first, or check the bucket name and --endpoint-url")
        if code in _CREDENTIAL_CODES:
            return UserError(f"{self._endpoint()} rejected the {self._spec.credentials_source} "
                             f"for {self.url} ({code}); {_CREDENTIALS_HINT}")
        if code == "403":     # a HEAD: no error body tells why
            return UserError(f"{op} {where} was refused (403) by {self._endpoint()}: the "
                             f"{self._spec.credentials_source} are not accepted or lack permission; "
                             f"{_CREDENTIALS_HINT}")
        if code in ("AccessDenied", "Forbidden", "AllAccessDisabled") or status == 403:
            return UserError(f"access denied: {op} {where} at {self._endpoint()} with the "
                             f"{self._spec.credentials_source}; use credentials allowed to {op} "
                             "in this bucket, or change its policy")
        if code in ("PermanentRedirect", "301", "AuthorizationHeaderMalformed",
                    "IllegalLocationConstraintException"):
            return UserError(f"bucket {self.bucket!r} is in another region than "
                             f"{self._spec.region}; pass --region with the bucket's region")
        return UserError(f"{op} {where} failed: {_describe(e)}")

    # -- the Store interface ----------------------------------------------------------

    def put(self, key, data, content_encoding=None, content_type=None):
        args = dict(Bucket=self.bucket, Key=self._key(key), Body=bytes(data),
                    ContentType=content_type or content_type_for(key))
        if content_encoding:
            args["ContentEncoding"] = content_encoding
        self._call("PUT", key, lambda: self._client().put_object(**args))

    def create_exclusive(self, key, data):
        """A conditional create (``If-None-Match: *``): False when the key exists."""
        from botocore.exceptions import ClientError

        def put() -> bool:
            try:
                self._client().put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data),
                                          ContentType=content_type_for(key), IfNoneMatch="*")
            except ClientError as e:
                if _status(e) in (409, 412) or _code(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise
            return True
        return self._call("PUT", key, put)

    def child(self, prefix):
        return S3Store(f"{self.url.rstrip('/')}/{prefix.strip('/')}", self.options)

    def get_raw(self, key):
        from botocore.exceptions import ClientError

        def fetch() -> RawObject | None:
            try:
                r = self._client().get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as e:
                if _code(e) == "NoSuchKey":
                    return None
                raise
            return RawObject(r["Body"].read(), normal_encoding(r.get("ContentEncoding")))
        return self._call("GET", key, fetch)

    def get_range(self, key, start, stop):
        from botocore.exceptions import ClientError

        if stop <= start:
            return b""

        def fetch() -> bytes | None:
            try:
                r = self._client().get_object(Bucket=self.bucket, Key=self._key(key),
                                              Range=f"bytes={start}-{stop - 1}")
            except ClientError as e:
                if _code(e) == "NoSuchKey":
                    return None
                raise
            return r["Body"].read()
        return self._call("GET", key, fetch)

    def put_file(self, key, path, content_type=None):
        def upload() -> None:     # multipart for large files, streamed from disk
            self._client().upload_file(path, self.bucket, self._key(key),
                                       ExtraArgs={"ContentType": content_type or content_type_for(key)})
        self._call("PUT", key, upload)
        os.remove(path)

    def exists(self, key):
        """HEAD the object (a missing bucket also answers 404: check it with
        :meth:`check_readable` first)."""
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self._client().head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as e:
                if _status(e) == 404:
                    return False
                raise
            return True
        return self._call("HEAD", key, head)

    def delete(self, key):
        self._call("DELETE", key,
                   lambda: self._client().delete_object(Bucket=self.bucket, Key=self._key(key)))

    def list(self, prefix=""):
        """Every object whose key starts with ``prefix`` (a string prefix, as in S3: give
        a trailing ``/`` for a folder), with its stored size."""
        root = self._root()
        token: str | None = None
        while True:
            page = self._list_page(root + prefix, token)
            for obj in page.get("Contents", []):
                yield obj["Key"][len(root):], int(obj["Size"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def list_etags(self, prefix=""):
        root = self._root()
        out: dict[str, str] = {}
        token: str | None = None
        while True:
            page = self._list_page(root + prefix, token)
            for obj in page.get("Contents", []):
                out[obj["Key"][len(root):]] = str(obj.get("ETag", ""))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return out

    def _list_page(self, full_prefix: str, token: str | None, max_keys: int = 1000,
                   policy: RetryPolicy | None = None) -> dict:
        args: dict[str, Any] = dict(Bucket=self.bucket, Prefix=full_prefix, MaxKeys=max_keys)
        if token:
            args["ContinuationToken"] = token
        return self._call("LIST", None, lambda: self._client().list_objects_v2(**args), policy)

    def delete_prefix(self, prefix):
        """Delete every object whose key starts with ``prefix`` (1000 per request)."""
        batch: list[str] = []
        for key, _size in self.list(prefix):
            batch.append(key)
            if len(batch) == 1000:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: list[str]) -> None:
        objects = [{"Key": self._key(k)} for k in keys]

        def send() -> dict:
            return self._client().delete_objects(Bucket=self.bucket,
                                                 Delete={"Objects": objects, "Quiet": True})
        errors = self._call("DELETE", keys[0], send).get("Errors", [])
        if errors:
            first = errors[0]
            raise UserError(f"could not delete {len(errors)} object(s) under {self.url}, e.g. "
                            f"s3://{self.bucket}/{first.get('Key')} ({first.get('Code')}: "
                            f"{first.get('Message')})")

    def clear(self) -> None:
        """Delete every object under the prefix (the whole bucket when there is none)."""
        self.delete_prefix("")

    def check_readable(self) -> None:
        """List one object: fails fast on a missing bucket, refused credentials or an
        unreachable endpoint."""
        self._list_page(self._root(), None, max_keys=1, policy=self.policy.for_probe())

    def check_writable(self) -> None:
        """Write and delete a probe object under the prefix (a PUT's error body tells a
        missing bucket, refused credentials and missing permission apart; a HEAD's cannot)."""
        probe_policy = self.policy.for_probe()
        key = f".ngconvert-probe-{uuid.uuid4().hex}"
        self._call("PUT", key, lambda: self._client().put_object(
            Bucket=self.bucket, Key=self._key(key), Body=b""), probe_policy)
        self._call("DELETE", key, lambda: self._client().delete_object(
            Bucket=self.bucket, Key=self._key(key)), probe_policy)

    def describe(self, key: str) -> str:
        return self._where(key)


def _describe(e: BaseException) -> str:
    """A botocore error in one line: ``503 SlowDown: Please reduce your request rate``."""
    from botocore.exceptions import ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        msg = str(err.get("Message", "")).strip().splitlines()
        return f"{_status(e)} {err.get('Code', '')}: {msg[0] if msg else ''}".strip().rstrip(":")
    return " ".join(str(e).split())
