"""The `http` transport against the simulator's datastore service (/folder)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pyVim.connect import Disconnect, SmartConnect

from disk_io import DiskIoError, DiskLocation, ThumbprintMismatch, VcenterAccess
from disk_io.httpdisk import HttpDisk

MIB = 1024 * 1024


def login(sim: object) -> VcenterAccess:
    u = urlsplit(sim.url)  # type: ignore[attr-defined]
    si = SmartConnect(
        protocol=u.scheme,
        host=u.hostname,
        port=u.port,
        user=sim.user,  # type: ignore[attr-defined]
        pwd=sim.password,  # type: ignore[attr-defined]
        disableSslCertValidation=True,
    )
    cookie = si._stub.cookie
    Disconnect_later.append(si)
    return VcenterAccess(sim.url, cookie, user=sim.user, verify=False)  # type: ignore[attr-defined]


Disconnect_later: list[object] = []


@pytest.fixture(autouse=True)
def _logout() -> Iterator[None]:
    yield
    while Disconnect_later:
        try:
            Disconnect(Disconnect_later.pop())
        except Exception:
            pass


def put_disk(ds_dir: Path, name: str, data: bytes) -> DiskLocation:
    d = ds_dir / name
    d.mkdir(exist_ok=True)
    (d / f"{name}.vmdk").write_text('ddb.adapterType = "pvscsi"\nddb.uuid = "60 00"\n')
    (d / f"{name}-flat.vmdk").write_bytes(data)
    return DiskLocation("DC0", "LocalDS_0", f"{name}/{name}.vmdk", len(data), "vm-1")


def test_ranged_reads_match_the_file(vcsim: object) -> None:
    data = os.urandom(9 * MIB + 512)
    loc = put_disk(vcsim.datastore_dirs[0], "httpread", data)  # type: ignore[attr-defined]
    with HttpDisk(loc, login(vcsim)) as disk:
        assert disk.capacity == len(data)
        for off, n in [(0, MIB), (3 * MIB - 7, 2 * MIB + 13), (len(data) - 512, 512), (5, 0)]:
            assert disk.read(off, n) == data[off : off + n]
        assert disk.allocated_extents() is None
        assert disk.metadata() == {"adapterType": "pvscsi", "uuid": "60 00"}
        with pytest.raises(ValueError, match="outside the capacity"):
            disk.read(len(data), 1)


def test_parallel_reads_share_the_connection_pool(vcsim: object) -> None:
    data = os.urandom(8 * MIB)
    loc = put_disk(vcsim.datastore_dirs[0], "httppar", data)  # type: ignore[attr-defined]
    with HttpDisk(loc, login(vcsim), connections=3) as disk:
        out: dict[int, bytes] = {}

        def go(i: int) -> None:
            out[i] = bytes(disk.read(i * MIB, MIB))

        ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert b"".join(out[i] for i in range(8)) == data
        assert len(disk._idle) <= 3


def test_a_short_flat_file_reads_zeros_past_its_end(vcsim: object) -> None:
    loc = put_disk(vcsim.datastore_dirs[0], "httpshort", b"q" * 1000)  # type: ignore[attr-defined]
    loc = DiskLocation(loc.datacenter_path, loc.datastore, loc.path, 4096, "vm-1")
    with HttpDisk(loc, login(vcsim)) as disk:
        assert disk.read(0, 4096) == b"q" * 1000 + bytes(3096)
        assert disk.allocated_extents() == [(0, 1000)]


def test_missing_file_is_a_clear_error(vcsim: object) -> None:
    loc = DiskLocation("DC0", "LocalDS_0", "nothere/nothere.vmdk", MIB, "vm-1")
    with pytest.raises(DiskIoError, match="HTTP 404: no such file on datastore LocalDS_0"):
        HttpDisk(loc, login(vcsim))


def test_restore_write_streams_one_put(vcsim: object) -> None:
    ds = vcsim.datastore_dirs[0]  # type: ignore[attr-defined]
    loc = put_disk(ds, "httpwrite", bytes(6 * MIB))
    a, b = os.urandom(MIB), os.urandom(2 * MIB)
    with HttpDisk(loc, login(vcsim), writable=True) as disk:
        disk.write(0, a)
        disk.write(3 * MIB, b)  # the gap is sent as zeros
        with pytest.raises(DiskIoError, match="ascending offsets"):
            disk.write(MIB, b"x" * 512)
        disk.flush()  # the tail is sent as zeros and the upload completes
        with pytest.raises(DiskIoError, match="already completed"):
            disk.write(5 * MIB, b"x")
    got = (ds / "httpwrite" / "httpwrite-flat.vmdk").read_bytes()
    assert got == a + bytes(2 * MIB) + b + bytes(MIB)


class DroppingProxy:
    """A TCP proxy that cuts the first `drops` downstream connections after `after` bytes."""

    def __init__(self, upstream: tuple[str, int], after: int, drops: int = 1) -> None:
        self.upstream, self.after, self.drops = upstream, after, drops
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.cut = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            drop = self.cut < self.drops
            if drop:
                self.cut += 1
            threading.Thread(target=self._pump, args=(client, up, 1 << 62), daemon=True).start()
            limit = self.after if drop else 1 << 62
            threading.Thread(target=self._pump, args=(up, client, limit), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, limit: int) -> None:
        sent = 0
        try:
            while sent < limit:
                data = src.recv(min(65536, limit - sent))
                if not data:
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.sock.close()


def test_a_dropped_connection_resumes_where_it_stopped(vcsim: object) -> None:
    data = os.urandom(4 * MIB)
    loc = put_disk(vcsim.datastore_dirs[0], "httpdrop", data)  # type: ignore[attr-defined]
    access = login(vcsim)
    u = urlsplit(vcsim.url)  # type: ignore[attr-defined]
    # the HEAD at open uses the first connection: let it through, cut the GET mid-body
    proxy = DroppingProxy((u.hostname, u.port), after=MIB + 300, drops=2)
    proxy.cut = 1
    via = VcenterAccess(f"http://127.0.0.1:{proxy.port}/sdk", access.session_cookie)
    try:
        with HttpDisk(loc, via, connections=1) as disk:
            disk._idle.clear()  # force a fresh (dropping) connection for the read
            assert disk.read(0, 4 * MIB) == data
            assert proxy.cut == 2
    finally:
        proxy.close()


def test_thumbprint_pin(make_vcsim: object) -> None:
    sim = make_vcsim(tls=True)  # type: ignore[operator]
    data = os.urandom(MIB)
    loc = put_disk(sim.datastore_dirs[0], "httptls", data)
    access = login(sim)
    pinned = VcenterAccess(sim.url, access.session_cookie, thumbprint=sim.thumbprint)
    with HttpDisk(loc, pinned) as disk:
        assert disk.read(0, MIB) == data
    wrong = VcenterAccess(sim.url, access.session_cookie, thumbprint="AB" * 32)
    with pytest.raises(ThumbprintMismatch, match="is not the pinned"):
        HttpDisk(loc, wrong)
    verified = VcenterAccess(sim.url, access.session_cookie)  # self-signed: refused
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        HttpDisk(loc, verified)
