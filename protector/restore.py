"""Restoring a restore point: onto the existing VM, or as a new VM.

To the existing VM (the seed): it must be powered off; its disks are written under
their *current* names (the VM may be running on a snapshot chain), matched to the
saved disks by device key, then by controller address; capacities must match.
With `changed_only` (the seed's incremental restore) a disk whose changes since the
point CBT can name gets only the chunks those changes touch (plan_changed_only).

As a new VM: a ConfigSpec rebuilt from the saved ConfigInfo (configspec.py), placed
where the admin says (or where the VM was), CreateVM_Task, disk metadata written
before data, only non-zero chunks written (the new disks read as zeros), optional
power on. `verify` re-reads every written chunk and compares its hash.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from pyVmomi import vim

from disk_io.errors import DiskOpenError, InvalidChangedAreas
from disk_io.extents import chunk_slots
from repository import DiskRecord, Manifest
from repository.codec import ZERO_ID, object_id
from watcher.soap import VsphereError, VsphereFault
from watcher.tasks import wait_for_task

from .changeplan import tracking_uuid
from .configspec import build_config_spec, video_card_edit_spec
from .context import Context
from .diskaccess import changed_areas, open_disk_for_write, with_vddk_access
from .errors import RestoreFailedError, UserError
from .parallel import in_thread_shielded, map_bounded, map_ordered, shielded, to_the_end
from .placement import default_folder_and_pool, find_datastore
from .vmconfig import DiskInfo, deserialize_config, disk_summaries
from .vmlock import vm_lock

log = structlog.get_logger(__name__)

# Transports that write a chunk where it belongs; datastore HTTP can only PUT a whole file.
IN_PLACE_MODES = ("vddk", "file")

Progress = Callable[[int, int], None]


@dataclass
class RestoredDisk:
    key: str
    target: str
    capacity_bytes: int
    written_bytes: int = 0
    skipped_zero_bytes: int = 0
    transport: str = ""
    verified: bool | None = None
    mode: str = "full"  # "full" | "changed" (only the chunks changed since the point)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RestoreResult:
    point_id: str
    vm_moref: str
    vm_name: str
    mode: str  # "existing" | "new"
    disks: list[RestoredDisk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    powered_on: bool = False

    @property
    def written_bytes(self) -> int:
        return sum(d.written_bytes for d in self.disks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "point_id": self.point_id,
            "vm": {"moref": self.vm_moref, "name": self.vm_name},
            "mode": self.mode,
            "written_bytes": self.written_bytes,
            "disks": [d.as_dict() for d in self.disks],
            "notes": self.notes,
            "powered_on": self.powered_on,
        }


async def load_point(ctx: Context, point_id: str) -> Manifest:
    from repository.errors import PointNotFoundError

    try:
        return await anyio.to_thread.run_sync(ctx.repo.load_manifest, point_id)
    except PointNotFoundError:
        raise UserError(
            f"no restore point {point_id!r}; `vigil list` shows the points", 2
        ) from None


def saved_config(manifest: Manifest) -> Any:
    info = manifest.config_info or {}
    if "xml" not in info:
        raise UserError(f"restore point {manifest.point_id} holds no VM configuration", 1)
    return deserialize_config(info["xml"], source=f"restore point {manifest.point_id}")


def match_disks(
    records: Sequence[DiskRecord], saved: list[DiskInfo], current: list[DiskInfo]
) -> dict[str, DiskInfo]:
    """Saved disk key → the target VM's disk: same device key, else same controller address.
    The mapping must be one-to-one: two saved disks written onto one target disk would leave
    it holding whichever came last."""
    by_key = {str(d.key): d for d in current}
    by_addr = {d.address: d for d in current if d.address}
    saved_addr = {str(d.key): d.address for d in saved}
    out: dict[str, DiskInfo] = {}
    for rec in records:
        target = by_key.get(rec.key) or by_addr.get(saved_addr.get(rec.key))
        if target is None:
            raise UserError(
                f"the target VM has no disk matching saved disk {rec.key} "
                f"({rec.base_name or saved_addr.get(rec.key)}); restore as a new VM instead",
                1,
            )
        if target.capacity_bytes != rec.capacity:
            raise UserError(
                f"disk {target.address or target.key} of the target VM has "
                f"{target.capacity_bytes} bytes, the restore point's disk {rec.key} has "
                f"{rec.capacity}; sizes must match (restore as a new VM instead)",
                1,
            )
        out[rec.key] = target
    _require_one_to_one(out, saved_addr)
    return out


def _require_one_to_one(mapping: dict[str, DiskInfo], saved_addr: dict[str, str | None]) -> None:
    claimed: dict[int, list[str]] = {}
    for key, target in mapping.items():
        claimed.setdefault(target.key, []).append(key)
    clashes = {k: keys for k, keys in claimed.items() if len(keys) > 1}
    if not clashes:
        return
    by_key = {t.key: t for t in mapping.values()}
    lines = [
        f"target disk {by_key[k].address or k} (key {k}, {by_key[k].file_name}) ← saved disks "
        + ", ".join(f"{s} (at {saved_addr.get(s) or '?'})" for s in keys)
        for k, keys in sorted(clashes.items())
    ]
    raise UserError(
        "the restore point's disks do not map one-to-one onto the target VM's disks (matched "
        "by device key, then by controller address): "
        + "; ".join(lines)
        + "; restore as a new VM instead",
        1,
    )


async def find_original_vm(ctx: Context, manifest: Manifest) -> Any:
    """The VM a point was taken from: by its saved instanceUuid (it survives re-registration,
    which gives the VM a new MoRef), else by the saved MoRef when that VM still has the same
    instanceUuid. A UserError when it is gone."""
    want = manifest.vm.instance_uuid.lower()
    if want:
        ref = await ctx.session.call(
            ctx.session.content.searchIndex,
            "FindByUuid",
            uuid=manifest.vm.instance_uuid,
            vmSearch=True,
            instanceUuid=True,
        )
        if ref is not None:
            return ctx.session.client.bind(ref)
    if manifest.vm.moref:
        vm = ctx.session.moref("VirtualMachine", manifest.vm.moref)
        try:
            props = await ctx.session.properties(vm, ["config.instanceUuid"])
        except VsphereFault:  # ManagedObjectNotFound: the MoRef is gone
            props = {}
        if (props.get("config.instanceUuid") or "").lower() == want:
            return vm
    raise UserError(
        f"the VM restore point {manifest.point_id} came from ({manifest.vm.name}, instanceUuid "
        f"{manifest.vm.instance_uuid}, was {manifest.vm.moref}) no longer exists; restore with "
        "--new-name instead",
        1,
    )


async def _power_off(ctx: Context, vm: Any, allow: bool, name: str) -> None:
    props = await ctx.session.properties(vm, ["runtime.powerState"])
    if props.get("runtime.powerState") == "poweredOff":
        return
    if not allow:
        raise UserError(
            f"VM {name} is {props.get('runtime.powerState')}; its disks cannot be written while "
            "it runs: shut it down first, or pass --power-off",
            2,
        )
    task = await ctx.session.call(vm, "PowerOffVM_Task")
    await wait_for_task(ctx.session, task, description=f"power off {name}")


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


def _note_full_write(result: RestoreResult, key: str, plan: WritePlan) -> None:
    result.notes.append(f"disk {key}: {plan.reason}")
    log.warning("restore.changed_only_unavailable", disk=key, reason=plan.reason)


def _no_in_place_write(ctx: Context, why: str) -> WritePlan:
    modes = ", ".join(ctx.cfg.transport.modes)
    return WritePlan(
        None,
        f"full write: writing only some chunks needs a transport that writes in place "
        f"(vddk or file; the http transport rewrites the whole disk) and of transport.modes "
        f"({modes}) {why}",
    )


async def _reset_cbt(ctx: Context, vm: Any, name: str, config: Any, result: RestoreResult) -> None:
    """Turn Changed Block Tracking off and on again after writing onto the VM's disks (the
    seed): the restore's writes are not in CBT's record, so an incremental based on the old
    changeIds would miss them. The reset gives the changeIds a new UUID part, which makes
    the next backup read each disk in full. With CBT off there is nothing to reset: the next
    backup that enables it starts a new record anyway."""
    if not config.changeTrackingEnabled:
        return
    try:
        for on in (False, True):
            spec = vim.vm.ConfigSpec(changeTrackingEnabled=on)
            task = await ctx.session.call(vm, "ReconfigVM_Task", spec=spec)
            await wait_for_task(
                ctx.session, task, description=f"{'enable' if on else 'disable'} CBT on {name}"
            )
    except VsphereFault as exc:
        raise UserError(
            f"the disks of VM {name} were restored, but resetting its changed block tracking "
            f"failed ({exc}): the next incremental backup could miss the restored blocks; "
            f"take the next backup with `vigil backup {name} --full`",
            1,
        ) from exc
    result.notes.append(
        "changed block tracking was reset (off, then on): the next backup reads the disks in full"
    )


async def _power_on(ctx: Context, vm: Any, name: str) -> None:
    task = await ctx.session.call(vm, "PowerOnVM_Task")
    await wait_for_task(ctx.session, task, description=f"power on {name}")


async def restore_to_existing(
    ctx: Context,
    point_id: str,
    vm: Any,
    *,
    power_off: bool = False,
    power_on: bool = False,
    changed_only: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Write the point's disks onto `vm` (see the module docstring). `changed_only` writes only
    what changed since the point where CBT can tell (else all, with the reason in the result)."""
    manifest = await load_point(ctx, point_id)
    props = await ctx.session.properties(vm, ["name", "config"])
    name = props.get("name", vm._moId)
    config = props["config"]
    # Never while a backup (the daemon's, say) reads this VM: VmBusyError names it.
    with vm_lock(
        ctx.repo.root,
        ctx.session.vcenter_uuid,
        config.instanceUuid or config.uuid or vm._moId,
        name,
        f"restore of point {point_id}",
    ):
        return await with_vddk_access(
            ctx,
            vm,
            None,
            _restore_locked(
                ctx,
                manifest,
                vm,
                name,
                config,
                power_off=power_off,
                power_on=power_on,
                changed_only=changed_only,
                verify=verify,
                progress=progress,
            ),
        )


