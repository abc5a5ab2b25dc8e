"""Backing up a VM (workflow.py: snapshot, config, disks, commit), its disks (diskcopy.py,
the areas to read from changeplan.py's changeId rules), a vApp (vapp.py); model.py holds
the options and results; consistency.py (what the snapshot really is: quiesced, crash,
powered-off), vss.py (the VSS manifest the snapshot tree names).

Owns: the backup workflow. May import: protector.vsphere, the shared protector modules
(config, context, parallel, vmlock, errors), repository, disk_io, watcher. Never imports
protector.restore, daemon or cli."""

from __future__ import annotations

from protector.backup.model import BackupOptions, BackupResult, DiskResult
from protector.backup.vapp import VappBackupResult, backup_vapp
from protector.backup.workflow import backup_vm

__all__ = [
    "BackupOptions",
    "BackupResult",
    "DiskResult",
    "VappBackupResult",
    "backup_vapp",
    "backup_vm",
]
