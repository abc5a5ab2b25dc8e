"""A per-VM advisory lock shared by every vigil process using one repository.

A backup and a restore onto the same VM must never overlap (a restore writing the disks a
backup is reading gives a point that is neither; two backups race for the snapshot), and
they may run in different processes: the daemon's jobs and an admin's `vigil restore`. So
the lock is an fcntl.flock on `<state dir>/<repository id>/locks/<vcenter-uuid>_<instance-uuid>
.lock` (Repository.state: local to this machine, never in the repository)
(the kernel drops it when the holder dies, even on kill -9), taken without waiting. The
file names its holder (pid, host, operation, since) for the error the loser gets.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from protector.errors import UserError
from repository.locks import open_lock_file

log = structlog.get_logger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


class VmBusyError(UserError):
    """Another backup or restore of the same VM holds its lock. Transient: retry later."""

    def __init__(self, vm_name: str, path: Path, holder: dict[str, Any]) -> None:
        who = describe_holder(holder)
        super().__init__(
            f"VM {vm_name} is busy: {who} (lock {path}); wait for it to finish and try again",
            2,
        )
        self.vm_name = vm_name
        self.path = path
        self.holder = holder


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another vigil process holds it"
    op = holder.get("operation") or "an operation"
    return (
        f"{op} by process {holder.get('pid', '?')} on {holder.get('host', '?')} "
        f"since {holder.get('since', '?')}"
    )


def lock_path(repo_root: Path | str, vcenter_uuid: str, instance_uuid: str) -> Path:
    """`<repo_root>/locks/<vcenter-uuid>_<instance-uuid>.lock` (lower case, path-safe);
    callers pass the repository's state directory (Repository.state.ensure())."""
    vc = _UNSAFE.sub("_", (vcenter_uuid or "unknown-vcenter").lower())
    inst = _UNSAFE.sub("_", instance_uuid.lower())
    return Path(repo_root) / "locks" / f"{vc}_{inst}.lock"


def read_holder(path: Path) -> dict[str, Any]:
    """What the holder wrote into the lock file ({} when unreadable: it may be mid-write)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class VmLock:
    def __init__(self, path: Path, vm_name: str, operation: str) -> None:
        self.path = path
        self.vm_name = vm_name
        self.operation = operation
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise VmBusyError naming the holder (never waits)."""
        fd = open_lock_file(self.path)  # owned like the repository when run as root
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise VmBusyError(self.vm_name, self.path, read_holder(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._write_holder(fd)

    def _write_holder(self, fd: int) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "operation": self.operation,
            "vm": self.vm_name,
            "since": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale holder in the file once it is free
        os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def vm_lock(
    repo_root: Path | str, vcenter_uuid: str, instance_uuid: str, vm_name: str, operation: str
) -> Iterator[VmLock | None]:
    """Hold the VM's lock for the block; VmBusyError when another process (or job) holds it.

    A repository on read-only storage has no lock directory; a restore from such a copy
    goes on without the lock (with a warning), as nothing can back up into it either."""
    lock = VmLock(lock_path(repo_root, vcenter_uuid, instance_uuid), vm_name, operation)
    try:
        lock.acquire()
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        log.warning("vm_lock.read_only_repository", vm=vm_name, path=str(lock.path))
        yield None
        return
    try:
        yield lock
    finally:
        lock.release()
