"""File-level restore: browse, search, extract and mount the files inside a restore point.

A point's disks are opened as random-access, read-only file objects that fetch chunks on
demand from the repository (`disk.py`, through one bounded cache shared by every open disk);
Dissect finds the volumes (MBR, GPT, LVM) and reads the filesystems on them (`volumes.py`,
`nodes.py`); the rest is pure tree logic over those nodes (listing, find, diff, extraction,
the FUSE view). Nothing here writes to the repository or to a guest disk.
"""
