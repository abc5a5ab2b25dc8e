"""Retention, orphan VMs, the chunk sweep, and prune racing a running backup."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from repo_helpers import CHUNK, chunk_files, make_disk, read_back, vm, write_point

from repository import DiskRecord, KeepLast, Repository, VmIdentity, prune, verify
from repository.codec import chunk_key


def _referenced(repo: Repository) -> set[str]:
    return {
        c.hex()
        for m in repo.manifests()
        for d in m.disks
        for c in repo.load_index(d.index_id).referenced()
    }


def _keep_last(n: int):
    return lambda _vm, _policy: KeepLast(n)


def test_keep_last_deletes_old_points_and_their_chunks(repo: Repository) -> None:
    points = [write_point(repo, vm(), {"d": make_disk(3 * CHUNK, seed)}) for seed in range(4)]
    dry = prune(repo, _keep_last(2), dry_run=True, grace=timedelta(0))
    assert dry.deleted_points == points[:2] and dry.chunks_deleted == 6
    assert repo.list_points() == points  # a dry run changes nothing
    assert all("not kept by keep-last 2" in d.reason for d in dry.decisions if d.delete)

    result = prune(repo, _keep_last(2), grace=timedelta(0))
    assert result.deleted_points == points[:2] and result.chunks_deleted == 6
    assert repo.list_points() == points[2:]
    assert chunk_files(repo.root) == _referenced(repo)
    assert verify(repo, read_data=True).ok  # tombstones keep the chain checkable
    assert read_back(repo, points[3], "d") == make_disk(3 * CHUNK, 3)


def test_grace_period_keeps_young_unreferenced_chunks(repo: Repository) -> None:
    write_point(repo, vm(), {"d": make_disk(2 * CHUNK, 1)})
    write_point(repo, vm(), {"d": make_disk(2 * CHUNK, 2)})
    result = prune(repo, _keep_last(1), grace=timedelta(hours=1))
    assert len(result.deleted_points) == 1 and result.chunks_deleted == 0


def test_orphan_vm_points_are_kept_for_orphan_keep_days(repo: Repository) -> None:
    covered, orphan = vm(1), vm(2)
    write_point(repo, covered, {"d": make_disk(CHUNK, 1)})
    o = write_point(repo, orphan, {"d": make_disk(CHUNK, 2)})

    def rule_for(identity: VmIdentity, _policy: str | None):
        return KeepLast(5) if identity == covered else None

    now = datetime.now(UTC)
    kept = prune(repo, rule_for, now=now + timedelta(days=29), grace=timedelta(0))
    assert kept.deleted_points == []
    gone = prune(repo, rule_for, now=now + timedelta(days=31), grace=timedelta(0))
    assert gone.deleted_points == [o]
    why = next(d.reason for d in gone.decisions if d.point_id == o)
    assert why == "VM in no policy; point older than 30 days"


def test_prune_during_a_backup_never_deletes_what_the_backup_references(
    repo: Repository,
) -> None:
    disk = make_disk(4 * CHUNK, 1)
    p1 = write_point(repo, vm(), {"d": disk})
    new = bytearray(disk)
    new[:8] = b"changed!"
    with repo.begin_point(vm()) as pw:
        base = pw.previous_index("d")
        w = pw.disk_writer(len(disk), base)
        w.put(0, bytes(new[:CHUNK]))
        # Retention drops p1 (the backup's base) while the backup runs.
        result = prune(repo, _keep_last(0), grace=timedelta(0), lock_timeout=0.2)
        assert result.deleted_points == [p1] and result.sweep_deferred
        assert chunk_files(repo.root) >= {c.hex() for c in base.referenced()}
        p2 = pw.commit(disks=[DiskRecord.for_index("d", w.finish())], started_at=datetime.now(UTC))

    assert read_back(repo, p2, "d") == new
    after = prune(repo, _keep_last(1), grace=timedelta(0))
    assert after.sweep_deferred is None and after.chunks_deleted == 1  # old slot 0 only
    assert verify(repo, read_data=True).ok


def test_prune_waits_for_a_backup_then_sweeps(repo: Repository) -> None:
    write_point(repo, vm(), {"d": make_disk(2 * CHUNK, 1)})
    started, release = threading.Event(), threading.Event()
    out: dict[str, str] = {}

    def backup() -> None:
        with repo.begin_point(vm()) as pw:
            w = pw.disk_writer(2 * CHUNK, pw.previous_index("d"))
            started.set()
            release.wait(5)
            w.put(1, bytes(make_disk(CHUNK, 9)))
            disks = [DiskRecord.for_index("d", w.finish())]
            out["p"] = pw.commit(disks=disks, started_at=datetime.now(UTC))

    t = threading.Thread(target=backup)
    t.start()
    started.wait(5)
    threading.Timer(0.3, release.set).start()
    result = prune(repo, _keep_last(0), grace=timedelta(0), lock_timeout=10)
    t.join()
    assert result.sweep_deferred is None
    # The backup committed before the sweep: its point and every chunk it uses survive.
    assert out["p"] in repo.list_points()
    assert verify(repo, read_data=True).ok
    assert repo.backend.exists(chunk_key(repo.disk_index(out["p"], "d")[1].ids[0]))
