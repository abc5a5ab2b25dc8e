"""A damaged chunk is healed by the next full backup that produces the same data,
instead of being reused ("already exists") forever."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from repo_helpers import CHUNK, make_disk, new_repo, read_back, vm, write_point
from structlog.testing import capture_logs

from repository import CorruptChunkError, DiskRecord, Repository, verify
from repository.codec import HEADER, chunk_key
from repository.repo import index_key


def _flip(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def _flip_keeping_crc(path: Path, at: int) -> None:
    """Damage the body and recompute the envelope's CRC, as a forger (or a disk that
    rewrote the whole object) would: only authentication or decoding can tell."""
    import struct

    import google_crc32c

    blob = bytearray(path.read_bytes())
    blob[at] ^= 0x01
    crc = google_crc32c.extend(google_crc32c.value(bytes(blob[:8])), bytes(blob[12:]))
    blob[8:12] = struct.pack("<I", crc)
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("encrypted", [True, False])
@pytest.mark.parametrize("where", ["nonce", "body", "tag"])
def test_full_backup_heals_damage_the_crc_does_not_show(
    tmp_path: Path, encrypted: bool, where: str
) -> None:
    """A reused chunk is checked by its AES-GCM tag when encrypted (codec.check_stored:
    not inflated nor re-hashed), by decoding it when not; either way the damage heals."""
    repo = new_repo(tmp_path / "r", "pw" if encrypted else None)
    disk = make_disk(4 * CHUNK, 9)
    p1 = write_point(repo, vm(), {"d": disk})
    bad = repo.disk_index(p1, "d")[1].ids[1]
    path = repo.root / chunk_key(bad)
    size = path.stat().st_size
    at = {"nonce": HEADER.size + 3, "body": size // 2, "tag": size - 2}[where]
    _flip_keeping_crc(path, at)
    assert not verify(repo, read_data=True).ok
    with capture_logs() as logs:
        write_point(repo, vm(), {"d": disk})
    assert any(e["event"] == "repository.object_healed" for e in logs), logs
    assert verify(repo, read_data=True).ok
    assert read_back(repo, p1, "d") == disk


def test_full_backup_replaces_a_corrupt_chunk(repo: Repository) -> None:
    disk = make_disk(4 * CHUNK, 5)
    p1 = write_point(repo, vm(), {"d": disk})
    bad = repo.disk_index(p1, "d")[1].ids[2]
    _flip(repo.root / chunk_key(bad))
    assert not verify(repo, read_data=True).ok

    with capture_logs() as logs:
        p2 = write_point(repo, vm(), {"d": disk})  # a full backup of the same data
    assert any(
        e["event"] == "repository.object_healed" and e["object"] == chunk_key(bad) for e in logs
    )
    report = verify(repo, read_data=True)
    assert report.ok, report.lines()
    assert read_back(repo, p1, "d") == disk  # the old point is whole again too
    assert read_back(repo, p2, "d") == disk


def test_full_backup_ignores_the_base_index_it_was_given(repo: Repository) -> None:
    """Even with a base, a full (every slot put, verify_existing) must not trust it."""
    disk = make_disk(3 * CHUNK, 6)
    p1 = write_point(repo, vm(), {"d": disk})
    bad = repo.disk_index(p1, "d")[1].ids[0]
    _flip(repo.root / chunk_key(bad))
    with repo.begin_point(vm()) as pw:
        w = pw.disk_writer(len(disk), pw.previous_index("d"), verify_existing=True)
        for s in range(3):
            w.put(s, bytes(disk[s * CHUNK : (s + 1) * CHUNK]))
        w.finish()
    assert read_back(repo, p1, "d") == disk


def test_incremental_still_reuses_without_reading(repo: Repository) -> None:
    """The cheap path stays cheap: an incremental does not re-read what it reuses, so a
    damaged chunk it does not touch stays damaged (and verify says so)."""
    disk = make_disk(3 * CHUNK, 7)
    p1 = write_point(repo, vm(), {"d": disk})
    bad = repo.disk_index(p1, "d")[1].ids[1]
    _flip(repo.root / chunk_key(bad))
    changed = bytearray(disk)
    changed[:4] = b"new!"
    p2 = write_point(repo, vm(), {"d": changed}, changed={"d": {0}})
    with pytest.raises(CorruptChunkError):
        read_back(repo, p2, "d")
    assert not verify(repo, read_data=True).ok


def test_a_corrupt_index_is_replaced_when_the_same_index_is_stored(repo: Repository) -> None:
    disk = make_disk(2 * CHUNK, 8)
    p1 = write_point(repo, vm(), {"d": disk})
    _flip(repo.root / index_key(repo.load_manifest(p1).disks[0].index_id))
    write_point(repo, vm(), {"d": disk})
    assert read_back(repo, p1, "d") == disk
    assert verify(repo, read_data=True).ok


def counting_inflate(inflate: Any, calls: dict[str, int]) -> Any:
    def wrapper(key: str, *a: Any) -> Any:
        calls["chunk_inflate"] += key.startswith("chunks/")
        return inflate(key, *a)

    return wrapper


@pytest.mark.parametrize("encrypted", [True, False])
def test_a_full_backup_does_no_encoding_work_for_what_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    """A full backup of a disk whose chunks are mostly stored already (the incremental
    without CBT): the reused chunks are checked, not compressed, encrypted or written
    again; only the changed one is. Encrypted, the check inflates nothing either."""
    from repository import codec

    repo = new_repo(tmp_path / "r", "pw" if encrypted else None)
    disk = make_disk(6 * CHUNK, 10)
    write_point(repo, vm(), {"d": disk})
    disk[3 * CHUNK + 5] ^= 0xFF
    calls = {"encode": 0, "chunk_decode": 0, "chunk_inflate": 0}

    def counting(name: str, fn: Any, chunks_only: bool = False) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            if not chunks_only or str(a[1]).startswith("chunks/"):  # (keys, key, ...)
                calls[name] += 1
            return fn(*a, **kw)

        return wrapper

    monkeypatch.setattr(codec, "encode", counting("encode", codec.encode))
    monkeypatch.setattr(codec, "decode", counting("chunk_decode", codec.decode, True))
    monkeypatch.setattr(codec, "_inflate", counting_inflate(codec._inflate, calls))
    write_point(repo, vm(), {"d": disk})  # full: no base, every slot put
    # the changed chunk, then the index, the manifest and the head record
    assert calls["encode"] - 3 == 1, calls
    if encrypted:
        assert calls["chunk_decode"] == calls["chunk_inflate"] == 0, calls
    else:
        assert calls["chunk_decode"] == 5, calls  # the 5 reused chunks, decoded in full


def test_a_full_read_without_cbt_reuses_the_previous_points_chunks_unread(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk without CBT is read whole every time, but that is not a full backup: the
    previous point's chunks are reused as an incremental reuses them (`known_from`), not
    read back (on S3 that would download the VM's whole stored image every RPO). Slots it
    does not put are zero, not the previous point's: a trimmed area stays trimmed."""
    from repository import codec

    disk = make_disk(6 * CHUNK, 11)
    p1 = write_point(repo, vm(), {"d": disk})
    disk[2 * CHUNK + 1] ^= 0xFF
    disk[5 * CHUNK :] = bytes(CHUNK)  # unallocated now: the full read skips it
    reads: list[str] = []
    get = repo.backend.get
    monkeypatch.setattr(repo.backend, "get", lambda key: reads.append(key) or get(key))
    encodes = {"n": 0}
    encode = codec.encode

    def counting(*a: Any, **kw: Any) -> bytes:
        encodes["n"] += 1
        return encode(*a, **kw)

    monkeypatch.setattr(codec, "encode", counting)
    with repo.begin_point(vm()) as pw:
        prior = pw.previous_index("d")
        w = pw.disk_writer(len(disk), None, known_from=prior)
        for s in range(5):  # the allocated slots only
            w.put(s, bytes(disk[s * CHUNK : (s + 1) * CHUNK]))
        index = w.finish()
        p2 = pw.commit(
            disks=[DiskRecord.for_index("d", index, change_id="")], started_at=datetime.now(UTC)
        )
    assert not [k for k in reads if k.startswith("chunks/")], reads
    assert encodes["n"] - 3 == 1, encodes  # the changed chunk (then index, manifest, head)
    assert read_back(repo, p2, "d") == bytes(disk)
    assert read_back(repo, p1, "d") != bytes(disk)
    assert verify(repo, read_data=True).ok


