"""Verify: every referenced chunk exists; optionally decrypt, decompress and re-hash them;
check each VM's manifest chain. Names each bad object and the points/disks it breaks."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from repository import codec
from repository.backend import Backend
from repository.codec import chunk_key
from repository.errors import (
    BackendError,
    CorruptObjectError,
    ManifestError,
    ObjectNotFoundError,
    PointNotFoundError,
)
from repository.manifest import Manifest, Tombstone
from repository.points import seq_of, vm_key_of
from repository.repo import Repository

log = structlog.get_logger(__name__)

Affected = tuple[str, str]  # (point id, disk key)


@dataclass(frozen=True, slots=True)
class BadObject:
    key: str
    reason: str
    affects: tuple[Affected, ...]


@dataclass(slots=True)
class VerifyReport:
    points_checked: int = 0
    chunks_referenced: int = 0
    chunks_read: int = 0
    bad_chunks: list[BadObject] = field(default_factory=list)
    bad_indexes: list[BadObject] = field(default_factory=list)
    bad_manifests: list[BadObject] = field(default_factory=list)
    chain_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        bad = self.bad_chunks or self.bad_indexes or self.bad_manifests
        return not (bad or self.chain_problems)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def affected(self) -> dict[str, set[str]]:
        """point id -> disk keys that cannot be restored intact."""
        out: dict[str, set[str]] = defaultdict(set)
        for bad in (*self.bad_chunks, *self.bad_indexes, *self.bad_manifests):
            for point, disk in bad.affects:
                out[point].add(disk)
        return dict(out)

    def lines(self) -> list[str]:
        out = [
            f"checked {self.points_checked} restore points, {self.chunks_referenced} chunks "
            f"referenced, {self.chunks_read} read"
        ]
        for label, items in (
            ("manifest", self.bad_manifests),
            ("index", self.bad_indexes),
            ("chunk", self.bad_chunks),
        ):
            for b in items:
                where = ", ".join(f"{p}/{d}" for p, d in b.affects) or "no restore point"
                out.append(f"BAD {label} {b.key}: {b.reason}; affects {where}")
        out += [f"CHAIN {p}" for p in self.chain_problems]
        out.append("OK" if self.ok else "DAMAGED")
        return out


def verify(
    repo: Repository,
    point_ids: Iterable[str] | None = None,
    *,
    read_data: bool = False,
    subset_pct: float = 100.0,
    threads: int = 2,
    known_heads: Mapping[str, int] | None = None,
    seed: int | None = None,
) -> VerifyReport:
    """`known_heads` (vm key -> newest seq the catalog saw) detects rolled-back points."""
    if not 0 < subset_pct <= 100:
        raise ValueError(f"subset percentage {subset_pct} must be in (0, 100]")
    report = VerifyReport()
    selected = sorted(point_ids) if point_ids is not None else repo.list_points()
    manifests: list[Manifest] = []
    for pid in selected:
        try:
            manifests.append(repo.load_manifest(pid))
        except PointNotFoundError:
            if point_ids is not None:
                raise
            continue  # deleted (by prune) since the listing: gone, not damaged
        except (ManifestError, BackendError) as exc:
            report.bad_manifests.append(BadObject(f"manifests/{pid}", str(exc), ((pid, "*"),)))
    report.points_checked = len(selected)
    if point_ids is None:
        _check_chains(repo, manifests, known_heads or {}, report)

    users: dict[bytes, list[Affected]] = defaultdict(list)
    index_users: dict[str, list[Affected]] = defaultdict(list)
    capacity: dict[str, int] = {}
    for m in manifests:
        for d in m.disks:
            index_users[d.index_id].append((m.point_id, d.key))
            capacity[d.index_id] = d.capacity
    for index_id, affects in sorted(index_users.items()):
        try:
            index = repo.load_index(index_id, capacity[index_id])
            if index.capacity != capacity[index_id] or index.chunk_size != repo.chunk_size:
                raise CorruptObjectError(
                    f"indexes/{index_id}",
                    f"describes {index.capacity} bytes in {index.chunk_size}-byte chunks, the "
                    f"manifest {capacity[index_id]} bytes in {repo.chunk_size}-byte chunks",
                )
        except (CorruptObjectError, ObjectNotFoundError, BackendError) as exc:
            report.bad_indexes.append(BadObject(f"indexes/{index_id}", str(exc), tuple(affects)))
            continue
        for cid in index.referenced():
            users[cid].extend(affects)
    report.chunks_referenced = len(users)

    try:
        present = {info.key for info in repo.backend.list("chunks/")}
    except BackendError as exc:  # e.g. chunks/ replaced by a link: every chunk unreachable
        report.bad_chunks.append(BadObject("chunks/", str(exc), ()))
        present = set()
    to_read: list[bytes] = []
    for cid in sorted(users):
        if chunk_key(cid) not in present:
            report.bad_chunks.append(BadObject(chunk_key(cid), "missing", tuple(users[cid])))
        elif read_data:
            to_read.append(cid)
    if read_data and subset_pct < 100:
        k = max(1, round(len(to_read) * subset_pct / 100)) if to_read else 0
        to_read = sorted(random.Random(seed).sample(to_read, k))

    def check(cid: bytes) -> tuple[bytes, str | None]:
        try:
            repo.load_chunk(cid)
            return cid, None
        except CorruptObjectError as exc:
            return cid, exc.reason
        except ObjectNotFoundError:
            return cid, "missing"
        except BackendError as exc:  # e.g. EIO from a bad sector: this chunk, not the run
            return cid, f"unreadable: {exc.cause}"

    with ThreadPoolExecutor(threads, thread_name_prefix="verify") as pool:
        for cid, reason in pool.map(check, to_read):
            report.chunks_read += 1
            if reason is not None:
                report.bad_chunks.append(BadObject(chunk_key(cid), reason, tuple(users[cid])))
    log.info(
        "repository.verified",
        points=report.points_checked,
        read=report.chunks_read,
        bad_chunks=len(report.bad_chunks),
        ok=report.ok,
    )
    return report


def _check_chains(
    repo: Repository,
    manifests: list[Manifest],
    known_heads: Mapping[str, int],
    report: VerifyReport,
) -> None:
    """Every seq 1..head of a VM is a live manifest or a tombstone, and each manifest's
    prev_hash matches its predecessor: a swapped, replayed or dropped point shows here."""
    tombs, damaged = repo.scan_tombstones()
    # A damaged tombstone breaks no restore, but it is damage: the chain cannot be checked.
    report.bad_manifests += [BadObject(d.key, d.reason, ()) for d in damaged]
    by_vm: dict[str, dict[int, Manifest | Tombstone]] = defaultdict(dict)
    for t in tombs:
        by_vm[t.vm_key][t.seq] = t
    for m in manifests:
        if vm_key_of(m.point_id) != m.vm.key:
            report.chain_problems.append(f"{m.point_id}: belongs to VM {m.vm.key}")
        if m.seq in by_vm[m.vm.key] and by_vm[m.vm.key][m.seq].point_id != m.point_id:
            report.chain_problems.append(f"{m.point_id}: seq {m.seq} used twice")
        by_vm[m.vm.key][m.seq] = m
    highs = repo.high_waters()  # names: manifests, tombstones and head objects
    head_ids: dict[str, dict[int, str]] = defaultdict(dict)
    for info in repo.backend.list("heads/"):
        pid = info.key.removeprefix("heads/")
        head_ids[vm_key_of(pid)][seq_of(pid)] = pid
    for vm_key in sorted(set(by_vm) | set(known_heads) | set(highs)):
        entries = by_vm.get(vm_key, {})
        high_seq, high_pid = highs.get(vm_key, (0, ""))
        head = max(max(entries, default=0), high_seq)
        names = (
            head_ids[vm_key]
            | {high_seq: high_pid}
            | {
                e.seq - 1: e.prev_point_id
                for e in entries.values()
                if isinstance(e, Manifest) and e.prev_point_id
            }
        )
        if known_heads.get(vm_key, 0) > head:
            report.chain_problems.append(
                f"VM {vm_key}: newest point is seq {head} but seq {known_heads[vm_key]} was "
                "committed (points removed without prune: rollback?)"
            )
        for seq in range(1, head + 1):
            e = entries.get(seq)
            if e is None:
                report.chain_problems.append(
                    f"VM {vm_key}: point {names.get(seq, '?')} (seq {seq}) is missing: no "
                    "manifest and no tombstone (deleted without prune); restore it from a copy"
                )
                continue
            if not isinstance(e, Manifest):
                continue
            prev = entries.get(seq - 1)
            want = (
                None
                if seq == 1
                else (
                    prev.hash
                    if isinstance(prev, Manifest)
                    else prev.manifest_hash
                    if prev
                    else None
                )
            )
            if seq > 1 and prev is None:
                continue  # already reported as missing
            if e.prev_hash != want:
                report.chain_problems.append(
                    f"{e.point_id}: prev_hash does not match point seq {seq - 1}"
                )


def scrub(backend: Backend) -> list[BadObject]:
    """CRC check of every stored object; needs no key (finds bit rot on any repository)."""
    bad = []
    for prefix in ("chunks/", "indexes/", "manifests/", "tombstones/", "heads/"):
        for info in backend.list(prefix):
            try:
                codec.check_crc(info.key, backend.get(info.key))
            except CorruptObjectError as exc:
                bad.append(BadObject(info.key, exc.reason, ()))
    return bad
