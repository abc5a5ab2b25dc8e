"""Backing up one VM, following the seed.

leftover snapshots removed → CBT enabled when wanted → snapshot (quiesced, else
crash-consistent when allowed) → the snapshot's ConfigInfo and disks → per disk the
areas to read (changeId rules in changeplan.py) → read through disk_io, write through
repository, both in the I/O thread pool → snapshot removed (always) → restore point
committed (the manifest is the commit point) → catalog updated.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import structlog
from pyVmomi import vim

from protector import phases
from protector.backup.changeplan import ReadMode
from protector.backup.diskcopy import ProgressTracker, backup_disk
from protector.backup.model import BackupOptions, BackupResult, DiskResult, Progress
from protector.context import Context
from protector.parallel import in_thread_shielded
from protector.vmlock import vm_lock
from protector.vsphere.disks import (
    VSS_MANIFEST,
    fetch_datastore_file,
    snapshot_dir,
)
from protector.vsphere.dspath import join_datastore_path
from protector.vsphere.snapshots import backup_snapshot, remove_leftovers, snapshot_description
from protector.vsphere.vmconfig import disk_summaries, serialize_config
from repository import DiskRecord, PointWriter, SkippedDisk, VmIdentity
from watcher.soap import VsphereError, VsphereFault
from watcher.tasks import wait_for_task

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


async def enable_cbt(ctx: Context, vm: Any) -> None:
    spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
    task = await ctx.session.call(vm, "ReconfigVM_Task", spec=spec)
    await wait_for_task(ctx.session, task, description=f"enable CBT on {vm._moId}")


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

    async def prepare_vm() -> tuple[int, bool]:
        leftovers = await remove_leftovers(ctx.session, vm, props.get("snapshot"))
        if (
            opts.enable_cbt
            and props.get("capability.changeTrackingSupported")
            and not props.get("config.changeTrackingEnabled")
        ):
            bound.info("backup.enable_cbt")
            await enable_cbt(ctx, vm)
            return leftovers, True
        return leftovers, False

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
    leftovers, cbt_now = prepared
    writer: PointWriter = begun
    clock = _lap("prepare", clock, bound)
    try:
        async with backup_snapshot(
            ctx.session,
            vm,
            quiesce=opts.quiesce,
            fallback=opts.quiesce_fallback,
            description=snapshot_description(job_id),
        ) as snap:
            clock = _lap("snapshot", clock, bound)
            snap_props = await ctx.session.properties(snap.ref, ["config"])
            config = snap_props["config"]
            vss, vss_error = await _vss_manifest(ctx, vm, config, snap.consistency, bound)
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


async def _vss_manifest(
    ctx: Context, vm: Any, config: Any, consistency: str, bound: Any
) -> tuple[bytes | None, str]:
    """The `vss-manifest.zip` VMware Tools leave in the snapshot directory after quiescing a
    Windows guest with VSS (the seed: save it over HTTP), and why it could not be read.

    Only a quiesced snapshot makes one; other guests simply have none (404). Failing to read
    it does not fail the backup (the disks are still good): the error is recorded instead."""
    if consistency != "quiesced":
        return None, ""
    try:
        path = join_datastore_path(snapshot_dir(config.files), VSS_MANIFEST)
        data = await fetch_datastore_file(ctx, vm, path)
    except (VsphereError, ValueError, aiohttp.ClientError, OSError) as exc:
        bound.warning("backup.vss_manifest_unreadable", error=str(exc))
        return None, str(exc)
    if data is not None:
        bound.info("backup.vss_manifest", path=path, bytes=len(data))
    return data, ""
