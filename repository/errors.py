"""Errors raised by the repository; each names the object at fault."""

from __future__ import annotations

import errno


class RepositoryError(Exception):
    """Base class for every repository failure."""


class RepositoryNotFoundError(RepositoryError):
    pass


class RepositoryExistsError(RepositoryError):
    pass


class WrongPassphraseError(RepositoryError):
    pass


class PassphraseRequiredError(RepositoryError):
    pass


class HostKeyUnmatchedError(RepositoryError):
    """The host key opens no key slot of the repository (not added, or its slot removed)."""


class ObjectNotFoundError(RepositoryError):
    def __init__(self, key: str) -> None:
        super().__init__(f"object not found in repository: {key}")
        self.key = key


class CorruptObjectError(RepositoryError):
    """A stored object failed its CRC, authentication, decompression or id check."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"corrupt object {key}: {reason}")
        self.key = key
        self.reason = reason


class CorruptChunkError(RepositoryError):
    """Reading a disk hit a chunk that is missing or damaged: no bytes are returned for it."""

    def __init__(self, chunk_id: str, point_id: str, disk_key: str, reason: str) -> None:
        super().__init__(
            f"chunk {chunk_id} of restore point {point_id} disk {disk_key!r} is bad: {reason}"
        )
        self.chunk_id = chunk_id
        self.point_id = point_id
        self.disk_key = disk_key
        self.reason = reason


class ManifestError(RepositoryError):
    """A manifest failed authentication or its chain to the previous point."""


class PointNotFoundError(RepositoryError):
    pass


class PointPinnedError(RepositoryError):
    """A pinned point cannot be deleted (unpin it first)."""


class DiskNotFoundError(RepositoryError):
    pass


class RepositoryBusyError(RepositoryError):
    """A lock could not be taken in time (for example prune while backups run)."""


class BackendError(RepositoryError):
    """The storage backend failed (I/O error, disk full); the key names the object."""

    def __init__(self, key: str, cause: BaseException) -> None:
        hint = ""
        self.full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        if self.full:
            hint = (
                "; the repository's filesystem is full: earlier restore points are intact; "
                "free space (add storage, or lower retention and run `vigil prune`), then run "
                "the backup again"
            )
        elif isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = (
                "; vigil cannot read or write there: earlier restore points are intact; check the "
                "repository directory's owner and permissions (vigil runs as the user that "
                "owns it) or whether its filesystem is mounted read-only"
            )
        elif isinstance(cause, OSError) and cause.errno == errno.EIO:
            hint = "; the storage reports an I/O error: check its health, then `vigil verify`"
        super().__init__(f"storage backend failed on {key}: {cause}{hint}")
        self.key = key
        self.cause = cause


class ConfigTamperedError(RepositoryError):
    """The repository config does not match what the key slots authenticate, or claims
    no encryption where a passphrase is expected (an encryption downgrade)."""
