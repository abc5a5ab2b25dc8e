"""Restoring onto the existing VM: it must be powered off; its disks are written under
their *current* names (the VM may run on a snapshot chain), matched to the saved disks
(points.match_disks); CBT is reset afterwards, and a restore stopped midway says what the
disks now hold."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from pyVmomi import vim

from disk_io.errors import DiskOpenError
from protector.context import Context
from protector.errors import UserError
from protector.parallel import shielded
from protector.restore.changed_only import (
    IN_PLACE_MODES,
    WritePlan,
    no_in_place_write,
    note_full_write,
    plan_changed_only,
)
from protector.restore.diskwrite import write_disk
from protector.restore.points import load_point, match_disks, saved_config
from protector.restore.result import Progress, RestoredDisk, RestoreResult
from protector.vmlock import vm_lock
from protector.vsphere.disks import with_vddk_access
from protector.vsphere.vmconfig import disk_summaries
from repository import Manifest
from watcher.soap import VsphereFault
from watcher.tasks import wait_for_task

log = structlog.get_logger(__name__)


# How long a guest shutdown may take before the restore gives up (and says to --force).
GUEST_SHUTDOWN_TIMEOUT = 300.0


async def _power_off(
    ctx: Context,
    vm: Any,
    allow: bool,
    name: str,
    *,
    force: bool = False,
    timeout: float = GUEST_SHUTDOWN_TIMEOUT,
) -> None:
    """A running VM is refused unless `allow` (--power-off): then its guest is asked to shut
    down cleanly (needs VMware Tools running) and the VM waited for, at most `timeout`
    seconds; `force` (--force) powers it off at once, like pulling the plug."""
    props = await ctx.session.properties(vm, ["runtime.powerState", "guest.toolsRunningStatus"])
    state = props.get("runtime.powerState")
    if state == "poweredOff":
        return
    if not allow:
        raise UserError(
            f"VM {name} is {state}; its disks cannot be written while it runs: shut it down "
            "first, or pass --power-off (a guest shutdown; add --force for a hard power-off)",
            2,
        )
    if force:
        log.info("restore.power_off", vm=name, how="hard")
        task = await ctx.session.call(vm, "PowerOffVM_Task")
        await wait_for_task(ctx.session, task, description=f"power off {name}")
        return
    await shutdown_guest(ctx, vm, name, props.get("guest.toolsRunningStatus"), timeout)


async def shutdown_guest(
    ctx: Context, vm: Any, name: str, tools: str | None, timeout: float
) -> None:
    """ShutdownGuest asks the guest OS for a clean shutdown through VMware Tools and returns
    at once, without waiting for it (vSphere Web Services API, VirtualMachine.ShutdownGuest;
    it fails with ToolsUnavailable when Tools cannot be reached): so the Tools state is
    checked first, and the power state watched until poweredOff or `timeout`."""
    no_tools = (
        f"VMware Tools is not running in VM {name}, so its guest cannot be shut down cleanly: "
        "shut it down from inside, or pass --force for a hard power-off"
    )
    if tools != "guestToolsRunning":
        raise UserError(no_tools, 2)
    log.info("restore.power_off", vm=name, how="guest shutdown", timeout=timeout)
    try:
        await ctx.session.call(vm, "ShutdownGuest")
    except VsphereFault as exc:
        if exc.fault_type == "ToolsUnavailable":
            raise UserError(no_tools, 2) from exc
        raise
    deadline = asyncio.get_running_loop().time() + timeout
    await wait_powered_off(ctx, vm, name, deadline, timeout)


async def wait_powered_off(
    ctx: Context, vm: Any, name: str, deadline: float, timeout: float, every: float = 1.0
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        props = await ctx.session.properties(vm, ["runtime.powerState"])
        if props.get("runtime.powerState") == "poweredOff":
            return
        left = deadline - loop.time()
        if left <= 0:
            raise UserError(
                f"VM {name} was asked to shut down but is still "
                f"{props.get('runtime.powerState')} after {timeout:g} s; nothing was written. "
                "Shut it down from inside, or pass --force for a hard power-off",
                2,
            )
        await asyncio.sleep(min(every, left))


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


async def power_on_vm(ctx: Context, vm: Any, name: str) -> None:
    task = await ctx.session.call(vm, "PowerOnVM_Task")
    await wait_for_task(ctx.session, task, description=f"power on {name}")


async def restore_to_existing(
    ctx: Context,
    point_id: str,
    vm: Any,
    *,
    power_off: bool = False,
    force: bool = False,
    shutdown_timeout: float = GUEST_SHUTDOWN_TIMEOUT,
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
        ctx.repo.state.ensure(),
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
                force=force,
                shutdown_timeout=shutdown_timeout,
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
    force: bool,
    shutdown_timeout: float,
    power_on: bool,
    changed_only: bool,
    verify: bool,
    progress: Progress | None,
) -> RestoreResult:
    point_id = manifest.point_id
    saved = disk_summaries(saved_config(manifest)) if manifest.config_info else []
    targets = match_disks(manifest.disks, saved, disk_summaries(config))
    await _power_off(ctx, vm, power_off, name, force=force, timeout=shutdown_timeout)
    result = RestoreResult(point_id, vm._moId, name, "existing")
    # Every disk's changed areas are asked for before the first write (the seed: once a
    # restore starts writing, change tracking can no longer answer for that disk).
    plans: dict[str, WritePlan] = {}
    in_place = tuple(m for m in ctx.cfg.transport.modes if m in IN_PLACE_MODES)
    for rec in manifest.disks:
        if changed_only and not in_place:
            plan = no_in_place_write(ctx, "none is configured")
            note_full_write(result, rec.key, plan)
        elif changed_only:
            plan = await plan_changed_only(
                ctx, manifest, vm, config, rec, targets[rec.key], manifest.chunk_size
            )
            if plan.slots is None:
                note_full_write(result, rec.key, plan)
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
        return await write_disk(
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
                plan = no_in_place_write(ctx, f"none could open the disk ({exc})")
                note_full_write(result, rec.key, plan)
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
        await power_on_vm(ctx, vm, name)
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
