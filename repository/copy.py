"""Copying restore points into another repository (an offsite copy, `vigil copy`).

A copy is a complete repository of its own keys: every chunk is read from the source
(decrypted, re-hashed against its id), its id recomputed with the target's id key (ids
are keyed per repository) and stored encrypted for the target, unless the target already
holds that id; then a new index and the manifest, under the same point id, seq and
previous point, its prev_hash the target's own chain. Points the source pruned become
tombstones in the copy, so `vigil verify` finds the copy's chain whole.

Which chunks need reading: a point whose predecessor was copied already maps its slots
through the two indexes of that predecessor (source id -> target id, slot by slot), so an
incremental reads only the chunks it changed. What was written is read back and checked
before the manifest is written: a copy that cannot be restored is never committed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from repository import codec
from repository.codec import ZERO_ID, ObjectType
from repository.errors import RepositoryError
from repository.index import DiskIndex
from repository.locks import locked
from repository.manifest import DiskRecord, Manifest, Tombstone
from repository.objects import manifest_key, tombstone_key
from repository.repo import Repository
from repository.s3.errors import BACKUP_ADVICE
from repository.s3.pointlock import retain_new_point

log = structlog.get_logger(__name__)


@dataclass
class CopyResult:
    copied: list[str] = field(default_factory=list)  # point ids now in the target
    tombstones: int = 0  # pruned points recorded as such in the target
    present: int = 0  # points the target had already
    chunks_read: int = 0  # chunks read from the source (others mapped through a base)
    chunks_sent: int = 0  # chunks the target lacked
    bytes_sent: int = 0  # stored (encrypted, compressed) bytes written to the target
    problems: list[str] = field(default_factory=list)  # VMs whose chain stopped, and why

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def failure_reason(exc: BaseException) -> str:
    """Why a copy stopped, without the backend's advice for a backup (an unavailable S3
    service says to run the backup again; what a copy does next is the caller's to say)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.replace(f": {BACKUP_ADVICE}", "")


def copy_points(
    src: Repository,
    dst: Repository,
    vm_keys: Iterable[str] | None = None,
    *,
    threads: int = 4,
    progress: Callable[[str], None] | None = None,
) -> CopyResult:
    """Copy every point of the VMs (all when None) that `dst` lacks, oldest first."""
    if src.chunk_size != dst.chunk_size:
        raise RepositoryError(
            f"the copy has chunk size {dst.chunk_size} but the source {src.chunk_size}: "
            "create the copy with the same chunk_size"
        )
    if src.config.repo_id == dst.config.repo_id:
        raise RepositoryError("source and copy are the same repository")
    result = CopyResult()
    with src.reading(), dst.lock(False, None, "copy into this repository"):
        # Only the VMs asked for are read (the daemon copies one VM at a time).
        scopes: list[str | None] = [None] if vm_keys is None else sorted(set(vm_keys))
        by_vm: dict[str, dict[int, Manifest | Tombstone]] = {}
        damaged: set[str] = set()
        for scope in scopes:
            good, bad = src.scan_manifests(scope)
            for t in src.tombstones(scope):
                by_vm.setdefault(t.vm_key, {})[t.seq] = t
            for m in good:
                by_vm.setdefault(m.vm.key, {})[m.seq] = m
            damaged |= {d.point_id for d in bad}
        wanted = set(by_vm) if vm_keys is None else set(vm_keys) & set(by_vm)
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="copy") as pool:
            for vm_key in sorted(wanted):
                _copy_vm(src, dst, by_vm[vm_key], damaged, pool, result, progress)
    log.info(
        "repository.copied",
        points=len(result.copied),
        chunks_sent=result.chunks_sent,
        bytes_sent=result.bytes_sent,
        problems=len(result.problems),
    )
    return result


