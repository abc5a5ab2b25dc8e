"""Snapshot housekeeping around a backup, against the simulator: consolidation when removing
our snapshot left the VM needing it (vcsim `-consolidation-needed`, `-consolidate-fault`),
and CBT enabled only on a VM without snapshots, checked after the reconfigure."""

from __future__ import annotations

import random
from typing import Any

import structlog
from pyVmomi import vim

MIB = 1024 * 1024
Rig = Any


def data(seed: int) -> bytes:
    return random.Random(seed).randbytes(2 * MIB)


async def point_backup(rig: Rig, vm: Any, **kw: Any) -> dict[str, Any]:
    result = await rig.backup(vm, **kw)
    return rig.repo.load_manifest(result.point_id).config_info["backup"]  # type: ignore[no-any-return]


async def consolidation_needed(rig: Rig, vm: Any) -> bool:
    props = await rig.session.properties(vm, ["runtime.consolidationNeeded"])
    return bool(props.get("runtime.consolidationNeeded"))


async def test_a_vm_left_needing_consolidation_is_consolidated_and_reported(
    upkeep_rig: Rig,
) -> None:
    rig = upkeep_rig
    vm = await rig.prepare(2 * MIB, data(1))
    saved = await point_backup(rig, vm)
    assert saved["consolidation"] == {"needed": True, "consolidated": True, "error": ""}
    assert not await consolidation_needed(rig, vm)

    # The host refuses (a delta still locked): the backup stands, the failure is recorded
    # and the VM is left as vCenter reports it.
    other = await rig.prepare(2 * MIB, data(2), name="DC0_H0_VM1")
    saved = await point_backup(rig, other)
    c = saved["consolidation"]
    assert c["needed"] is True and c["consolidated"] is False
    assert "ConsolidateVMDisks_Task failed" in c["error"] and "locked" in c["error"]
    assert await consolidation_needed(rig, other)


async def test_no_consolidation_when_none_is_needed(rig: Rig) -> None:
    vm = await rig.prepare(2 * MIB, data(3))
    saved = await point_backup(rig, vm)
    assert "consolidation" not in saved


async def test_cbt_is_enabled_only_on_a_vm_without_snapshots(rig: Rig) -> None:
    vm = await rig.prepare(2 * MIB, data(4))
    await rig.set_cbt(vm, False)
    await rig.snapshot(vm, "admin's own snapshot")
    saved = await point_backup(rig, vm)
    assert saved["cbt_enabled_now"] is False
    assert "1 snapshot(s)" in saved["cbt_not_enabled"]
    props = await rig.session.properties(vm, ["config.changeTrackingEnabled"])
    assert not props.get("config.changeTrackingEnabled")

    other = await rig.prepare(2 * MIB, data(5), name="DC0_H0_VM1")
    await rig.set_cbt(other, False)
    saved = await point_backup(rig, other)
    assert saved["cbt_enabled_now"] is True and "cbt_not_enabled" not in saved
    props = await rig.session.properties(other, ["config.changeTrackingEnabled"])
    assert props.get("config.changeTrackingEnabled") is True


async def test_simulator_can_ignore_enabling_cbt_while_snapshots_exist(upkeep_rig: Rig) -> None:
    """vcsim `-cbt-refuse-with-snapshots`: the task succeeds, nothing changes; vigil's own
    read-back catches it (a snapshot taken between its check and its reconfigure)."""
    from protector.vsphere.upkeep import enable_cbt_checked

    rig = upkeep_rig
    vm = await rig.vm()
    await rig.set_cbt(vm, False)
    await rig.snapshot(vm, "s")
    await rig.run(vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(changeTrackingEnabled=True))
    props = await rig.session.properties(vm, ["config.changeTrackingEnabled"])
    assert not props.get("config.changeTrackingEnabled")

    class Racing:  # the snapshot check answers "none", as it would a moment earlier
        def __getattr__(self, name: str) -> Any:
            return getattr(rig.session, name)

        async def properties(self, obj: Any, paths: list[str]) -> dict[str, Any]:
            if paths == ["snapshot"]:
                return {}
            return await rig.session.properties(obj, paths)

    now, why = await enable_cbt_checked(Racing(), vm, structlog.get_logger())  # type: ignore[arg-type]
    assert now is False and "config.changeTrackingEnabled is still false" in why
