"""Templates (issue 14 item 5): vCenter will not snapshot one, so a backup reads its disks
as they are and records consistency "template"; a restore as new makes a template again."""

from __future__ import annotations

import random
from typing import Any

import pytest

from protector.backup import BackupOptions, backup_vm
from protector.errors import UserError
from protector.restore import Placement, restore_as_new
from watcher.soap import VsphereFault

MIB = 1024 * 1024
Rig = Any


async def make_template(rig: Rig, content: bytes) -> Any:
    vm = await rig.prepare(2 * MIB, content)
    await rig.power(vm, False)
    await rig.session.call(vm, "MarkAsTemplate")
    return vm


async def test_the_simulator_refuses_to_snapshot_a_template(rig: Rig) -> None:
    vm = await make_template(rig, bytes(2 * MIB))
    with pytest.raises(VsphereFault) as err:
        await rig.snapshot(vm, "nope")
    assert err.value.fault_type == "NotSupported"
    assert await rig.snapshots(vm) == []


async def test_a_template_is_backed_up_without_snapshot_and_restored_as_template(
    rig: Rig,
) -> None:
    content = random.Random(5).randbytes(2 * MIB)
    vm = await make_template(rig, content)
    opts = BackupOptions(quiesce=True)  # asked for, but a template has no guest to quiesce
    result = await backup_vm(rig.ctx, vm, opts, path="/DC0/vm/DC0_H0_VM0")
    assert result.consistency == "template"
    saved = rig.repo.load_manifest(result.point_id).config_info["backup"]
    assert saved["consistency"] == "template" and saved["quiesce_error"] == ""
    assert await rig.snapshots(vm) == []
    out = rig.tmp / "disk.img"
    rig.repo.export_raw(result.point_id, result.disks[0].key, out)
    assert out.read_bytes() == content

    with pytest.raises(UserError, match="cannot be powered on"):
        await restore_as_new(rig.ctx, result.point_id, Placement("tpl-on"), power_on=True)
    await restore_as_new(rig.ctx, result.point_id, Placement("tpl-copy"), verify=True)
    copy = await rig.vm("tpl-copy")
    props = await rig.session.properties(copy, ["config.template"])
    assert props["config.template"] is True
    assert await rig.read_flat(copy, 2 * MIB) == content
