"""A backup process killed outright (SIGKILL, OOM killer, power loss of the backup host)
cannot clean up: its snapshot stays on the VM. The next backup of the VM must recognise it
as a leftover (its owner process is gone), remove it, and work."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from protector.vsphere.snapshots import SNAPSHOT_NAME, walk_snapshots

MIB = 1024 * 1024
Rig = Any  # the rig fixtures of conftest.py
VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")


async def our_snapshot_descriptions(rig: Rig, vm: Any) -> list[str]:
    info = (await rig.session.properties(vm, ["snapshot"])).get("snapshot")
    nodes = walk_snapshots(info.rootSnapshotList if info else None)
    return [n.description for n in nodes if n.name == SNAPSHOT_NAME]


async def test_snapshot_of_a_killed_backup_process_is_removed_by_the_next_run(
    vddk_rig: Rig,
) -> None:
    rig = vddk_rig
    size = 8 * MIB
    data = random.Random(5).randbytes(size)
    vm = await rig.prepare(size, data)
    env = {**os.environ, "FAKEVDDK_SLOW_READ_US": "200000"}  # slow enough to be caught
    proc = await anyio.open_process(
        [VIGIL, "--config", str(rig.tmp / "vigil.toml"), "backup", "DC0_H0_VM0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not await our_snapshot_descriptions(rig, vm):
            assert proc.returncode is None, "the backup ended before it could be killed"
            assert time.monotonic() < deadline, "the backup never took its snapshot"
            await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # reading the disk now
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    [left] = await our_snapshot_descriptions(rig, vm)
    assert f":{proc.pid};" in left  # owned by the process that is gone now
    assert rig.repo.list_points() == []

    result = await rig.backup(vm)
    assert result.leftovers_removed == 1
    assert await rig.snapshots(vm) == []
    out = rig.tmp / "disk.img"
    rig.repo.export_raw(result.point_id, result.disks[0].key, out)
    assert out.read_bytes() == data


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_terminated_cli_backup_removes_its_snapshot_before_exiting(
    vddk_rig: Rig, sig: signal.Signals
) -> None:
    """`timeout 1h vigil backup …`, a cron job stopped by systemd, Ctrl-C: the process is
    told to stop, not killed, so it must remove its snapshot and commit nothing."""
    rig = vddk_rig
    size = 8 * MIB
    vm = await rig.prepare(size, random.Random(6).randbytes(size))
    env = {**os.environ, "FAKEVDDK_SLOW_READ_US": "200000"}
    with (rig.tmp / "stderr.txt").open("wb") as stderr:
        proc = await anyio.open_process(
            [VIGIL, "--config", str(rig.tmp / "vigil.toml"), "backup", "DC0_H0_VM0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while not await our_snapshot_descriptions(rig, vm):
            assert proc.returncode is None, "the backup ended before it could be stopped"
            assert time.monotonic() < deadline, "the backup never took its snapshot"
            await anyio.sleep(0.05)
        await anyio.sleep(0.3)
        proc.send_signal(sig)
        with anyio.fail_after(30):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = (rig.tmp / "stderr.txt").read_text()
    assert proc.returncode == 128 + sig, err
    assert err.rstrip().endswith("interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)")
    assert await rig.snapshots(vm) == []  # removed by the process itself, not a later run
    assert rig.repo.list_points() == []
