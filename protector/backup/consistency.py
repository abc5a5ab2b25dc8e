"""What a restore point's consistency really is, from vCenter's own account of the snapshot.

CreateSnapshot_Task's `quiesce`: "If TRUE and the virtual machine is powered on when the
snapshot is taken, VMware Tools is used to quiesce the file system in the virtual machine
... If the virtual machine is powered off or VMware Tools are not available, the quiesce
flag is ignored" (vSphere API, CreateSnapshotRequestType). The task succeeds either way, so
a client that asked for quiescing must look at the result: the snapshot tree node's
`quiesced` flag says whether it happened. A powered-off VM's disks are at rest, which is
its own kind of consistency: "powered-off" (issue 14, item 7).
"""

from __future__ import annotations

from typing import Any

from watcher.session import Session


def find_node(snapshot_info: Any, snapshot_moref: str) -> Any | None:
    stack = list(getattr(snapshot_info, "rootSnapshotList", None) or [])
    while stack:
        node = stack.pop()
        if node.snapshot is not None and node.snapshot._moId == snapshot_moref:
            return node
        stack.extend(node.childSnapshotList or [])
    return None


def judge(power_state: str | None, asked: str, node: Any | None) -> tuple[str, str]:
    """(consistency, why it is not what was asked, or "") — pure."""
    if power_state == "poweredOff":
        return "powered-off", ""
    if asked == "quiesced" and node is not None and not node.quiesced:
        return "crash", (
            "vCenter took the snapshot without quiescing (the quiesce flag is ignored when "
            "VMware Tools are not available): crash-consistent"
        )
    return asked, ""


def unquiesced_refusal(vm_moref: str, fallback: bool, consistency: str, why: str) -> str:
    """Why a backup must stop when vCenter ignored the quiesce flag and the policy says
    `on_quiesce_failure = "fail"`, or "" to go on. A powered-off VM is not refused: its
    disks are at rest, which is what quiescing is for. Pure."""
    if fallback or consistency != "crash" or not why:
        return ""
    return (
        f'VM {vm_moref}: {why}, and the policy\'s backup.on_quiesce_failure is "fail"; '
        'start VMware Tools in the guest, or set on_quiesce_failure = "crash-consistent"'
    )


async def point_consistency(
    session: Session, vm: Any, snapshot: Any, asked: str
) -> tuple[str, str]:
    props = await session.properties(vm, ["runtime.powerState", "snapshot"])
    node = find_node(props.get("snapshot"), snapshot._moId)
    return judge(str(props.get("runtime.powerState") or ""), asked, node)
