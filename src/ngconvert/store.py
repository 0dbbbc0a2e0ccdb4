"""Key/value stores a dataset is written to.

Keys are ``/``-separated paths relative to the dataset root.  ``put`` takes the bytes
as stored plus their ``Content-Encoding``: a file store keeps gzip-encoded objects as
``KEY.gz`` (the layout nginx ``gzip_static``, cloud-volume and neuroglancer-scripts
share), an object store would keep the key and send the header.  ``get`` undoes the
encoding, so callers always see the decoded bytes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from .codecs import gzip_decompress
from .errors import UserError


class Store:
    url: str

    def put(self, key: str, data: bytes, content_encoding: str | None = None,
            content_type: str | None = None) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        return self.get(key) is not None

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> None:
        for key in list(self.list(prefix)):
            self.delete(key)

    def list(self, prefix: str = ""):
        """Stored keys under ``prefix`` (with any ``.gz`` suffix removed), with sizes."""
        raise NotImplementedError

    def is_empty(self) -> bool:
        return next(iter(self.list("")), None) is None


TMP_DIR = ".ngconvert/tmp"


class FileStore(Store):
    """A local folder.  Objects are written to a temporary name inside the dataset and
    renamed into place, so a key is either absent or complete; temporaries left by a
    killed run sit in ``.ngconvert/tmp`` and go when the run is finished."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
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

    def get(self, key):
        path = self._path(key)
        if path.is_file():
            return path.read_bytes()
        gz = self._path(key + ".gz")
        if gz.is_file():
            return gzip_decompress(gz.read_bytes())
        return None

    def exists(self, key):
        return self._path(key).is_file() or self._path(key + ".gz").is_file()

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
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".ngconvert-probe-"):
                pass
        except OSError as e:
            raise UserError(f"destination {self.root} is not writable ({e.strerror or e}); "
                            "choose another folder or fix its permissions") from None


class MemoryStore(Store):
    """An in-memory store (for tests and Python callers); values kept as stored."""

    def __init__(self, url: str = "memory://"):
        self.url = url
        self.objects: dict[str, tuple[bytes, str | None]] = {}

    def put(self, key, data, content_encoding=None, content_type=None):
        self.objects[key] = (bytes(data), content_encoding)

    def get(self, key):
        item = self.objects.get(key)
        if item is None:
            return None
        data, enc = item
        return gzip_decompress(data) if enc == "gzip" else data

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


def open_store(url: str | os.PathLike | Store) -> Store:
    """A store for a destination: a plain path, ``file://`` URL or a Store instance."""
    if isinstance(url, Store):
        return url
    text = os.fspath(url)
    if text.startswith("file://"):
        return FileStore(text[len("file://"):])
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise UserError(f"destination {text}: {scheme}:// storage is not supported yet; "
                        "write to a local folder and upload it")
    return FileStore(text)
