"""The `file` transport over sparse files, and the opener's choice of transport."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from disk_io_helpers import make_disk

from disk_io import (
    DiskLocation,
    DiskOpenError,
    TransportSettings,
    TransportUnavailable,
    open_disk,
)
from disk_io.descriptor import parse_ddb
from disk_io.errors import DiskIoError
from disk_io.filedisk import FileDisk, open_file_disk

MIB = 1024 * 1024
DESCRIPTOR = """# Disk DescriptorFile
version=1
createType="vmfs"
RW 2048 VMFS "vm1-flat.vmdk"
ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "130"
ddb.uuid = "60 00 C2 9a"
"""


def location(name: str, capacity: int) -> DiskLocation:
    return DiskLocation("DC0", "DS1", f"{name}/{name}.vmdk", capacity, "vm-1")


def test_reads_writes_and_allocated_extents_of_a_sparse_file(tmp_path: Path) -> None:
    cap = 32 * MIB
    a, b = os.urandom(MIB), os.urandom(3 * MIB)
    make_disk(tmp_path / "DS1", "vm1", cap, [(2 * MIB, a), (20 * MIB, b)], DESCRIPTOR)
    with open_file_disk(location("vm1", cap), {"DS1": str(tmp_path / "DS1")}) as disk:
        assert disk.transport == "file"
        assert disk.read(2 * MIB, MIB) == a
        assert disk.read(20 * MIB - 100, 200) == bytes(100) + b[:100]
        assert disk.allocated_extents() == [(2 * MIB, MIB), (20 * MIB, 3 * MIB)]
        assert disk.metadata() == {
            "adapterType": "lsilogic",
            "geometry.cylinders": "130",
            "uuid": "60 00 C2 9a",
        }
        with pytest.raises(ValueError, match="outside the capacity"):
            disk.read(cap - 10, 20)
    with open_file_disk(location("vm1", cap), {"DS1": str(tmp_path / "DS1")}, writable=True) as d:
        d.write(MIB, b"z" * 4096)
        d.flush()
    assert (tmp_path / "DS1/vm1/vm1-flat.vmdk").read_bytes()[MIB : MIB + 4096] == b"z" * 4096


def test_a_short_file_reads_zeros_past_its_end(tmp_path: Path) -> None:
    path = tmp_path / "short-flat.vmdk"
    path.write_bytes(b"a" * 1000)
    with FileDisk(path, 4096) as disk:
        assert disk.read(500, 1000) == b"a" * 500 + bytes(500)
        assert disk.allocated_extents() == [(0, 1000)]


def test_unconfigured_or_missing_datastore_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(TransportUnavailable, match=r"'DS9' has no mount path in \[transport"):
        open_file_disk(DiskLocation("DC0", "DS9", "a/a.vmdk", MIB), {})
    with pytest.raises(TransportUnavailable, match="is not a directory"):
        open_file_disk(location("vm1", MIB), {"DS1": str(tmp_path / "nope")})
    (tmp_path / "DS1").mkdir()
    with pytest.raises(TransportUnavailable, match="does not exist"):
        open_file_disk(location("vm1", MIB), {"DS1": str(tmp_path / "DS1")})
    delta = DiskLocation("DC0", "DS1", "vm1/vm1-000001.vmdk", MIB)
    with pytest.raises(TransportUnavailable, match="snapshot delta"):
        open_file_disk(delta, {"DS1": str(tmp_path / "DS1")})


def test_opener_records_the_choice_and_every_failure(tmp_path: Path) -> None:
    make_disk(tmp_path / "DS1", "vm1", MIB)
    settings = TransportSettings(
        modes=("http", "file"), file_datastores={"DS1": str(tmp_path / "DS1")}
    )
    opened = open_disk(location("vm1", MIB), None, settings)
    opened.disk.close()
    assert opened.transport == "file"
    assert [(a.mode, a.ok) for a in opened.attempts] == [("http", False), ("file", True)]
    assert "needs vCenter access" in opened.attempts[0].reason
    with pytest.raises(DiskOpenError) as exc:
        open_disk(location("vm9", MIB), None, settings)
    assert "http: the http transport needs vCenter access" in str(exc.value)
    assert "file: disk [DS1] vm9/vm9.vmdk" in str(exc.value)
    with pytest.raises(ValueError, match="unknown mode 'nfs'"):
        open_disk(location("vm1", MIB), None, settings, modes=["nfs"])


def test_parse_ddb_ignores_other_lines() -> None:
    assert parse_ddb('ddb.a = "1"\nnot.ddb = "2"\n  ddb.b=3\n') == {"a": "1", "b": "3"}


def test_close_waits_for_reads_in_flight_so_a_reused_fd_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing while another thread is inside pread must not free the descriptor: the
    kernel would reuse the number and the late read would return another file's bytes."""
    import threading

    cap = 4 * MIB
    data = os.urandom(cap)
    make_disk(tmp_path / "DS1", "vm1", cap, [(0, data)], DESCRIPTOR)
    disk = open_file_disk(location("vm1", cap), {"DS1": str(tmp_path / "DS1")})
    inside, release = threading.Event(), threading.Event()
    real_pread = os.pread

    def slow_pread(fd: int, n: int, off: int) -> bytes:
        inside.set()
        release.wait(5)
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "pread", slow_pread)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(disk.read(0, MIB)))
    reader.start()
    assert inside.wait(5)
    closer = threading.Thread(target=disk.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close() returned while a read was still in flight"
    with pytest.raises(DiskIoError, match="closed"):
        disk.read(MIB, MIB)  # new calls are refused at once
    release.set()
    reader.join(5)
    closer.join(5)
    assert not closer.is_alive()
    assert got == [data[:MIB]]
    disk.close()  # twice is harmless


def test_a_missing_vddk_is_logged_once_per_process_not_per_disk(tmp_path: Path) -> None:
    """Issue 19 item 6: with `vddk` first in transport.modes and no VDDK installed, each disk
    falls back to the next mode; the log says once that VixDiskLib is missing (with every
    path tried), not again for every disk."""
    from structlog.testing import capture_logs

    import disk_io.transport as transport

    transport.forget_reported()  # what earlier tests in this process already reported
    (tmp_path / "DS1").mkdir()
    settings = TransportSettings(
        modes=("vddk", "file"),
        vddk_libdir=str(tmp_path / "no-vddk-here"),
        file_datastores={"DS1": str(tmp_path / "DS1")},
    )
    with capture_logs() as logs:
        for name in ("vm1", "vm2", "vm3"):
            (tmp_path / "DS1" / name).mkdir()
            (tmp_path / "DS1" / name / f"{name}-flat.vmdk").write_bytes(bytes(MIB))
            opened = open_disk(location(name, MIB), object(), settings)  # type: ignore[arg-type]
            opened.disk.close()
            assert opened.transport == "file"
            assert "VixDiskLib not found" in opened.attempts[0].reason  # still on record
    loud = [e for e in logs if e["log_level"] != "debug" and "vddk" in str(e).lower()]
    assert len(loud) == 1, loud
    assert "no-vddk-here" in str(loud[0])