def test_a_full_read_without_cbt_rechecks_its_share_of_reused_chunks(repo: Repository) -> None:
    """The rolling check: each day a full read without CBT reads back the reused chunks in
    that day's share and heals them, so damage to a VM that never has CBT (and never gets a
    `--full`) does not last past one rotation; the chunks outside the share are not read."""
    from repository.writer import _in_share

    disk = make_disk(8 * CHUNK, 12)
    p1 = write_point(repo, vm(), {"d": disk})
    ids = repo.disk_index(p1, "d")[1].ids
    of = 4
    part = int.from_bytes(ids[0][:4], "big") % of  # the day whose share holds slot 0
    for cid in ids:
        _flip(repo.root / chunk_key(cid))
    assert not verify(repo, read_data=True).ok
    with repo.begin_point(vm()) as pw:
        w = pw.disk_writer(len(disk), None, known_from=pw.previous_index("d"), recheck=(part, of))
        for s in range(8):
            w.put(s, bytes(disk[s * CHUNK : (s + 1) * CHUNK]))
        pw.commit(
            disks=[DiskRecord.for_index("d", w.finish(), change_id="")],
            started_at=datetime.now(UTC),
        )
    healed = {cid for cid in ids if _in_share(cid, part, of)}
    assert ids[0] in healed and len(healed) < len(set(ids))
    for cid in set(ids):
        ok = True
        try:
            repo.objects.load_chunk(cid)
        except Exception:
            ok = False
        assert ok == (cid in healed), cid.hex()