async def _restore_locked(
    ctx: Context,
    manifest: Manifest,
    vm: Any,
    name: str,
    config: Any,
    *,
    power_off: bool,
    power_on: bool,
    changed_only: bool,
    verify: bool,
    progress: Progress | None,
) -> RestoreResult:
    point_id = manifest.point_id
    saved = disk_summaries(saved_config(manifest)) if manifest.config_info else []
    targets = match_disks(manifest.disks, saved, disk_summaries(config))
    await _power_off(ctx, vm, power_off, name)
    result = RestoreResult(point_id, vm._moId, name, "existing")
    # Every disk's changed areas are asked for before the first write (the seed: once a
    # restore starts writing, change tracking can no longer answer for that disk).
    plans: dict[str, WritePlan] = {}
    in_place = tuple(m for m in ctx.cfg.transport.modes if m in IN_PLACE_MODES)
    for rec in manifest.disks:
        if changed_only and not in_place:
            plan = _no_in_place_write(ctx, "none is configured")
            _note_full_write(result, rec.key, plan)
        elif changed_only:
            plan = await plan_changed_only(
                ctx, manifest, vm, config, rec, targets[rec.key], manifest.chunk_size
            )
            if plan.slots is None:
                _note_full_write(result, rec.key, plan)
        else:
            plan = WritePlan(None, "full write")
        plans[rec.key] = plan
    total = sum(
        rec.capacity
        if plans[rec.key].slots is None
        else len(plans[rec.key].slots or []) * manifest.chunk_size
        for rec in manifest.disks
    )
    done = [0]

    async def write(key: str, slots: list[int] | None) -> RestoredDisk:
        return await _write_disk(
            ctx,
            manifest,
            key,
            vm,
            targets[key],
            fresh=False,
            verify=verify,
            progress=progress,
            done=done,
            total=total,
            only_slots=slots,
            modes=in_place if slots is not None else None,
        )

    try:
        for rec in manifest.disks:
            plan = plans[rec.key]
            try:
                out = await write(rec.key, plan.slots)
            except DiskOpenError as exc:  # raised before anything is written
                if plan.slots is None:
                    raise
                plan = _no_in_place_write(ctx, f"none could open the disk ({exc})")
                _note_full_write(result, rec.key, plan)
                out = await write(rec.key, None)
            out.mode = "full" if plan.slots is None else "changed"
            out.reason = plan.reason
            result.disks.append(out)
    except BaseException as exc:
        _half_written(point_id, name, done[0], exc)
        raise
    finally:
        # Also after a failure midway: whatever was written is not in CBT's record either.
        await shielded(_reset_cbt(ctx, vm, name, config, result))
    if power_on:
        await _power_on(ctx, vm, name)
        result.powered_on = True
    log.info(
        "restore.done",
        point=point_id,
        vm=name,
        mode="existing",
        bytes=result.written_bytes,
        changed_only=changed_only,
    )
    return result


