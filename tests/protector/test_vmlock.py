"""One backup or restore of a VM at a time, across processes: a per-VM flock in the
repository's locks/ directory, taken without waiting; the loser gets VmBusyError naming
the VM and the holder. The kernel frees the lock when the holder dies."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from protector.restore import restore_to_existing
from protector.vmlock import VmBusyError, lock_path

MIB = 1024 * 1024
Rig = Any  # the `rig` fixture of conftest.py
VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")

HOLDER = """
import sys, time
from protector.vmlock import vm_lock
root, vc, inst = sys.argv[1:4]
with vm_lock(root, vc, inst, "DC0_H0_VM0", "backup job from-the-daemon"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def hold_lock(rig: Rig, instance_uuid: str) -> subprocess.Popen[str]:
    """Another process (the daemon, say) holding the VM's lock until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(rig.repo.state.ensure()), rig.session.vcenter_uuid,
         instance_uuid],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


async def test_backup_and_restore_refuse_a_vm_another_process_holds(rig: Rig) -> None:
    size = 2 * MIB
    original = random.Random(1).randbytes(size)
    vm = await rig.prepare(size, original)
    first = await rig.backup(vm)
    path = lock_path(rig.repo.state.ensure(), rig.session.vcenter_uuid, first.vm.instance_uuid)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    holder = hold_lock(rig, first.vm.instance_uuid.upper())  # case does not matter
    try:
        with pytest.raises(VmBusyError) as err:
            await rig.backup(vm)
        msg = str(err.value)
        assert "DC0_H0_VM0" in msg and f"process {holder.pid}" in msg
        assert "backup job from-the-daemon" in msg
        assert err.value.holder["pid"] == holder.pid
        assert await rig.snapshots(vm) == []  # refused before touching the VM

        await rig.power(vm, False)
        rig.flat(await rig.disk(vm)).write_bytes(bytes(size))
        with pytest.raises(VmBusyError, match="DC0_H0_VM0"):
            await restore_to_existing(rig.ctx, first.point_id, vm)
        assert await rig.read_flat(vm, size) == bytes(size)  # nothing written

        proc = await anyio.run_process(
            [VIGIL, "--config", str(rig.tmp / "vigil.toml"), "backup", "DC0_H0_VM0", "--json"],
            check=False,
            env=dict(os.environ),
        )
        assert proc.returncode == 2
        error = json.loads(proc.stdout)["error"]
        assert "is busy" in error["message"] and str(holder.pid) in error["message"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops the flock with the process
        holder.wait()
    res = await restore_to_existing(rig.ctx, first.point_id, vm)
    assert res.written_bytes == size and await rig.read_flat(vm, size) == original
    assert (await rig.backup(vm)).point_id != first.point_id


async def test_different_vms_do_not_block_each_other(rig: Rig) -> None:
    vm0 = await rig.prepare(MIB, random.Random(2).randbytes(MIB))
    vm1 = await rig.prepare(MIB, random.Random(3).randbytes(MIB), name="DC0_H0_VM1")
    props = await rig.session.properties(vm0, ["config.instanceUuid"])
    holder = hold_lock(rig, props["config.instanceUuid"])
    try:
        assert (await rig.backup(vm1)).type == "full"
    finally:
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait()
    assert (await rig.backup(vm0)).type == "full"
