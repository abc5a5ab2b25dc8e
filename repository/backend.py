"""Storage backends: a flat key space of write-once objects.

The interface is small on purpose (Benji's lesson: naming, transforms and checksums live
once above it) and avoids rename so that an object store without one (S3) fits it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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


def owner_to_match(path: Path) -> tuple[int, int] | None:
    """The (uid, gid) a file or directory created at `path` must be given: those of the
    nearest existing directory above it when we run as root and another user owns that
    directory. A one-off `vigil backup` as root in the service user's repository must leave
    files (0600) and directories (0700) the service can still open. None (keep our ids)
    when not root or the directory is root's."""
    if os.geteuid() != 0:
        return None
    for parent in path.parents:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            continue
        return None if st.st_uid == 0 and st.st_gid == 0 else (st.st_uid, st.st_gid)
    return None


class LocalBackend:
    """A directory: objects are files, written to a temp file, fsynced, then linked
    into place (link fails if the name exists: write-once without a race) and the
    directory fsynced. Files 0600, directories 0700, owned like the root directory (see
    owner_to_match: root writing into the service user's repository)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._owner: tuple[int, int] | None = None
        self._owner_known = False

    def _new_owner(self) -> tuple[int, int] | None:
        """The owner of the repository root, once per backend (it exists by the first write)."""
        if not self._owner_known:
            self._owner = owner_to_match(self.root / "_")
            self._owner_known = self.root.is_dir()
        return self._owner

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
            if owner := self._new_owner():
                os.chown(path, *owner)
            _fsync_dir(path.parent)

    def _write_temp(self, final: Path, data: bytes) -> Path:
        tmp = final.parent / f"{_TMP_PREFIX}{final.name}.{os.getpid()}.{os.urandom(4).hex()}"
        self._ensure_dir(final.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if owner := self._new_owner():
                os.fchown(fd, *owner)  # link/replace keep the inode, hence its owner
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
