"""Fingerprints of inputs, kept in a run's record so ``--resume`` notices a changed source.

(The fingerprint of a source reference, which may list a bucket, is
:func:`ngconvert.sources.fingerprint.fingerprint`.)  A file's fingerprint is its size, its modification time and a hash of its first and last
64 KiB and of 16 blocks of 4 KiB spread evenly between them: cheap on a file of any size,
and it changes when the file is replaced, rewritten, truncated or edited in place (an edit
outside the sampled blocks that also keeps the size and the modification time is the one
change it misses).  A folder of slices is the fingerprint of each file in order; objects
in a bucket are their key, size and ETag (S3) from one listing.  An in-memory array is its shape,
type and a hash of sampled bytes.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

HEAD = 64 << 10
BLOCK = 4 << 10
BLOCKS = 16


def file_fingerprint(path: str) -> dict:
    st = os.stat(path)
    h = hashlib.sha256()
    size = st.st_size
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        h.update(os.pread(fd, HEAD, 0))
        if size > 2 * HEAD:
            span = size - 2 * HEAD
            for i in range(BLOCKS):
                h.update(os.pread(fd, BLOCK, HEAD + span * i // BLOCKS))
        h.update(os.pread(fd, HEAD, max(0, size - HEAD)))
    return {"size": size, "mtime_ns": st.st_mtime_ns, "sample_sha256": h.hexdigest()}


def array_fingerprint(a: np.ndarray) -> dict:
    flat = a.reshape(-1) if a.flags.c_contiguous or a.flags.f_contiguous else np.ascontiguousarray(a).reshape(-1)
    h = hashlib.sha256()
    n = flat.size
    if n:
        step = max(1, n // 4096)
        h.update(np.ascontiguousarray(flat[::step]).tobytes())
        h.update(np.ascontiguousarray(flat[-1024:]).tobytes())
    return {"shape": list(a.shape), "dtype": a.dtype.str, "sample_sha256": h.hexdigest()}


def describe_change(old: dict, new: dict) -> str | None:
    """None when two fingerprints agree, else a few words on what differs."""
    if not old or not new or old == new:
        return None
    if "file" in old and "file" in new:
        a, b = old["file"], new["file"]
        if a["size"] != b["size"]:
            return f"its size changed from {a['size']} to {b['size']} bytes"
        if a["sample_sha256"] != b["sample_sha256"]:
            return "its content changed"
        if a["mtime_ns"] != b["mtime_ns"]:
            return "it was modified (same size and sampled content, new modification time)"
    if "slices" in old and "slices" in new and old["slices"] != new["slices"]:
        return f"it had {old['slices']} slices, now {new['slices']}"
    if "array" in old and "array" in new:
        a, b = old["array"], new["array"]
        if a["shape"] != b["shape"] or a["dtype"] != b["dtype"]:
            return f"it was a {a['dtype']} array of shape {tuple(a['shape'])}, now {b['dtype']} {tuple(b['shape'])}"
        return "the array's values changed"
    return "its files changed (names, sizes, modification times or content)"
