"""The VSS manifest of a quiesced Windows snapshot: where ESXi says it is, and why it is not.

After quiescing a Windows guest, VMware Tools (the VSS requester) hand hostd a zip of the
backup components document and the writer manifests; hostd stores it in the VM's snapshot
directory and publishes its path, relative to that directory, in the snapshot tree node's
`backupManifest` ("Available for certain quiesced snapshots only", vSphere API,
VirtualMachineSnapshotTree). The file name is ESXi's own ("<vm>-vss_manifests<N>.zip"), so
it is read from that property, never guessed. VDDK guide, "Working with Microsoft Shadow
Copy": "The VSS snapshot is created with the vss-manifest file, or without this file in the
error case": a quiesced Windows snapshot without one is recorded as `vss_manifest_error`.
Other guests quiesce without VSS and simply have none.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from protector.backup.consistency import find_node
from protector.context import Context
from protector.vsphere.disks import fetch_datastore_file, snapshot_dir
from protector.vsphere.dspath import join_datastore_path
from watcher.soap import VsphereError


def backup_manifest_of(snapshot_info: Any, snapshot_moref: str) -> str | None:
    """`backupManifest` of the tree node of `snapshot_moref` ("" when unset); None when the
    snapshot is not in the tree at all."""
    node = find_node(snapshot_info, snapshot_moref)
    return None if node is None else node.backupManifest or ""


def is_windows(config: Any) -> bool:
    return str(getattr(config, "guestId", "") or "").lower().startswith("windows")


async def fetch_vss_manifest(
    ctx: Context, vm: Any, snap: Any, config: Any, consistency: str, bound: Any
) -> tuple[bytes | None, str]:
    """(the manifest zip or None, why a quiesced Windows snapshot has none or "")."""
    if consistency != "quiesced":
        return None, ""
    path = ""
    try:
        props = await ctx.session.properties(vm, ["snapshot"])
        name = backup_manifest_of(props.get("snapshot"), snap._moId)
        if not name:
            if not is_windows(config):
                return None, ""
            why = (
                f"the quiesced snapshot {snap._moId} of this Windows guest has no "
                "backupManifest: VSS produced no manifest (VMware Tools' VSS requester failed; "
                "the guest's application event log says why), so application consistency "
                "cannot be confirmed"
                if name == ""
                else f"snapshot {snap._moId} is not in the VM's snapshot tree"
            )
            bound.warning("backup.vss_manifest_missing", snapshot=snap._moId, error=why)
            return None, why
        path = join_datastore_path(snapshot_dir(config.files), name)
        data = await fetch_datastore_file(ctx, vm, path)
    except (VsphereError, ValueError, aiohttp.ClientError, OSError) as exc:
        bound.warning("backup.vss_manifest_unreadable", path=path, error=str(exc))
        return None, f"reading the VSS manifest {path or '(path unknown)'} failed: {exc}"
    if data is None:
        why = f"backupManifest names {path}, but the datastore has no such file"
        bound.warning("backup.vss_manifest_missing", path=path, error=why)
        return None, why
    bound.info("backup.vss_manifest", path=path, bytes=len(data))
    return data, ""
