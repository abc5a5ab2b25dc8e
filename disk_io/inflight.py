"""Close a shared handle only after the I/O running on it has finished.

Reads on one disk run in several pool threads at once. Closing the file descriptor
while a pread is in flight is worse than an error: the kernel may hand the same number
to the next open(), and the late pread then reads someone else's file. So close()
marks the handle closed (new calls fail at once) and waits for the calls in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import DiskIoError


class InFlight:
    def __init__(self, what: str) -> None:
        self._what = what
        self._cond = threading.Condition()
        self._running = 0
        self._closed = False

    @contextmanager
    def op(self) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise DiskIoError(f"{self._what} is closed")
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                if not self._running:
                    self._cond.notify_all()

    @property
    def running(self) -> int:
        return self._running

    def close(self) -> bool:
        """Refuse new calls, wait for those in flight; True the first time only."""
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            while self._running:
                self._cond.wait()
            return True