def _copy_vm(
    src: Repository,
    dst: Repository,
    entries: dict[int, Manifest | Tombstone],
    damaged: set[str],
    pool: ThreadPoolExecutor,
    result: CopyResult,
    progress: Callable[[str], None] | None,
) -> None:
    vm_key = next(iter(entries.values())).vm.key
    have: dict[int, Manifest | Tombstone] = {t.seq: t for t in dst.tombstones(vm_key)}
    have |= {m.seq: m for m in dst.manifests(vm_key)}
    for seq in range(1, max(entries) + 1):
        e = entries.get(seq)
        if seq in have:
            result.present += 1
            continue
        if e is None:
            what = "is damaged" if any(p.endswith(f"-{seq:06d}") for p in damaged) else "is gone"
            result.problems.append(
                f"VM {vm_key}: seq {seq} {what} in the source (no manifest, no tombstone): "
                "later points of this VM are not copied; run `vigil verify`"
            )
            return
        prev = have.get(seq - 1)
        prev_hash = None
        if prev is not None:
            prev_hash = prev.hash if isinstance(prev, Manifest) else prev.manifest_hash
        with locked(dst.vm_lock_path(vm_key), exclusive=True):
            if isinstance(e, Tombstone):
                dst.objects.put_sealed(
                    tombstone_key(e.point_id),
                    e.point_id,
                    "tombstone",
                    ObjectType.TOMBSTONE,
                    e.body(),
                    exist_ok=True,
                )
                result.tombstones += 1
                have[seq] = e
                continue
            base = (entries.get(seq - 1), prev)
            made = _copy_point(src, dst, e, prev_hash, base, pool, result)
        have[seq] = made
        result.copied.append(made.point_id)
        if progress is not None:
            progress(made.point_id)


def _copy_point(
    src: Repository,
    dst: Repository,
    m: Manifest,
    prev_hash: str | None,
    base: tuple[Manifest | Tombstone | None, Manifest | Tombstone | None],
    pool: ThreadPoolExecutor,
    result: CopyResult,
) -> Manifest:
    disks: list[DiskRecord] = []
    for d in m.disks:
        index = src.load_index(d.index_id, d.capacity)
        mapping = _base_mapping(src, dst, base, d.key)
        ids = _copy_chunks(src, dst, index, mapping, pool, result)
        stored = dst.store_index(DiskIndex(index.chunk_size, index.capacity, ids))
        disks.append(dataclasses.replace(d, index_id=stored.index_id.hex()))
    new = dataclasses.replace(m, disks=tuple(disks), prev_hash=prev_hash)
    # Read back what the point references before it exists in the copy.
    for rec in new.disks:
        dst.load_index(rec.index_id, rec.capacity)
    previous = base[1] if isinstance(base[1], Manifest) else None
    retain_new_point(dst, previous, new.disks)  # object lock on the copy (S3)
    dst.objects.put_sealed(
        manifest_key(new.point_id), new.point_id, "manifest", ObjectType.MANIFEST, new.body()
    )
    if dst.load_manifest(new.point_id).hash != new.hash:
        raise RepositoryError(f"copy of {new.point_id}: the manifest read back differs")
    try:
        dst.points.record_head(new)
        dst.state.raise_head(new.vm.key, new.seq, new.point_id, new.hash)
    except (OSError, RepositoryError) as exc:
        log.warning("repository.head_not_recorded", point=new.point_id, reason=str(exc))
    return new


def _base_mapping(
    src: Repository,
    dst: Repository,
    base: tuple[Manifest | Tombstone | None, Manifest | Tombstone | None],
    disk_key: str,
) -> dict[bytes, bytes]:
    """Source chunk id -> target chunk id, from the same disk of the previous point as it
    is in both repositories (the copy of it made earlier); empty when there is none."""
    s, t = base
    if not isinstance(s, Manifest) or not isinstance(t, Manifest) or s.point_id != t.point_id:
        return {}
    sd, td = s.disk(disk_key), t.disk(disk_key)
    if sd is None or td is None or sd.capacity != td.capacity:
        return {}
    try:
        si = src.load_index(sd.index_id, sd.capacity)
        ti = dst.load_index(td.index_id, td.capacity)
    except RepositoryError as exc:
        log.info("repository.copy_base_unreadable", point=s.point_id, reason=str(exc))
        return {}
    return {a: b for a, b in zip(si.ids, ti.ids, strict=True) if a != ZERO_ID}


def _copy_chunks(
    src: Repository,
    dst: Repository,
    index: DiskIndex,
    mapping: dict[bytes, bytes],
    pool: ThreadPoolExecutor,
    result: CopyResult,
) -> tuple[bytes, ...]:
    todo = sorted({c for c in index.ids if c != ZERO_ID and c not in mapping})

    def one(cid: bytes) -> tuple[bytes, bytes, int]:
        data = src.load_chunk(cid)  # decrypted and re-hashed against cid
        nid = codec.object_id(dst.keys, data)
        written = dst.put_chunk(nid, data)  # 0: the target holds it already
        if written:
            dst.load_chunk(nid)  # verify what we wrote
        return cid, nid, written

    for cid, nid, written in pool.map(one, todo):
        mapping[cid] = nid
        result.chunks_read += 1
        if written:
            result.chunks_sent += 1
            result.bytes_sent += written
    return tuple(ZERO_ID if c == ZERO_ID else mapping[c] for c in index.ids)
