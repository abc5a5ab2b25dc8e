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

from repository.errors import RepositoryBusyError


class FileLock:
    def __init__(self, path: Path, exclusive: bool) -> None:
        self.path = path
        self.exclusive = exclusive
        self._fd: int | None = None

    def acquire(self, timeout: float | None = None) -> None:
        """Block up to `timeout` seconds (None = forever)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
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
