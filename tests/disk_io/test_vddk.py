"""The VDDK binding against our fake libvixDiskLib.so.8 (compiled with gcc at test time)."""

from __future__ import annotations

import hashlib
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

from disk_io import (
    DiskIoError,
    DiskLocation,
    VcenterAccess,
    VddkError,
    VddkUnavailable,
    open_disk,
)
from disk_io.vddk import VddkDisk, VddkLibrary, get_library

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
# The calls VMware wants on one designated thread (docs/vddk.md, "Threads").
CONTROL = {
    "InitEx", "ConnectEx", "Open", "QueryAllocatedBlocks", "Close", "Disconnect", "Cleanup",
    "PrepareForAccess", "EndAccess", "Exit",
}  # fmt: skip
ACCESS = VcenterAccess(
    "https://vc.example:443/sdk",
    'vmware_soap_session="52ab"; Path=/',
    user="backup",
    thumbprint="AB" * 32,  # vigil's own SHA-256 pin: never handed to VDDK as is
)
SHA1 = ":".join(["5E"] * 20)  # a SHA-1-shaped thumbprint, what libvixDiskLib.so.8 takes


def loc(name: str, capacity: int, snapshot: str | None = "snapshot-9") -> DiskLocation:
    return DiskLocation("DC0", "DS1", f"{name}/{name}.vmdk", capacity, "vm-7", snapshot, 2000)


def hooks(lib_path: str) -> dict[str, int]:
    f = FFI()
    f.cdef("int FakeVixDiskLib_InitCount(void); int FakeVixDiskLib_OpenHandles(void);")
    h = f.dlopen(lib_path)
    return {"init": h.FakeVixDiskLib_InitCount(), "open": h.FakeVixDiskLib_OpenHandles()}


def worker(cmd: str, distrib: Path, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HERE / "vddk_worker.py"), cmd, str(distrib), str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def calls(path: Path) -> list[tuple[int, str, str]]:
    """$FAKEVDDK_CALL_LOG as (thread id, function, the rest)."""
    out = []
    for line in path.read_text().splitlines():
        tid, fn, rest = [*line.split(" ", 2), ""][:3]
        out.append((int(tid), fn, rest))
    return out


def test_round_trip_read_then_write(fake_distrib: Path, ds_root: Path) -> None:
    cap = 16 * MIB + 7 * 512
    blob = os.urandom(3 * MIB + 512)
    flat = make_disk(ds_root / "DS1", "vm1", cap, [(5 * MIB, blob)])
    lib = get_library(fake_distrib)
    with VddkDisk(lib, loc("vm1", cap), ACCESS) as disk:
        assert disk.capacity == cap
        assert disk.mode == disk.transport_mode == "nbdssl"  # the fake host's first mode
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
        VddkDisk(lib, loc("vm2", MIB), ACCESS, thumbprint=SHA1).close()
    messages = [e["message"] for e in logs if e.get("event") == "vddk.log"]
    connect = next(m for m in messages if m.startswith("ConnectEx"))
    # formatted by vsnprintf from the va_list: %s, %u and %d arguments all expanded
    assert "vmxSpec=moref=vm-7" in connect
    assert f"server=vc.example port=443 thumbprint={SHA1} credType=2 cookie=<set>" in connect
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


# -- strict like the real library ----------------------------------------------------------


