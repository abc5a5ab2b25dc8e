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

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from disk_io.errors import DiskOpenError, InvalidChangedAreas
from disk_io.extents import chunk_slots
from repository import DiskRecord, Manifest
from repository.codec import ZERO_ID
from watcher.soap import VsphereFault
from watcher.tasks import wait_for_task

from .changeplan import tracking_uuid
from .configspec import build_config_spec, video_card_edit_spec
from .context import Context
from .diskaccess import changed_areas, open_disk_for_write
from .errors import UserError
from .parallel import map_bounded, map_ordered
from .vmconfig import DiskInfo, deserialize_config, disk_summaries

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
    manifest: Manifest, saved: list[DiskInfo], current: list[DiskInfo]
) -> dict[str, DiskInfo]:
    """Saved disk key → the target VM's disk: same device key, else same controller address."""
    by_key = {str(d.key): d for d in current}
    by_addr = {d.address: d for d in current if d.address}
    saved_addr = {str(d.key): d.address for d in saved}
    out: dict[str, DiskInfo] = {}
    for rec in manifest.disks:
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
    return out


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
    saved = disk_summaries(saved_config(manifest)) if manifest.config_info else []
    targets = match_disks(manifest, saved, disk_summaries(config))
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
    for rec in manifest.disks:
        plan = plans[rec.key]
        out = None
        if plan.slots is not None:
            try:
                out = await _write_disk(
                    ctx,
                    manifest,
                    rec.key,
                    vm,
                    targets[rec.key],
                    fresh=False,
                    verify=verify,
                    progress=progress,
                    done=done,
                    total=total,
                    only_slots=plan.slots,
                    modes=in_place,
                )
            except DiskOpenError as exc:  # raised before anything is written
                plan = _no_in_place_write(ctx, f"none could open the disk ({exc})")
                _note_full_write(result, rec.key, plan)
        if out is None:
            out = await _write_disk(
                ctx,
                manifest,
                rec.key,
                vm,
                targets[rec.key],
                fresh=False,
                verify=verify,
                progress=progress,
                done=done,
                total=total,
            )
        out.mode = "full" if plan.slots is None else "changed"
        out.reason = plan.reason
        result.disks.append(out)
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


@dataclass(frozen=True)
class Placement:
    name: str
    folder: str | None = None  # inventory path
    pool: str | None = None
    datastore: str | None = None  # datastore name
    host: str | None = None  # inventory path or host name


async def _find_by_path(ctx: Context, path: str, what: str) -> Any:
    idx = ctx.session.content.searchIndex
    ref = await ctx.session.call(idx, "FindByInventoryPath", inventoryPath=path.strip("/"))
    if ref is None:
        raise UserError(f"{what} {path!r} not found; `vigil inventory` shows the paths", 2)
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


async def _first_pool_and_folder(ctx: Context) -> tuple[Any, Any]:
    from watcher.inventory import read_inventory

    tree = await read_inventory(ctx.session)
    vms = tree.vms()
    if not vms:
        raise UserError("no VM to take a default folder and pool from; pass --folder and --pool")
    v = vms[0]
    folder = await _find_by_path(ctx, v.folder, "folder")
    pool = await _find_by_path(ctx, v.resource_pool, "resource pool") if v.resource_pool else None
    return folder, pool


async def restore_as_new(
    ctx: Context,
    point_id: str,
    placement: Placement,
    *,
    power_on: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
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
    if folder is None or pool is None:
        f, p = await _first_pool_and_folder(ctx)
        folder, pool = folder or f, pool or p
    host = await _find_by_path(ctx, placement.host, "host") if placement.host else None
    ds_name = placement.datastore or await _datastore_name(ctx, config)

    rebuilt = build_config_spec(config, name=placement.name, datastore_name=ds_name)
    left_out = set(map(str, rebuilt.left_out_disks))
    task = await ctx.session.call(
        folder, "CreateVM_Task", config=rebuilt.spec, pool=pool, host=host
    )
    new_ref = await wait_for_task(ctx.session, task, description=f"create VM {placement.name}")
    new_vm = ctx.session.client.bind(new_ref)
    props = await ctx.session.properties(new_vm, ["config"])
    new_config = props["config"]
    edit = video_card_edit_spec(config, list(new_config.hardware.device))
    if edit is not None:
        t = await ctx.session.call(new_vm, "ReconfigVM_Task", spec=edit)
        await wait_for_task(ctx.session, t, description="video card settings")
    result = RestoreResult(point_id, new_vm._moId, placement.name, "new", notes=list(rebuilt.notes))
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
                f"new VM {placement.name} has no disk at {saved_addr.get(rec.key)} with "
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
    if power_on:
        await _power_on(ctx, new_vm, placement.name)
        result.powered_on = True
    log.info(
        "restore.done", point=point_id, vm=placement.name, mode="new", bytes=result.written_bytes
    )
    return result


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
        fetch = ctx.repo._fetcher(manifest.point_id, key, index)
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
            if index.ids[slot] == ZERO_ID:
                return zero[: index.slot_length(slot)]
            _offset, data = fetch(slot)
            assert data is not None
            return data

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
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.close)
    if verify:
        out.verified = await _verify_disk(ctx, manifest, key, vm, disk, index)
        if not out.verified:
            raise UserError(
                f"verification failed: disk {disk.file_name} does not read back as restore point "
                f"{manifest.point_id} disk {key}",
                1,
            )
    return out


async def _verify_disk(
    ctx: Context, manifest: Manifest, key: str, vm: Any, disk: DiskInfo, index: Any
) -> bool:
    """Re-read the written disk and compare every chunk with the restore point's."""
    from .diskaccess import open_disk_for_read

    reader = await open_disk_for_read(ctx, vm, None, disk, None)
    fetch = ctx.repo._fetcher(manifest.point_id, key, index)
    try:

        def same(slot: int) -> bool:
            offset = slot * index.chunk_size
            length = index.slot_length(slot)
            got = reader.read(offset, length)
            if index.ids[slot] == ZERO_ID:
                return got == bytes(length)
            _, want = fetch(slot)
            return hashlib.blake2b(got).digest() == hashlib.blake2b(want).digest()

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
        for slot in sorted(bad)[:10]:
            log.error("restore.verify_mismatch", disk=disk.file_name, slot=slot)
        return not bad
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(reader.close)
