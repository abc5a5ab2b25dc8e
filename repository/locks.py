"""Process locks on the repository host (fcntl.flock: the kernel drops them on kill -9).

Backups hold the repository lock shared for their whole run; prune's chunk sweep takes it
exclusive, so a sweep never races a backup that is about to reference an old chunk. A
per-VM lock serialises the read-head / write-manifest step of commits for one VM.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from repository.backend import owner_to_match
from repository.errors import RepositoryBusyError


def open_lock_file(path: Path) -> int:
    """Open `path` read-write, creating it 0600 (and missing parents 0700). As root in the
    service user's repository, what is created gets that user's ownership (owner_to_match)
    so the daemon can still take the lock after a one-off command ran as root."""
    owner = owner_to_match(path)
    for d in reversed(path.parents):
        if not d.is_dir():
            d.mkdir(mode=0o700, exist_ok=True)
            if owner:
                os.chown(d, *owner)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if owner:
        os.fchown(fd, *owner)
    return fd


class FileLock:
    def __init__(self, path: Path, exclusive: bool) -> None:
        self.path = path
        self.exclusive = exclusive
        self._fd: int | None = None

    def acquire(self, timeout: float | None = None) -> None:
        """Block up to `timeout` seconds (None = forever)."""
        fd = open_lock_file(self.path)
        op = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, op | (fcntl.LOCK_NB if deadline is not None else 0))
                    break
                except BlockingIOError:
                    if deadline is None or time.monotonic() >= deadline:
                        kind = "exclusive" if self.exclusive else "shared"
                        raise RepositoryBusyError(
                            f"could not take the {kind} lock {self.path} within {timeout}s"
                        ) from None
                    time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


@contextlib.contextmanager
def locked(path: Path, exclusive: bool, timeout: float | None = None) -> Iterator[FileLock]:
    lock = FileLock(path, exclusive)
    lock.acquire(timeout)
    try:
        yield lock
    finally:
        lock.release()
