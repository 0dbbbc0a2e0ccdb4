"""Opening a store from a path, a URL or a Store: the one place that knows every backend."""
from __future__ import annotations

import os

from .base import StorageOptions, Store
from .gcs import GCSStore
from .http import HTTPStore
from .local import FileStore
from .s3 import S3Store
from ..core.errors import UserError


def _refuse_options(options: StorageOptions, url: str, allowed: set[str]) -> None:
    extra = [n for n in options.given() if n not in allowed]
    if extra:
        names = ", ".join(n.replace("_", "-") for n in extra)
        raise UserError(f"{url}: the option(s) {names} do not apply to this kind of location")


def open_store(url: str | os.PathLike | Store, options: StorageOptions | None = None) -> Store:
    """The store for ``url``: a :class:`Store` instance (returned as it is), a plain path
    or ``file://`` URL (:class:`FileStore`), ``s3://bucket/prefix`` (S3Store),
    ``gs://bucket/prefix`` (GCSStore) or ``http(s)://...`` (read-only HTTPStore)."""
    if isinstance(url, Store):
        return url
    options = options or StorageOptions()
    text = os.fspath(url)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("", "file"):
        _refuse_options(options, text, set())
        return FileStore(text[len("file://"):] if scheme else text)
    if scheme == "s3":
        return S3Store(text, options)
    if scheme == "gs":
        _refuse_options(options, text, {"endpoint_url", "credentials_file", "anonymous"})
        return GCSStore(text, options)
    if scheme in ("http", "https"):
        _refuse_options(options, text, {"anonymous"})
        return HTTPStore(text, options)
    raise UserError(f"{text}: {scheme}:// locations are not supported; use a local folder, "
                    "s3://, gs:// or http(s)://")
