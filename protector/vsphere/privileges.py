"""The vCenter privileges vigil needs (docs/vcenter-role.md explains each) and which of them
the logged-in account lacks, read with AuthorizationManager.HasPrivilegeOnEntities (vSphere
API 6.5+: "Check whether a session holds a set of privileges on a set of managed entities"),
asked on the root folder, where docs/vcenter-role.md says to grant the role."""

from __future__ import annotations

from typing import Any

from watcher.session import Session

# (privilege id, what it is for); the order is docs/vcenter-role.md's.
ROLE: tuple[tuple[str, str], ...] = (
    ("System.View", "inventory"),
    ("System.Read", "properties"),
    ("VirtualMachine.State.CreateSnapshot", "backup snapshots"),
    ("VirtualMachine.State.RemoveSnapshot", "removing them, consolidation"),
    ("VirtualMachine.Config.ChangeTracking", "enabling CBT"),
    ("VirtualMachine.Provisioning.DiskRandomRead", "reading disks (VDDK)"),
    ("VirtualMachine.Provisioning.GetVmFiles", "reading over datastore HTTP"),
    ("Global.DisableMethods", "VDDK PrepareForAccess"),
    ("Global.EnableMethods", "VDDK EndAccess"),
    ("Datastore.Browse", "datastore HTTP"),
    ("Datastore.FileManagement", "writing over datastore HTTP"),
    ("Datastore.AllocateSpace", "restore as new"),
    ("VirtualMachine.Inventory.Create", "restore as new"),
    ("VirtualMachine.Inventory.Delete", "removing a half-built restore"),
    ("VirtualMachine.Config.AddNewDisk", "restore as new"),
    ("VirtualMachine.Config.Settings", "restore as new (video card)"),
    ("VirtualMachine.Provisioning.DiskRandomAccess", "writing disks (VDDK)"),
    ("VirtualMachine.Provisioning.MarkAsTemplate", "restoring a template"),
    ("VirtualMachine.Interact.PowerOn", "restore --power-on"),
    ("VirtualMachine.Interact.PowerOff", "restore --power-off"),
    ("Resource.AssignVMToPool", "restore as new"),
    ("Network.Assign", "restore as new (network adapters)"),
)


def missing_from(answer: list[Any], wanted: list[str]) -> list[str]:
    """The wanted privilege ids an EntityPrivilege answer does not grant (on any entity
    asked about), in `wanted` order. Pure."""
    granted: dict[str, bool] = {}
    for entity in answer or []:
        for avail in entity.privAvailability or []:
            granted[avail.privId] = granted.get(avail.privId, True) and bool(avail.isGranted)
    return [p for p in wanted if not granted.get(p, False)]


async def missing_privileges(session: Session) -> list[str]:
    """The privileges of ROLE the session's account lacks on the root folder."""
    content = session.content
    manager = session.client.bind(content.authorizationManager)
    current = (await session.properties(content.sessionManager, ["currentSession"]))[
        "currentSession"
    ]
    wanted = [p for p, _ in ROLE]
    answer = await session.call(
        manager,
        "HasPrivilegeOnEntities",
        entity=[content.rootFolder],
        sessionId=current.key,
        privId=wanted,
    )
    return missing_from(list(answer or []), wanted)
