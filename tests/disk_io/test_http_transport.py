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
from structlog.testing import capture_logs

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


# -- wire-level behaviour against a scripted server (answers vcsim never gives) --------------


class ScriptedServer:
    """A raw HTTP/1.1 server over one file: `answer(conn_no, method, first, last)` returns
    the response bytes (or None to close the connection); HEAD is answered normally."""

    def __init__(self, data: bytes, answer: object) -> None:
        self.data, self.answer = data, answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[tuple[int, str]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def access(self) -> VcenterAccess:
        return VcenterAccess(f"http://127.0.0.1:{self.port}/sdk", "cookie-1")

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(
                target=self._serve, args=(client, self.connections), daemon=True
            ).start()

    def _serve(self, client: socket.socket, no: int) -> None:
        f = client.makefile("rb")
        try:
            while line := f.readline():
                method = line.split(b" ")[0].decode()
                first = last = -1
                while (h := f.readline()) not in (b"\r\n", b""):
                    if h.lower().startswith(b"range: bytes="):
                        a, b = h.split(b"=", 1)[1].strip().split(b"-")
                        first, last = int(a), int(b)
                self.requests.append((no, method))
                if method == "HEAD":
                    out = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.data)
                else:
                    out = self.answer(no, method, first, last)  # type: ignore[operator]
                if out is None:
                    break
                client.sendall(out)
        except OSError:
            pass
        client.close()

    def close(self) -> None:
        self.sock.close()


def ranged(
    data: bytes, first: int, last: int, extra: bytes = b"", length: int | None = None
) -> bytes:
    body = data[first : last + 1]
    n = len(body) if length is None else length
    return (
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (first, last, len(data), n, extra)
    ) + body


def scripted_disk(data: bytes, answer: object, **kw: object) -> tuple[ScriptedServer, HttpDisk]:
    srv = ScriptedServer(data, answer)
    loc = DiskLocation("DC0", "LocalDS_0", "s/s.vmdk", len(data), "vm-1")
    return srv, HttpDisk(loc, srv.access(), **kw)  # type: ignore[arg-type]


def test_keep_alive_is_reused_and_connection_close_is_honoured() -> None:
    data = os.urandom(3 * MIB)
    close_after = {2}  # the second connection announces it will close

    def answer(no: int, method: str, first: int, last: int) -> bytes:
        extra = b"Connection: close\r\n" if no in close_after else b""
        return ranged(data, first, last, extra)

    srv, disk = scripted_disk(data, answer, connections=1)
    with disk:
        for i in range(3):
            assert disk.read(i * MIB, MIB) == data[i * MIB : (i + 1) * MIB]
        assert srv.connections == 1  # HEAD and three GETs on one connection
        close_after.add(1)
        disk._idle.clear()
        assert disk.read(0, MIB) == data[:MIB]  # connection 2 says close
        assert disk.read(MIB, MIB) == data[MIB : 2 * MIB]
        assert srv.connections == 3
    srv.close()


def test_a_chunked_answer_is_decoded() -> None:
    data = os.urandom(MIB + 17)

    def answer(no: int, method: str, first: int, last: int) -> bytes:
        body = data[first : last + 1]
        parts = [body[i : i + 70000] for i in range(0, len(body), 70000)]
        chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
        return (
            b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Range: bytes %d-%d/%d\r\n\r\n%s0\r\nX-Trailer: 1\r\n\r\n"
            % (first, last, len(data), chunks)
        )

    srv, disk = scripted_disk(data, answer)
    with disk:
        assert disk.read(5, MIB) == data[5 : MIB + 5]
        assert disk.read(0, len(data)) == data
    srv.close()


def test_wrong_lengths_are_errors_never_data() -> None:
    data = os.urandom(MIB)
    mode = {"bad": "length"}

    def answer(no: int, method: str, first: int, last: int) -> bytes:
        if mode["bad"] == "length":
            return ranged(data, first, last, length=last - first)  # one byte short
        return ranged(data, first + 1, last)  # a range other than the one asked for

    srv, disk = scripted_disk(data, answer)
    with disk:
        with pytest.raises(DiskIoError, match=r"bytes \d+-4095"):
            disk.read(0, 4096)
        mode["bad"] = "range"
        with pytest.raises(DiskIoError, match="Content-Range 'bytes 1-4095/"):
            disk.read(0, 4096)
    srv.close()


