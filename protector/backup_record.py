"""A backup's result as the record `vigil backup --json` prints and the daemon's control
socket sends (docs/control-socket.md): one shape wherever the backup ran. No imports of the
backup code: `vigil --help` loads this module."""

from __future__ import annotations

from typing import Any


def result_record(r: Any) -> dict[str, Any]:
    return {
        "id": r.point_id,
        "vm": {
            "name": r.vm.name,
            "path": r.vm.path,
            "instance_uuid": r.vm.instance_uuid,
            "moref": r.vm.moref,
        },
        "created_at": r.finished_at.isoformat().replace("+00:00", "Z"),
        "type": r.type,
        "status": "committed",
        "consistency": r.consistency,
        "read_bytes": r.read_bytes,
        "stored_bytes": r.stored_bytes,
        "seconds": round((r.finished_at - r.started_at).total_seconds(), 3),
        "disks": [
            {
                "key": d.key,
                "name": d.name,
                "address": d.address,
                "capacity_bytes": d.capacity_bytes,
                "read_bytes": d.read_bytes,
                "stored_bytes": d.stored_bytes,
                "change_id": d.change_id,
                "transport": d.transport,
                "mode": d.mode,
                "reason": d.reason,
                "skipped_reason": d.skipped_reason,
            }
            for d in r.disks
        ],
        # Why vigil's snapshot is still on the VM (null when it was removed).
        "snapshot_left": r.snapshot_left or None,
    }