def _half_written(point_id: str, name: str, written: int, exc: BaseException) -> None:
    """A restore onto the VM stopped midway (error or cancellation): its disks are now neither
    the point nor what they were. Say so, and what to do; an error becomes a UserError that
    keeps its cause, a cancellation goes on after the log line."""
    advice = (
        f"after {written} bytes were written: the disks of VM {name} may now hold part of the "
        "point and part of what was there before; do not power it on — restore again (this "
        "point once its damage is repaired, or another point), or restore as a new VM"
    )
    log.error("restore.existing_failed", point=point_id, vm=name, error=str(exc), advice=advice)
    if isinstance(exc, UserError) or not isinstance(exc, Exception):
        return  # already phrased for the admin (e.g. verification), or a cancellation
    why = " ".join(str(exc).split()) or type(exc).__name__
    raise UserError(
        f"restore of point {point_id} onto VM {name} failed {advice}. Cause: {why}", 1
    ) from exc


@dataclass(frozen=True)
class Placement:
    name: str
    folder: str | None = None  # inventory path
    pool: str | None = None
    datastore: str | None = None  # datastore name
    host: str | None = None  # inventory path or host name


# What each placement option must name, and the vSphere types that qualify.
PLACEMENT_KINDS: dict[str, tuple[type, ...]] = {
    "folder": (vim.Folder,),
    "resource pool": (vim.ResourcePool,),
    "host": (vim.HostSystem,),
}


