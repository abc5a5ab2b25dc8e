"""Restoring onto the existing VM: the target is found by the saved instanceUuid (a MoRef
changes when a VM is re-registered), saved disks map one-to-one onto the target's, and
Changed Block Tracking is reset afterwards so that the next backup reads the disks in full
(the restore's writes are not in CBT's record)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import anyio
import pytest
from pyVmomi import vim

from protector.errors import UserError
from protector.restore import find_original_vm, match_disks, restore_to_existing
from protector.vsphere.vmconfig import DiskInfo
from repository import DiskRecord

MIB = 1024 * 1024
Rig = Any  # the `rig` fixture of conftest.py
VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")


def data_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def reregister(rig: Rig, vm: Any) -> Any:
    """Unregister the VM and register its disk under a new VM with the same instanceUuid (as
    re-registering a .vmx does): the MoRef changes, the identity and the disk stay."""
    await rig.power(vm, False)
    props = await rig.session.properties(vm, ["config", "parent", "resourcePool"])
    cfg = props["config"]
    disk = await rig.disk(vm)
    await rig.session.call(vm, "UnregisterVM")
    ctrl = vim.vm.device.VirtualLsiLogicController(key=-100, busNumber=0, sharedBus="noSharing")
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=disk.backing.fileName, diskMode="persistent"
    )
    new_disk = vim.vm.device.VirtualDisk(
        key=-1, controllerKey=-100, unitNumber=0, capacityInKB=disk.capacityInKB, backing=backing
    )
    spec = vim.vm.ConfigSpec(
        name=cfg.name,
        instanceUuid=cfg.instanceUuid,
        uuid=cfg.uuid,
        guestId=cfg.guestId,
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=ctrl),
            vim.vm.device.VirtualDeviceSpec(operation="add", device=new_disk),
        ],
    )
    folder = rig.session.client.bind(props["parent"])
    ref = await rig.run(folder, "CreateVM_Task", config=spec, pool=props["resourcePool"])
    new = rig.session.client.bind(ref)
    assert new._moId != vm._moId
    return new


async def test_restore_to_existing_finds_a_reregistered_vm_by_instance_uuid(rig: Rig) -> None:
    size = 4 * MIB
    original = data_of(size, 1)
    vm = await rig.prepare(size, original)
    point = (await rig.backup(vm)).point_id
    new = await reregister(rig, vm)
    rig.flat(await rig.disk(new)).write_bytes(data_of(size, 2))  # damaged since

    manifest = rig.repo.load_manifest(point)
    assert manifest.vm.moref == vm._moId  # the saved MoRef is stale now
    found = await find_original_vm(rig.ctx, manifest)
    assert found._moId == new._moId

    proc = await anyio.run_process(
        [VIGIL, "--config", str(rig.tmp / "vigil.toml"), "restore", point, "--to-existing",
         "--json"],
        check=False,
        env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    r = json.loads(proc.stdout)
    assert r["vm"]["moref"] == new._moId
    assert await rig.read_flat(new, size) == original


async def test_restore_to_existing_refuses_when_the_vm_is_gone(rig: Rig) -> None:
    vm = await rig.prepare(2 * MIB, data_of(2 * MIB, 3))
    point = (await rig.backup(vm)).point_id
    await rig.power(vm, False)
    await rig.run(vm, "Destroy_Task")
    with pytest.raises(UserError, match=r"no longer exists.*--new-name"):
        await find_original_vm(rig.ctx, rig.repo.load_manifest(point))


def disk(key: int, address: str, capacity: int = MIB) -> DiskInfo:
    return DiskInfo(
        key=key,
        label=f"Hard disk {key}",
        controller_key=1000,
        unit_number=int(address.rpartition(":")[2]),
        address=address,
        capacity_bytes=capacity,
        backing="flat",
        file_name=f"[ds] vm/{key}.vmdk",
        datastore=None,
        base_name=f"[ds] vm/{key}.vmdk",
        provisioning="thin",
        disk_mode="persistent",
        uuid=None,
        change_id=None,
        skip_reason=None,
    )


def record(key: int, capacity: int = MIB) -> DiskRecord:
    return DiskRecord(key=str(key), capacity=capacity, index_id="00", base_name=f"{key}.vmdk")


def test_match_disks_by_key_then_address() -> None:
    saved = [disk(2000, "scsi0:0"), disk(2001, "scsi0:1")]
    current = [disk(2001, "scsi0:1"), disk(3000, "scsi0:0")]
    got = match_disks([record(2000), record(2001)], saved, current)
    assert {k: d.key for k, d in got.items()} == {"2000": 3000, "2001": 2001}


def test_match_disks_refuses_two_saved_disks_on_one_target() -> None:
    # Saved 2000 has no same-key disk and falls back to its address scsi0:0, where the
    # target keeps the disk with key 2001, which saved disk 2001 (scsi0:1) also claims.
    saved = [disk(2000, "scsi0:0"), disk(2001, "scsi0:1")]
    current = [disk(2001, "scsi0:0"), disk(2005, "scsi0:1")]
    with pytest.raises(UserError) as err:
        match_disks([record(2000), record(2001)], saved, current)
    msg = str(err.value)
    assert "one-to-one" in msg and "2000" in msg and "2001" in msg and "scsi0:0" in msg


async def test_next_backup_after_restore_to_existing_is_full(rig: Rig) -> None:
    """The restore's writes bypass Changed Block Tracking's record (datastore HTTP, or VDDK
    on a powered-off VM), so an incremental after it could miss them: the restore resets CBT
    (off, then on) and the next backup reads the whole disk."""
    size = 4 * MIB
    original = data_of(size, 4)
    vm = await rig.prepare(size, original)
    first = await rig.backup(vm)
    rig.flat(await rig.disk(vm)).write_bytes(data_of(size, 5))
    second = await rig.backup(vm)
    assert second.type == "incremental"  # CBT is working

    await rig.power(vm, False)
    res = await restore_to_existing(rig.ctx, first.point_id, vm)
    assert any("changed block tracking was reset" in n for n in res.notes), res.notes
    props = await rig.session.properties(vm, ["config.changeTrackingEnabled"])
    assert props["config.changeTrackingEnabled"] is True

    third = await rig.backup(vm)
    [d] = third.disks
    assert third.type == "full" and d.mode == "allocated-cbt", d.reason
    assert "change tracking was reset" in d.reason
    assert d.change_id.partition("/")[0] != second.disks[0].change_id.partition("/")[0]
    out = rig.tmp / "third.img"
    rig.repo.export_raw(third.point_id, d.key, out)
    assert out.read_bytes() == original
