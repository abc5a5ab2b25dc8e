"""Objects forged by someone who can write the storage (trivially in an unencrypted
repository, whose id key is in its config): nothing may inflate past its type's bound,
key slots cannot demand unbounded work, and an index that does not describe its
manifest's disk is refused before a restore writes anything."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard
from repo_helpers import CHUNK, FAST_KDF, PASSPHRASE, make_disk, new_repo, vm, write_point

from repository import CorruptChunkError, DiskIndex, DiskRecord, Repository, verify
from repository.codec import ObjectType, chunk_key, encode
from repository.errors import RepositoryError, WrongPassphraseError
from repository.keys import KdfParams, wrap_master


def _bomb(size: int) -> bytes:
    """A valid zstd frame of `size` zero bytes: a few KiB that inflate to `size`."""
    return zstandard.ZstdCompressor(level=19).compress(bytes(size))


def test_a_forged_chunk_never_inflates_past_the_chunk_size(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "plain", passphrase=None)
    p = write_point(repo, vm(), {"d": make_disk(2 * CHUNK, 1)})
    _m, index = repo.disk_index(p, "d")
    cid = index.ids[0]
    forged = bytearray(encode(repo.keys, ObjectType.CHUNK, cid, b"x" * 100))
    # Same envelope, payload swapped for a 512 MiB bomb (flags say zstd), CRC recomputed.
    import google_crc32c

    body = _bomb(512 << 20)
    head = bytes(forged[:6]) + bytes([0x01, 0])
    crc = google_crc32c.extend(google_crc32c.value(head), body)
    (repo.root / chunk_key(cid)).write_bytes(head + crc.to_bytes(4, "little") + body)
    started = time.monotonic()
    with pytest.raises(CorruptChunkError, match="larger than the 65536 allowed"):
        repo.slot_fetcher(p, "d", index)(0)
    assert time.monotonic() - started < 5
    assert not verify(repo, read_data=True).ok


def test_an_index_that_does_not_fit_its_disk_is_refused_before_any_write(
    tmp_path: Path,
) -> None:
    repo = new_repo(tmp_path / "r")
    with repo.begin_point(vm()) as pw:
        w = pw.disk_writer(4 * CHUNK)
        for s in range(4):
            w.put(s, bytes(make_disk(CHUNK, s)))
        index = w.finish()
        # The manifest claims a disk 10 bytes shorter than the one its index describes.
        lying = DiskRecord(key="d", capacity=4 * CHUNK - 10, index_id=index.index_id.hex())
        p = pw.commit(disks=[lying], started_at=datetime.now(UTC))
    with pytest.raises(RepositoryError, match=r"index .* describes 262144 bytes"):
        repo.disk_index(p, "d")
    dest = tmp_path / "out.raw"
    with pytest.raises(RepositoryError):
        repo.export_raw(p, "d", dest)
    assert not dest.exists()
    report = verify(repo)
    assert [b.key for b in report.bad_indexes] == [f"indexes/{index.index_id.hex()}"]


def test_an_index_inflating_past_its_disk_is_refused(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    huge = DiskIndex(CHUNK, 1 << 40, tuple([bytes(32)] * ((1 << 40) // CHUNK)))
    stored = repo.store_index(huge)  # 16 Mi ids: 512 MiB of index, compresses to little
    small = DiskRecord(key="d", capacity=CHUNK, index_id=stored.index_id.hex())
    with repo.begin_point(vm()) as pw:
        p = pw.commit(disks=[small], started_at=datetime.now(UTC))
    with pytest.raises(RepositoryError, match="larger than the 52 allowed"):
        repo.disk_index(p, "d")


@pytest.mark.parametrize(
    "field,value", [("memory_kib", 2 << 20), ("time_cost", 32), ("parallelism", 32)]
)
def test_key_slot_costs_are_bounded(tmp_path: Path, field: str, value: int) -> None:
    """Values the old bounds let through (up to 4 GiB, 64 passes): minutes of work."""
    repo = new_repo(tmp_path / "r")
    path = next((repo.root / "keys").iterdir())
    slot = json.loads(path.read_bytes())
    slot[field] = value
    path.write_text(json.dumps(slot))
    started = time.monotonic()
    with pytest.raises(WrongPassphraseError, match=f"{field} {value} is outside"):
        Repository.open(repo.root, PASSPHRASE)
    assert time.monotonic() - started < 5


def test_the_number_of_key_slots_tried_is_bounded(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    master = repo._master
    assert master is not None
    cheap = KdfParams(1, 8, 1)
    for n in range(12):  # someone plants slots for passphrases of their own
        blob = wrap_master(master, f"other {n}", repo.config.repo_id, cheap, b"x")
        (repo.root / "keys" / f"{n:016x}").write_bytes(blob)
    with pytest.raises(WrongPassphraseError, match="tried 8 passphrase slots of 13 key slots"):
        Repository.open(repo.root, "not it")
    assert FAST_KDF.time_cost == 1
