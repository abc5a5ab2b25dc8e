"""Backing up a vApp as one set: every VM in it, nested vApps included, gets its own restore
point (workflow.backup_vm), and every point carries the same set record — the set id, the
vApp's path, its saved configuration tree (vsphere.vapps.read_vapp: start order, product
and OVF properties, IP allocation, resource allocation, nested vApps) and the expected
members. The set is complete when each expected member has a committed point with that id
(protector/vappsets.py); a member that failed leaves it incomplete, by construction — also
when the process dies half-way. docs/repository-format.md, "vApp sets"."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from protector.backup.model import BackupOptions, BackupResult, Progress
from protector.backup.workflow import backup_vm
from protector.context import Context
from protector.vsphere.vapps import member_morefs, read_vapp, walk

log = structlog.get_logger(__name__)


@dataclass
class VappBackupResult:
    group_id: str
    vapp_name: str
    vapp_moref: str
    members: list[str] = field(default_factory=list)  # VM MoRefs, nested vApps included
    results: list[BackupResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (VM MoRef, error)

    @property
    def ok(self) -> bool:
        return not self.failures


async def backup_vapp(
    ctx: Context,
    vapp: Any,
    opts: BackupOptions,
    *,
    path: str = "",
    vm_paths: dict[str, str] | None = None,
    job_id: str | None = None,
    progress: Progress | None = None,
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> VappBackupResult:
    """Back up every VM of a vApp (nested vApps included) as one job. Each VM gets its own
    restore point (each restores on its own); the points carry the same set record (id,
    vApp, configuration tree, members) in config_info["backup"]["group"], which links them.
    One VM failing does not stop the others; the failures are returned (cancellation stops
    the whole job)."""
    job_id = job_id or uuid.uuid4().hex[:12]
    saved = await read_vapp(ctx.session, vapp)
    members = member_morefs(saved)
    vms = [ctx.session.moref("VirtualMachine", m) for m in members]
    group = {
        "id": uuid.uuid4().hex,
        "kind": "vapp",
        "name": saved["name"],
        "path": path,
        "moref": vapp._moId,
        "members": members,
        "vapps": sum(1 for _ in walk(saved)),
        "tree": saved,
    }
    out = VappBackupResult(group["id"], group["name"], vapp._moId, members)
    # A member's path when the caller has none: where vCenter lists a VM that lives only
    # in a vApp, under the vApp's path (watcher/tree.py).
    paths = dict(_paths_in(saved, path)) if path else {}
    paths.update(vm_paths or {})
    log.info("backup.vapp_start", vapp=group["name"], vms=len(vms), group=group["id"])
    for vm in vms:
        try:
            res = await backup_vm(
                ctx,
                vm,
                opts,
                path=paths.get(vm._moId, ""),
                job_id=job_id,
                progress=progress,
                group=group,
                before_commit=before_commit,
            )
        except Exception as exc:  # the other VMs of the vApp still get their points
            log.error("backup.vapp_member_failed", vapp=group["name"], vm=vm._moId, error=str(exc))
            out.failures.append((vm._moId, str(exc)))
            continue
        out.results.append(res)
    return out


def _paths_in(node: dict[str, Any], path: str) -> list[tuple[str, str]]:
    out = [(vm, f"{path}/{name}") for vm, name in (node.get("vm_names") or {}).items()]
    for child in node.get("children") or []:
        out.extend(_paths_in(child, f"{path}/{child['name']}"))
    return out