async def _find_by_path(ctx: Context, path: str, what: str) -> Any:
    idx = ctx.session.content.searchIndex
    ref = await ctx.session.call(idx, "FindByInventoryPath", inventoryPath=path.strip("/"))
    if ref is None:
        raise UserError(f"{what} {path!r} not found; `vigil inventory` shows the paths", 2)
    kinds = PLACEMENT_KINDS.get(what)
    if kinds and not isinstance(ref, kinds):
        found = type(ref).__name__.rsplit(".", 1)[-1]
        raise UserError(
            f"{path!r} is a {found}, not a {what}; give the inventory path of a {what}", 2
        )
    return ctx.session.client.bind(ref)


async def _default_placement(ctx: Context, manifest: Manifest, config: Any) -> dict[str, Any]:
    """Where the original VM lived, if it still exists: its folder, pool and datastore."""
    vm = ctx.session.moref("VirtualMachine", manifest.vm.moref) if manifest.vm.moref else None
    if vm is not None:
        try:
            props = await ctx.session.properties(
                vm, ["parent", "resourcePool", "config.instanceUuid"]
            )
            if (
                props.get("config.instanceUuid") or ""
            ).lower() == manifest.vm.instance_uuid.lower():
                return {"folder": props.get("parent"), "pool": props.get("resourcePool")}
        except Exception:  # the original is gone: fall back to the first datacenter
            pass
    return {}


async def _datastore_name(ctx: Context, config: Any) -> str:
    path = config.files.vmPathName or ""
    if path.startswith("[") and "]" in path:
        return path[1 : path.index("]")]
    raise UserError("cannot tell the original datastore; pass --datastore", 2)


