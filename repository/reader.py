"""Reading restore points back: a disk's index, verified chunk fetches, an ordered
stream of a disk, and export to a sparse raw image. Readers hold the repository lock
shared so a prune sweep cannot remove chunks of a point deleted under them."""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import structlog

from repository.codec import ZERO_ID
from repository.errors import (
    BackendError,
    CorruptChunkError,
    CorruptObjectError,
    DiskNotFoundError,
    ObjectNotFoundError,
    RepositoryError,
)
from repository.index import DiskIndex
from repository.manifest import Manifest
from repository.repolock import RepoLock

if TYPE_CHECKING:
    from repository.repo import Repository

log = structlog.get_logger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """fn over items on a thread pool, results in input order, a bounded window ahead."""
    window = max(2, threads * 2)
    with ThreadPoolExecutor(threads, thread_name_prefix="repo") as pool:
        pending: deque[Future[R]] = deque()
        it = iter(items)
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


class LockedStream(Iterator[T]):
    """An iterator that releases a lock when exhausted, failed, closed or collected."""

    def __init__(self, inner: Iterator[T], lock: RepoLock | None) -> None:
        self._inner = inner
        self._lock = lock

    def __iter__(self) -> LockedStream[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._inner)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __del__(self) -> None:
        self.close()


def disk_index(repo: Repository, point_id: str, disk_key: str) -> tuple[Manifest, DiskIndex]:
    m = repo.load_manifest(point_id)
    rec = m.disk(disk_key)
    if rec is None:
        names = ", ".join(d.key for d in m.disks) or "none"
        raise DiskNotFoundError(
            f"restore point {point_id} has no disk {disk_key!r} (disks: {names})"
        )
    try:
        index = repo.load_index(rec.index_id, rec.capacity)
    except (CorruptObjectError, ObjectNotFoundError) as exc:
        raise RepositoryError(f"restore point {point_id} disk {disk_key!r}: {exc}") from exc
    # Checked before a restore writes anything: an index that does not describe the disk
    # the manifest names would write past it, or leave part of it unwritten.
    if (index.capacity, index.chunk_size) != (rec.capacity, repo.chunk_size):
        raise RepositoryError(
            f"restore point {point_id} disk {disk_key!r}: index {rec.index_id} describes "
            f"{index.capacity} bytes in {index.chunk_size}-byte chunks, but the manifest says "
            f"{rec.capacity} bytes and the repository's chunk size is {repo.chunk_size}: "
            "damaged or forged; run `vigil verify`"
        )
    return m, index


def read_lock(repo: Repository) -> RepoLock | None:
    try:
        return repo.lock(False, None, "reading restore points")
    except (OSError, RepositoryError) as exc:
        # A read-only copy (no lock object possible) cannot be pruned under us either.
        log.debug("repository.read_unlocked", path=str(repo.root), reason=str(exc))
        return None


@contextlib.contextmanager
def reading(repo: Repository) -> Iterator[None]:
    lock = read_lock(repo)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def slot_fetcher(
    repo: Repository, point_id: str, disk_key: str, index: DiskIndex
) -> Callable[[int], bytes | None]:
    """See Repository.slot_fetcher."""

    def fetch(slot: int) -> bytes | None:
        cid = index.ids[slot]
        if cid == ZERO_ID:
            return None
        try:
            data = repo.load_chunk(cid)
        except (CorruptObjectError, ObjectNotFoundError, BackendError) as exc:
            # An I/O error on the chunk's file (a bad sector) is damage of this chunk.
            raise CorruptChunkError(cid.hex(), point_id, disk_key, str(exc)) from exc
        if len(data) != index.slot_length(slot):
            raise CorruptChunkError(
                cid.hex(),
                point_id,
                disk_key,
                f"length {len(data)}, slot {slot} needs {index.slot_length(slot)}",
            )
        return data

    return fetch


def _offset_fetcher(
    repo: Repository, point_id: str, disk_key: str, index: DiskIndex
) -> Callable[[int], tuple[int, bytes | None]]:
    fetch = slot_fetcher(repo, point_id, disk_key, index)
    return lambda slot: (slot * index.chunk_size, fetch(slot))


def read_disk(
    repo: Repository, point_id: str, disk_key: str, threads: int
) -> Iterator[tuple[int, bytes | None]]:
    lock = read_lock(repo)
    try:
        _m, index = disk_index(repo, point_id, disk_key)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    fetch = _offset_fetcher(repo, point_id, disk_key, index)
    return LockedStream(ordered_map(fetch, range(len(index.ids)), threads), lock)


def export_raw(
    repo: Repository, point_id: str, disk_key: str, dest: Path, threads: int, overwrite: bool
) -> int:
    with reading(repo):
        _m, index = disk_index(repo, point_id, disk_key)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(dest, flags, 0o600)
        except FileExistsError:
            raise RepositoryError(f"export target {dest} exists") from None
        fetch = _offset_fetcher(repo, point_id, disk_key, index)

        def copy(slot: int) -> int:
            # Written by the worker itself: order does not matter for pwrite.
            offset, data = fetch(slot)
            return os.pwrite(fd, data, offset) if data is not None else 0

        try:
            os.ftruncate(fd, index.capacity)
            data_slots = [s for s, cid in enumerate(index.ids) if cid != ZERO_ID]
            written = sum(ordered_map(copy, data_slots, threads))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            dest.unlink(missing_ok=True)
            raise
        os.close(fd)
        return written
