"""Writing restore points: PointWriter (one point, committed by writing its manifest)
and DiskWriter (one disk's chunks and index)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from repository import codec
from repository.codec import ZERO_ID, ObjectType, chunk_key
from repository.errors import (
    BackendError,
    CorruptObjectError,
    ManifestError,
    ObjectNotFoundError,
    RepositoryBusyError,
    RepositoryError,
)
from repository.index import DiskIndex, WriteStats, slot_count
from repository.locks import locked
from repository.manifest import DiskRecord, Manifest, SkippedDisk, VmIdentity
from repository.objects import index_key, manifest_key
from repository.s3.pointlock import retain_new_point

if TYPE_CHECKING:
    from repository.repo import Repository

log = structlog.get_logger(__name__)
# Points committed up to this long before an abandoned point started count as possible
# users of its objects (clock differences between hosts).
ABANDON_SLACK = timedelta(hours=1)


def _point_time(point_id: str) -> datetime:
    """The commit time in a point id (`<vm key>-<YYYYmmddTHHMMSS>Z-<seq>`)."""
    stamp = point_id.split("-")[1]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


class PointWriter:
    """One restore point being written; holds the repository lock shared until closed."""

    def __init__(self, repo: Repository, vm: VmIdentity, lock_timeout: float | None) -> None:
        self.repo = repo
        self.vm = vm
        self._lock = repo.lock(False, lock_timeout, f"backup of {vm.name or vm.key}")
        try:
            # Read after the lock: a sweep cannot remove this base's chunks while we run.
            self.previous = repo.latest_point(vm.key)
        except BaseException:
            self._lock.release()
            raise
        self.committed: str | None = None
        self.started = datetime.now(UTC)
        self.created: set[str] = set()  # chunks and indexes this point brought into being
        self.failures: list[BackendError] = []  # storage errors its disk writers hit

    def __enter__(self) -> PointWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> int | None:
        """Release the lock; an abandoned point removes what it wrote (see abandon()).
        Returns how many objects went (None when nothing was to be removed)."""
        self._lock.release()
        if self.committed or not self.created:
            return None
        removed = self.abandon()
        for exc in self.failures:
            if exc.full:
                # The space matters now: the error says what became of this run's objects.
                note = (
                    f"; the objects this run wrote were removed ({removed})"
                    if removed
                    else "; the objects this run wrote stay until `vigil prune` (another "
                    "backup or restore is running)"
                )
                exc.args = (str(exc) + note, *exc.args[1:])
        return removed

    def abandon(self) -> int:
        """Remove the chunks and indexes this uncommitted point stored, unless a point
        committed since it started references them (a concurrent writer deduplicated
        against them). Needs the exclusive lock, so no writer is mid-run anywhere; when
        another holds a lock, the objects are left for prune's sweep. After a full disk
        this gives the space back at once instead of after the grace period."""
        try:
            with self.repo.lock(True, 0, "removing an abandoned point's objects"):
                keep = self._referenced_since(self.started - ABANDON_SLACK)
                gone = sorted(self.created - keep)
                for key in gone:
                    self.repo.backend.delete(key)
        except (RepositoryBusyError, BackendError, ManifestError, CorruptObjectError) as exc:
            log.info("repository.abandoned_left_for_prune", objects=len(self.created), why=str(exc))
            return 0
        log.info("repository.abandoned_removed", objects=len(gone), kept=len(self.created & keep))
        self.created.clear()
        return len(gone)

    def _referenced_since(self, since: datetime) -> set[str]:
        refs: set[str] = set()
        for pid in self.repo.list_points():
            if _point_time(pid) < since:
                continue
            m = self.repo.load_manifest(pid)  # unreadable: raises, nothing is removed
            for d in m.disks:
                refs.add(index_key(d.index_id))
                index = self.repo.load_index(d.index_id, d.capacity)
                refs.update(chunk_key(c) for c in index.referenced())
        return refs

    def previous_index(self, disk_key: str) -> DiskIndex | None:
        """The same disk's index in the VM's latest point, if it can seed an incremental."""
        if self.previous is None or self.previous.chunk_size != self.repo.chunk_size:
            return None
        rec = self.previous.disk(disk_key)
        if rec is None:
            return None
        try:
            return self.repo.load_index(rec.index_id, rec.capacity)
        except (CorruptObjectError, ObjectNotFoundError) as exc:
            # A damaged base must not stop backups: read this disk in full instead.
            log.warning(
                "repository.base_index_unreadable",
                object=index_key(rec.index_id),
                point=self.previous.point_id,
                disk=disk_key,
                reason=str(exc),
                fix="taking a full backup of this disk; run `vigil verify`",
            )
            return None

    def disk_writer(
        self,
        capacity: int,
        base: DiskIndex | None = None,
        *,
        verify_existing: bool | None = None,
        known_from: DiskIndex | None = None,
        recheck: tuple[int, int] | None = None,
    ) -> DiskWriter:
        """`base`: the index an incremental starts from (slots not put keep its chunks).
        `known_from`: for a full read that is not a full backup (a disk without CBT, a
        template), the previous point's index: its chunks are reused without being read back,
        as an incremental's are; the new index starts all-zero. `verify_existing` (default:
        True with neither, i.e. a full backup) decodes each chunk that is already stored and
        replaces it if it is damaged. `recheck` (part, of): with `known_from`, the share of
        reused chunks checked as a full backup checks them (recheck_share)."""
        w = DiskWriter(
            self.repo, capacity, base, verify_existing, self.created, known_from, recheck
        )
        w.failures = self.failures
        return w

    def commit(
        self,
        *,
        disks: Sequence[DiskRecord],
        started_at: datetime,
        finished_at: datetime | None = None,
        skipped_disks: Sequence[SkippedDisk] = (),
        policy: str | None = None,
        job_id: str | None = None,
        config_info: dict[str, Any] | None = None,
        vss_manifest: bytes | None = None,
    ) -> str:
        """Write the manifest (the commit point) and return the new point id."""
        if self.committed:
            raise RepositoryError(f"point {self.committed} already committed")
        keys = [d.key for d in disks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate disk keys in {keys}")
        for d in disks:
            if not self.repo.backend.exists(index_key(d.index_id)):
                raise RepositoryError(f"disk {d.key!r}: index {d.index_id} is not stored")
        # Object lock (S3): every object the point references stays locked past its commit.
        retain_new_point(self.repo, self.previous, disks)
        with locked(self.repo.vm_lock_path(self.vm.key), exclusive=True):
            head = self._head()
            now = datetime.now(UTC)
            seq = head[0] + 1
            point_id = f"{self.vm.key}-{now:%Y%m%dT%H%M%S}Z-{seq:06d}"
            m = Manifest(
                point_id=point_id,
                vm=self.vm,
                seq=seq,
                prev_point_id=head[1],
                prev_hash=head[2],
                chunk_size=self.repo.chunk_size,
                started_at=started_at,
                finished_at=finished_at or now,
                committed_at=now,
                disks=tuple(disks),
                skipped_disks=tuple(skipped_disks),
                policy=policy,
                job_id=job_id,
                config_info=config_info,
                vss_manifest=vss_manifest,
            )
            self.repo.objects.put_sealed(
                manifest_key(point_id), point_id, "manifest", ObjectType.MANIFEST, m.body()
            )
        self.committed = point_id
        # The high-water mark, where deleting the manifest cannot lower it: a head object
        # in the repository (after the manifest: a crash between them leaves no false gap)
        # and this machine's state. Failing either leaves the point committed.
        try:
            self.repo.points.record_head(m)
            self.repo.state.raise_head(self.vm.key, seq, point_id, m.hash)
        except (OSError, RepositoryError) as exc:
            log.warning("repository.head_not_recorded", point=point_id, reason=str(exc))
        log.info("repository.point_committed", point=point_id, disks=len(disks))
        return point_id

    def _head(self) -> tuple[int, str | None, str | None]:
        """(seq, point id, hash) of the VM's newest point, live or tombstoned. The seq
        comes from the object names, so an unreadable newest point still counts; its hash
        is then unknown (None) and verify reports the break at the damaged point."""
        best: tuple[int, str | None, str | None] = (0, None, None)
        for m in self.repo.manifests(self.vm.key):
            if m.seq > best[0]:
                best = (m.seq, m.point_id, m.hash)
        for t in self.repo.tombstones(self.vm.key):
            if t.seq > best[0]:
                best = (t.seq, t.point_id, t.manifest_hash)
        high, pid = self.repo.high_water(self.vm.key)
        if high > best[0]:
            best = (high, pid, None)
        # This machine's record: a newest point deleted with all its objects still counts.
        local = self.repo.state.head(self.vm.key)
        return local if local[0] > best[0] else best


# A full read without CBT re-checks 1/RECHECK_ROTATION of the chunks it reuses, a different
# share each day (DiskWriter `recheck`): daily backups check every reused chunk within a month.
RECHECK_ROTATION = 30


def recheck_share(when: datetime, rotation: int = RECHECK_ROTATION) -> tuple[int, int]:
    """The share of reused chunks a full read re-checks on `when`'s day: (part, of)."""
    return (when.toordinal() % rotation, rotation)