def test_a_server_closing_idle_connections_loses_no_data() -> None:
    data = os.urandom(MIB)

    def answer(no: int, method: str, first: int, last: int) -> bytes | None:
        return ranged(data, first, last) if len(srv.requests) % 2 == 0 else None

    srv, disk = scripted_disk(data, answer, connections=1)
    with disk, capture_logs() as logs:
        # after HEAD the server drops every other GET unanswered, like an idle timeout
        for i in range(4):
            assert disk.read(i * 1000, 1000) == data[i * 1000 : (i + 1) * 1000]
    assert srv.connections == 4  # one per dropped GET
    assert all(e["event"] == "http.resume" for e in logs if "error" in e)
    srv.close()


def test_a_stalled_server_times_out_with_a_clear_error() -> None:
    data = os.urandom(MIB)

    def answer(no: int, method: str, first: int, last: int) -> bytes:
        return ranged(data, first, last)[:-100]  # then nothing: the body never completes

    srv, disk = scripted_disk(data, answer, timeout=0.2)
    with disk, pytest.raises(DiskIoError, match=r"4 attempts failed, last: TimeoutError"):
        disk.read(0, MIB)
    srv.close()


# -- what the http transport cannot read, and what it does to thin disks ---------------------

VSAN_DESCRIPTOR = """# Disk DescriptorFile
version=4
createType="vmfs"
RW 2048 VSANSPARSE "vsan://52e1a3f0-0e1b-4b0c-8f4b-1d2c3e4f5a6b/7e3c1a5f-aaaa"
ddb.adapterType = "lsilogic"
"""


def test_parse_extents_and_why_there_is_no_flat_file() -> None:
    from disk_io.descriptor import no_flat_reason, parse_extents

    vsan = parse_extents(VSAN_DESCRIPTOR.encode())
    assert vsan == [("VSANSPARSE", "vsan://52e1a3f0-0e1b-4b0c-8f4b-1d2c3e4f5a6b/7e3c1a5f-aaaa")]
    assert "vSAN object" in no_flat_reason(vsan)
    vvol = parse_extents(b'RW 2048 VVOL "vvol://rfc4122.1234/naa.600a"\n')
    assert "vVol" in no_flat_reason(vvol)
    vmfs = parse_extents(b'RW 2048 VMFS "x-flat.vmdk"\n')
    assert vmfs == [("VMFS", "x-flat.vmdk")] and no_flat_reason(vmfs) == ""


@pytest.mark.parametrize("writable", [False, True])
def test_a_disk_without_flat_file_points_at_vddk(vcsim: object, writable: bool) -> None:
    from disk_io import TransportUnavailable

    d = vcsim.datastore_dirs[0] / "vsandisk"  # type: ignore[attr-defined]
    d.mkdir(exist_ok=True)
    (d / "vsandisk.vmdk").write_text(VSAN_DESCRIPTOR)
    loc = DiskLocation("DC0", "LocalDS_0", "vsandisk/vsandisk.vmdk", MIB, "vm-1")
    with pytest.raises(TransportUnavailable) as exc:
        HttpDisk(loc, login(vcsim), writable=writable)
    msg = str(exc.value)
    assert "no flat file vsandisk/vsandisk-flat.vmdk" in msg and "vSAN object" in msg
    assert "vSAN and vVols datastores do not have" in msg and "use the vddk transport" in msg
    assert not (d / "vsandisk-flat.vmdk").exists()  # a restore did not create a stray file


def test_a_thin_disk_is_written_by_another_transport_when_there_is_one(
    vcsim: object, tmp_path: Path
) -> None:
    from dataclasses import replace

    from disk_io import TransportSettings, open_disk

    ds = vcsim.datastore_dirs[0]  # type: ignore[attr-defined]
    loc = replace(put_disk(ds, "thin", bytes(2 * MIB)), provisioning="thin")
    access = login(vcsim)
    both = TransportSettings(modes=("http", "file"), file_datastores={"LocalDS_0": str(ds)})
    opened = open_disk(loc, access, both, writable=True)
    assert opened.transport == "file"  # http moved last: it would fill the disk
    opened.disk.close()
    only_http = TransportSettings(modes=("http",))
    with capture_logs() as logs:
        opened = open_disk(loc, access, only_http, writable=True)
    opened.disk.close()
    assert opened.transport == "http"
    warn = next(e for e in logs if e["event"] == "transport.thin_disk_written_in_full")
    assert warn["log_level"] == "warning" and "vddk keeps it thin" in warn["why"]
    thick = replace(loc, provisioning="eager-zeroed-thick")
    opened = open_disk(thick, access, both, writable=True)
    opened.disk.close()
    assert opened.transport == "http"  # not thin: the configured order is kept