async def _refuse_taken_name(ctx: Context, folder: Any, name: str, asked: str | None) -> None:
    """vCenter names are unique per folder: a clash is refused up front, before anything is
    created (a failed CreateVM_Task would read as a restore failure; some setups accept the
    duplicate, and then two VMs answer to one name)."""
    idx = ctx.session.content.searchIndex
    if await ctx.session.call(idx, "FindChild", entity=folder, name=name) is None:
        return
    where = f"folder {asked!r}" if asked else "the folder the VM is restored into"
    raise UserError(
        f"a VM or folder named {name!r} already exists in {where}; choose another --new-name "
        "(or another --folder)",
        2,
    )


async def restore_as_new(
    ctx: Context,
    point_id: str,
    placement: Placement,
    *,
    power_on: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
    keep_failed: bool = False,
) -> RestoreResult:
    """Create a VM from the point's saved configuration and write its disks. Should anything
    fail once the VM exists, it is destroyed (kept with `keep_failed`) and the error says so."""
    manifest = await load_point(ctx, point_id)
    config = saved_config(manifest)
    defaults = await _default_placement(ctx, manifest, config)
    folder = (
        await _find_by_path(ctx, placement.folder, "folder")
        if placement.folder
        else defaults.get("folder")
    )
    pool = (
        await _find_by_path(ctx, placement.pool, "resource pool")
        if placement.pool
        else defaults.get("pool")
    )
    host = await _find_by_path(ctx, placement.host, "host") if placement.host else None
    ds_name = placement.datastore or await _datastore_name(ctx, config)
    # Checked first: CreateVM_Task with an unknown datastore fails obscurely, or worse.
    datastore = await find_datastore(ctx.session, ds_name)
    if folder is None or pool is None:
        f, p = await default_folder_and_pool(ctx.session, datastore, host)
        folder, pool = folder or f, pool or p

    await _refuse_taken_name(ctx, folder, placement.name, placement.folder)
    rebuilt = build_config_spec(config, name=placement.name, datastore_name=ds_name)
    new_vm = await _create_vm(ctx, folder, rebuilt.spec, pool, host, placement.name)
    try:
        result = await with_vddk_access(
            ctx,
            new_vm,
            None,
            _fill_new_vm(ctx, manifest, config, rebuilt, new_vm, placement.name, verify, progress),
        )
    except BaseException as exc:
        await _discard_half_built(ctx, new_vm, placement.name, point_id, exc, keep_failed)
        raise
    if power_on:
        await _power_on(ctx, new_vm, placement.name)
        result.powered_on = True
    log.info(
        "restore.done", point=point_id, vm=placement.name, mode="new", bytes=result.written_bytes
    )
    return result


async def _create_vm(ctx: Context, folder: Any, spec: Any, pool: Any, host: Any, name: str) -> Any:
    """CreateVM_Task. Cancelled while vCenter still creates the VM, the VM would be made
    anyway and stay behind, empty: wait for the task regardless, destroy what it made, then
    let the cancellation through."""
    task = await ctx.session.call(folder, "CreateVM_Task", config=spec, pool=pool, host=host)
    waiter, cancelled = await to_the_end(
        wait_for_task(ctx.session, task, description=f"create VM {name}")
    )
    if cancelled:
        if waiter.exception() is None:
            vm = ctx.session.client.bind(waiter.result())
            try:
                await shielded(_destroy(ctx, vm, name))
            except VsphereError as exc:
                log.error(
                    "restore.cancelled_vm_not_destroyed",
                    vm=name,
                    moref=vm._moId,
                    error=str(exc),
                    next_step="delete the empty VM by hand",
                )
        raise asyncio.CancelledError()
    return ctx.session.client.bind(waiter.result())  # raises the task's fault, if any


