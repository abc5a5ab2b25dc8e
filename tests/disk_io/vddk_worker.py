"""Runs VDDK scenarios in a fresh process (the library is process-global, and the fake
aborts the process when a threading rule is broken). Prints one JSON line on success.

    python vddk_worker.py COMMAND DISTRIB ROOT
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from disk_io import DiskLocation, TransportSettings, VcenterAccess, open_disk
from disk_io.vddk import VddkDisk, get_library
from disk_io.vddk.abi import ffi

ACCESS = VcenterAccess("https://vc.example:443/sdk", "cookie-1", user="u")
MIB = 1024 * 1024


def loc(i: int, capacity: int) -> DiskLocation:
    return DiskLocation("DC0", "DS1", f"vm{i}/vm{i}.vmdk", capacity, f"vm-{i}", "snapshot-1", 2000)


def parallel(distrib: str, root: str) -> dict[str, object]:
    """4 disks × 2 reader threads each, opening and closing concurrently, 3 rounds."""
    lib = get_library(distrib)
    cap = 8 * MIB
    expected = {
        i: (Path(root) / "DS1" / f"vm{i}" / f"vm{i}-flat.vmdk").read_bytes() for i in range(4)
    }
    errors: list[str] = []
    reads = 0
    lock = threading.Lock()

    def reader(disk: VddkDisk, i: int, half: int) -> None:
        nonlocal reads
        for off in range(half * cap // 2, (half + 1) * cap // 2, MIB):
            if disk.read(off, MIB) != expected[i][off : off + MIB]:
                errors.append(f"vm{i} offset {off}")
            with lock:
                reads += 1

    def one_disk(i: int) -> None:
        for _ in range(3):
            disk = VddkDisk(lib, loc(i, cap), ACCESS)
            try:
                ts = [threading.Thread(target=reader, args=(disk, i, h)) for h in (0, 1)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
            finally:
                disk.close()

    threads = [threading.Thread(target=one_disk, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hooks = _hooks(lib.path)
    return {"errors": errors, "reads": reads, "open_handles": hooks["open"], "init": hooks["init"]}


def _hooks(path: str) -> dict[str, int]:
    from cffi import FFI

    f = FFI()
    f.cdef("int FakeVixDiskLib_InitCount(void); int FakeVixDiskLib_OpenHandles(void);")
    h = f.dlopen(path)
    return {"init": h.FakeVixDiskLib_InitCount(), "open": h.FakeVixDiskLib_OpenHandles()}


def violate(distrib: str, root: str) -> dict[str, object]:
    """Two threads on one handle with no lock: the fake's detector must abort."""
    lib = get_library(distrib)
    disk = VddkDisk(lib, loc(0, 8 * MIB), ACCESS)
    handle = disk._handle
    buf = ffi.new("uint8_t[]", MIB)

    def hammer() -> None:
        for _ in range(200):
            lib.lib.VixDiskLib_Read(handle, 0, MIB // 512, buf)

    ts = [threading.Thread(target=hammer) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"aborted": False}


def fallback(distrib: str, root: str) -> dict[str, object]:
    """vddk missing → the next configured transport (file) serves the disk."""
    settings = TransportSettings(
        modes=("vddk", "file"),
        vddk_libdir=distrib,
        file_datastores={"DS1": str(Path(root) / "DS1")},
    )
    opened = open_disk(loc(0, 8 * MIB), ACCESS, settings)
    try:
        data = opened.disk.read(0, 4096)
    finally:
        opened.disk.close()
    return {
        "transport": opened.transport,
        "attempts": [[a.mode, a.ok, a.reason] for a in opened.attempts],
        "first_bytes_ok": data == (Path(root) / "DS1/vm0/vm0-flat.vmdk").read_bytes()[:4096],
    }


def old(distrib: str, root: str) -> dict[str, object]:
    """A VDDK without QueryAllocatedBlocks/AllocateConnectParams still reads."""
    lib = get_library(distrib)
    with VddkDisk(lib, loc(0, 8 * MIB), ACCESS) as disk:
        return {
            "allocated": disk.allocated_extents(),
            "read_ok": disk.read(0, MIB)
            == (Path(root) / "DS1/vm0/vm0-flat.vmdk").read_bytes()[:MIB],
            "has_qab": lib.has("VixDiskLib_QueryAllocatedBlocks"),
        }


def thumb(distrib: str, root: str) -> dict[str, object]:
    """Through open_disk against a TLS server: vigil's SHA-256 pin is checked, VDDK gets
    the fingerprint its version wants ($WANT_HASH, computed here with hashlib alone), a
    wrong pin fails without falling back, a wrong format makes VDDK refuse."""
    import hashlib
    import tempfile

    from disk_io_helpers import TlsServer

    from disk_io import ThumbprintMismatch

    srv = TlsServer(Path(tempfile.mkdtemp()))
    want = getattr(hashlib, os.environ["WANT_HASH"])(srv.der).hexdigest().upper()
    os.environ["FAKEVDDK_EXPECT_THUMBPRINT"] = ":".join(
        want[i : i + 2] for i in range(0, len(want), 2)
    )
    pin = hashlib.sha256(srv.der).hexdigest()
    access = VcenterAccess(
        f"https://127.0.0.1:{srv.port}/sdk", "cookie-1", user="u", thumbprint=pin
    )
    settings = TransportSettings(
        modes=("vddk", "file"),
        vddk_libdir=distrib,
        file_datastores={"DS1": str(Path(root) / "DS1")},
    )
    out: dict[str, object] = {}
    opened = open_disk(loc(0, 8 * MIB), access, settings)
    out["ok"] = [opened.transport, opened.disk.transport_mode]
    opened.disk.close()
    bad = VcenterAccess(access.url, "cookie-1", user="u", thumbprint="ab" * 32)
    try:
        open_disk(loc(0, 8 * MIB), bad, settings)
        out["bad_pin"] = "opened"
    except ThumbprintMismatch as exc:
        out["bad_pin"] = str(exc)
    other = "sha256" if os.environ["WANT_HASH"] == "sha1" else "sha1"
    import dataclasses

    wrong = dataclasses.replace(settings, vddk_thumbprint=other)
    opened = open_disk(loc(0, 8 * MIB), access, wrong)
    out["wrong_format"] = [[a.mode, a.ok, a.reason] for a in opened.attempts]
    opened.disk.close()
    srv.close()
    return out


def off_thread(distrib: str, root: str) -> dict[str, object]:
    """ConnectEx from a thread other than the designated one: the fake aborts."""
    lib = get_library(distrib)
    from disk_io.vddk.disk import ConnectParams

    params = ConnectParams(lib, loc(0, 8 * MIB), ACCESS)
    conn = ffi.new("VixDiskLibConnection *")
    lib.lib.VixDiskLib_ConnectEx(params.ptr, b"\x01", b"snapshot-1", ffi.NULL, conn)
    return {"aborted": False}


def init_twice(distrib: str, root: str) -> dict[str, object]:
    lib = get_library(distrib)
    cb = lib._callbacks
    lib.run(lambda: lib.lib.VixDiskLib_InitEx(7, 0, cb[0], cb[1], cb[2], ffi.NULL, ffi.NULL))
    return {"aborted": False}


def after_exit(distrib: str, root: str) -> dict[str, object]:
    """After Exit: vigil refuses to use the library again, and the fake would abort."""
    from disk_io import DiskIoError

    lib = get_library(distrib)
    lib.exit()
    try:
        get_library(distrib)
        refused = ""
    except DiskIoError as exc:
        refused = str(exc)
    print(json.dumps({"refused": refused}), flush=True)
    handle = ffi.new("VixDiskLibHandle *")
    lib.run(lambda: lib.lib.VixDiskLib_Open(ffi.NULL, b"[DS1] x.vmdk", 0, handle))
    return {"aborted": False}


if __name__ == "__main__":
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    cmd, distrib, root = sys.argv[1:4]
    os.environ["FAKEVDDK_ROOT"] = root
    commands = {
        "parallel": parallel,
        "violate": violate,
        "fallback": fallback,
        "old": old,
        "thumb": thumb,
        "off_thread": off_thread,
        "init_twice": init_twice,
        "after_exit": after_exit,
    }
    result = commands[cmd](distrib, root)
    print(json.dumps(result))
