"""Writing full and incremental restore points and reading them back byte-exact."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from repo_helpers import (
    CHUNK,
    FAST_KDF,
    PASSPHRASE,
    chunk_files,
    make_disk,
    new_repo,
    read_back,
    tree,
    vm,
    write_point,
)

from repository import (
    CorruptChunkError,
    CorruptObjectError,
    DiskRecord,
    KeepLast,
    PassphraseRequiredError,
    Repository,
    RepositoryError,
    SkippedDisk,
    WrongPassphraseError,
    prune,
)
from repository.codec import ZERO_ID, check_crc, chunk_key


def test_full_then_incremental_round_trip(repo: Repository) -> None:
    size = 9 * CHUNK + 5000  # last slot short
    disk = make_disk(size, 1, zero_slots=(2, 3))
    p1 = write_point(repo, vm(), {"disk0": disk})
    assert read_back(repo, p1, "disk0") == disk
    index1 = repo.disk_index(p1, "disk0")[1]
    assert index1.ids[2] == index1.ids[3] == ZERO_ID
    stored_after_full = chunk_files(repo.root)
    assert len(stored_after_full) == 8  # zero slots are never stored

    disk2 = bytearray(disk)
    disk2[4 * CHUNK + 10 : 4 * CHUNK + 20] = b"x" * 10
    disk2[9 * CHUNK :] = os.urandom(5000)
    p2 = write_point(repo, vm(), {"disk0": disk2}, changed={"disk0": {4, 9}})
    index2 = repo.disk_index(p2, "disk0")[1]
    assert index2.ids[:4] == index1.ids[:4] and index2.ids[5:9] == index1.ids[5:9]
    assert chunk_files(repo.root) - stored_after_full == {index2.ids[4].hex(), index2.ids[9].hex()}
    assert read_back(repo, p2, "disk0") == disk2
    assert read_back(repo, p1, "disk0") == disk  # the older point restores on its own


def test_identical_content_is_stored_once(repo: Repository) -> None:
    block = os.urandom(CHUNK)
    p = write_point(repo, vm(), {"a": block * 3, "b": block})
    assert len(chunk_files(repo.root)) == 1
    assert read_back(repo, p, "a") == block * 3


def test_writer_rejects_wrong_sizes_and_mismatched_base(repo: Repository) -> None:
    with repo.begin_point(vm()) as pw:
        w = pw.disk_writer(2 * CHUNK + 10)
        with pytest.raises(ValueError, match="slot 2: 11 bytes, expected 10"):
            w.put(2, bytes(11))
        with pytest.raises(IndexError, match="slot 3 out of range"):
            w.put(3, bytes(10))
        base = w.finish()
        with pytest.raises(ValueError, match="take a full backup"):
            pw.disk_writer(4 * CHUNK, base)


def test_manifest_keeps_everything_a_restore_needs(repo: Repository) -> None:
    config = {"name": "web01", "hardware": {"numCPU": 2, "device": [{"key": 2000}]}}
    p = write_point(
        repo,
        vm(),
        {"disk0": make_disk(CHUNK, 2)},
        policy="gold",
        job_id="job-1",
        skipped_disks=[SkippedDisk("rdm0", "physical-compatibility RDM cannot be snapshotted")],
        config_info=config,
        vss_manifest=b"<xml>backup components</xml>",
    )
    m = Repository.open(repo.root, PASSPHRASE).load_manifest(p)
    assert (m.policy, m.job_id, m.config_info, m.vss_manifest) == (
        "gold",
        "job-1",
        config,
        b"<xml>backup components</xml>",
    )
    assert m.skipped_disks[0].reason.startswith("physical-compatibility")
    assert m.disks[0].change_id == "52 disk0/1" and m.disks[0].capacity == CHUNK
    assert m.vm == vm()


def test_unencrypted_repository_round_trip(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "plain", passphrase=None)
    disk = make_disk(3 * CHUNK, 3)
    p = write_point(repo, vm(), {"d": disk})
    assert read_back(Repository.open(tmp_path / "plain"), p, "d") == disk


async def test_objects_are_encrypted_and_private(repo: Repository) -> None:
    text = b"secret guest data " * (CHUNK // 18) + b"x" * (CHUNK % 18)
    old_umask = os.umask(0o022)  # a usual umask must not widen anything
    try:
        p = write_point(repo, vm(), {"d": text})
        write_point(repo, vm(), {"d": text})
        await repo.state.record_point(repo.load_manifest(p))
        await repo.state.record_job("j1", "backup", datetime.now(UTC), outcome="success")
        prune(repo, lambda _v, _p: KeepLast(1), grace=timedelta(0))  # tombstones/
    finally:
        os.umask(old_umask)
    kinds = {p.relative_to(repo.root).parts[0] for p in repo.root.rglob("*")}
    assert {"chunks", "indexes", "manifests", "tombstones", "keys"} <= kinds
    # What is local to this machine lives in the state directory, not in the repository.
    assert "catalog.db" not in kinds
    state = repo.state.dir
    assert {p.name for p in state.iterdir()} >= {"heads", "locks", "jobs.jsonl"}
    for path in [*repo.root.rglob("*"), state.parent, *state.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), path
        if path.is_file():
            assert b"secret guest data" not in path.read_bytes()


def test_wrong_passphrase_is_a_clear_error_and_writes_nothing(repo: Repository) -> None:
    write_point(repo, vm(), {"d": make_disk(CHUNK, 4)})
    before = tree(repo.root)
    with pytest.raises(WrongPassphraseError, match=str(repo.root)):
        Repository.open(repo.root, "not the passphrase")
    with pytest.raises(PassphraseRequiredError):
        Repository.open(repo.root)
    assert tree(repo.root) == before


def test_passphrase_change(repo: Repository) -> None:
    p = write_point(repo, vm(), {"d": make_disk(CHUNK, 5)})
    repo.change_passphrase("new one", FAST_KDF)
    with pytest.raises(WrongPassphraseError):
        Repository.open(repo.root, PASSPHRASE)
    assert read_back(Repository.open(repo.root, "new one"), p, "d") == make_disk(CHUNK, 5)


def test_every_object_carries_a_crc_checkable_without_the_key(repo: Repository) -> None:
    write_point(repo, vm(), {"d": make_disk(2 * CHUNK, 6)})
    objects = [p for p in repo.root.rglob("*") if p.is_file() and p.parent.name != "keys"]
    checked = 0
    for path in objects:
        if path.name in ("config", "repository.lock") or path.suffix == ".lock":
            continue
        blob = bytearray(path.read_bytes())
        check_crc(path.name, bytes(blob))
        blob[len(blob) // 2] ^= 0x40
        with pytest.raises(CorruptObjectError, match="CRC32C"):
            check_crc(path.name, bytes(blob))
        checked += 1
    assert checked >= 4  # chunks, index, manifest


@pytest.mark.parametrize("encrypted", [False, True])
def test_transports_hand_over_mutable_buffers(tmp_path: Path, encrypted: bool) -> None:
    # The http and vddk transports return bytearrays; incompressible data is stored raw,
    # and that path must accept them too (it once crashed in the CRC call).
    repo = new_repo(tmp_path / "r", passphrase=PASSPHRASE if encrypted else None)
    data = bytearray(os.urandom(CHUNK)) + bytearray(b"text" * (CHUNK // 4))
    with repo.begin_point(vm(7)) as pw:
        w = pw.disk_writer(len(data))
        for slot in range(len(data) // CHUNK):
            w.put(slot, memoryview(data)[slot * CHUNK : (slot + 1) * CHUNK])
        point = pw.commit(
            disks=[DiskRecord.for_index("d", w.finish())], started_at=datetime.now(UTC)
        )
    assert read_back(repo, point, "d") == bytes(data)


def test_slot_fetcher_returns_verified_slots_and_holes(repo: Repository) -> None:
    disk = make_disk(4 * CHUNK + 100, 11, zero_slots=(1,))
    p = write_point(repo, vm(), {"d": disk})
    _m, index = repo.disk_index(p, "d")
    fetch = repo.slot_fetcher(p, "d", index)
    assert fetch(1) is None  # a hole: nothing to write on a fresh thin disk
    assert fetch(0) == disk[:CHUNK]
    assert fetch(4) == disk[4 * CHUNK :]  # the short last slot
    (repo.root / chunk_key(index.ids[2])).unlink()
    with pytest.raises(CorruptChunkError) as err:
        fetch(2)
    assert (err.value.chunk_id, err.value.point_id, err.value.disk_key) == (
        index.ids[2].hex(),
        p,
        "d",
    )


def test_export_is_sparse_and_byte_exact(repo: Repository, tmp_path: Path) -> None:
    size = 64 * CHUNK
    disk = bytearray(size)
    disk[5 * CHUNK : 6 * CHUNK] = make_disk(CHUNK, 12)
    disk[-100:] = b"z" * 100
    p = write_point(repo, vm(), {"d": disk})
    out = tmp_path / "d.img"
    written = repo.export_raw(p, "d", out)
    assert out.read_bytes() == disk
    assert written == 2 * CHUNK
    assert out.stat().st_blocks * 512 <= 4 * CHUNK  # the 62 zero chunks are holes
    assert out.stat().st_mode & 0o777 == 0o600
    with pytest.raises(RepositoryError, match="exists"):
        repo.export_raw(p, "d", out)
    assert out.read_bytes() == disk  # refused, not clobbered


def test_chunk_ids_are_keyed_per_repository(tmp_path: Path) -> None:
    # Same data, different repositories (encrypted or not): different ids, so a chunk id
    # reveals nothing about the content to someone without the id key.
    data = {"d": make_disk(CHUNK, 13)}
    ids = []
    for name, passphrase in (("a", None), ("b", None), ("c", PASSPHRASE)):
        r = new_repo(tmp_path / name, passphrase=passphrase)
        ids.append(r.disk_index(write_point(r, vm(), data), "d")[1].ids[0])
    assert len(set(ids)) == 3


def test_keys_never_show_in_reprs(repo: Repository) -> None:
    # Reprs end up in log lines and tracebacks; key bytes must not.
    shown = repr(repo) + repr(repo.keys) + repr(vars(repo))
    for key in (repo.keys.id_key, repo.keys.mac_key, repo.keys.enc_key):
        assert key is not None
        assert repr(key)[2:-1] not in shown and key.hex() not in shown