async def _fill_new_vm(
    ctx: Context,
    manifest: Manifest,
    config: Any,
    rebuilt: Any,
    new_vm: Any,
    name: str,
    verify: bool,
    progress: Progress | None,
) -> RestoreResult:
    """Everything after CreateVM_Task: video card settings, then every saved disk's data."""
    props = await ctx.session.properties(new_vm, ["config"])
    new_config = props["config"]
    edit = video_card_edit_spec(config, list(new_config.hardware.device))
    if edit is not None:
        t = await ctx.session.call(new_vm, "ReconfigVM_Task", spec=edit)
        await wait_for_task(ctx.session, t, description="video card settings")
    result = RestoreResult(manifest.point_id, new_vm._moId, name, "new", notes=list(rebuilt.notes))
    left_out = set(map(str, rebuilt.left_out_disks))
    saved = disk_summaries(config)
    current = disk_summaries(new_config)
    records = [r for r in manifest.disks if r.key not in left_out]
    by_addr = {d.address: d for d in current if d.address}
    saved_addr = {str(d.key): d.address for d in saved}
    total = sum(r.capacity for r in records)
    done = [0]
    for rec in records:
        disk = by_addr.get(saved_addr.get(rec.key))
        if disk is None or disk.capacity_bytes != rec.capacity:
            raise UserError(
                f"new VM {name} has no disk at {saved_addr.get(rec.key)} with "
                f"{rec.capacity} bytes for saved disk {rec.key}",
                1,
            )
        result.disks.append(
            await _write_disk(
                ctx,
                manifest,
                rec.key,
                new_vm,
                disk,
                fresh=True,
                verify=verify,
                progress=progress,
                done=done,
                total=total,
            )
        )
    return result


async def _discard_half_built(
    ctx: Context, vm: Any, name: str, point_id: str, exc: BaseException, keep: bool
) -> None:
    """After a restore as a new VM failed: destroy the VM it created (a half-written VM must
    not pass for a restored one), unless the admin keeps it for inspection. A cancellation
    goes on as it is, after the destroy; any other error becomes a RestoreFailedError that
    names the VM and what became of it."""
    where = f"{name} ({vm._moId})"
    if keep:
        fate, kept = (
            f"the half-built VM {where} was kept (--keep-failed); delete it when done",
            True,
        )
    else:
        try:
            await shielded(_destroy(ctx, vm, name))
            fate, kept = f"the half-built VM {where} was destroyed", False
        except VsphereError as derr:
            fate, kept = (
                f"destroying the half-built VM {where} failed too ({derr}): delete it by hand",
                True,
            )
    log.error("restore.new_vm_failed", point=point_id, vm=name, error=str(exc), outcome=fate)
    if isinstance(exc, Exception):
        why = str(exc) or type(exc).__name__
        raise RestoreFailedError(
            f"restore of point {point_id} as new VM {name} failed: {why}; {fate}",
            name,
            vm._moId,
            kept,
        ) from exc


async def _destroy(ctx: Context, vm: Any, name: str) -> None:
    task = await ctx.session.call(vm, "Destroy_Task")
    await wait_for_task(ctx.session, task, description=f"destroy half-built VM {name}")


@contextlib.asynccontextmanager
async def _reading(repo: Any) -> AsyncIterator[None]:
    """repo.reading() (the shared repository lock), taken in a worker thread: it may wait
    for a running prune sweep."""
    cm = repo.reading()
    await anyio.to_thread.run_sync(cm.__enter__)
    try:
        yield
    finally:
        cm.__exit__(None, None, None)


