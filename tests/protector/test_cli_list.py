"""`vigil list NAME` when two VMs share the name (issue 19 item 6): it refuses, as `vigil
backup NAME` does, and lists each VM's path and instance UUID instead of mixing their
points; a path or instance UUID then lists just that VM's."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import anyio

from protector.backup import BackupOptions, backup_vm
from protector.devtools.simtools import create_folder
from protector.restore import Placement, restore_as_new

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]
Rig = Any  # the `rig` fixture of conftest.py


async def vigil(rig: Rig, *args: str) -> tuple[int, str]:
    proc = await anyio.run_process(
        [sys.executable, "-m", "protector.cli", "--config", str(rig.tmp / "vigil.toml"), *args],
        check=False,
        env=dict(os.environ),
        cwd=str(ROOT),
    )
    return proc.returncode, proc.stdout.decode() + proc.stderr.decode()


async def test_list_refuses_a_name_two_vms_share_and_lists_their_paths(rig: Rig) -> None:
    vm = await rig.prepare(2 * MIB, random.Random(3).randbytes(2 * MIB))
    first = (await rig.backup(vm)).point_id
    # A second VM of the same name, in another folder (a restored copy, say).
    await create_folder(rig.session, "/DC0/vm", "other")
    await restore_as_new(rig.ctx, first, Placement("DC0_H0_VM0", folder="/DC0/vm/other"))
    idx = rig.session.content.searchIndex
    ref = await rig.session.call(
        idx, "FindByInventoryPath", inventoryPath="DC0/vm/other/DC0_H0_VM0"
    )
    twin = rig.session.client.bind(ref)
    second = await backup_vm(
        rig.ctx, twin, BackupOptions(quiesce=False), path="/DC0/vm/other/DC0_H0_VM0"
    )
    code, out = await vigil(rig, "list", "DC0_H0_VM0")
    assert code == 2, out
    assert "2 VMs" in out and "/DC0/vm/DC0_H0_VM0" in out and "/DC0/vm/other/DC0_H0_VM0" in out
    assert first not in out and second.point_id not in out  # no mixed listing
    code, out = await vigil(rig, "list", "DC0_H0_VM0", "--json")
    assert code == 2 and "/DC0/vm/other/DC0_H0_VM0" in out
    code, out = await vigil(rig, "list", "/DC0/vm/other/DC0_H0_VM0")
    assert code == 0 and second.point_id in out and first not in out, out
    twin_uuid = rig.repo.load_manifest(second.point_id).vm.instance_uuid
    code, out = await vigil(rig, "list", twin_uuid)
    assert code == 0 and second.point_id in out and first not in out, out
