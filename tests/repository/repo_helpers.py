"""Helpers shared by the repository tests (a uniquely named module, not a conftest)."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from pathlib import Path

from repository import DiskRecord, KdfParams, Repository, VmIdentity

CHUNK = 64 << 10
ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("crash_writer.py")  # a writer process for crash tests
POINT_ID = re.compile(r"[0-9a-f]{16}-\d{8}T\d{6}Z-\d{6}")
FAST_KDF = KdfParams(time_cost=1, memory_kib=1024, parallelism=1)
PASSPHRASE = "correct horse battery staple"


def new_repo(path: Path, passphrase: str | None = PASSPHRASE) -> Repository:
    return Repository.init(path, chunk_size=CHUNK, passphrase=passphrase, kdf=FAST_KDF)


def make_disk(size: int, seed: int, zero_slots: tuple[int, ...] = ()) -> bytearray:
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(size))
    # Mix in compressible text so both the zstd and the raw path are exercised.
    for i in range(0, size, CHUNK * 3):
        data[i : i + CHUNK // 2] = (b"log line %d ok\n" % i * 4000)[: len(data[i : i + CHUNK // 2])]
    for s in zero_slots:
        data[s * CHUNK : (s + 1) * CHUNK] = bytes(len(data[s * CHUNK : (s + 1) * CHUNK]))
    return data


def vm(n: int = 1, name: str | None = None) -> VmIdentity:
    return VmIdentity("vc-uuid-1", f"vm-uuid-{n}", name or f"vm{n}", f"/dc/vm/vm{n}", f"vm-{n}")


def write_point(
    repo: Repository,
    identity: VmIdentity,
    disks: dict[str, bytes | bytearray],
    changed: dict[str, set[int]] | None = None,
    **commit: object,
) -> str:
    """Back up `disks`; with `changed`, an incremental that puts only those slots."""
    with repo.begin_point(identity) as pw:
        records = []
        for key, data in disks.items():
            base = pw.previous_index(key) if changed is not None else None
            w = pw.disk_writer(len(data), base)
            slots = changed[key] if changed is not None and base else range(-(-len(data) // CHUNK))
            for s in slots:
                w.put(s, bytes(data[s * CHUNK : (s + 1) * CHUNK]))
            records.append(DiskRecord.for_index(key, w.finish(), change_id=f"52 {key}/1"))
        return pw.commit(disks=records, started_at=datetime.now(UTC), **commit)  # type: ignore[arg-type]


def read_back(repo: Repository, point: str, disk: str) -> bytes:
    out = bytearray()
    for offset, data in repo.read_disk(point, disk):
        assert offset == len(out)
        index = repo.disk_index(point, disk)[1]
        out += data if data is not None else bytes(index.slot_length(offset // CHUNK))
    return bytes(out)


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def chunk_files(root: Path) -> set[str]:
    return {p.name for p in (root / "chunks").rglob("*") if p.is_file()}
