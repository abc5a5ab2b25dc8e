"""Acting like an admin on a (simulated) vCenter: find objects, create folders and VMs,
move them. Used by the demo, the daemon tests and the benchmarks."""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from watcher.session import Session
from watcher.tasks import wait_for_task

DEFAULT_POOL = "/DC0/host/DC0_C0/Resources"


async def find(session: Session, path: str) -> Any:
    """The object at an inventory path ("/DC0/vm/prod"), or a clear error."""
    ref = await session.call(
        session.content.searchIndex, "FindByInventoryPath", inventoryPath=path.strip("/")
    )
    if ref is None:
        raise LookupError(f"{path} not found in the inventory")
    return session.client.bind(ref)


async def create_folder(session: Session, parent_path: str, name: str) -> Any:
    ref = await session.call(await find(session, parent_path), "CreateFolder", name=name)
    return session.client.bind(ref)


def thin_disk_vm_spec(name: str, disk_kb: int, *, guest: str = "otherGuest64") -> Any:
    """A small VM with one PVSCSI controller and one thin disk."""
    ctrl = vim.vm.device.VirtualDeviceSpec(
        operation="add",
        device=vim.vm.device.ParaVirtualSCSIController(
            key=-100, busNumber=0, sharedBus="noSharing"
        ),
    )
    disk = vim.vm.device.VirtualDeviceSpec(
        operation="add",
        fileOperation="create",
        device=vim.vm.device.VirtualDisk(
            key=-101,
            controllerKey=-100,
            unitNumber=0,
            capacityInKB=disk_kb,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                diskMode="persistent", thinProvisioned=True, fileName=""
            ),
        ),
    )
    return vim.vm.ConfigSpec(
        name=name,
        guestId=guest,
        numCPUs=1,
        memoryMB=512,
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        deviceChange=[ctrl, disk],
    )


async def create_vm(
    session: Session,
    folder_path: str,
    name: str,
    *,
    pool_path: str = DEFAULT_POOL,
    host_path: str | None = None,
    disk_kb: int = 1024,
    guest: str = "otherGuest64",
) -> Any:
    """CreateVM_Task as an admin would; returns the new VM's MoRef."""
    folder = await find(session, folder_path)
    pool = await find(session, pool_path)
    host = await find(session, host_path) if host_path else None
    spec = thin_disk_vm_spec(name, disk_kb, guest=guest)
    task = await session.call(folder, "CreateVM_Task", config=spec, pool=pool, host=host)
    return session.client.bind(await wait_for_task(session, task, timeout=60))


async def move_vm(session: Session, vm: Any, folder_path: str) -> None:
    folder = await find(session, folder_path)
    task = await session.call(folder, "MoveIntoFolder_Task", list=[vm])
    await wait_for_task(session, task, timeout=60)