async def _write_disk(
    ctx: Context,
    manifest: Manifest,
    key: str,
    vm: Any,
    disk: DiskInfo,
    *,
    fresh: bool,
    verify: bool,
    progress: Progress | None,
    done: list[int],
    total: int,
    only_slots: list[int] | None = None,
    modes: tuple[str, ...] | None = None,
) -> RestoredDisk:
    """Write a saved disk onto `disk`. A fresh disk reads as zeros, so zero chunks are skipped;
    an existing one gets zeros written where the point has them. `only_slots` limits the
    writes to those chunk slots (an incremental restore)."""
    # Shared repository lock for the whole write: a prune sweep then cannot remove chunks
    # of this point, should the point be deleted while it is being restored.
    async with _reading(ctx.repo):
        _m, index = await anyio.to_thread.run_sync(ctx.repo.disk_index, manifest.point_id, key)
        rec = manifest.disk(key)
        assert rec is not None
        writer = await open_disk_for_write(ctx, vm, disk, modes)
        out = RestoredDisk(key, disk.file_name, disk.capacity_bytes, transport=writer.transport)
        chunk = index.chunk_size
        zero = bytes(chunk)
        try:
            if rec.metadata:
                await anyio.to_thread.run_sync(writer.write_metadata, dict(rec.metadata))
            fetch = ctx.repo.slot_fetcher(manifest.point_id, key, index)
            # A fresh disk reads as zeros: its zero chunks need no write at all.
            if only_slots is not None:
                slots = sorted(set(only_slots))
            else:
                slots = [s for s, cid in enumerate(index.ids) if not (fresh and cid == ZERO_ID)]
            written = 0
            skipped = sum(index.slot_length(s) for s, cid in enumerate(index.ids) if cid == ZERO_ID)
            skipped = skipped if fresh and only_slots is None else 0
            done[0] += skipped

            def load(slot: int) -> bytes:
                # Fetching (read, decrypt, decompress, re-hash) runs in parallel; writes go in
                # ascending offsets, one at a time (a streamed PUT, one VDDK handle).
                data = fetch(slot)
                return zero[: index.slot_length(slot)] if data is None else data

            async def store(slot: int, data: bytes) -> None:
                nonlocal written
                await anyio.to_thread.run_sync(writer.write, slot * chunk, data)
                written += len(data)
                done[0] += len(data)
                if progress:
                    progress(done[0], total)

            await map_ordered(
                load, slots, workers=ctx.io_threads, limiter=ctx.io_limiter, consume=store
            )
            await anyio.to_thread.run_sync(writer.flush)
            out.written_bytes, out.skipped_zero_bytes = written, skipped
        finally:
            await in_thread_shielded(writer.close)
        if verify:
            bad = await _verify_disk(ctx, vm, disk, index)
            out.verified = not bad
            if bad:
                raise UserError(_verify_failure(manifest.point_id, key, disk, index, bad), 1)
        return out


def _verify_failure(point_id: str, key: str, disk: DiskInfo, index: Any, bad: list[int]) -> str:
    """The admin's message for a disk that does not read back as the point: where it differs."""
    shown = ", ".join(
        f"chunk {s} (bytes {s * index.chunk_size}+{index.slot_length(s)})" for s in bad[:5]
    )
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return (
        f"verification failed: disk {disk.file_name} does not read back as restore point "
        f"{point_id} disk {key}: {len(bad)} of {len(index.ids)} chunks differ ({shown}{more}); "
        "the datastore did not keep what was written — check it, then restore again"
    )


async def _verify_disk(ctx: Context, vm: Any, disk: DiskInfo, index: Any) -> list[int]:
    """Re-read the written disk and compare each chunk's hash (the repository's keyed chunk
    id) with the one the restore point holds; returns the slots that differ. Hashing what
    was read needs no chunk from the repository, so this checks the disk, not the repo."""
    from .diskaccess import open_disk_for_read

    reader = await open_disk_for_read(ctx, vm, None, disk, None)
    keys = ctx.repo.keys
    try:

        def same(slot: int) -> bool:
            length = index.slot_length(slot)
            got = reader.read(slot * index.chunk_size, length)
            if len(got) != length:
                return False
            if index.ids[slot] == ZERO_ID:
                return got == bytes(length)
            return object_id(keys, got) == index.ids[slot]

        bad: list[int] = []

        def check(slot: int, ok: bool) -> None:
            if not ok:
                bad.append(slot)

        await map_bounded(
            same,
            range(len(index.ids)),
            workers=ctx.io_threads,
            limiter=ctx.io_limiter,
            on_result=check,
        )
        bad.sort()
        for slot in bad[:10]:
            log.error("restore.verify_mismatch", disk=disk.file_name, slot=slot)
        return bad
    finally:
        await in_thread_shielded(reader.close)