def _in_share(chunk_id: bytes, part: int, of: int) -> bool:
    return int.from_bytes(chunk_id[:4], "big") % of == part


class DiskWriter:
    """Fills one disk's index. put() is thread-safe; call it for changed slots only."""

    def __init__(
        self,
        repo: Repository,
        capacity: int,
        base: DiskIndex | None,
        verify_existing: bool | None = None,
        created: set[str] | None = None,
        known_from: DiskIndex | None = None,
        recheck: tuple[int, int] | None = None,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"disk capacity {capacity} must be positive")
        self.repo = repo
        self._created = created  # shared with the point writer (set.add is thread-safe)
        self.failures: list[BackendError] = []
        self.capacity = capacity
        self.chunk_size = repo.chunk_size
        n = slot_count(capacity, self.chunk_size)
        if base is not None and (base.capacity != capacity or base.chunk_size != self.chunk_size):
            raise ValueError(
                f"base index ({base.capacity} bytes, chunk {base.chunk_size}) does not match "
                f"the disk ({capacity} bytes, chunk {self.chunk_size}): take a full backup"
            )
        self._ids: list[bytes] = list(base.ids) if base else [ZERO_ID] * n
        # A full backup trusts nothing already stored: it re-checks every chunk it reuses,
        # so a damaged chunk gets healed instead of being referenced again forever.
        # A full read that is not a full backup (no CBT to ask) dedups against the previous
        # point's chunks as an incremental does (`known_from`), without reading them back.
        trusted = base or known_from
        self._verify = trusted is None if verify_existing is None else verify_existing
        self._known: set[bytes] = set()
        if not self._verify:
            for idx in (base, known_from):
                if idx is not None:
                    self._known |= idx.referenced()
        # A rolling check of what `known_from` lets a full read reuse: the chunks whose id
        # falls in share `part` of `of` are read back (and healed) as a full backup's are, so
        # over `of` backups every reused chunk is checked once, at 1/`of` of the cost.
        self._recheck = recheck if known_from is not None and not self._verify else None
        self._done: set[bytes] = set()  # chunks this writer has put (checked or not)
        self._lock = threading.Lock()
        self._zeros = bytes(self.chunk_size)
        self._stats = {f.name: 0 for f in fields(WriteStats)}
        self._stats["slots"] = n
        self._finished = False
        self._failed: str | None = None

    def _count(self, **inc: int) -> None:
        with self._lock:
            for k, v in inc.items():
                self._stats[k] += v

    def put(self, slot: int, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise RepositoryError("disk writer already finished")
        if not 0 <= slot < len(self._ids):
            raise IndexError(f"slot {slot} out of range (disk has {len(self._ids)} slots)")
        want = min(self.chunk_size, self.capacity - slot * self.chunk_size)
        if len(data) != want:
            raise ValueError(f"slot {slot}: {len(data)} bytes, expected {want}")
        zeros = self._zeros if want == self.chunk_size else bytes(want)
        if data == zeros:
            self._ids[slot] = ZERO_ID
            self._count(changed_slots=1, zero_slots=1)
            return
        cid = codec.object_id(self.repo.keys, data)
        verify = self._verify
        with self._lock:
            known = cid in self._known
            if known and self._recheck and cid not in self._done and _in_share(cid, *self._recheck):
                known, verify = False, True
            self._done.add(cid)
        try:
            written = 0 if known else self.repo.put_chunk(cid, data, verify, self._created)
        except BaseException as exc:
            # The slot now holds neither old nor new data: this disk cannot be finished.
            self._failed = f"slot {slot}: {exc}"
            if isinstance(exc, BackendError):
                self.failures.append(exc)
            raise
        self._ids[slot] = cid
        with self._lock:
            self._known.add(cid)
        if written:
            self._count(changed_slots=1, new_chunks=1, new_bytes=written)
        else:
            self._count(changed_slots=1, dedup_chunks=1)

    def finish(self) -> DiskIndex:
        """Store the index; its id goes into the manifest via DiskRecord.for_index."""
        if self._failed:
            raise RepositoryError(f"disk writer had a failed put ({self._failed}): no index")
        self._finished = True
        index = DiskIndex(
            self.chunk_size, self.capacity, tuple(self._ids), stats=WriteStats(**self._stats)
        )
        return self.repo.store_index(index, self._created)
