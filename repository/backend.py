"""Storage backends: a flat key space of write-once objects.

The interface is small on purpose (Benji's lesson: naming, transforms and checksums live
once above it) and avoids rename so that an object store without one (S3) fits it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from repository.errors import BackendError, ObjectNotFoundError

_TMP_PREFIX = ".tmp-"
T = TypeVar("T")


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


# The only keys a repository holds (docs/repository-format.md, Layout): anything else in
# the directory is not ours, and is neither listed, read, written nor deleted.
_KEY_SHAPES = re.compile(
    r"config|keys/[0-9a-f]{16}|chunks/(?P<shard>[0-9a-f]{2})/(?P=shard)[0-9a-f]{62}"
    r"|indexes/[0-9a-f]{64}|(manifests|tombstones|heads|pins)/[0-9a-f]{16}-\d{8}T\d{6}Z-\d{6,}"
    r"|locks/[0-9a-f]{32}"
)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def check_key(key: str) -> None:
    if not _KEY_SHAPES.fullmatch(key):
        raise ValueError(f"{key!r} is not a repository object key")


class LocalBackend:
    """A directory: objects are files, written to a temp file, fsynced, then linked
    into place (link fails if the name exists: write-once without a race) and the
    directory fsynced. Files 0600, directories 0700.

    Everything below the root is reached through directory handles opened with
    O_NOFOLLOW (openat-style `dir_fd=`): a symbolic link planted anywhere inside the
    repository is never followed, it makes the operation fail with ELOOP (`symbolic link`
    in the error). The root itself is resolved once: pointing repository.path at a link is
    the admin's choice."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.realpath(root))
        self._owner: tuple[int, int] | None = None
        self._owner_known = False

    def _new_owner(self) -> tuple[int, int] | None:
        """Who must own what we create (owner_to_match: root writing into the service
        user's repository), looked up once the root exists."""
        if not self._owner_known:
            self._owner = owner_to_match(self.root / "_")
            self._owner_known = self.root.is_dir()
        return self._owner

    @contextlib.contextmanager
    def _dir(self, parts: Sequence[str], create: bool = False) -> Iterator[int]:
        """A handle on root/parts..., each component opened without following links."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in parts:
                try:
                    nxt = os.open(name, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o700, dir_fd=fd)
                        if owner := self._new_owner():
                            os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
                        _fsync_fd(fd)
                    nxt = os.open(name, _DIR, dir_fd=fd)
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _split(key: str) -> tuple[list[str], str]:
        check_key(key)
        *dirs, name = key.split("/")
        return dirs, name

    def _write_temp(self, dfd: int, name: str, data: bytes) -> str:
        tmp = f"{_TMP_PREFIX}{name}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
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
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.close(fd)
        return tmp

    def put_if_absent(self, key: str, data: bytes) -> bool:
        dirs, name = self._split(key)
        try:
            with self._dir(dirs, create=True) as dfd:
                if _lexists(name, dfd):
                    return False
                tmp = self._write_temp(dfd, name, data)
                try:
                    os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                    written = True
                except FileExistsError:
                    written = False
                finally:
                    os.unlink(tmp, dir_fd=dfd)
                _fsync_fd(dfd)
                return written
        except OSError as exc:
            raise BackendError(key, exc) from exc

    def replace(self, key: str, data: bytes) -> None:
        dirs, name = self._split(key)
        try:
            with self._dir(dirs, create=True) as dfd:
                tmp = self._write_temp(dfd, name, data)
                try:
                    # rename replaces the name itself (a planted link too), never its target
                    os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=dfd)
                    raise
                _fsync_fd(dfd)
        except OSError as exc:
            raise BackendError(key, exc) from exc

    def _at(self, key: str, op: Callable[[str, int], T]) -> T:
        """op(name, directory handle) for the object's name, never through a link;
        FileNotFoundError when absent, BackendError (naming the key) on other failures."""
        dirs, name = self._split(key)
        try:
            with self._dir(dirs) as dfd:
                return op(name, dfd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise BackendError(key, _explain(exc)) from exc

    def _open(self, key: str) -> int:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        return self._at(key, lambda name, dfd: os.open(name, flags, dir_fd=dfd))

    def get(self, key: str) -> bytes:
        try:
            fd = self._open(key)
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None
        try:
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file")
                return f.read()
        except OSError as exc:
            raise BackendError(key, _explain(exc)) from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of the object from `start` (fewer at its end)."""
        if start < 0 or length <= 0:
            raise ValueError(f"bad range {start}+{length} of {key}")
        try:
            fd = self._open(key)
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None
        try:
            return os.pread(fd, length, start)
        except OSError as exc:
            raise BackendError(key, _explain(exc)) from exc
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        try:
            return self._at(key, _lexists)
        except FileNotFoundError:
            return False

    def touch(self, key: str) -> bool:
        try:
            fd = self._open(key)
        except FileNotFoundError:
            return False
        try:
            os.utime(fd)
        except OSError as exc:
            raise BackendError(key, exc) from exc
        finally:
            os.close(fd)
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix names, so listing one kind of object does not
        # scan the chunk tree; names of other shapes and links are not objects: skipped.
        base, _, _ = prefix.rpartition("/")
        parts = base.split("/") if base else []
        try:
            with self._dir(parts) as top:
                for dirpath, _dirs, files, dfd in os.fwalk(".", dir_fd=top):
                    # fwalk names subdirectories "./chunks/ab": normalised, or no key of a
                    # subdirectory would match its shape when listing from the top ("").
                    rel = os.path.normpath(os.path.join(base, dirpath))
                    for name in sorted(files):
                        key = name if rel == "." else f"{rel}/{name}"
                        if not key.startswith(prefix) or not _KEY_SHAPES.fullmatch(key):
                            continue
                        try:
                            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        # A link stands where an object should be: listed, so readers report
                        # it (get fails with ELOOP) instead of the object silently vanishing.
                        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                            yield ObjectInfo(key, st.st_size, st.st_mtime)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BackendError(prefix or "/", _explain(exc)) from exc

    def delete(self, key: str) -> None:
        dirs, name = self._split(key)
        try:
            with self._dir(dirs) as dfd:
                os.unlink(name, dir_fd=dfd)  # removes a link itself, never its target
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BackendError(key, _explain(exc)) from exc

    def cleanup(self, older_than: float) -> int:
        removed = 0
        with self._dir([]) as top:
            for _dirpath, _dirs, files, dfd in os.fwalk(".", dir_fd=top):
                for name in files:
                    if not name.startswith(_TMP_PREFIX):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                        if st.st_mtime < older_than:
                            os.unlink(name, dir_fd=dfd)
                            removed += 1
        return removed


def open_backend(location: str | Path, options: Mapping[str, Any] | None = None) -> Backend:
    """The backend a repository location names: `s3://BUCKET/PREFIX` (with `options` the
    `[repository.s3]` table; checks the bucket and probes If-None-Match) or a directory."""
    if str(location).startswith("s3://"):
        from repository.s3 import open_s3_backend, options_from_config

        return open_s3_backend(options_from_config(str(location), options or {}))
    return LocalBackend(location)


def _lexists(name: str, dfd: int) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _explain(exc: OSError) -> OSError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return OSError(
            exc.errno,
            "a symbolic link (or non-directory) where the format has "
            "an object or directory: not followed; remove it or restore the object",
        )
    return exc


def _fsync_fd(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
