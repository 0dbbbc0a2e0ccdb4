"""The fingerprint of a source reference (see :mod:`ngconvert.core.fingerprint`): files by
size, modification time and sampled content; slices in a bucket by their ETags (S3) or
sizes from one listing per prefix; arrays by sampled values."""
from __future__ import annotations

import hashlib
import os

import numpy as np

from ..core.fingerprint import array_fingerprint, file_fingerprint
from ..store.base import StorageOptions
from ..store.open import open_store


def fingerprint(ref, array: np.ndarray | None = None) -> dict:
    """The fingerprint of a source reference (see the module docstring)."""
    if array is not None:
        return {"array": array_fingerprint(array)}
    if ref.kind == "array":
        return {}
    if ref.kind == "slices":
        listed = _remote_listing([f for f in ref.files or [] if f is not None and "://" in f], ref.storage)
        parts = []
        for f in ref.files or []:
            if f is None:
                parts.append(None)
            elif "://" in f:
                parts.append({"url": f, "listed": listed.get(f)})
            else:
                parts.append({"file": os.path.basename(f), **file_fingerprint(f)})
        digest = hashlib.sha256(repr(parts).encode()).hexdigest()
        return {"slices": len(parts), "files_sha256": digest}
    path = ref.origin if ref.origin and os.path.isfile(ref.origin) else ref.path
    if path and os.path.isfile(path):
        return {"file": file_fingerprint(path)}
    return {}


def _remote_listing(urls: list[str], storage: dict | None) -> dict[str, str]:
    """``{url: ETag}`` of slice objects (S3), else ``{url: "size N"}``: one listing per prefix."""
    if not urls:
        return {}
    options = StorageOptions.from_json(storage) if storage else None
    out: dict[str, str] = {}
    for prefix in sorted({u.rsplit("/", 1)[0] for u in urls}):
        store = open_store(prefix, options)
        found = store.list_etags("") or {k: f"size {n}" for k, n in store.list("")}
        out.update({f"{prefix}/{k}": v for k, v in found.items()})
    return out
