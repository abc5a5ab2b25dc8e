"""Issue 13 items 1 and 2: a VM being restored as new is held (its per-VM lock, keyed by the
instanceUuid restore chose for it) from before it exists until its last byte is written,
so a daemon backing up its folder cannot take a half-written point; and a restored copy
does not join its original's network unless asked to."""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from pyVmomi import vim

import protector.restore.as_new as as_new
from protector.errors import UserError
from protector.restore import Placement, restore_as_new, restore_to_existing
from protector.restore.existing import wait_powered_off
from protector.vmlock import VmBusyError, lock_path, vm_lock

MIB = 1024 * 1024
Rig = Any  # the `rig` fixture of conftest.py
ROOT = Path(__file__).resolve().parents[2]


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
    state = rig.repo.state.ensure()  # per-VM locks are local state
    locks = lock_path(state, rig.session.vcenter_uuid, "x").parent
    before = set(locks.glob("*.lock")) if locks.is_dir() else set()
    held_during: list[set[Path]] = []

    def progress(done: int, total: int) -> None:
        # Called after each chunk written: which VM locks are held right now?
        now = set(locks.glob("*.lock")) - before if locks.is_dir() else set()
        held_during.append({p for p in now if is_held(p)})

    res = await restore_as_new(rig.ctx, point, Placement("copy-1"), progress=progress)
    new_vm = await rig.vm("copy-1")
    inst = (await rig.session.properties(new_vm, ["config.instanceUuid"]))["config.instanceUuid"]
    expected = lock_path(state, rig.session.vcenter_uuid, inst)
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
    with vm_lock(rig.repo.state.ensure(), rig.session.vcenter_uuid, inst, "copy-2", "test"):
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


# -- item 2: a restored copy stays off its original's network; guest shutdown first ---------


async def test_restore_as_new_leaves_network_adapters_disconnected(rig: Rig) -> None:
    point, _data = await backed_up_point(rig)
    saved = _nics((await rig.session.properties(await rig.vm(), ["config"]))["config"])
    assert saved and any(n.connectable.startConnected for n in saved)  # the original's are on
    res = await restore_as_new(rig.ctx, point, Placement("isolated"))
    nics = _nics((await rig.session.properties(await rig.vm("isolated"), ["config"]))["config"])
    assert len(nics) == len(saved)
    assert all(not n.connectable.startConnected and not n.connectable.connected for n in nics)
    assert any("disconnected" in n and "--connect-network" in n for n in res.notes)


async def test_restore_as_new_connects_the_network_when_asked(rig: Rig) -> None:
    point, _data = await backed_up_point(rig)
    saved = _nics((await rig.session.properties(await rig.vm(), ["config"]))["config"])
    res = await restore_as_new(rig.ctx, point, Placement("joined"), connect_network=True)
    nics = _nics((await rig.session.properties(await rig.vm("joined"), ["config"]))["config"])
    assert [n.connectable.startConnected for n in nics] == [
        n.connectable.startConnected for n in saved
    ]
    assert not any("disconnected" in n for n in res.notes)


async def test_cli_restore_as_new_says_the_network_is_disconnected(rig: Rig) -> None:
    point, _data = await backed_up_point(rig)
    out = await vigil(rig, "restore", point, "--new-name", "cli-copy")
    assert "network adapters were left disconnected" in out and "--connect-network" in out
    bad = await vigil(rig, "restore", point, "--to-existing", "--connect-network", code=2)
    assert "--connect-network applies to --new-name only" in bad
    bad = await vigil(rig, "restore", point, "--to-existing", "--force", code=2)
    assert "--force applies to --power-off only" in bad


async def test_power_off_without_vmware_tools_is_refused_unless_forced(rig: Rig) -> None:
    """The simulator's VMs have no Tools running: a guest shutdown cannot be asked for, so
    --power-off refuses (nothing written, the VM still on) and names --force."""
    point, data = await backed_up_point(rig)
    vm = await rig.vm()
    rig.flat(await rig.disk(vm)).write_bytes(bytes(len(data)))
    await rig.power(vm, True)
    with pytest.raises(UserError, match=r"VMware Tools is not running.*--force"):
        await restore_to_existing(rig.ctx, point, vm, power_off=True)
    assert await power_state(rig, vm) == "poweredOn"
    assert await rig.read_flat(vm, len(data)) != data
    await restore_to_existing(rig.ctx, point, vm, power_off=True, force=True)
    assert await power_state(rig, vm) == "poweredOff"
    assert await rig.read_flat(vm, len(data)) == data


async def test_a_guest_that_does_not_shut_down_in_time_is_not_written(rig: Rig) -> None:
    vm = await rig.vm()
    await rig.power(vm, True)
    loop = asyncio.get_running_loop()
    with pytest.raises(UserError, match=r"still poweredOn after 0.3 s.*--force"):
        await wait_powered_off(rig.ctx, vm, "DC0_H0_VM0", loop.time() + 0.3, 0.3, every=0.1)


async def test_power_off_shuts_the_guest_down_through_vmware_tools(tools_rig: Rig) -> None:
    rig = tools_rig
    point, data = await backed_up_point(rig)
    vm = await rig.vm()
    rig.flat(await rig.disk(vm)).write_bytes(bytes(len(data)))
    await rig.power(vm, True)
    res = await restore_to_existing(rig.ctx, point, vm, power_off=True)
    assert res.written_bytes and await power_state(rig, vm) == "poweredOff"
    assert await rig.read_flat(vm, len(data)) == data
    # vCenter's record says how it went down: a guest shutdown, not a power-off.
    events = await rig.session.call(
        rig.session.content.eventManager,
        "QueryEvents",
        filter=vim.event.EventFilterSpec(entity=vim.event.EventFilterSpec.ByEntity(
            entity=vm, recursion="self"
        )),
    )  # fmt: skip
    kinds = {type(e).__name__.rsplit(".", 1)[-1] for e in events}
    assert "VmGuestShutdownEvent" in kinds, kinds


async def power_state(rig: Rig, vm: Any) -> str:
    return (await rig.session.properties(vm, ["runtime.powerState"]))["runtime.powerState"]


async def vigil(rig: Rig, *args: str, code: int = 0) -> str:
    proc = await anyio.run_process(
        [sys.executable, "-m", "protector.cli", "--config", str(rig.tmp / "vigil.toml"), *args],
        check=False,
        env=dict(os.environ),
        cwd=str(ROOT),
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == code, (args, proc.returncode, out, err[-3000:])
    return out + err
