"""The simulator VM the backup benchmarks start from: its first disk grown to the image's size
and CBT off, so each run backs up a disk that was never backed up (bench_e2e, bench_backup_cli)."""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from watcher.session import Session
from watcher.tasks import wait_for_task


async def fresh_flat_disk(session: Session, vm_name: str, size: int) -> tuple[Any, str]:
    """Grows `vm_name`'s first disk to `size` bytes with CBT off; returns the VM and its flat
    file's path inside the datastore (the base disk: no snapshot of an earlier run is left)."""
    idx = session.content.searchIndex
    ref = await session.call(idx, "FindByInventoryPath", inventoryPath=f"DC0/vm/{vm_name}")
    vm: Any = session.client.bind(ref)
    config = (await session.properties(vm, ["config"]))["config"]
    disk = next(d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
    t = await session.call(
        vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(changeTrackingEnabled=False)
    )
    await wait_for_task(session, t)
    if disk.capacityInKB * 1024 != size:
        disk.capacityInKB = size // 1024
        change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
        t = await session.call(vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(deviceChange=[change]))
        await wait_for_task(session, t)
    return vm, disk.backing.fileName.split("] ", 1)[1].replace(".vmdk", "-flat.vmdk", 1)


async def set_cbt(session: Session, vm_name: str, on: bool) -> None:
    """Turns Changed Block Tracking of `vm_name` on or off (ReconfigVM_Task), as an admin or
    a storage migration does between two backups."""
    idx = session.content.searchIndex
    ref = await session.call(idx, "FindByInventoryPath", inventoryPath=f"DC0/vm/{vm_name}")
    vm: Any = session.client.bind(ref)
    t = await session.call(vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(changeTrackingEnabled=on))
    await wait_for_task(session, t)
