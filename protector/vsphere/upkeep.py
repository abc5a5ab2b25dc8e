"""Snapshot housekeeping around a backup: consolidation after our snapshot is removed, and
enabling Changed Block Tracking only where it can take effect (docs/vcsim.md, "Consolidation
and enabling CBT").

- `runtime.consolidationNeeded`: "Whether any disk of the virtual machine requires
  consolidation. This can happen for example when a snapshot is deleted but its associated
  disk is not committed back to the base disk. Use ConsolidateVMDisks_Task to consolidate if
  needed" (vSphere API, VirtualMachineRuntimeInfo, since 5.0). A VM left needing it keeps
  growing delta files; vigil consolidates right away and records what happened.
- CBT: "If false, activate changed block tracking ... Create a snapshot of the virtual
  machine. The snapshot operation causes a stun-unstun cycle" (VDDK guide, "Enable Changed
  Block Tracking"). vigil enables it only when the VM has no snapshots (VMware's rule, as
  issue 14 states it), then reads `config.changeTrackingEnabled` back and says why it is
  still off when it is.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from watcher.session import Session
from watcher.soap import VsphereError
from watcher.tasks import wait_for_task


def count_snapshots(snapshot_info: Any) -> int:
    stack = list(getattr(snapshot_info, "rootSnapshotList", None) or [])
    n = 0
    while stack:
        node = stack.pop()
        n += 1
        stack.extend(node.childSnapshotList or [])
    return n


async def consolidate_if_needed(session: Session, vm: Any, bound: Any) -> dict[str, Any] | None:
    """None when the VM needs no consolidation; else what was done:
    {"needed": True, "consolidated": bool, "error": str}."""
    props = await session.properties(vm, ["runtime.consolidationNeeded"])
    if not props.get("runtime.consolidationNeeded"):
        return None
    bound.warning("backup.consolidation_needed", vm=vm._moId)
    try:
        task = await session.call(vm, "ConsolidateVMDisks_Task")
        await wait_for_task(session, task, timeout=3600, description=f"consolidate {vm._moId}")
    except VsphereError as exc:
        why = (
            f"the VM's disks need consolidation and ConsolidateVMDisks_Task failed: {exc}; "
            "consolidate it in vCenter (Snapshots > Consolidate) once the cause is gone"
        )
        bound.error("backup.consolidation_failed", vm=vm._moId, error=str(exc))
        return {"needed": True, "consolidated": False, "error": why}
    still = (await session.properties(vm, ["runtime.consolidationNeeded"])).get(
        "runtime.consolidationNeeded"
    )
    if still:
        why = "ConsolidateVMDisks_Task succeeded but runtime.consolidationNeeded is still set"
        bound.error("backup.consolidation_incomplete", vm=vm._moId)
        return {"needed": True, "consolidated": False, "error": why}
    bound.info("backup.consolidated", vm=vm._moId)
    return {"needed": True, "consolidated": True, "error": ""}


async def enable_cbt_checked(session: Session, vm: Any, bound: Any) -> tuple[bool, str]:
    """(enabled now, why not): enable CBT when the VM has no snapshots and check it took."""
    props = await session.properties(vm, ["snapshot"])
    existing = count_snapshots(props.get("snapshot"))
    if existing:
        why = (
            f"CBT not enabled: the VM has {existing} snapshot(s), and VMware enables changed "
            "block tracking only on a VM without snapshots; delete or consolidate them and "
            "the next backup enables it (this one reads every allocated block)"
        )
        bound.warning("backup.cbt_not_enabled", vm=vm._moId, reason=why)
        return False, why
    bound.info("backup.enable_cbt")
    spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
    task = await session.call(vm, "ReconfigVM_Task", spec=spec)
    await wait_for_task(session, task, description=f"enable CBT on {vm._moId}")
    after = await session.properties(vm, ["config.changeTrackingEnabled"])
    if not after.get("config.changeTrackingEnabled"):
        why = (
            "CBT not enabled: vCenter accepted ReconfigVM_Task(changeTrackingEnabled=true) "
            "but config.changeTrackingEnabled is still false (a snapshot appeared meanwhile, "
            "or the host refused it: see the VM's events)"
        )
        bound.warning("backup.cbt_not_enabled", vm=vm._moId, reason=why)
        return False, why
    return True, ""
