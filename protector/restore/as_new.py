"""Restoring as a new VM: a ConfigSpec rebuilt from the saved ConfigInfo
(vsphere.configspec), placed where the admin says (or where the VM was), CreateVM_Task,
then every disk written; should anything fail once the VM exists, it is destroyed (or kept
with --keep-failed) and the error says which."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import structlog
from pyVmomi import vim

from protector.context import Context
from protector.errors import RestoreFailedError, UserError
from protector.parallel import shielded, to_the_end
from protector.restore.diskwrite import write_disk
from protector.restore.existing import power_on_vm
from protector.restore.isolation import NOTE as ISOLATION_NOTE
from protector.restore.isolation import disconnect_network
from protector.restore.placing import Placement, remap_networks, resolve
from protector.restore.points import load_point, saved_config
from protector.restore.result import Progress, RestoreResult
from protector.vmlock import vm_lock
from protector.vsphere.configspec import build_config_spec, video_card_edit_spec
from protector.vsphere.disks import with_vddk_access
from protector.vsphere.vmconfig import disk_summaries
from repository import Manifest
from watcher.soap import VsphereError
from watcher.tasks import wait_for_task

log = structlog.get_logger(__name__)


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
    connect_network: bool = False,
) -> RestoreResult:
    """Create a VM from the point's saved configuration and write its disks. Should anything
    fail once the VM exists, it is destroyed (kept with `keep_failed`) and the error says so.
    Its network adapters are created disconnected unless `connect_network` (isolation.py)."""
    manifest = await load_point(ctx, point_id)
    config = saved_config(manifest)
    if config.template and power_on:
        raise UserError(
            f"point {point_id} is of a template, restored as a template: it cannot be "
            "powered on (leave out --power-on)",
            2,
        )
    # Checked first: CreateVM_Task with an unknown datastore fails obscurely, or worse.
    where = await resolve(ctx, manifest, config, placement)
    await _refuse_taken_name(ctx, where.folder, placement.name, placement.folder)
    rebuilt = build_config_spec(
        config, name=placement.name, datastore_name=where.datastore, disk_files=where.disk_files
    )
    remap_networks(rebuilt.spec, where)
    if not connect_network and disconnect_network(rebuilt.spec):
        rebuilt.notes.append(ISOLATION_NOTE)
    # The new VM is held from before it exists until its last byte is written: a daemon
    # whose policy covers the folder sees it (WaitForUpdatesEx) possibly before CreateVM_Task
    # even answers, and would back it up half-written. So restore chooses the VM's identity
    # itself — VirtualMachineConfigSpec.instanceUuid is settable, "normally not set by a
    # client" but honoured (vSphere Web Services API, data object VirtualMachineConfigSpec;
    # govmomi's simulator applies it in VirtualMachine.apply) — and locks it before creating.
    chosen = str(uuid.uuid4())
    rebuilt.spec.instanceUuid = chosen
    what = f"restore of point {point_id} as new VM {placement.name}"
    with contextlib.ExitStack() as held:
        held.enter_context(
            vm_lock(ctx.repo.state.ensure(), ctx.session.vcenter_uuid, chosen, placement.name, what)
        )
        new_vm = await _create_vm(
            ctx, where.folder, rebuilt.spec, where.pool, where.host, placement.name
        )
        try:
            await _hold_actual_identity(ctx, new_vm, chosen, placement.name, what, held)
            result = await with_vddk_access(
                ctx,
                new_vm,
                None,
                _fill_new_vm(
                    ctx, manifest, config, rebuilt, new_vm, placement.name, verify, progress
                ),
            )
            if config.template:
                await _mark_as_template(ctx, new_vm, placement.name)
        except BaseException as exc:
            await _discard_half_built(ctx, new_vm, placement.name, point_id, exc, keep_failed)
            raise
    if power_on:
        await power_on_vm(ctx, new_vm, placement.name)
        result.powered_on = True
    log.info(
        "restore.done", point=point_id, vm=placement.name, mode="new", bytes=result.written_bytes
    )
    return result


async def _mark_as_template(ctx: Context, vm: Any, name: str) -> None:
    """A template comes back as a template: CreateVM_Task's ConfigSpec has no template flag,
    so the VM is made, filled, then MarkAsTemplate'd (vSphere API, VirtualMachine.
    MarkAsTemplate: the VM must be powered off, which a new VM is)."""
    await ctx.session.call(vm, "MarkAsTemplate")
    log.info("restore.marked_as_template", vm=name, moref=vm._moId)


async def _hold_actual_identity(
    ctx: Context, vm: Any, chosen: str, name: str, what: str, held: contextlib.ExitStack
) -> None:
    """vCenter may replace a client-chosen instanceUuid that clashes with another VM's (the
    API reference says it does on "an identifier conflict"): then the identity a backup
    will read is another, and it is locked too — or the restore fails (and the VM is
    destroyed) rather than go on unheld."""
    props = await ctx.session.properties(vm, ["config.instanceUuid"])
    actual = str(props.get("config.instanceUuid") or "")
    if actual.lower() == chosen.lower():
        return
    log.warning("restore.instance_uuid_replaced", vm=name, chosen=chosen, actual=actual)
    held.enter_context(
        vm_lock(ctx.repo.state.ensure(), ctx.session.vcenter_uuid, actual, name, what)
    )


async def _create_vm(ctx: Context, folder: Any, spec: Any, pool: Any, host: Any, name: str) -> Any:
    """CreateVM_Task. Cancelled while vCenter still creates the VM, the VM would be made
    anyway and stay behind, empty: wait for the task regardless, destroy what it made, then
    let the cancellation through."""
    if isinstance(pool, vim.VirtualApp):
        # "A virtual machine in a vApp is not associated with a VM folder and therefore
        # cannot be created using the method on a Folder" (vSphere API,
        # ResourcePool.CreateChildVM_Task): a VM restored into a vApp is made by the vApp.
        task = await ctx.session.call(pool, "CreateChildVM_Task", config=spec, host=host)
    else:
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
            await write_disk(
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