@pytest.fixture
def call_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("FAKEVDDK_CALL_LOG", str(path))
    for var in ("FAKEVDDK_EXPECT_COOKIE", "FAKEVDDK_EXPECT_USER", "FAKEVDDK_EXPECT_THUMBPRINT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("FAKEVDDK_POWERED_ON", "FAKEVDDK_MODES", "FAKEVDDK_CLEANUP_PENDING"):
        monkeypatch.delenv(var, raising=False)
    return path


def test_connects_with_the_vcenter_session_not_a_password(
    fake_distrib: Path, ds_root: Path, call_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_disk(ds_root / "DS1", "s1", MIB)
    lib = get_library(fake_distrib)
    # the cookie value as vCenter set it, quotes included: VDDK sends it back verbatim
    monkeypatch.setenv("FAKEVDDK_EXPECT_COOKIE", '"52ab"')
    monkeypatch.setenv("FAKEVDDK_EXPECT_USER", "backup")
    VddkDisk(lib, loc("s1", MIB), ACCESS).close()
    connect = next(rest for _, fn, rest in calls(call_log) if fn == "ConnectEx")
    # VIXDISKLIB_CRED_SESSIONID (2), the session's user, no key (vigil has no password
    # to hand over), the snapshot MoRef, read-only
    assert "vmxSpec=moref=vm-7 credType=2 user=backup key= " in connect
    assert "snapshot=snapshot-9 readOnly=1" in connect
    # another session (or none) is refused as the real library refuses a bad login
    other = VcenterAccess(ACCESS.url, '"52ac"', user="backup")
    with pytest.raises(VddkError) as exc:
        VddkDisk(lib, loc("s1", MIB), other)
    assert exc.value.code == 3014 and "VixDiskLib_ConnectEx" in str(exc.value)
    with pytest.raises(VddkError):
        VddkDisk(lib, loc("s1", MIB), VcenterAccess(ACCESS.url, '"52ab"', user="root"))


def test_thumbprint_is_checked_at_open_with_vddks_bare_unknown_error(
    fake_distrib: Path, ds_root: Path, call_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_disk(ds_root / "DS1", "s2", MIB)
    lib = get_library(fake_distrib)
    monkeypatch.setenv("FAKEVDDK_EXPECT_THUMBPRINT", SHA1.lower())
    VddkDisk(lib, loc("s2", MIB), ACCESS, thumbprint=SHA1).close()
    with pytest.raises(VddkError) as exc:  # the SHA-256 form: not what a .so.8 takes
        VddkDisk(lib, loc("s2", MIB), ACCESS, thumbprint=":".join(["5E"] * 32))
    assert exc.value.code == 1 and exc.value.text == "Unknown error"
    assert "does not match the thumbprint" in str(exc.value) and "takes the SHA1 form" in str(
        exc.value
    )
    with pytest.raises(VddkError):
        VddkDisk(lib, loc("s2", MIB), ACCESS, thumbprint=":".join(["5F"] * 20))
    assert hooks(lib.path)["open"] == 0


@pytest.mark.parametrize(
    ("soname", "want"), [("libvixDiskLib.so.8", "sha1"), ("libvixDiskLib.so.9", "sha1")]
)
def test_vddk_8_and_9_both_get_the_sha1_thumbprint(tmp_path: Path, soname: str, want: str) -> None:
    distrib = tmp_path / soname
    build(distrib, soname=soname)
    make_worker_disks(tmp_path)
    proc = worker("thumb", distrib, tmp_path, WANT_HASH=want)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["ok"] == ["vddk", "nbdssl"]
    # a pin mismatch fails the open outright: no fallback to the file transport
    assert "not the pinned thumbprint" in out["bad_pin"]
    # the other hash: VDDK refuses ("Unknown error"), the next transport serves the disk
    (m1, ok1, why), (m2, ok2, _) = out["wrong_format"]
    assert (m1, ok1, m2, ok2) == ("vddk", False, "file", True)
    assert "Unknown error" in why


def test_thumbprint_hash_by_version_and_override() -> None:
    from disk_io.vddk.thumbprint import thumbprint_hash, vddk_thumbprint

    # VDDK 9 still takes SHA-1 (docs/vddk.md has the evidence): "auto" never picks SHA-256
    assert [thumbprint_hash(m) for m in (6, 7, 8, 9, 10)] == ["sha1"] * 5
    assert thumbprint_hash(8, "sha256") == "sha256" and thumbprint_hash(9, "sha1") == "sha1"
    with pytest.raises(ValueError, match=r"transport\.vddk\.thumbprint"):
        thumbprint_hash(8, "md5")
    sha1 = hashlib.sha1(b"x").hexdigest().upper()
    assert vddk_thumbprint(b"x", "sha1") == ":".join(sha1[i : i + 2] for i in range(0, 40, 2))
    assert len(vddk_thumbprint(b"x", "sha256")) == 32 * 3 - 1


def test_a_running_vm_is_read_through_its_snapshot(
    fake_distrib: Path, ds_root: Path, call_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_disk(ds_root / "DS1", "s3", MIB)
    lib = get_library(fake_distrib)
    monkeypatch.setenv("FAKEVDDK_POWERED_ON", "1")
    with pytest.raises(VddkError) as exc:
        VddkDisk(lib, loc("s3", MIB, snapshot=None), ACCESS)
    assert exc.value.code == 13
    VddkDisk(lib, loc("s3", MIB), ACCESS).close()
    bad = DiskLocation("DC0", "DS1", "s3/s3.vmdk", MIB, "vm-7", "vm-8", 2000)
    with pytest.raises(VddkError, match="error 3"):
        VddkDisk(lib, bad, ACCESS)  # not a snapshot MoRef


def test_control_calls_run_on_one_designated_thread(
    fake_distrib: Path, ds_root: Path, call_log: Path
) -> None:
    make_disk(ds_root / "DS1", "s4", 4 * MIB, [(0, b"z" * 512)])
    lib = get_library(fake_distrib)

    def go() -> None:
        with VddkDisk(lib, loc("s4", 4 * MIB), ACCESS) as disk:
            assert disk.read(0, 512) == b"z" * 512
            disk.allocated_extents()

    ts = [threading.Thread(target=go) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    seen = calls(call_log)
    assert {fn for _, fn, _ in seen} >= {"ConnectEx", "Open", "Close", "Disconnect"}
    control = [tid for tid, fn, _ in seen if fn in CONTROL]
    assert {"ConnectEx", "Open", "QueryAllocatedBlocks", "Close"} <= {f for _, f, _ in seen}
    assert len(set(control)) == 1  # all on one thread; reads on the readers' own
    assert {tid for tid, fn, _ in seen if fn == "Read"} - set(control)
    assert lib.control.ident != threading.get_ident()


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ("off_thread", "not the designated thread"),
        ("init_twice", "InitEx called twice"),
        ("after_exit", "called after Exit"),
    ],
)
def test_detector_fires_on_the_single_thread_rules(
    fake_distrib: Path, tmp_path: Path, cmd: str, message: str
) -> None:
    """Proves the fake can fail vigil: each rule broken on purpose aborts the process."""
    make_worker_disks(tmp_path)
    proc = worker(cmd, fake_distrib, tmp_path)
    assert proc.returncode == -signal.SIGABRT, proc.stderr[-2000:]
    assert message in proc.stderr
    if cmd == "after_exit":  # vigil itself refuses first
        assert "already shut down" in json.loads(proc.stdout.splitlines()[0])["refused"]


def test_prepare_for_access_brackets_the_opens_and_cleanup_runs_once(
    fake_distrib: Path, ds_root: Path, call_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from disk_io import TransportSettings
    from disk_io.transport import vm_access

    make_disk(ds_root / "DS1", "s5", MIB)
    monkeypatch.setenv("FAKEVDDK_CLEANUP_PENDING", "2")
    access = VcenterAccess("http://vc-prepare.example:80/sdk", "52ab", user="backup")
    settings = TransportSettings(modes=("vddk",), vddk_libdir=str(fake_distrib))
    with structlog.testing.capture_logs() as logs:
        held = vm_access("vm-7", access, settings)
        for _ in range(2):
            open_disk(loc("s5", MIB), access, settings).disk.close()
        held.end()
        held.end()
        vm_access("vm-7", access, settings, modes=("http",)).end()  # no vddk: nothing
    order = [fn for _, fn, _ in calls(call_log) if fn in CONTROL and fn != "InitEx"]
    assert order[:2] == ["Cleanup", "PrepareForAccess"]
    assert order[2:] == ["ConnectEx", "Open", "Close", "Disconnect"] * 2 + ["EndAccess"]
    done = next(e for e in logs if e["event"] == "vddk.cleanup")
    assert (done["cleaned_up"], done["remaining"]) == (2, 0)


def test_transport_modes_pass_through_and_the_mode_used_is_recorded(
    fake_distrib: Path, ds_root: Path, call_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from disk_io import TransportSettings

    make_disk(ds_root / "DS1", "s6", MIB)
    access = VcenterAccess("http://vc-modes.example:80/sdk", "52ab", user="backup")
    monkeypatch.setenv("FAKEVDDK_MODES", "nbdssl:nbd")  # no hotadd: vigil is no proxy VM
    settings = TransportSettings(
        modes=("vddk", "file"),
        vddk_libdir=str(fake_distrib),
        vddk_transport_modes="hotadd:nbdssl:nbd",
        file_datastores={"DS1": str(ds_root / "DS1")},
    )
    opened = open_disk(loc("s6", MIB), access, settings)
    assert (opened.transport, opened.disk.transport_mode) == ("vddk", "nbdssl")
    opened.disk.close()
    assert "modes=hotadd:nbdssl:nbd" in next(r for _, f, r in calls(call_log) if f == "ConnectEx")
    # only hotadd asked for and not offered: VDDK falls back to nbdssl (VDDK guide,
    # ConnectEx), and the recorded mode is what shows it
    only = TransportSettings(**{**settings.__dict__, "vddk_transport_modes": "hotadd"})
    opened = open_disk(loc("s6", MIB), access, only)
    assert opened.disk.transport_mode == "nbdssl"
    opened.disk.close()
    # a host offering none of them: VDDK's failure is a warning with its own text
    monkeypatch.setenv("FAKEVDDK_MODES", "san")
    with structlog.testing.capture_logs() as logs:
        opened = open_disk(loc("s6", MIB), access, only)
    assert opened.transport == "file" and opened.disk.transport_mode == ""
    opened.disk.close()
    warn = next(e for e in logs if e["event"] == "transport.vddk_failed")
    assert warn["log_level"] == "warning"
    assert warn["error"] == "Unknown error" and warn["operation"].startswith("VixDiskLib_Open")
