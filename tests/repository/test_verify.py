"""Damage is found, named, and never turns into wrong bytes on restore."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from repo_helpers import CHUNK, PASSPHRASE, make_disk, read_back, vm, write_point

from repository import CorruptChunkError, Repository, scrub, verify
from repository.cli import export_cmd, verify_cmd
from repository.codec import chunk_key
from repository.errors import BackendError


def _flip(path: Path, at: int | None = None) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(blob))


def _setup(repo: Repository) -> tuple[list[str], bytes]:
    disk = make_disk(6 * CHUNK, 7)
    p1 = write_point(repo, vm(1), {"disk0": disk})
    changed = bytearray(disk)
    changed[0:10] = b"0123456789"
    p2 = write_point(repo, vm(1), {"disk0": changed}, changed={"disk0": {0}})
    p3 = write_point(repo, vm(2), {"other": make_disk(2 * CHUNK, 8)})
    shared = repo.disk_index(p1, "disk0")[1].ids[3]  # used by p1 and p2, not p3
    return [p1, p2, p3], shared


def test_clean_repository_verifies(repo: Repository) -> None:
    _setup(repo)
    report = verify(repo, read_data=True)
    assert report.ok and report.exit_code == 0
    assert report.chunks_read == report.chunks_referenced > 0


def test_flipped_byte_is_named_with_the_points_it_breaks(repo: Repository) -> None:
    (p1, p2, p3), bad = _setup(repo)
    _flip(repo.root / chunk_key(bad))

    # Existence alone cannot see it; reading the data can.
    assert verify(repo).ok
    report = verify(repo, read_data=True)
    assert not report.ok and report.exit_code == 1
    assert [b.key for b in report.bad_chunks] == [chunk_key(bad)]
    assert report.affected() == {p1: {"disk0"}, p2: {"disk0"}}
    assert any(bad.hex() in line and p1 in line for line in report.lines())
    assert [b.key for b in scrub(repo.backend)] == [chunk_key(bad)]

    with pytest.raises(CorruptChunkError) as err:
        read_back(repo, p2, "disk0")
    assert (err.value.chunk_id, err.value.point_id, err.value.disk_key) == (bad.hex(), p2, "disk0")
    assert read_back(repo, p3, "other") == make_disk(2 * CHUNK, 8)

    out = repo.root.parent / "restore.img"
    outcome = export_cmd(repo.root, PASSPHRASE, p1, "disk0", out)
    assert outcome.exit_code == 1 and not out.exists()


def test_missing_chunk_and_damaged_header_are_reported(repo: Repository) -> None:
    (p1, _p2, p3), bad = _setup(repo)
    (repo.root / chunk_key(bad)).unlink()
    other = repo.disk_index(p3, "other")[1].ids[0]
    _flip(repo.root / chunk_key(other), at=1)  # the magic
    outcome = verify_cmd(repo.root, PASSPHRASE, read_data=True)
    reasons = {b.key: b.reason for b in outcome.data.bad_chunks}
    assert reasons[chunk_key(bad)] == "missing"
    assert "CRC32C" in reasons[chunk_key(other)] or "magic" in reasons[chunk_key(other)]
    assert outcome.exit_code == 1
    assert verify(repo, [p1]).affected() == {p1: {"disk0"}}


def test_subset_reads_only_part_of_the_chunks(repo: Repository) -> None:
    _setup(repo)
    report = verify(repo, read_data=True, subset_pct=25, seed=1)
    assert 0 < report.chunks_read < report.chunks_referenced


def test_tampered_manifest_is_detected(repo: Repository) -> None:
    (p1, p2, _p3), _ = _setup(repo)
    # Replace p2's manifest by p1's bytes: authentication binds each manifest to its name.
    (repo.root / "manifests" / p2).write_bytes((repo.root / "manifests" / p1).read_bytes())
    report = verify(repo)
    assert [b.key for b in report.bad_manifests] == [f"manifests/{p2}"]


def test_rollback_and_silent_deletion_are_detected(repo: Repository) -> None:
    (p1, p2, _p3), _ = _setup(repo)
    heads = {vm(1).key: 2, vm(2).key: 1}
    assert verify(repo, known_heads=heads).ok
    (repo.root / "manifests" / p2).unlink()  # the newest point vanishes
    report = verify(repo)  # its head object still names it
    assert any(f"point {p2} (seq 2) is missing" in p for p in report.chain_problems)
    (repo.root / "heads" / p2).unlink()  # and its head object too: the catalog knows
    report = verify(repo, known_heads=heads)
    assert any("rollback" in p for p in report.chain_problems)
    write_point(repo, vm(1), {"disk0": make_disk(6 * CHUNK, 7)})  # seq 3: 2 is not reused
    (repo.root / "manifests" / p1).unlink()  # an old point removed without prune
    report = verify(repo)
    assert any(f"point {p1} (seq 1) is missing" in p for p in report.chain_problems)
    assert any(f"point {p2} (seq 2) is missing" in p for p in report.chain_problems)


def test_verify_output_is_machine_readable_enough(repo: Repository) -> None:
    _setup(repo)
    outcome = verify_cmd(repo.root, PASSPHRASE)
    assert outcome.exit_code == 0 and outcome.lines[-1] == "OK"
    json.dumps(outcome.data.affected())


def test_an_unreadable_chunk_file_is_named_not_fatal(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bad sector under one chunk (EIO) must show as that chunk's damage, with the points
    # it breaks, while verify goes on checking the rest.
    (p1, p2, _p3), bad = _setup(repo)
    real_get = repo.backend.get

    def get(key: str) -> bytes:
        if key == chunk_key(bad):
            raise BackendError(key, OSError(errno.EIO, "Input/output error"))
        return real_get(key)

    monkeypatch.setattr(repo.backend, "get", get)
    report = verify(repo, read_data=True)
    assert [b.key for b in report.bad_chunks] == [chunk_key(bad)]
    assert "Input/output error" in report.bad_chunks[0].reason
    assert report.affected() == {p1: {"disk0"}, p2: {"disk0"}}
    assert report.chunks_read == report.chunks_referenced


def test_restoring_over_an_unreadable_chunk_names_point_and_disk(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    (_p1, p2, _p3), bad = _setup(repo)
    real_get = repo.backend.get

    def get(key: str) -> bytes:
        if key == chunk_key(bad):
            raise BackendError(key, OSError(errno.EIO, "Input/output error"))
        return real_get(key)

    monkeypatch.setattr(repo.backend, "get", get)
    with pytest.raises(CorruptChunkError, match="Input/output error") as err:
        read_back(repo, p2, "disk0")
    assert (err.value.chunk_id, err.value.point_id, err.value.disk_key) == (bad.hex(), p2, "disk0")
