"""Storage backends: a flat key space of write-once objects.

The interface is small on purpose (Benji's lesson: naming, transforms and checksums live
once above it) and avoids rename so that an object store without one (S3) fits it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from repository.errors import BackendError, ObjectNotFoundError

_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch; prune's grace period compares against it


class Backend(Protocol):
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store `data` under `key` durably unless the key exists; True when written."""

    def replace(self, key: str, data: bytes) -> None:
        """Store `data` under `key` durably, atomically replacing an existing object.
        Only for healing: the new object has the same plaintext as a damaged old one."""

    def get(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFoundError when absent."""

    def exists(self, key: str) -> bool: ...

    def touch(self, key: str) -> bool:
        """Make the object count as new for prune's grace period (reset its mtime); False
        when absent. A writer reusing an old object calls this instead of exists()."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (no order promised)."""

    def delete(self, key: str) -> None:
        """Remove the object; absent objects are not an error."""

    def cleanup(self, older_than: float) -> int:
        """Drop debris of interrupted uploads older than `older_than` (epoch seconds)."""


class LocalBackend:
    """A directory: objects are files, written to a temp file, fsynced, then linked
    into place (link fails if the name exists: write-once without a race) and the
    directory fsynced. Files 0600, directories 0700."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad object key {key!r}")
        return self.root / key

    def _ensure_dir(self, path: Path) -> None:
        if path.is_dir():
            return
        self._ensure_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
            _fsync_dir(path.parent)

    def _write_temp(self, final: Path, data: bytes) -> Path:
        tmp = final.parent / f"{_TMP_PREFIX}{final.name}.{os.getpid()}.{os.urandom(4).hex()}"
        self._ensure_dir(final.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def put_if_absent(self, key: str, data: bytes) -> bool:
        final = self._path(key)
        if final.exists():
            return False
        tmp: Path | None = None
        try:
            tmp = self._write_temp(final, data)
            try:
                os.link(tmp, final)
                written = True
            except FileExistsError:
                written = False
            os.unlink(tmp)
            _fsync_dir(final.parent)
            return written
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise BackendError(key, exc) from exc

    def replace(self, key: str, data: bytes) -> None:
        final = self._path(key)
        tmp: Path | None = None
        try:
            tmp = self._write_temp(final, data)
            os.replace(tmp, final)  # atomic: readers see the old or the new object
            _fsync_dir(final.parent)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise BackendError(key, exc) from exc

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None
        except OSError as exc:
            raise BackendError(key, exc) from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of the object from `start` (fewer at its end)."""
        if start < 0 or length <= 0:
            raise ValueError(f"bad range {start}+{length} of {key}")
        try:
            with open(self._path(key), "rb") as f:
                return os.pread(f.fileno(), length, start)
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None
        except OSError as exc:
            raise BackendError(key, exc) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def touch(self, key: str) -> bool:
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BackendError(key, exc) from exc
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix names, so listing one kind of object does not
        # scan the chunk tree.
        base, _, _ = prefix.rpartition("/")
        start = self.root / base if base else self.root
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            for name in sorted(filenames):
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BackendError(key, exc) from exc

    def cleanup(self, older_than: float) -> int:
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if not name.startswith(_TMP_PREFIX):
                    continue
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_mtime < older_than:
                        os.unlink(path)
                        removed += 1
        return removed


def open_backend(location: str | Path, options: Mapping[str, Any] | None = None) -> Backend:
    """The backend a repository location names: `s3://BUCKET/PREFIX` (with `options` the
    `[repository.s3]` table; checks the bucket and probes If-None-Match) or a directory."""
    if str(location).startswith("s3://"):
        from repository.s3 import open_s3_backend, options_from_config

        return open_s3_backend(options_from_config(str(location), options or {}))
    return LocalBackend(location)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
