"""The VDDK binding against our fake libvixDiskLib.so.8 (compiled with gcc at test time)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import structlog
from cffi import FFI
from disk_io_helpers import make_disk
from vddk_fake import build

from disk_io import DiskIoError, DiskLocation, VcenterAccess, VddkError, VddkUnavailable
from disk_io.vddk import VddkDisk, VddkLibrary, get_library

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
ACCESS = VcenterAccess(
    "https://vc.example:443/sdk",
    'vmware_soap_session="52ab"; Path=/',
    user="backup",
    thumbprint="AA:BB",
)


def loc(name: str, capacity: int, snapshot: str | None = "snapshot-9") -> DiskLocation:
    return DiskLocation("DC0", "DS1", f"{name}/{name}.vmdk", capacity, "vm-7", snapshot, 2000)


def hooks(lib_path: str) -> dict[str, int]:
    f = FFI()
    f.cdef("int FakeVixDiskLib_InitCount(void); int FakeVixDiskLib_OpenHandles(void);")
    h = f.dlopen(lib_path)
    return {"init": h.FakeVixDiskLib_InitCount(), "open": h.FakeVixDiskLib_OpenHandles()}


def worker(cmd: str, distrib: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HERE / "vddk_worker.py"), cmd, str(distrib), str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_round_trip_read_then_write(fake_distrib: Path, ds_root: Path) -> None:
    cap = 16 * MIB + 7 * 512
    blob = os.urandom(3 * MIB + 512)
    flat = make_disk(ds_root / "DS1", "vm1", cap, [(5 * MIB, blob)])
    lib = get_library(fake_distrib)
    with VddkDisk(lib, loc("vm1", cap), ACCESS) as disk:
        assert disk.capacity == cap
        assert disk.mode == "file"
        # 3 MiB + 1 sector crosses the 2 MiB per-call split
        assert disk.read(5 * MIB, len(blob)) == blob
        assert disk.read(cap - 512, 512) == bytes(512)
        with pytest.raises(DiskIoError, match="read-only"):
            disk.write(0, bytes(512))
    patch = os.urandom(MIB)
    with VddkDisk(lib, loc("vm1", cap, snapshot=None), ACCESS, writable=True) as disk:
        disk.write(MIB + 512, patch)
        disk.flush()
    data = flat.read_bytes()
    assert data[MIB + 512 : 2 * MIB + 512] == patch
    assert data[5 * MIB : 5 * MIB + len(blob)] == blob
    assert hooks(lib.path)["open"] == 0


def test_connect_uses_moref_snapshot_session_cookie_and_log_formatting(
    fake_distrib: Path, ds_root: Path
) -> None:
    make_disk(ds_root / "DS1", "vm2", MIB)
    lib = get_library(fake_distrib)
    with structlog.testing.capture_logs() as logs:
        VddkDisk(lib, loc("vm2", MIB), ACCESS).close()
    messages = [e["message"] for e in logs if e.get("event") == "vddk.log"]
    connect = next(m for m in messages if m.startswith("ConnectEx"))
    # formatted by vsnprintf from the va_list: %s, %u and %d arguments all expanded
    assert "vmxSpec=moref=vm-7" in connect
    assert "server=vc.example port=443 thumbprint=AA:BB credType=2 cookie=<set>" in connect
    assert "snapshot=snapshot-9 readOnly=1" in connect
    assert any(
        m.startswith("Open [DS1] vm2/vm2.vmdk flags=4 capacity=2048 sectors") for m in messages
    )
    assert "52ab" not in json.dumps(logs, default=str)  # the cookie never reaches a log


def test_metadata_keys_round_trip(fake_distrib: Path, ds_root: Path) -> None:
    make_disk(ds_root / "DS1", "vm3", MIB)
    lib = get_library(fake_distrib)
    values = {"adapterType": "lsilogic", "geometry.cylinders": "1044", "uuid": "60 00 C2 " * 20}
    with VddkDisk(lib, loc("vm3", MIB, None), ACCESS, writable=True) as disk:
        assert disk.metadata() == {}
        disk.write_metadata(values)
    with VddkDisk(lib, loc("vm3", MIB), ACCESS) as disk:
        assert disk.metadata_keys() == list(values)
        assert disk.metadata() == values
        with pytest.raises(VddkError) as exc:
            disk.read_metadata("no.such.key")
        assert "no.such.key" in str(exc.value)


def test_allocated_blocks(fake_distrib: Path, ds_root: Path) -> None:
    cap = 64 * MIB + 3 * 512  # the tail is smaller than one 64 KiB query chunk
    make_disk(ds_root / "DS1", "vm4", cap, [(0, b"x" * 1000), (40 * MIB + 70_000, b"y" * 10)])
    lib = get_library(fake_distrib)
    with VddkDisk(lib, loc("vm4", cap), ACCESS) as disk:
        extents = disk.allocated_extents()
    assert extents is not None
    # chunk granular (64 KiB); the unqueryable tail is reported, never skipped
    assert extents == [(0, 65536), (40 * MIB + 65536, 65536), (64 * MIB, 3 * 512)]


def test_errors_carry_code_and_library_text(
    fake_distrib: Path, ds_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_disk(ds_root / "DS1", "vm5", 4 * MIB)
    lib = get_library(fake_distrib)
    with pytest.raises(VddkError) as exc:
        VddkDisk(lib, loc("absent", MIB), ACCESS)
    assert exc.value.code == 4
    assert exc.value.text == "The system cannot find the file specified"
    assert "VixDiskLib_Open [DS1] absent/absent.vmdk" in str(exc.value)
    assert hooks(lib.path)["open"] == 0

    monkeypatch.setenv("FAKEVDDK_FAIL_OPEN", "vm5")
    with pytest.raises(VddkError) as exc:
        VddkDisk(lib, loc("vm5", 4 * MIB), ACCESS)
    assert exc.value.code == 13
    monkeypatch.delenv("FAKEVDDK_FAIL_OPEN")

    monkeypatch.setenv("FAKEVDDK_FAIL_READ_SECTOR", str(3 * MIB // 512 + 5))
    with VddkDisk(lib, loc("vm5", 4 * MIB), ACCESS) as disk:
        assert disk.read(0, 2 * MIB) == bytes(2 * MIB)
        with pytest.raises(VddkError) as exc:
            disk.read(2 * MIB, 2 * MIB)
        assert exc.value.code == 16002  # the fake sets junk in the high bits: masked off
        assert exc.value.raw != 16002
        assert exc.value.text == "Cannot do I/O on the disk"
        assert f"sectors {2 * MIB // 512}+4096" in str(exc.value)
        with pytest.raises(ValueError, match="not a non-negative multiple of 512"):
            disk.read(100, 512)
        with pytest.raises(ValueError, match="past the capacity"):
            disk.read(4 * MIB, 512)


def test_init_once_across_threads(fake_distrib: Path, ds_root: Path) -> None:
    make_disk(ds_root / "DS1", "vm6", MIB)
    libs: list[VddkLibrary] = []

    def go() -> None:
        lib = get_library(fake_distrib)
        libs.append(lib)
        VddkDisk(lib, loc("vm6", MIB), ACCESS).close()

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(x) for x in libs}) == 1
    assert hooks(libs[0].path)["init"] == 1


def test_missing_library_names_paths_and_key(tmp_path: Path) -> None:
    with pytest.raises(VddkUnavailable) as exc:
        VddkLibrary(tmp_path / "nowhere")
    msg = str(exc.value)
    assert str(tmp_path / "nowhere" / "lib64" / "libvixDiskLib.so.9") in msg
    assert str(tmp_path / "nowhere" / "libvixDiskLib.so.6") in msg
    assert "transport.vddk_libdir" in msg
    assert len(exc.value.tried) == 8


def make_worker_disks(root: Path) -> None:
    for i in range(4):
        make_disk(root / "DS1", f"vm{i}", 8 * MIB, [(0, os.urandom(8 * MIB))])


def test_parallel_reads_on_several_handles_keep_the_rules(
    fake_distrib: Path, tmp_path: Path
) -> None:
    make_worker_disks(tmp_path)
    proc = worker("parallel", fake_distrib, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out == {"errors": [], "reads": 4 * 3 * 8, "open_handles": 0, "init": 1}


def test_detector_fires_when_a_handle_is_shared_without_the_lock(
    fake_distrib: Path, tmp_path: Path
) -> None:
    """Proves the previous test can fail: bypassing the per-handle lock aborts."""
    make_worker_disks(tmp_path)
    proc = worker("violate", fake_distrib, tmp_path)
    assert proc.returncode == -signal.SIGABRT
    assert "one handle used by two threads at once" in proc.stderr


def test_missing_vddk_falls_back_to_the_next_transport(tmp_path: Path) -> None:
    make_worker_disks(tmp_path)
    proc = worker("fallback", tmp_path / "no-vddk", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["transport"] == "file"
    assert out["first_bytes_ok"] is True
    (mode, ok, reason), (mode2, ok2, _) = out["attempts"]
    assert (mode, ok, mode2, ok2) == ("vddk", False, "file", True)
    assert "VixDiskLib not found" in reason and "transport.vddk_libdir" in reason


def test_older_vddk_without_newer_symbols_degrades(tmp_path: Path) -> None:
    distrib = tmp_path / "old"
    build(distrib, soname="libvixDiskLib.so.6", old=True)
    make_worker_disks(tmp_path)
    proc = worker("old", distrib, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {
        "allocated": None,
        "read_ok": True,
        "has_qab": False,
    }
