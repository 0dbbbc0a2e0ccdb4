"""One destination policy for every command that writes a dataset.

A command resolves its whole plan first (source readable, options valid, plan built),
then :func:`claim` s the destination, writes, and calls :meth:`Claim.finish`.  The rules,
the same for ``convert``, ``assemble``, ``reencode``, ``transfer``, ``upload``,
``download``, ``mesh-import``, ``run`` and ``example``:

- **One writer per destination.**  A lock is taken before anything is written: a lock
  file beside a local folder (``.NAME.ngconvert-lock``, created exclusively), an object
  beside the prefix on S3/GCS (a conditional create).  It names its holder (host, pid,
  start time) and goes at the end.  A lock left by a run on this machine whose process is
  gone is broken automatically; any other is broken with ``--break-lock``.
- **States.**  A destination is *empty* (nothing but our scratch), *interrupted* (it holds
  the record of an unfinished run, ``.ngconvert/run.json``), *complete* (``info`` and no
  unfinished run) or *foreign* (anything else: never written to).
- **New** runs write into an empty destination.  A complete one is replaced only with
  ``--overwrite``, and then **beside it**: the new dataset is written to a staging place
  (a sibling folder ``.NAME.ngconvert-new`` locally, ``.ngconvert/new/`` under the
  prefix on S3/GCS) and swapped in when it is complete: locally by one atomic exchange
  of the two folders, on object stores by copying the new objects over the old ones
  (``info`` last, never deleted first) and deleting old objects the new dataset does not
  have.  A failed or interrupted overwrite leaves the old dataset as it was.
- **Resume** (``--resume``) is idempotent: nothing there, a new run; an interrupted run
  (in place or in staging), finished; a complete dataset, nothing to do.  The command
  compares the saved record (source fingerprint and options) with what it was given and
  refuses to mix two different runs.
- A source inside the destination, or a destination inside the source, is refused
  before anything happens (:func:`refuse_overlap`).

Over 450 lines because states, locks, publishing and run claims still share one module; the
split into store/scratch.py, store/publish.py and store/claims.py was left for a later
change so that this move stays purely a move.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .base import Store, content_type_for, parallel_map
from .local import FileStore, MemoryStore
from .open import open_store
from ..core.fingerprint import describe_change
from ..core.errors import UserError

log = logging.getLogger(__name__)

SCRATCH = ".ngconvert"
RUN_KEY = f"{SCRATCH}/run.json"           # the record of an unfinished run
DONE_KEY = "ngconvert_run.json"           # the record of how a complete dataset was made
PUBLISH_KEY = f"{SCRATCH}/publishing"     # object stores: a staged dataset being copied into place
READY_KEY = f"{SCRATCH}/ready"            # a staged dataset complete and about to be swapped in
REMOTE_STAGING = f"{SCRATCH}/new"
LEGACY_RUN_KEYS = (f"{SCRATCH}/plan.json", f"{SCRATCH}/reencode.json", f"{SCRATCH}/mesh-plan.json")
LOCK_ROOT_KEY = ".ngconvert-lock"         # the lock of a dataset at a bucket's root

EMPTY, INTERRUPTED, COMPLETE, FOREIGN = "empty", "interrupted", "complete", "foreign"


class DestinationError(UserError):
    """A destination that cannot be written as asked (exists, locked, foreign, ...)."""


# -- state -------------------------------------------------------------------------------

def _is_scratch(key: str) -> bool:
    return key.startswith(SCRATCH + "/") or key == LOCK_ROOT_KEY or key.startswith(".ngconvert-probe-")


def state_of(store: Store) -> str:
    """empty, interrupted, complete or foreign (see the module docstring)."""
    if store.exists(RUN_KEY) or any(store.exists(k) for k in LEGACY_RUN_KEYS):
        return INTERRUPTED
    if store.exists("info"):
        return COMPLETE
    for key, _size in store.list(""):
        if not _is_scratch(key):
            return FOREIGN
    return EMPTY


def read_record(store: Store, key: str) -> dict | None:
    blob = store.get(key)
    if blob is None:
        return None
    try:
        obj = json.loads(blob)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


# -- overlap -----------------------------------------------------------------------------

def _real(path) -> Path:
    return Path(os.path.abspath(os.path.realpath(os.fspath(path))))


def refuse_overlap(sources, dest: Store, what: str = "source") -> None:
    """Refuse a local source inside the destination folder, or the destination inside a
    source (``sources``: paths; URLs and None are skipped)."""
    if not isinstance(dest, FileStore):
        return
    d = _real(dest.root)
    for s in sources:
        if s is None or "://" in str(s):
            continue
        p = _real(s)
        if p == d or d in p.parents:
            raise DestinationError(f"{s}: the {what} is inside the destination {dest.root}; write the "
                                   "dataset somewhere else (nothing was changed)")
        if p in d.parents:
            raise DestinationError(f"destination {dest.root} is inside the {what} {s}; write the dataset "
                                   "somewhere else (nothing was changed)")


def refuse_nested(target: Store) -> None:
    """Refuse a local destination inside another dataset's folder (its files would become
    part of that dataset, and be copied and deleted with it)."""
    if not isinstance(target, FileStore):
        return
    for parent in _real(target.root).parents:
        if (parent / "info").is_file() and _looks_like_dataset(parent):
            raise DestinationError(f"destination {target.root} is inside the dataset {parent}; write the new "
                                   "dataset somewhere else (nothing was changed)")


def _looks_like_dataset(folder: Path) -> bool:
    try:
        obj = json.loads((folder / "info").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and ("scales" in obj or str(obj.get("@type", "")).startswith("neuroglancer"))


# -- free space --------------------------------------------------------------------------

def check_space(dest: Store, estimated_bytes: int, estimated_files: int) -> None:
    """Refuse a local destination that cannot plausibly hold the output: less free space
    than a tenth of the uncompressed estimate, or fewer free inodes than files."""
    if not isinstance(dest, FileStore):
        return
    probe = _real(dest.root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if estimated_bytes // 10 > free:
        raise DestinationError(f"destination {dest.root}: {free / 1e9:.1f} GB free, the output is about "
                               f"{estimated_bytes / 1e9:.1f} GB uncompressed; free space or choose another place")
    if st.f_files and estimated_files > st.f_favail:
        raise DestinationError(f"destination {dest.root}: the output has about {estimated_files} files but the "
                               f"file system has {st.f_favail} free inodes; use --sharded or another place")


# -- lock --------------------------------------------------------------------------------

def _lock_place(target: Store) -> tuple[Store, str]:
    """The store and key of the lock beside ``target``."""
    if isinstance(target, FileStore):
        root = _real(target.root)
        return FileStore(root.parent), f".{root.name}.ngconvert-lock"
    if isinstance(target, MemoryStore) or not hasattr(target, "prefix"):
        return target, LOCK_ROOT_KEY
    prefix = target.prefix.strip("/")
    if not prefix:
        return target, LOCK_ROOT_KEY
    parent, _, name = prefix.rpartition("/")
    scheme = target.url.split("://", 1)[0]
    base = f"{scheme}://{target.bucket}" + (f"/{parent}" if parent else "")
    return open_store(base, target.options), f"{name}.ngconvert-lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Lock:
    store: Store
    key: str
    holder: dict
    held: bool = False

    def describe(self) -> str:
        return self.store.describe(self.key)

    def acquire(self, break_lock: bool = False) -> None:
        self.holder.setdefault("token", uuid.uuid4().hex)
        body = json.dumps(self.holder).encode()
        for _attempt in range(5):
            try:
                created = self.store.create_exclusive(self.key, body)
            except OSError as e:
                raise DestinationError(f"destination {self.holder['dest']} is not writable: cannot create its lock "
                                       f"{self.describe()} ({e.strerror or e}); choose another folder or fix its "
                                       "permissions") from None
            if created:
                self.held = True
                return
            other = read_record(self.store, self.key)
            if other is None and not break_lock:
                raise DestinationError(f"the lock {self.describe()} names no owner (a run killed while taking it?); "
                                       "if no run is writing there, pass --break-lock")
            other = other or {}
            stale = other.get("host") == self.holder["host"] and isinstance(other.get("pid"), int) \
                and not _alive(other["pid"])
            if not (stale or break_lock):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other.get("started", 0)))
                raise DestinationError(
                    f"{self.holder['dest']} is being written by another run ({other.get('command', '?')} on host "
                    f"{other.get('host', '?')}, pid {other.get('pid', '?')}, since {since}); wait for it, or if "
                    f"it is gone pass --break-lock (or delete {self.describe()})")
            log.info("took over the %slock of %s (host %s, pid %s)", "stale " if stale else "",
                     self.holder["dest"], other.get("host"), other.get("pid"))
            self._take_over(other)
        raise DestinationError(f"{self.describe()}: could not take the lock; another run keeps taking it")

    def _take_over(self, seen: dict) -> None:
        """Remove the lock judged stale, and only that one: locally it is first renamed
        aside (atomic), and put back if another run had replaced it meanwhile."""
        if not isinstance(self.store, FileStore):
            self.store.delete(self.key)
            return
        path = self.store.root / self.key
        aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return                                    # another run took it over first
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if seen and moved != seen:
            try:
                os.link(aside, path)                  # a fresh lock: give it back
            except FileExistsError:
                pass
        aside.unlink()

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                current = read_record(self.store, self.key) or {}
                if current.get("token") == self.holder.get("token"):    # never another run's lock
                    self.store.delete(self.key)
            except Exception as e:   # the run's outcome matters more than the lock's removal
                log.warning("could not remove the lock %s (%s); delete it by hand", self.describe(), e)


# -- staging and swapping ----------------------------------------------------------------

def _staging_for(target: Store) -> Store:
    if isinstance(target, FileStore):
        root = _real(target.root)
        return FileStore(root.parent / f".{root.name}.ngconvert-new")
    return target.child(REMOTE_STAGING)


def _old_for(target: FileStore) -> Path:
    root = _real(target.root)
    return root.parent / f".{root.name}.ngconvert-old"


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders (Linux renameat2); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD = -100
    rc = fn(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0


def exchange_folders(new: Path, dest: Path) -> None:
    """Put the folder ``new`` at ``dest`` in one step; the old ``dest`` (if any) ends up at
    ``new``.  Two renames where the atomic exchange is not available."""
    new, dest = Path(new), Path(dest)
    if not new.is_dir():
        raise DestinationError(f"{new} is missing: nothing to swap into {dest}; run again with --overwrite")
    if not dest.exists():
        os.rename(new, dest)
        return
    if not _exchange(new, dest):
        side = dest.with_name(dest.name + ".ngconvert-old")
        os.rename(dest, side)
        os.rename(new, dest)
        os.rename(side, new)


def is_ready(staging: Store) -> bool:
    """A staged dataset counts as complete only with the marker :meth:`Claim.finish` writes
    just before the swap (after a local exchange the staging place holds the OLD dataset,
    complete but unmarked, until it is deleted)."""
    return staging.exists(READY_KEY) and state_of(staging) == COMPLETE


def _swap_local(staging: FileStore, target: FileStore) -> None:
    new, dest, old = _real(staging.root), _real(target.root), _old_for(target)
    if dest.exists():
        if _exchange(new, dest):
            os.rename(new, old)                   # the old dataset, out of the staging place
        else:
            os.rename(dest, old)                  # the fallback: a moment with the old dataset beside
            os.rename(new, dest)
    else:
        os.rename(new, dest)
    shutil.rmtree(old, ignore_errors=True)
    target.delete(READY_KEY)


def _recover_local(target: FileStore) -> None:
    """Finish a local swap that a crash interrupted; remove what a finished one left."""
    old, dest, staging = _old_for(target), _real(target.root), _staging_for(target)
    if old.exists():
        if not dest.exists():
            if is_ready(staging):
                os.rename(staging.root, dest)
            else:
                os.rename(old, dest)
                return
        shutil.rmtree(old, ignore_errors=True)
    if staging.root.exists() and state_of(staging) == COMPLETE and not staging.exists(READY_KEY):
        shutil.rmtree(staging.root, ignore_errors=True)     # the old dataset, exchanged out
    if dest.exists() and target.exists(READY_KEY):
        target.delete(READY_KEY)


def publish(staging: Store, target: Store, workers: int | None = None) -> None:
    """Object stores: copy a complete staged dataset over ``target`` (``info`` last), then
    delete the old objects it does not have.  The list of the new keys is saved first in
    :data:`PUBLISH_KEY`, so a crash anywhere is finished by running it again."""

    saved = read_record(target, PUBLISH_KEY)
    if saved is not None and isinstance(saved.get("keys"), list):
        new_keys = set(saved["keys"])
    else:
        new_keys = {k for k, _s in staging.list("") if not _is_scratch(k)}
        target.put(PUBLISH_KEY, json.dumps({"keys": sorted(new_keys)}).encode(), content_type="application/json")

    def copy(key: str) -> None:
        raw = staging.get_raw(key)
        if raw is None:
            raise DestinationError(f"{staging.describe(key)} is missing from the staged dataset; run the same "
                                   "command with --overwrite to write it again")
        target.put(key, raw.data, content_encoding=raw.content_encoding, content_type=content_type_for(key))
    n = workers or max(target.max_in_flight, 1)
    for _ in parallel_map(copy, sorted(k for k in new_keys if k != "info"), n):
        pass
    copy("info")
    stale = [k for k, _s in target.list("") if not _is_scratch(k) and k not in new_keys]
    for _ in parallel_map(target.delete, stale, n):
        pass
    target.delete(PUBLISH_KEY)      # before the staged copy goes: from here the target is the dataset
    staging.clear()


class locked:
    """``with locked(store, command):`` the destination's lock, for commands that change a
    dataset in place (``mesh``, ``mesh-import``)."""

    def __init__(self, target: Store, command: str, break_lock: bool = False):
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "command": command,
                  "dest": target.url}
        place, key = _lock_place(target)
        self.lock = Lock(place, key, holder)
        self.break_lock = break_lock

    def __enter__(self):
        self.lock.acquire(self.break_lock)
        return self.lock

    def __exit__(self, *exc):
        self.lock.release()


# -- the claim ---------------------------------------------------------------------------

@dataclass
class Claim:
    """A claimed destination: write into :attr:`store`, then call :meth:`finish`."""

    target: Store
    store: Store                 # where to write: the target, or the staging place beside it
    mode: str                    # "new", "resume" or "complete" (nothing to do)
    staged: bool = False
    record: dict | None = None   # resume: the saved record of the run; complete: of the dataset
    lock: Lock | None = None
    notes: list[str] = field(default_factory=list)

    def start(self, record: dict) -> None:
        """A new run: save its record (before the first data write)."""
        self.record = record
        self.store.put(RUN_KEY, json.dumps(record, indent=1, sort_keys=True).encode(),
                       content_type="application/json")

    def finish(self, info: bytes | None = None, scratch: bool = True) -> None:
        """Complete the dataset in :attr:`store`: its record of how it was made, then
        ``info`` (last of the data), then the scratch goes; a staged dataset is swapped
        into place; the lock is released."""
        try:
            if self.mode != "complete":
                if self.record is not None:
                    self.store.put(DONE_KEY, json.dumps(self.record, indent=1, sort_keys=True).encode(),
                                   content_type="application/json")
                if info is not None:
                    self.store.put("info", info, content_type="application/json")
                if scratch or isinstance(self.store, FileStore):
                    self.store.delete_prefix(SCRATCH + "/")
                else:
                    for key in (RUN_KEY, *LEGACY_RUN_KEYS):
                        self.store.delete(key)
                if self.staged:
                    self.store.put(READY_KEY, b"{}", content_type="application/json")
                    if isinstance(self.target, FileStore):
                        _swap_local(self.store, self.target)
                    else:
                        publish(self.store, self.target)
        finally:
            self.close()

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def claim(target: Store, *, overwrite: bool = False, resume: bool = False, break_lock: bool = False,
          command: str = "convert", what: str = "dataset", adopt: bool = False) -> Claim:
    """Take ``target`` for one run (see the module docstring).  Raise
    :class:`DestinationError` (nothing changed) when the policy refuses.  ``adopt``: the
    caller takes whatever is there as part of its result (``--skip-existing``)."""
    refuse_nested(target)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "command": command,
              "dest": target.url}
    place, key = _lock_place(target)
    lock = Lock(place, key, holder)
    lock.acquire(break_lock)
    try:
        target.check_writable()               # under the lock: a probe never lands in another run's dataset
        if isinstance(target, FileStore):
            _recover_local(target)
        elif target.exists(PUBLISH_KEY):
            publish(_staging_for(target), target)     # a crash while the new dataset was copied in: finish it
        c = Claim(target, target, "resume") if adopt and not overwrite else _decide(target, overwrite, resume, what)
        c.lock = lock
        if c.mode == "new":
            if not c.store.is_empty():
                c.store.clear()       # an interrupted run's leftovers (the policy allowed it)
        return c
    except BaseException:
        lock.release()
        raise


def preflight(target: Store, *, overwrite: bool = False, resume: bool = False, what: str = "dataset") -> str:
    """What :func:`claim` would do ("new", "resume", "complete"), or its refusal, without
    changing anything: for commands with a long preparation before they write."""
    return _decide(target, overwrite, resume, what).mode


def _decide(target: Store, overwrite: bool, resume: bool, what: str) -> Claim:
    state = state_of(target)
    staging = _staging_for(target) if state == COMPLETE else None
    staged_state = state_of(staging) if staging is not None else EMPTY
    url = target.url
    if state == FOREIGN:
        raise DestinationError(f"destination {url} is not empty and holds no precomputed dataset; choose a new "
                               "or empty folder (nothing was changed)")
    if resume:
        if staged_state == INTERRUPTED:
            return Claim(target, staging, "resume", True, _run_record(staging))
        if staged_state == COMPLETE and staging.exists(READY_KEY):
            return Claim(target, staging, "resume", True, read_record(staging, DONE_KEY))
        if state == INTERRUPTED:
            return Claim(target, target, "resume", False, _run_record(target))
        if state == COMPLETE and not overwrite:
            return Claim(target, target, "complete", False, read_record(target, DONE_KEY))
    if state == EMPTY:
        return Claim(target, target, "new", False, None)
    if state == INTERRUPTED:
        if not overwrite:
            raise DestinationError(f"destination {url} holds an interrupted {_run_command(target)}; pass "
                                   "--resume to finish it or --overwrite to start again")
        return Claim(target, target, "new", False, None)
    if not overwrite:
        raise DestinationError(f"destination {url} already holds a {what}; pass --overwrite to replace it (the "
                               "old one stays until the new one is complete)")
    return Claim(target, staging, "new", True, None)


def _run_record(store: Store) -> dict | None:
    return read_record(store, RUN_KEY)


def _run_command(store: Store) -> str:
    rec = _run_record(store) or {}
    return f"{rec['command']} run" if rec.get("command") else "run"


def check_same_run(saved: dict | None, wanted: dict, where: str, *, unrecorded_ok: bool = False) -> None:
    """Refuse to resume (or call complete) a run made by another command, from another
    source, from a source that has changed, or with other options.  ``wanted``: the
    record this run would save (``command``, ``source``, ``fingerprint``, ``layer``)."""
    if saved is None:
        if unrecorded_ok:
            return
        raise DestinationError(f"{where} has no record of the run that made it; pass --overwrite to make it again")
    if saved.get("command") != wanted["command"]:
        raise DestinationError(f"{where} was made by '{saved.get('command')}', not '{wanted['command']}'; pass "
                               "--overwrite to replace it")
    if saved.get("source") != wanted["source"] and wanted["source"] != "array":
        change = f"it was made from {saved.get('source')}, not {wanted['source']}"
    else:
        old_fp, new_fp = saved.get("fingerprint") or {}, wanted.get("fingerprint") or {}
        change = describe_change(old_fp, new_fp) if "file" in new_fp or "slices" in new_fp or "array" in new_fp \
            else ("its info or objects differ" if old_fp != new_fp else None)
    if change:
        raise DestinationError(f"{where} was started from a source that has changed since: {change}; pass "
                               "--overwrite to start again")
    old, new = saved.get("layer") or {}, wanted.get("layer") or {}
    diff = differences(old, new, sorted(set(old) | set(new)))
    if diff:
        raise DestinationError(f"{where} was made with other options ({'; '.join(diff[:4])}); run with the same "
                               "options, or pass --overwrite to start again")


def differences(saved: dict, wanted: dict, keys) -> list[str]:
    """``name: saved -> wanted`` for each of ``keys`` whose values differ."""
    out = []
    for k in keys:
        a, b = saved.get(k), wanted.get(k)
        if a != b:
            out.append(f"{k} {_short(a)} -> {_short(b)}")
    return out


def _short(v) -> str:
    text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return text if len(text) <= 60 else text[:57] + "..."
