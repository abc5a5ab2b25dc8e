"""Backing up a vApp: each member VM gets its own restore point (workflow.backup_vm),
the points linked by one vApp id; members that fail are listed, the others still count."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from protector.backup.model import BackupOptions, BackupResult, Progress
from protector.backup.workflow import backup_vm
from protector.context import Context

log = structlog.get_logger(__name__)


@dataclass
class VappBackupResult:
    group_id: str
    vapp_name: str
    vapp_moref: str
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
    vm_paths: dict[str, str] | None = None,
    job_id: str | None = None,
    progress: Progress | None = None,
) -> VappBackupResult:
    """Back up every VM of a vApp as one job. Each VM gets its own restore point (each
    restores on its own); the points carry the same group record (id, vApp, members) in
    config_info["backup"]["group"], which links them. One VM failing does not stop the
    others; the failures are returned (cancellation stops the whole job)."""
    job_id = job_id or uuid.uuid4().hex[:12]
    props = await ctx.session.properties(vapp, ["name", "vm"])
    vms = [ctx.session.client.bind(v) for v in props.get("vm") or []]
    group = {
        "id": uuid.uuid4().hex,
        "kind": "vapp",
        "name": props.get("name", ""),
        "moref": vapp._moId,
        "members": [v._moId for v in vms],
    }
    out = VappBackupResult(group["id"], group["name"], vapp._moId)
    log.info("backup.vapp_start", vapp=group["name"], vms=len(vms), group=group["id"])
    for vm in vms:
        try:
            res = await backup_vm(
                ctx,
                vm,
                opts,
                path=(vm_paths or {}).get(vm._moId, ""),
                job_id=job_id,
                progress=progress,
                group=group,
            )
        except Exception as exc:  # the other VMs of the vApp still get their points
            log.error("backup.vapp_member_failed", vapp=group["name"], vm=vm._moId, error=str(exc))
            out.failures.append((vm._moId, str(exc)))
            continue
        out.results.append(res)
    return out
