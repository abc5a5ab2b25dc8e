"""Copying one disk of the snapshot into the repository: the areas to read (changeplan.py),
the chunk slots they touch, read through disk_io and written through the point writer in
the I/O thread pool (parallel.map_bounded), with progress."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog

from disk_io.errors import InvalidChangedAreas
from disk_io.extents import chunk_slots
from protector.backup.changeplan import ReadPlan, after_query_fault, plan_read
from protector.backup.model import BackupOptions, DiskResult, Progress
from protector.context import Context
from protector.parallel import in_thread_shielded, map_bounded
from protector.vsphere.disks import (
    changed_areas,
    open_disk_for_read,
)
from protector.vsphere.vmconfig import DiskInfo
from repository import DiskRecord, PointWriter
from repository.writer import recheck_share
from watcher.soap import VsphereFault

log = structlog.get_logger(__name__)


class ProgressTracker:
    def __init__(self, planned: int, cb: Progress | None) -> None:
        self.planned = planned
        self.done = 0
        self.cb = cb

    def add(self, n: int) -> None:
        self.done += n
        if self.cb:
            self.cb(self.done, self.planned)

    def replan(self, delta: int) -> None:
        self.planned += delta


async def _plan_areas(
    ctx: Context, vm: Any, snap: Any, disk: DiskInfo, plan: ReadPlan
) -> tuple[ReadPlan, list[tuple[int, int]] | None]:
    """The byte ranges to read, or None for "ask the transport / read everything"."""
    while plan.query_change_id is not None:
        try:
            areas = await changed_areas(
                ctx.session, vm, snap, disk.key, plan.query_change_id, disk.capacity_bytes
            )
            return plan, areas
        except VsphereFault as exc:
            if exc.fault_type not in ("FileFault", "InvalidArgument", "NotSupported"):
                raise
            plan = after_query_fault(plan, exc.fault_type)
        except InvalidChangedAreas as exc:  # never silently skip data
            plan = after_query_fault(plan, f"invalid answer: {exc}")
    return plan, None


async def backup_disk(
    ctx: Context,
    writer: PointWriter,
    vm: Any,
    snap: Any,
    disk: DiskInfo,
    opts: BackupOptions,
    tracker: ProgressTracker,
    bound: Any,
) -> tuple[DiskRecord, DiskResult]:
    key = str(disk.key)
    # The previous point's index of this disk: an incremental's base, and for a full read
    # that is not a full backup (no CBT, a reset changeId, a template) the chunks it reuses
    # without reading them back, so a VM without CBT does not download its whole stored
    # image from S3 every RPO. Only `--full` (opts.full) trusts nothing stored.
    prior = None if opts.full else await anyio.to_thread.run_sync(writer.previous_index, key)
    base = prior
    if base is not None and base.capacity != disk.capacity_bytes:
        base = None  # the disk was resized: its old index cannot seed an incremental
    prev = writer.previous.disk(key) if (writer.previous and base is not None) else None
    force_full = opts.full or opts.read_all
    plan = plan_read(prev.change_id if prev else None, disk.change_id or "", force_full=force_full)
    plan, areas = await _plan_areas(ctx, vm, snap, disk, plan)
    if not plan.incremental:
        base = None  # a full read starts from an all-zero index

    chunk = ctx.repo.chunk_size
    reader = await open_disk_for_read(ctx, vm, snap, disk, opts.transports)
    try:
        if areas is None:
            extents = await anyio.to_thread.run_sync(reader.allocated_extents)
            areas = extents if extents is not None else [(0, disk.capacity_bytes)]
            if extents is None:
                plan = ReadPlan(plan.mode, None, plan.reason + "; reading every block")
        slots = chunk_slots(areas, disk.capacity_bytes, chunk)
        dw = writer.disk_writer(
            disk.capacity_bytes,
            base,
            known_from=prior if base is None else None,
            # Not a full backup, but every day a thirtieth of what it reuses is read back
            # and healed: damage to a VM without CBT heals within a month of daily backups.
            recheck=recheck_share(datetime.now(UTC)),
        )
        planned = sum(min(chunk, disk.capacity_bytes - s * chunk) for s in slots)
        tracker.replan(planned - disk.capacity_bytes)
        read_bytes = await _copy_slots(ctx, reader, dw, slots, disk.capacity_bytes, tracker)
        index = await anyio.to_thread.run_sync(dw.finish)
        metadata = await anyio.to_thread.run_sync(reader.metadata)
        transport = reader.transport
        transport_mode = getattr(reader, "transport_mode", "")
    finally:
        await in_thread_shielded(reader.close)  # closed by whoever opened it, even on cancel
    stats = index.stats
    record = DiskRecord.for_index(
        key,
        index,
        change_id=disk.change_id or None,
        transport=transport,
        base_name=disk.base_name,
        backing=disk.backing,
        provisioning=disk.provisioning,
        metadata=metadata or {},
    )
    result = DiskResult(
        key=key,
        name=disk.base_name,
        address=disk.address,
        capacity_bytes=disk.capacity_bytes,
        read_bytes=read_bytes,
        stored_bytes=stats.new_bytes if stats else 0,
        change_id=disk.change_id or None,
        transport=transport,
        transport_mode=transport_mode,
        mode=plan.mode.value,
        reason=plan.reason,
    )
    bound.info(
        "backup.disk_done",
        disk=disk.address,
        mode=plan.mode.value,
        reason=plan.reason,
        read_bytes=read_bytes,
        transport=transport,
        transport_mode=transport_mode,
    )
    return record, result


async def _copy_slots(
    ctx: Context,
    reader: Any,
    dw: Any,
    slots: list[int],
    capacity: int,
    tracker: ProgressTracker,
) -> int:
    """Read each slot and store it, `io_threads` at a time (memory: that many chunks)."""
    chunk = ctx.repo.chunk_size
    total = 0

    def copy(slot: int) -> int:
        offset = slot * chunk
        length = min(chunk, capacity - offset)
        data = reader.read(offset, length)
        if len(data) != length:
            raise OSError(f"short read at offset {offset}: {len(data)} of {length} bytes")
        dw.put(slot, data)
        return length

    def account(_slot: int, n: int) -> None:
        nonlocal total
        total += n
        tracker.add(n)

    started = time.monotonic()
    await map_bounded(
        copy, slots, workers=ctx.io_threads, limiter=ctx.io_limiter, on_result=account
    )
    log.debug("backup.copy", slots=len(slots), seconds=round(time.monotonic() - started, 3))
    return total
