"""Issue 13 items 1 and 2: a VM being restored as new is held (its per-VM lock, keyed by the
instanceUuid restore chose for it) from before it exists until its last byte is written,
so a daemon backing up its folder cannot take a half-written point; and a restored copy
does not join its original's network unless asked to."""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

import protector.restore.as_new as as_new
from protector.restore import Placement, restore_as_new
from protector.vmlock import VmBusyError, lock_path, vm_lock

MIB = 1024 * 1024
Rig = Any  # the `rig` fixture of conftest.py


def is_held(path: Path) -> bool:
    """Whether some open file description holds the flock (a fresh open conflicts with it
    even inside the holder's process, as another process's would)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock this probe may have taken
    return False


async def backed_up_point(rig: Rig, size: int = 4 * MIB, seed: int = 5) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    vm = await rig.prepare(size, data)
    return (await rig.backup(vm)).point_id, data


async def test_restore_as_new_holds_the_new_vms_lock_until_its_last_byte(rig: Rig) -> None:
    point, data = await backed_up_point(rig)
    locks = rig.repo.root / "locks"
    before = set(locks.glob("*.lock")) if locks.is_dir() else set()
    held_during: list[set[Path]] = []

    def progress(done: int, total: int) -> None:
        # Called after each chunk written: which VM locks are held right now?
        now = set(locks.glob("*.lock")) - before if locks.is_dir() else set()
        held_during.append({p for p in now if is_held(p)})

    res = await restore_as_new(rig.ctx, point, Placement("copy-1"), progress=progress)
    new_vm = await rig.vm("copy-1")
    inst = (await rig.session.properties(new_vm, ["config.instanceUuid"]))["config.instanceUuid"]
    expected = lock_path(rig.repo.root, rig.session.vcenter_uuid, inst)
    assert held_during, "no progress was reported"
    assert all(h == {expected} for h in held_during), (held_during, expected)
    assert not is_held(expected)  # released once the restore is done
    assert res.vm_moref == new_vm._moId
    assert await rig.read_flat(new_vm, len(data)) == data


async def test_the_new_vm_gets_the_instance_uuid_restore_locked(rig: Rig) -> None:
    """The key is known before CreateVM_Task: restore sets the new VM's instanceUuid in the
    ConfigSpec itself, so whoever sees the VM first (the daemon's WaitForUpdatesEx) finds
    the lock under the identity it reads."""
    point, _data = await backed_up_point(rig)
    src = await rig.vm()
    src_inst = (await rig.session.properties(src, ["config.instanceUuid"]))["config.instanceUuid"]
    await restore_as_new(rig.ctx, point, Placement("copy-2"))
    props = await rig.session.properties(await rig.vm("copy-2"), ["config.instanceUuid"])
    inst = props["config.instanceUuid"]
    assert inst and inst.lower() != src_inst.lower()
    # Nothing holds it now: a backup of the restored VM may go ahead.
    with vm_lock(rig.repo.root, rig.session.vcenter_uuid, inst, "copy-2", "test"):
        pass


async def test_a_backup_of_a_vm_being_restored_as_new_is_refused_as_busy(rig: Rig) -> None:
    """The daemon's side: backup_vm on the new VM while restore holds it raises VmBusyError
    (the job runner retries it later, tests/protector/test_jobs.py)."""
    point, data = await backed_up_point(rig)
    outcome: list[BaseException | str] = []

    async def backup_now() -> None:
        try:
            await rig.backup(await rig.vm("copy-3"))
            outcome.append("backed up")
        except VmBusyError as exc:
            outcome.append(exc)

    tasks: list[asyncio.Task[None]] = []

    def progress(done: int, total: int) -> None:
        if not tasks:
            tasks.append(asyncio.get_running_loop().create_task(backup_now()))

    # Hold the restore at its first written chunk until the backup attempt is over: the
    # attempt then meets the restore midway, deterministically.
    real = as_new.write_disk

    async def write_disk_then_wait(*a: Any, **kw: Any) -> Any:
        out = await real(*a, **kw)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(as_new, "write_disk", write_disk_then_wait)
    try:
        await restore_as_new(rig.ctx, point, Placement("copy-3"), progress=progress)
    finally:
        mp.undo()
    assert len(outcome) == 1 and isinstance(outcome[0], VmBusyError), outcome
    assert "copy-3" in str(outcome[0]) and "restore of point" in str(outcome[0])
    # Once the restore is done, the same backup goes ahead and equals the point.
    result = await rig.backup(await rig.vm("copy-3"))
    restored = rig.repo.load_manifest(result.point_id)
    assert restored.vm.name == "copy-3"
    assert await rig.read_flat(await rig.vm("copy-3"), len(data)) == data


def _nics(config: Any) -> list[Any]:
    return [d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
