"""Backing up one VM, following the seed.

leftover snapshots removed → CBT enabled when wanted → snapshot (quiesced, else
crash-consistent when allowed) → the snapshot's ConfigInfo and disks → per disk the
areas to read (changeId rules in changeplan.py) → read through disk_io, write through
repository, both in the I/O thread pool → snapshot removed (always) → restore point
committed (the manifest is the commit point) → catalog updated.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog

from protector import phases
from protector.backup.changeplan import ReadMode
from protector.backup.consistency import point_consistency, unquiesced_refusal
from protector.backup.diskcopy import ProgressTracker, backup_disk
from protector.backup.model import BackupOptions, BackupResult, DiskResult, Progress
from protector.backup.vss import fetch_vss_manifest
from protector.context import Context
from protector.parallel import in_thread_shielded
from protector.vmlock import vm_lock
from protector.vsphere.disks import vddk_access
from protector.vsphere.snapshots import (
    Snapshot,
    backup_snapshot,
    remove_leftovers,
    snapshot_description,
)
from protector.vsphere.upkeep import consolidate_if_needed, enable_cbt_checked
from protector.vsphere.vmconfig import disk_summaries, serialize_config
from repository import DiskRecord, PointWriter, SkippedDisk, VmIdentity
from watcher.soap import VsphereFault

log = structlog.get_logger(__name__)


VM_PROPS = [
    "name",
    "snapshot",  # leftover snapshots of a crashed run, found in the same read
    "config.instanceUuid",
    "config.uuid",
    "config.changeTrackingEnabled",
    "capability.changeTrackingSupported",
    "runtime.host",
    "parent",
    "config.template",
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


@contextlib.asynccontextmanager
async def template_source() -> AsyncIterator[Snapshot]:
    """A template's own disks, read as they are: vCenter refuses to snapshot a template
    (CreateSnapshot_Task faults NotSupported; docs/vcsim.md "Templates"), and nothing can
    write to them meanwhile — a template cannot be powered on (vSphere API, MarkAsTemplate).
    The point records consistency "template"."""
    yield Snapshot(None, "template")


async def backup_vm(
    ctx: Context,
    vm: Any,
    opts: BackupOptions,
    *,
    path: str = "",
    job_id: str | None = None,
    progress: Progress | None = None,
    group: dict[str, Any] | None = None,
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> BackupResult:
    """Back up one VM (the module docstring has the steps). `group` links the points of one
    job over several VMs (a vApp): saved as config_info["backup"]["group"]. `before_commit`
    runs after the snapshot is removed and right before the manifest is written; if it
    raises, no point is committed (a cluster job checks its scheduler's epoch there)."""
    job_id = job_id or uuid.uuid4().hex[:12]
    started = datetime.now(UTC)
    ident, props = await vm_identity(ctx, vm, path)
    # One backup or restore of a VM at a time, across processes (VmBusyError otherwise).
    with vm_lock(
        ctx.repo.state.ensure(),  # per-VM locks are local state, not repository objects
        ident.vcenter_uuid,
        ident.instance_uuid,
        ident.name or vm._moId,
        f"backup job {job_id}",
    ):
        return await _backup_locked(
            ctx,
            vm,
            opts,
            ident,
            props,
            job_id,
            started,
            progress=progress,
            group=group,
            before_commit=before_commit,
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
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> BackupResult:
    bound = log.bind(vm=ident.name, moref=vm._moId, job=job_id)
    template = bool(props.get("config.template"))
    if template:
        # Nothing changes under a template and it cannot be reconfigured (no CBT to
        # enable): every backup reads its allocated areas afresh; dedup keeps it small.
        opts = dataclasses.replace(opts, read_all=True, enable_cbt=False)

    async def prepare_vm() -> tuple[int, bool, str]:
        leftovers = await remove_leftovers(ctx.session, vm, props.get("snapshot"))
        if (
            opts.enable_cbt
            and props.get("capability.changeTrackingSupported")
            and not props.get("config.changeTrackingEnabled")
        ):
            cbt_now, cbt_note = await enable_cbt_checked(ctx.session, vm, bound)
            return leftovers, cbt_now, cbt_note
        return leftovers, False, ""

    # Independent: the VM's preparation (vCenter) and the point's start (the repository's
    # lock and previous point); a writer opened when the other failed is closed.
    clock = time.monotonic()
    prepared, begun = await asyncio.gather(
        prepare_vm(), anyio.to_thread.run_sync(ctx.repo.begin_point, ident), return_exceptions=True
    )
    if isinstance(prepared, BaseException):
        if not isinstance(begun, BaseException):
            await in_thread_shielded(begun.close)
        raise prepared
    if isinstance(begun, BaseException):
        raise begun
    leftovers, cbt_now, cbt_note = prepared
    writer: PointWriter = begun
    clock = _lap("prepare", clock, bound)
    try:
        source = (
            template_source()
            if template
            else backup_snapshot(
                ctx.session,
                vm,
                quiesce=opts.quiesce,
                fallback=opts.quiesce_fallback,
                description=snapshot_description(job_id),
            )
        )
        async with source as snap, vddk_access(ctx, vm, opts.transports):
            clock = _lap("snapshot", clock, bound)
            if not template:
                snap.consistency, why = await point_consistency(
                    ctx.session, vm, snap.ref, snap.consistency
                )
                refusal = unquiesced_refusal(vm._moId, opts.quiesce_fallback, snap.consistency, why)
                if refusal:
                    raise VsphereFault("QuiesceFailed", refusal)  # the snapshot goes, no point
                snap.quiesce_error = snap.quiesce_error or why
            snap_props = await ctx.session.properties(snap.ref or vm, ["config"])
            config = snap_props["config"]
            vss, vss_error = await fetch_vss_manifest(
                ctx, vm, snap.ref, config, snap.consistency, bound
            )
            disks = disk_summaries(config)
            planned = sum(d.capacity_bytes for d in disks if not d.skip_reason)
            tracker = ProgressTracker(planned, progress)
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
                rec, res = await backup_disk(ctx, writer, vm, snap.ref, disk, opts, tracker, bound)
                records.append(rec)
                results.append(res)
            config_blob = {"format": "vim.vm.ConfigInfo/soap-xml", "xml": serialize_config(config)}
            clock = _lap("read", clock, bound)
        # The snapshot is gone here (removed by the context manager, also on error).
        clock = _lap("snapshot_removal", clock, bound)
        consolidation = (
            None
            if snap.left_behind or template
            else await consolidate_if_needed(ctx.session, vm, bound)
        )
        finished = datetime.now(UTC)
        changed = ReadMode.CHANGED.value
        kind = "incremental" if any(r.mode == changed for r in results) else "full"
        if before_commit is not None:
            # The fence: nothing below may run for a job whose scheduler was deposed.
            await before_commit()
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
        clock = _lap("commit", clock, bound)
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
    _lap("record", clock, bound)
    bound.info(
        "backup.done",
        point=point_id,
        type=kind,
        read_bytes=result.read_bytes,
        stored_bytes=result.stored_bytes,
        seconds=round((finished - started).total_seconds(), 2),
    )
    return result


def _lap(phase: str, since: float, bound: Any) -> float:
    """Logs the phase that began at `since` (a `phase` debug line); returns now."""
    now = time.monotonic()
    phases.record(phase, now - since, bound)
    return now
