"""Backing up one VM, following the seed.

leftover snapshots removed → CBT enabled when wanted → snapshot (quiesced, else
crash-consistent when allowed) → the snapshot's ConfigInfo and disks → per disk the
areas to read (changeId rules in changeplan.py) → read through disk_io, write through
repository, both in the I/O thread pool → snapshot removed (always) → restore point
committed (the manifest is the commit point) → catalog updated.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog

from disk_io.errors import InvalidChangedAreas
from disk_io.extents import chunk_slots
from repository import DiskRecord, PointWriter, SkippedDisk, VmIdentity
from watcher.soap import VsphereFault

from .changeplan import ReadMode, ReadPlan, after_query_fault, plan_read
from .consistency import point_consistency
from .context import Context
from .diskaccess import changed_areas, open_disk_for_read, vddk_access
from .parallel import in_thread_shielded, map_bounded
from .snapshots import backup_snapshot, remove_leftovers, snapshot_description
from .upkeep import consolidate_if_needed, enable_cbt_checked
from .vmconfig import DiskInfo, disk_summaries, serialize_config
from .vmlock import vm_lock
from .vss import fetch_vss_manifest

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes planned)


@dataclass(frozen=True)
class BackupOptions:
    quiesce: bool = True
    quiesce_fallback: bool = True
    enable_cbt: bool = True
    exclude_disks: tuple[str, ...] = ()  # "scsi0:1"
    transports: tuple[str, ...] | None = None
    full: bool = False
    policy: str | None = None


@dataclass
class DiskResult:
    key: str
    name: str
    address: str
    capacity_bytes: int
    read_bytes: int = 0
    stored_bytes: int = 0
    change_id: str | None = None
    transport: str = ""
    transport_mode: str = ""  # inside the transport: VDDK's "nbdssl", "hotadd"...
    mode: str = ""
    reason: str = ""
    skipped_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BackupResult:
    point_id: str
    vm: VmIdentity
    type: str  # "full" | "incremental"
    consistency: str
    started_at: datetime
    finished_at: datetime
    disks: list[DiskResult] = field(default_factory=list)
    leftovers_removed: int = 0
    cbt_enabled_now: bool = False
    snapshot_left: str = ""  # why our snapshot is still on the VM ("" when removed)

    @property
    def read_bytes(self) -> int:
        return sum(d.read_bytes for d in self.disks)

    @property
    def stored_bytes(self) -> int:
        return sum(d.stored_bytes for d in self.disks)


VM_PROPS = [
    "name",
    "config.instanceUuid",
    "config.uuid",
    "config.changeTrackingEnabled",
    "capability.changeTrackingSupported",
    "runtime.host",
    "parent",
]


async def vm_identity(ctx: Context, vm: Any, path: str = "") -> tuple[VmIdentity, dict[str, Any]]:
    props = await ctx.session.properties(vm, VM_PROPS)
    inst = props.get("config.instanceUuid") or props.get("config.uuid") or ""
    if not inst:
        raise VsphereFault("InvalidState", f"VM {vm._moId} has no instanceUuid or uuid")
    ident = VmIdentity(
        vcenter_uuid=ctx.session.vcenter_uuid,
        instance_uuid=inst,
        name=props.get("name", ""),
        path=path,
        moref=vm._moId,
    )
    return ident, props


async def backup_vm(
    ctx: Context,
    vm: Any,
    opts: BackupOptions,
    *,
    path: str = "",
    job_id: str | None = None,
    progress: Progress | None = None,
    group: dict[str, Any] | None = None,
) -> BackupResult:
    """Back up one VM (the module docstring has the steps). `group` links the points of one
    job over several VMs (a vApp): saved as config_info["backup"]["group"]."""
    job_id = job_id or uuid.uuid4().hex[:12]
    started = datetime.now(UTC)
    ident, props = await vm_identity(ctx, vm, path)
    # One backup or restore of a VM at a time, across processes (VmBusyError otherwise).
    with vm_lock(
        ctx.repo.root,
        ident.vcenter_uuid,
        ident.instance_uuid,
        ident.name or vm._moId,
        f"backup job {job_id}",
    ):
        return await _backup_locked(
            ctx, vm, opts, ident, props, job_id, started, progress=progress, group=group
        )


async def _backup_locked(
    ctx: Context,
    vm: Any,
    opts: BackupOptions,
    ident: VmIdentity,
    props: dict[str, Any],
    job_id: str,
    started: datetime,
    *,
    progress: Progress | None,
    group: dict[str, Any] | None,
) -> BackupResult:
    bound = log.bind(vm=ident.name, moref=vm._moId, job=job_id)
    leftovers = await remove_leftovers(ctx.session, vm)
    cbt_now, cbt_note = False, ""
    if (
        opts.enable_cbt
        and props.get("capability.changeTrackingSupported")
        and not props.get("config.changeTrackingEnabled")
    ):
        cbt_now, cbt_note = await enable_cbt_checked(ctx.session, vm, bound)

    writer: PointWriter = await anyio.to_thread.run_sync(ctx.repo.begin_point, ident)
    try:
        async with (
            backup_snapshot(
                ctx.session,
                vm,
                quiesce=opts.quiesce,
                fallback=opts.quiesce_fallback,
                description=snapshot_description(job_id),
            ) as snap,
            vddk_access(ctx, vm, opts.transports),
        ):
            snap.consistency, why = await point_consistency(
                ctx.session, vm, snap.ref, snap.consistency
            )
            snap.quiesce_error = snap.quiesce_error or why
            snap_props = await ctx.session.properties(snap.ref, ["config"])
            config = snap_props["config"]
            vss, vss_error = await fetch_vss_manifest(
                ctx, vm, snap.ref, config, snap.consistency, bound
            )
            disks = disk_summaries(config)
            planned = sum(d.capacity_bytes for d in disks if not d.skip_reason)
            tracker = _Progress(planned, progress)
            results: list[DiskResult] = []
            records: list[DiskRecord] = []
            skipped: list[SkippedDisk] = []
            for disk in disks:
                reason = disk.skip_reason
                if reason is None and disk.address in opts.exclude_disks:
                    reason = f"excluded by policy (backup.exclude_disks has {disk.address})"
                if reason:
                    bound.warning("backup.disk_skipped", disk=disk.address, reason=reason)
                    skipped.append(SkippedDisk(str(disk.key), reason))
                    results.append(
                        DiskResult(
                            str(disk.key),
                            disk.file_name,
                            disk.address,
                            disk.capacity_bytes,
                            skipped_reason=reason,
                        )
                    )
                    continue
                rec, res = await _backup_disk(ctx, writer, vm, snap.ref, disk, opts, tracker, bound)
                records.append(rec)
                results.append(res)
            config_blob = {"format": "vim.vm.ConfigInfo/soap-xml", "xml": serialize_config(config)}
        # The snapshot is gone here (removed by the context manager, also on error).
        consolidation = (
            None if snap.left_behind else await consolidate_if_needed(ctx.session, vm, bound)
        )
        finished = datetime.now(UTC)
        changed = ReadMode.CHANGED.value
        kind = "incremental" if any(r.mode == changed for r in results) else "full"
        point_id = await anyio.to_thread.run_sync(
            lambda: writer.commit(
                disks=records,
                started_at=started,
                finished_at=finished,
                skipped_disks=skipped,
                policy=opts.policy,
                job_id=job_id,
                config_info={
                    **config_blob,
                    "backup": {
                        "type": kind,
                        "consistency": snap.consistency,
                        "quiesce_error": snap.quiesce_error,
                        "vss_manifest": vss is not None,
                        **({"vss_manifest_error": vss_error} if vss_error else {}),
                        "leftover_snapshots_removed": leftovers,
                        "cbt_enabled_now": cbt_now,
                        **({"cbt_not_enabled": cbt_note} if cbt_note else {}),
                        **({"consolidation": consolidation} if consolidation else {}),
                        "disks": [r.as_dict() for r in results],
                        **({"group": group} if group else {}),
                    },
                },
                vss_manifest=vss,
            )
        )
    finally:
        await in_thread_shielded(writer.close)
    result = BackupResult(
        point_id=point_id,
        vm=ident,
        type=kind,
        consistency=snap.consistency,
        started_at=started,
        finished_at=finished,
        disks=results,
        leftovers_removed=leftovers,
        cbt_enabled_now=cbt_now,
        snapshot_left=snap.left_behind,
    )
    await ctx.record_point(point_id)
    bound.info(
        "backup.done",
        point=point_id,
        type=kind,
        read_bytes=result.read_bytes,
        stored_bytes=result.stored_bytes,
        seconds=round((finished - started).total_seconds(), 2),
    )
    return result


@dataclass
class VappBackupResult:
    group_id: str
    vapp_name: str
    vapp_moref: str
    results: list[BackupResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (VM MoRef, error)

    @property
    def ok(self) -> bool:
        return not self.failures


async def backup_vapp(
    ctx: Context,
    vapp: Any,
    opts: BackupOptions,
    *,
    vm_paths: dict[str, str] | None = None,
    job_id: str | None = None,
    progress: Progress | None = None,
) -> VappBackupResult:
    """Back up every VM of a vApp as one job. Each VM gets its own restore point (each
    restores on its own); the points carry the same group record (id, vApp, members) in
    config_info["backup"]["group"], which links them. One VM failing does not stop the
    others; the failures are returned (cancellation stops the whole job)."""
    job_id = job_id or uuid.uuid4().hex[:12]
    props = await ctx.session.properties(vapp, ["name", "vm"])
    vms = [ctx.session.client.bind(v) for v in props.get("vm") or []]
    group = {
        "id": uuid.uuid4().hex,
        "kind": "vapp",
        "name": props.get("name", ""),
        "moref": vapp._moId,
        "members": [v._moId for v in vms],
    }
    out = VappBackupResult(group["id"], group["name"], vapp._moId)
    log.info("backup.vapp_start", vapp=group["name"], vms=len(vms), group=group["id"])
    for vm in vms:
        try:
            res = await backup_vm(
                ctx,
                vm,
                opts,
                path=(vm_paths or {}).get(vm._moId, ""),
                job_id=job_id,
                progress=progress,
                group=group,
            )
        except Exception as exc:  # the other VMs of the vApp still get their points
            log.error("backup.vapp_member_failed", vapp=group["name"], vm=vm._moId, error=str(exc))
            out.failures.append((vm._moId, str(exc)))
            continue
        out.results.append(res)
    return out


class _Progress:
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


async def _backup_disk(
    ctx: Context,
    writer: PointWriter,
    vm: Any,
    snap: Any,
    disk: DiskInfo,
    opts: BackupOptions,
    tracker: _Progress,
    bound: Any,
) -> tuple[DiskRecord, DiskResult]:
    key = str(disk.key)
    base = None if opts.full else await anyio.to_thread.run_sync(writer.previous_index, key)
    if base is not None and base.capacity != disk.capacity_bytes:
        base = None  # the disk was resized: its old index cannot seed an incremental
    prev = writer.previous.disk(key) if (writer.previous and base is not None) else None
    plan = plan_read(prev.change_id if prev else None, disk.change_id or "", force_full=opts.full)
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
        dw = writer.disk_writer(disk.capacity_bytes, base)
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
    tracker: _Progress,
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
