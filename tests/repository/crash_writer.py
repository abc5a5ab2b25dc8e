"""Child process for test_crash and test_concurrency: writes restore points until killed
(or, with a fourth argument, that many points), printing each committed point id (flushed)
so the parent knows what must survive."""

from __future__ import annotations

import os
import random
import sys
from datetime import UTC, datetime

from repository import DiskRecord, Repository, VmIdentity

CHUNK = 64 << 10


def main() -> None:
    repo = Repository.open(sys.argv[1], sys.argv[2])
    rnd = random.Random(int(sys.argv[3]))
    vms = [VmIdentity("vc", f"vm-{i}", f"vm{i}") for i in range(2)]
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    print("ready", flush=True)
    done = 0
    while limit is None or done < limit:
        vm = rnd.choice(vms)
        with repo.begin_point(vm) as pw:
            records = []
            for disk in ("d0", "d1"):
                base = pw.previous_index(disk)
                w = pw.disk_writer(8 * CHUNK, base)
                slots = range(8) if base is None else rnd.sample(range(8), 3)
                for s in slots:
                    w.put(s, os.urandom(CHUNK // 2) + bytes(CHUNK // 2))
                records.append(DiskRecord.for_index(disk, w.finish()))
            point = pw.commit(disks=records, started_at=datetime.now(UTC))
        print(point, flush=True)
        done += 1


if __name__ == "__main__":
    main()
