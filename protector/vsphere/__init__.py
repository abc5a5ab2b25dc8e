"""vSphere operations protector needs, one place each: connect.py (sessions and the
admin's view of connection errors), snapshots.py (create, remove, the leftover rule used by
the per-VM cleanup and the daemon's inventory scan), vmconfig.py (ConfigInfo capture and
disk summaries), configspec.py (ConfigSpec rebuild), placement.py (where a new VM goes),
vmlookup.py (a VM from what an admin types), disks.py (opening a disk through disk_io,
changed areas, datastore files, VDDK's PrepareForAccess/EndAccess), dspath.py (datastore
paths), upkeep.py (consolidation after a snapshot's removal, enabling CBT checked).

May import: the shared protector modules (config, context, parallel, errors), watcher,
disk_io. Never imports backup, restore, daemon, cli or devtools."""
