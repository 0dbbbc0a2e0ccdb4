"""Stores on this machine: a local folder (FileStore) and memory (MemoryStore)."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from .base import RawObject, Store, TMP_DIR
from ..core.errors import UserError, check_local_path


class FileStore(Store):
    """A local folder.  A gzip-encoded object is the file ``KEY.gz`` (a key is stored in
    exactly one form); ``get_raw`` returns those bytes with encoding ``gzip``.  Other
    encodings cannot be represented and are refused.

    Objects are written to a temporary name inside the dataset and renamed into place, so
    a key is either absent or complete; temporaries left by a killed run sit in
    ``.ngconvert/tmp`` and go when the run is finished."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(check_local_path(root, "folder"))
        self.url = str(self.root)
        self._made: set[str] = set()

    def _path(self, key: str) -> Path:
        return self.root / key

    def _ensure_dir(self, path: Path) -> None:
        parent = str(path.parent)
        if parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(parent)

    def put(self, key, data, content_encoding=None, content_type=None):
        if content_encoding not in (None, "gzip"):
            raise UserError(f"{self.describe(key)}: Content-Encoding {content_encoding!r} cannot be "
                            "kept in a folder (only gzip, as KEY.gz)")
        path = self._path(key + ".gz" if content_encoding == "gzip" else key)
        self._ensure_dir(path)
        tmpdir = self.root / TMP_DIR
        if str(tmpdir) not in self._made:
            tmpdir.mkdir(parents=True, exist_ok=True)
            self._made.add(str(tmpdir))
        tmp = tmpdir / uuid.uuid4().hex
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        # a key is stored in exactly one form
        other = self._path(key) if content_encoding == "gzip" else self._path(key + ".gz")
        if other.exists():
            other.unlink()

    def get_raw(self, key):
        path = self._path(key)
        if path.is_file():
            return RawObject(path.read_bytes(), None)
        gz = self._path(key + ".gz")
        if gz.is_file():
            return RawObject(gz.read_bytes(), "gzip")
        return None

    def exists(self, key):
        return self._path(key).is_file() or self._path(key + ".gz").is_file()

    def get_range(self, key, start, stop):
        path = self._path(key)
        if not path.is_file():
            return None if not self._path(key + ".gz").is_file() else super().get_range(key, start, stop)
        with open(path, "rb", buffering=0) as fh:
            return os.pread(fh.fileno(), max(0, stop - start), start)

    def put_file(self, key, path, content_type=None):
        target = self._path(key)
        self._ensure_dir(target)
        try:
            os.replace(path, target)        # same file system: an atomic rename
        except OSError:
            super().put_file(key, path, content_type)
            return
        gz = self._path(key + ".gz")
        if gz.exists():
            gz.unlink()

    def delete(self, key):
        for p in (self._path(key), self._path(key + ".gz")):
            if p.is_file():
                p.unlink()

    def delete_prefix(self, prefix):
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path)
            self._made.clear()
        else:
            super().delete_prefix(prefix)

    def list(self, prefix=""):
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            yield prefix, base.stat().st_size
            return
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                p = Path(dirpath) / name
                key = p.relative_to(self.root).as_posix()
                if key.startswith(TMP_DIR + "/"):
                    continue
                if key.endswith(".gz"):
                    key = key[:-3]
                yield key, p.stat().st_size

    def clear(self) -> None:
        """Remove everything under the root (used by ``--overwrite``)."""
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        self._made.clear()

    def check_writable(self) -> None:
        """Probe with a temporary file; folders made for the probe are removed again, so a
        run that stops on bad input leaves nothing behind."""
        made = [p for p in [self.root, *self.root.parents] if not p.exists()]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".ngconvert-probe-"):
                pass
        except OSError as e:
            raise UserError(f"destination {self.root} is not writable ({e.strerror or e}); "
                            "choose another folder or fix its permissions") from None
        finally:
            for p in made:          # deepest first
                try:
                    p.rmdir()
                except OSError:
                    break

    def create_exclusive(self, key, data):
        """Written whole to a temporary file, then linked to ``key`` (atomic, and fails when
        ``key`` exists): a reader never sees it half written."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def child(self, prefix):
        return FileStore(self.root / prefix.strip("/"))

    def check_readable(self) -> None:
        if not self.root.is_dir():
            raise UserError(f"{self.root} is not a folder; give the folder of a precomputed dataset")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise UserError(f"{self.root} is not readable; fix its permissions")

    def describe(self, key: str) -> str:
        return str(self._path(key))


class MemoryStore(Store):
    """An in-memory store (for tests and Python callers); values kept as stored, with
    their Content-Encoding beside them."""

    def __init__(self, url: str = "memory://"):
        self.url = url
        self.objects: dict[str, tuple[bytes, str | None]] = {}

    def put(self, key, data, content_encoding=None, content_type=None):
        self.objects[key] = (bytes(data), content_encoding)

    def get_raw(self, key):
        item = self.objects.get(key)
        return None if item is None else RawObject(*item)

    def delete(self, key):
        self.objects.pop(key, None)

    def list(self, prefix=""):
        for key, (data, _enc) in list(self.objects.items()):
            if key.startswith(prefix):
                yield key, len(data)

    def clear(self) -> None:
        self.objects.clear()

    def check_writable(self) -> None:
        pass

    def child(self, prefix):
        children = self.__dict__.setdefault("_children", {})
        if prefix not in children:
            children[prefix] = MemoryStore(f"{self.url.rstrip('/')}/{prefix.strip('/')}")
        return children[prefix]
