"""Copy a finished precomputed dataset between stores: upload, download, store to store.

Objects are copied as stored, never decoded and encoded again: a ``KEY.gz`` file on disk
becomes the object ``KEY`` with ``Content-Encoding: gzip`` on S3/GCS, and such an object
becomes ``KEY.gz`` again on download (see :mod:`ngconvert.store`).

Order and safety:

- the source is listed once; it must hold ``info`` (a finished dataset); the scratch
  folder of an unfinished conversion (``.ngconvert/``) and folder placeholder objects
  (keys ending in ``/``) are never copied;
- the destination follows :mod:`ngconvert.store.destination`: an existing dataset is replaced only
  with ``overwrite`` (the new one is staged beside it and swapped in), and the new ``info``
  is written last, after every other object arrived;
- ``skip_existing`` builds the set of destination keys from ONE listing of the
  destination and skips exactly those keys (``a/1`` is not skipped because ``a/10``
  exists); ``info`` is always copied;
- objects are copied ``workers`` at a time (default: the stores' ``max_in_flight``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Protocol

from ..core.errors import UserError
from ..plan.stages import SCRATCH
from ..store.base import StorageOptions, Store, content_type_for, decode, parallel_map
from ..store.destination import PUBLISH_KEY, DestinationError, check_same_run, claim, refuse_overlap
from ..store.local import FileStore
from ..store.open import open_store

INFO = "info"


class TransferProgress(Protocol):
    """What a progress display gets: the totals once, then one update per object."""

    def start(self, total_objects: int, total_bytes: int) -> None: ...

    def update(self, n: int = 1, nbytes: int = 0) -> None: ...


@dataclass(frozen=True)
class TransferResult:
    source: str
    destination: str
    copied: int          # objects written (info included)
    copied_bytes: int    # their stored (possibly gzipped) size
    skipped: int         # objects already at the destination (skip_existing)
    skipped_bytes: int
    seconds: float


@dataclass(frozen=True)
class _Plan:
    todo: list[str]                 # keys to copy before info, in a stable order
    sizes: dict[str, int]           # stored size of every source key
    skipped: list[str]
    info_at_destination: bool


def _plan(sizes: dict[str, int], dst: Store, skip_existing: bool) -> _Plan:
    existing = {k for k, _s in dst.list("")} if skip_existing else set()
    rest = sorted(k for k in sizes if k != INFO)
    skipped = [k for k in rest if k in existing]
    todo = [k for k in rest if k not in existing]
    info_there = INFO in existing if skip_existing else dst.exists(INFO)
    return _Plan(todo, sizes, skipped, info_there)


def _ignored(key: str) -> bool:
    """Scratch of an unfinished conversion, and "folder" placeholder objects (``a/``) that
    consoles create in buckets: neither is part of a dataset."""
    return key.startswith(SCRATCH + "/") or key.endswith("/")


def source_record(src: Store, sizes: dict[str, int]) -> dict:
    """What a copy is made of: the source's address, its ``info`` and its listing."""
    import hashlib

    listing = hashlib.sha256("".join(f"{k}\t{sizes[k]}\n" for k in sorted(sizes)).encode()).hexdigest()
    info = hashlib.sha256(src.get("info") or b"").hexdigest()
    return {"command": "copy", "source": src.url, "fingerprint": {"info_sha256": info, "listing_sha256": listing,
                                                                  "objects": len(sizes)}}


