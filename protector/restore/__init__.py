"""Restoring a restore point: onto the existing VM (existing.py; with `changed_only` only
the chunks CBT says changed since the point, changed_only.py), or as a new VM (as_new.py,
with the cleanup of a half-built one), a vApp set as a new vApp (vapp.py). points.py loads
the point and matches its disks,
diskwrite.py writes one disk, verify.py reads it back, result.py is what the CLI prints.

Owns: the restore workflows. May import: protector.vsphere, protector.context/parallel/
vmlock/errors/vappsets, repository, disk_io, watcher. Never imports protector.backup (but for the
changeId rule in backup.changeplan), daemon or cli."""

from __future__ import annotations

from protector.restore.as_new import Placement, restore_as_new
from protector.restore.existing import restore_to_existing
from protector.restore.points import find_original_vm, match_disks
from protector.restore.result import RestoreResult

__all__ = [
    "Placement",
    "RestoreResult",
    "find_original_vm",
    "match_disks",
    "restore_as_new",
    "restore_to_existing",
]
