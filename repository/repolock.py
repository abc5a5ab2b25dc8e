"""Repository locks as objects in the repository itself (as restic and borg do), so that
several hosts sharing one repository (NFS today, object storage later) exclude each other
without flock, rename or any shared local state.

A lock is a write-once object `locks/<32 hex>` holding JSON
    {"kind": "shared" | "exclusive", "host_id", "hostname", "pid", "pid_start",
     "purpose", "created"}
Writers (backups) and readers (restore, export) hold a shared lock for their whole run;
prune's chunk sweep holds the exclusive one. To take a lock: if a conflicting live lock
is listed, wait; else write ours, list again, and if a conflicting live lock appeared
meanwhile remove ours and wait (a random back-off breaks ties). Conflicts: an exclusive
lock conflicts with every other lock, a shared one with exclusive ones.

A holder refreshes its lock every REFRESH_EVERY seconds by writing a new object and then
deleting the old one (no rename: object stores have none). A lock whose object is older
than STALE_AFTER (by the storage's modification time) is stale and ignored; one from this
machine (same host_id) whose process is gone is stale at once. Whoever takes a lock first
deletes the stale ones it sees. See
docs/repository-format.md, "Locks".
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from repository.backend import Backend, owner_to_match
from repository.errors import (
    BackendError,
    ObjectNotFoundError,
    RepositoryBusyError,
    RepositoryError,
)

log = structlog.get_logger(__name__)

_LOCK_KEY = re.compile(r"locks/[0-9a-f]{32}")
STALE_AFTER = 30 * 60.0  # seconds without refresh
REFRESH_EVERY = 5 * 60.0


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc): a pid reused later differs."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def host_id(state_base: Path) -> str:
    """This machine's id, kept in the state directory (created once, 0600)."""
    path = state_base / "host-id"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            hid = f.read().strip()
        if hid:
            return hid
    except FileNotFoundError:
        pass
    hid = secrets.token_hex(16)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return host_id(state_base)  # another process created it a moment ago
    if owner := owner_to_match(path):
        os.fchown(fd, *owner)
    with os.fdopen(fd, "w") as f:
        f.write(hid)
    return hid


@dataclass(frozen=True, slots=True)
class LockInfo:
    key: str
    kind: str
    host_id: str
    hostname: str
    pid: int
    pid_start: str | None
    purpose: str
    age: float  # seconds since its object was written (refreshed)

    def describe(self) -> str:
        return (
            f"{self.kind} lock {self.key} ({self.purpose}) by pid {self.pid} on "
            f"{self.hostname}, refreshed {self.age:.0f}s ago"
        )


def list_locks(
    backend: Backend, my_host: str, stale_after: float, stale: list[str] | None = None
) -> list[LockInfo]:
    """Live locks. Stale ones (their keys appended to `stale` when given) and ones that
    cannot be parsed are skipped (logged)."""
    now = time.time()
    out: list[LockInfo] = []
    for obj in backend.list("locks/"):
        if not _LOCK_KEY.fullmatch(obj.key):
            continue  # not a lock: the S3 write-once probe (repository/s3/probe.py)
        try:
            d: dict[str, Any] = json.loads(backend.get(obj.key))
            info = LockInfo(
                obj.key,
                d["kind"],
                d["host_id"],
                d.get("hostname", "?"),
                int(d["pid"]),
                d.get("pid_start"),
                d.get("purpose", ""),
                max(0.0, now - obj.mtime),
            )
            if info.kind not in ("shared", "exclusive"):
                raise ValueError(f"kind {info.kind!r}")
        except ObjectNotFoundError:
            continue  # released meanwhile
        except (ValueError, KeyError, TypeError, BackendError) as exc:
            log.warning("repository.lock_unreadable", object=obj.key, reason=str(exc))
            continue
        gone = info.host_id == my_host and _pid_start(info.pid) != info.pid_start
        if info.age > stale_after or gone:  # unrefreshed, or its process here is gone
            if stale is not None:
                stale.append(info.key)
            continue
        out.append(info)
    return out


def remove_stale(backend: Backend, my_host: str, stale_after: float) -> int:
    """Delete stale lock objects (a crashed holder's), so they do not pile up; best effort.
    Lock objects never carry an object-lock retention (repository/s3/options.py), so this
    works on an immutable bucket too. Returns how many went."""
    stale: list[str] = []
    try:
        list_locks(backend, my_host, stale_after, stale)
        for key in stale:
            backend.delete(key)
            log.info("repository.stale_lock_removed", object=key)
    except RepositoryError as exc:  # a backend failure, or a read-only (as-of) view
        log.warning("repository.stale_lock_not_removed", reason=str(exc))
    return len(stale)


class RepoLock:
    """One held lock object; refreshed by a background thread until released."""

    def __init__(
        self,
        backend: Backend,
        my_host: str,
        exclusive: bool,
        purpose: str,
        *,
        stale_after: float = STALE_AFTER,
        refresh_every: float = REFRESH_EVERY,
    ) -> None:
        self.backend = backend
        self.my_host = my_host
        self.kind = "exclusive" if exclusive else "shared"
        self.purpose = purpose
        self.stale_after = stale_after
        self.refresh_every = refresh_every
        self.key: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _conflicts(self) -> list[LockInfo]:
        live = list_locks(self.backend, self.my_host, self.stale_after)
        others = [i for i in live if i.key != self.key]
        return others if self.kind == "exclusive" else [i for i in others if i.kind == "exclusive"]

    def _write(self) -> str:
        key = f"locks/{secrets.token_hex(16)}"
        body = {
            "kind": self.kind,
            "host_id": self.my_host,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()),
            "purpose": self.purpose,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.backend.put_if_absent(key, json.dumps(body, sort_keys=True).encode())
        return key

    def acquire(self, timeout: float | None = None) -> RepoLock:
        """Wait up to `timeout` seconds (None = forever) for conflicting locks to go;
        RepositoryBusyError naming the holder when they do not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        remove_stale(self.backend, self.my_host, self.stale_after)
        while True:
            conflicts = self._conflicts()
            if not conflicts:
                self.key = self._write()
                conflicts = self._conflicts()
                if not conflicts:
                    break
                self.backend.delete(self.key)  # someone got there at the same moment
                self.key = None
            if deadline is not None and time.monotonic() >= deadline:
                raise RepositoryBusyError(
                    f"could not take the {self.kind} repository lock within {timeout}s: "
                    f"{conflicts[0].describe()} (stale after {self.stale_after:.0f}s "
                    "without refresh)"
                )
            time.sleep(random.uniform(0.05, 0.25))
        self._thread = threading.Thread(target=self._refresher, name="repo-lock", daemon=True)
        self._thread.start()
        return self

    def _refresher(self) -> None:
        while not self._stop.wait(self.refresh_every):
            with self._mutex:
                if self.key is None:
                    return
                try:
                    new = self._write()
                    old, self.key = self.key, new
                    self.backend.delete(old)
                except BackendError as exc:
                    log.warning("repository.lock_refresh_failed", object=self.key, reason=str(exc))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._mutex:
            if self.key is not None:
                try:
                    self.backend.delete(self.key)
                except BackendError as exc:
                    log.warning("repository.lock_release_failed", object=self.key, reason=str(exc))
                self.key = None

    def __enter__(self) -> RepoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