def copy_dataset(src: Store, dst: Store, skip_existing: bool = False, workers: int | None = None,
                 progress: TransferProgress | None = None, overwrite: bool = False, resume: bool = False,
                 break_lock: bool = False) -> TransferResult:
    """Copy every object of the dataset in ``src`` to ``dst`` (see the module docstring),
    under the destination policy of :mod:`ngconvert.store.destination`: an existing dataset is
    replaced only with ``overwrite`` (beside it, swapped in when complete); ``resume``
    finishes an interrupted copy of the same source (or finds it complete)."""
    t0 = time.perf_counter()
    src.check_readable()
    refuse_overlap([src.root] if isinstance(src, FileStore) else [], dst, "source dataset")
    if isinstance(src, FileStore) and isinstance(dst, FileStore):
        refuse_overlap([dst.root], src, "destination")
    listed = list(src.list(""))
    if any(k == PUBLISH_KEY for k, _s in listed):
        raise UserError(f"{src.url} is half replaced (an overwrite was interrupted while the new dataset was "
                        "copied in); finish it first by running that command again with --resume")
    sizes = {k: s for k, s in listed if not _ignored(k)}
    if INFO not in sizes:
        raise UserError(f"{src.url} holds no 'info' object, so it is not a finished precomputed "
                        "dataset; finish the conversion first (ngconvert convert --resume)")
    record = source_record(src, sizes)
    with claim(dst, overwrite=overwrite, resume=resume, break_lock=break_lock, command="copy",
               adopt=skip_existing) as c:
        if c.mode == "resume" and not skip_existing:
            check_same_run(c.record, record, dst.url, unrecorded_ok=True)
        if c.mode == "complete" and not skip_existing and (
                dst.get(INFO) != src.get(INFO) or {k: n for k, n in dst.list("") if not _ignored(k)} != sizes):
            raise DestinationError(f"destination {dst.url} holds another dataset (its info or objects differ from "
                                   f"{src.url}'s); pass --overwrite to replace it")
        if c.mode == "complete" and not skip_existing:
            return TransferResult(src.url, dst.url, 0, 0, len(sizes), sum(sizes.values()), time.perf_counter() - t0)
        if c.mode == "complete":
            c.mode = "resume"         # --skip-existing: bring the keys it lacks, info again
        if c.mode == "new":
            c.start(record)
        plan = _plan(sizes, c.store, skip_existing or c.mode == "resume")
        workers = workers or max(src.max_in_flight, dst.max_in_flight)
        if progress is not None:
            progress.start(len(plan.todo) + 1, sum(plan.sizes[k] for k in plan.todo) + plan.sizes[INFO])

        def copy_one(key: str) -> int:
            nbytes = _copy_object(src, c.store, key)
            if progress is not None:
                progress.update(1, nbytes)
            return nbytes

        copied_bytes = sum(parallel_map(copy_one, plan.todo, workers))
        raw = src.get_raw(INFO)
        if raw is None:
            raise UserError(f"{src.describe(INFO)} disappeared during the copy; is another process changing the "
                            "source?")
        c.record = None           # the dataset's own record (copied with it) stays its record
        c.finish(decode(raw, src.describe(INFO)), scratch=False)
        copied_bytes += len(raw.data)
        if progress is not None:
            progress.update(1, len(raw.data))
    return TransferResult(src.url, dst.url, len(plan.todo) + 1, copied_bytes, len(plan.skipped),
                          sum(plan.sizes[k] for k in plan.skipped), time.perf_counter() - t0)


def _copy_object(src: Store, dst: Store, key: str) -> int:
    raw = src.get_raw(key)
    if raw is None:
        raise UserError(f"{src.describe(key)} disappeared during the copy; is another process "
                        "changing the source? Run again (with --skip-existing to resume)")
    dst.put(key, raw.data, content_encoding=raw.content_encoding, content_type=content_type_for(key))
    return len(raw.data)


def _local_store(path: str | os.PathLike, role: str) -> FileStore:
    store = open_store(path)
    if not isinstance(store, FileStore):
        raise UserError(f"{role} {os.fspath(path)} must be a local folder")
    return store


def upload(src_dir: str | os.PathLike, dest_url: str, options: StorageOptions | None = None,
           skip_existing: bool = False, workers: int | None = None,
           progress: TransferProgress | None = None, **policy) -> TransferResult:
    """Upload the dataset in the local folder ``src_dir`` to ``dest_url`` (``s3://``,
    ``gs://`` or another folder); ``.gz`` files become gzip-encoded objects.  ``policy``:
    ``overwrite``, ``resume``, ``break_lock`` (see :func:`copy_dataset`)."""
    return copy_dataset(_local_store(src_dir, "upload source"), open_store(dest_url, options),
                        skip_existing=skip_existing, workers=workers, progress=progress, **policy)


def download(src_url: str, dest_dir: str | os.PathLike, options: StorageOptions | None = None,
             skip_existing: bool = False, workers: int | None = None,
             progress: TransferProgress | None = None, **policy) -> TransferResult:
    """Download the dataset at ``src_url`` into the local folder ``dest_dir``;
    gzip-encoded objects become ``KEY.gz`` files."""
    return copy_dataset(open_store(src_url, options), _local_store(dest_dir, "download destination"),
                        skip_existing=skip_existing, workers=workers, progress=progress, **policy)
