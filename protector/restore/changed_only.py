"""The seed's incremental restore: which chunks of one existing disk need writing, or why
all of them do (CBT off, another VM's point, a reset tracking, a failed query)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from disk_io.errors import InvalidChangedAreas
from disk_io.extents import chunk_slots
from protector.backup.changeplan import tracking_uuid
from protector.context import Context
from protector.restore.result import RestoreResult
from protector.vsphere.disks import changed_areas
from protector.vsphere.vmconfig import DiskInfo
from repository import DiskRecord, Manifest
from watcher.soap import VsphereFault

log = structlog.get_logger(__name__)


# Transports that write a chunk where it belongs; datastore HTTP can only PUT a whole file.
IN_PLACE_MODES = ("vddk", "file")


@dataclass(frozen=True)
class WritePlan:
    """What to write onto one existing disk: every chunk (slots None), or only these."""

    slots: list[int] | None
    reason: str


def _same_vm(manifest: Manifest, vcenter_uuid: str, config: Any) -> str:
    """ "" when the point was taken from this VM, else why not."""
    here = (config.instanceUuid or config.uuid or "").lower()
    if manifest.vm.instance_uuid.lower() != here:
        return (
            f"the restore point was taken from another VM (instanceUuid "
            f"{manifest.vm.instance_uuid}, this VM has {here or 'none'})"
        )
    if manifest.vm.vcenter_uuid and vcenter_uuid and manifest.vm.vcenter_uuid != vcenter_uuid:
        return f"the restore point was taken on another vCenter ({manifest.vm.vcenter_uuid})"
    return ""


def _changed_only_obstacle(
    manifest: Manifest, vcenter_uuid: str, config: Any, rec: DiskRecord, disk: DiskInfo
) -> str:
    """Why CBT cannot tell what changed on `disk` since the point ("" when it can)."""
    if not config.changeTrackingEnabled:
        return "changed block tracking is off on the target VM"
    if why := _same_vm(manifest, vcenter_uuid, config):
        return why
    if not rec.change_id:
        return f"the restore point has no changeId for disk {rec.key}"
    if not disk.change_id:
        where = disk.address or disk.key
        return f"disk {where} has no changeId (no snapshot since CBT was enabled)"
    if tracking_uuid(rec.change_id) != tracking_uuid(disk.change_id):
        return (
            "change tracking was reset since the point "
            f"(changeId {rec.change_id} → {disk.change_id})"
        )
    return ""


async def plan_changed_only(
    ctx: Context,
    manifest: Manifest,
    vm: Any,
    config: Any,
    rec: DiskRecord,
    disk: DiskInfo,
    chunk_size: int,
) -> WritePlan:
    """The seed's incremental restore for one disk: the chunk slots touched by the areas CBT
    reports changed since the point's changeId, asked of the live (powered-off) VM without a
    snapshot. Any doubt means a full write, and the reason says why: CBT off, a point of
    another VM, no changeId on either side, tracking reset since (another UUID part), or the
    query failing (e.g. a FileFault for a changeId the disk has forgotten)."""
    why = _changed_only_obstacle(manifest, ctx.session.vcenter_uuid, config, rec, disk)
    if why:
        return WritePlan(None, f"full write: {why}")
    try:
        areas = await changed_areas(
            ctx.session, vm, None, disk.key, rec.change_id, disk.capacity_bytes
        )
    except VsphereFault as exc:
        if exc.fault_type not in ("FileFault", "InvalidArgument", "NotSupported"):
            raise
        return WritePlan(None, f"full write: QueryChangedDiskAreas failed ({exc})")
    except InvalidChangedAreas as exc:
        return WritePlan(None, f"full write: QueryChangedDiskAreas gave an invalid answer ({exc})")
    slots = chunk_slots(areas, disk.capacity_bytes, chunk_size)
    return WritePlan(slots, f"only the chunks changed since {rec.change_id}")


def note_full_write(result: RestoreResult, key: str, plan: WritePlan) -> None:
    result.notes.append(f"disk {key}: {plan.reason}")
    log.warning("restore.changed_only_unavailable", disk=key, reason=plan.reason)


def no_in_place_write(ctx: Context, why: str) -> WritePlan:
    modes = ", ".join(ctx.cfg.transport.modes)
    return WritePlan(
        None,
        f"full write: writing only some chunks needs a transport that writes in place "
        f"(vddk or file; the http transport rewrites the whole disk) and of transport.modes "
        f"({modes}) {why}",
    )
