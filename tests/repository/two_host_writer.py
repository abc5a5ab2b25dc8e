"""Child process for test_repository_locks: another host (its own state directory) runs an
incremental of vm1 that reuses the base point's chunks, and waits between steps for the
parent's go (a line on stdin), printing what it did."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from repository import DiskRecord, Repository, VmIdentity

CHUNK = 64 << 10


def main() -> None:
    root, passphrase, state = sys.argv[1:4]
    repo = Repository.open(root, passphrase, Path(state))
    vm = VmIdentity("vc-uuid-1", "vm-uuid-1", "vm1", "/dc/vm/vm1", "vm-1")
    with repo.begin_point(vm) as pw:
        base = pw.previous_index("d")
        assert base is not None, "the base point must exist when we start"
        w = pw.disk_writer(base.capacity, base)
        w.put(0, b"\x07" * CHUNK)  # one changed slot; every other slot reuses the base's
        index = w.finish()
        print("reusing", pw.previous.point_id if pw.previous else "-", flush=True)
        sys.stdin.readline()  # the parent prunes now
        point = pw.commit(disks=[DiskRecord.for_index("d", index)], started_at=datetime.now(UTC))
    print("committed", point, flush=True)


if __name__ == "__main__":
    main()
