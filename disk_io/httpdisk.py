"""The `http` transport: the datastore HTTP service of vCenter (`/folder/<path>?dcPath&dsName`).

Reads are ranged GETs of the disk's `-flat.vmdk` over keep-alive connections (a small
pool per disk, so reads from several threads overlap); a dropped connection is resumed
from the last byte received. Writes stream one PUT of the whole extent: neither ESXi's
nor the simulator's /folder handler applies a Content-Range to a PUT (govmomi's handler
truncates the file), so writes must come in ascending offsets; gaps are sent as zeros,
and `flush()` completes the upload. `close()` without `flush()` aborts it.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from urllib.parse import quote, urlencode

import structlog

from .descriptor import MAX_DESCRIPTOR, no_flat_reason, parse_descriptor_bytes, parse_extents
from .errors import DiskIoError, TransportUnavailable
from .extents import check_range
from .model import DiskLocation, Extent, VcenterAccess
from .tls import (  # re-exported: callers import them from here
    _ssl_context,
    check_thumbprint,
    colon_hex,
    connect,
    normalize_thumbprint,
    server_certificate,
    server_thumbprint,
)

__all__ = [
    "HttpDisk",
    "check_thumbprint",
    "colon_hex",
    "connect",
    "folder_url",
    "normalize_thumbprint",
    "server_certificate",
    "server_thumbprint",
]

log = structlog.get_logger(__name__)

RETRIES = 3
NO_FLAT = (
    "the http transport reads a disk's -flat.vmdk through the datastore browser (/folder), "
    "which vSAN and vVols datastores do not have (their disks are objects, not files): use the "
    "vddk transport for this disk (transport.modes)"
)
ZEROS = bytes(1024 * 1024)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

Buffer = bytes | bytearray | memoryview


def folder_url(location: DiskLocation, rel_path: str) -> str:
    query = urlencode({"dcPath": location.datacenter_path, "dsName": location.datastore})
    return f"/folder/{quote(rel_path)}?{query}"


class HttpDisk:
    """A disk's flat extent through the datastore HTTP service. Blocking; thread-safe."""

    transport = "http"
    transport_mode = ""  # one way only: /folder
    # A restore is one streamed PUT of the whole flat file, zeros included: on VMFS a thin
    # disk ends up with every block allocated. open_disk tries the other transports first
    # for a thin disk (docs/vddk.md, "What the http transport can and cannot do").
    keeps_thin = False

    def __init__(
        self,
        location: DiskLocation,
        access: VcenterAccess,
        *,
        writable: bool = False,
        connections: int = 4,
        timeout: float = 60.0,
    ) -> None:
        self.location = location
        self.access = access
        self.writable = writable
        self.capacity = location.capacity_bytes
        self.parallel_reads = max(1, connections)
        self.timeout = timeout
        try:
            self.flat_path = location.flat_extent_path()
        except ValueError as exc:
            raise TransportUnavailable(str(exc)) from None
        self.url = folder_url(location, self.flat_path)
        self._ctx = _ssl_context(access) if access.scheme == "https" else None
        self._headers = {"Cookie": f"vmware_soap_session={access.cookie_value()}"}
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._put: http.client.HTTPConnection | None = None
        self._pos = 0
        self._uploaded = False
        self._write_lock = threading.Lock()
        # Also before a restore: a PUT to a flat file that does not exist would create a
        # stray file beside a vSAN/vVols disk instead of writing the disk.
        size = self._head()
        self.file_size = size if not writable else self.capacity
        if self.file_size > self.capacity:
            raise DiskIoError(
                f"disk {location}: {self.flat_path} is {self.file_size} bytes, larger than the "
                f"capacity {self.capacity}"
            )
        if self.file_size < self.capacity:
            log.info(  # normal for sparse files on some NAS datastores and the simulator
                "http.short_flat_file",
                disk=str(location),
                file_size=self.file_size,
                capacity=self.capacity,
                note="bytes past the end read as zeros",
            )

    # -- connections ----------------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        return connect(self.access, self._ctx, self.timeout)

    def _acquire(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._closed:
                raise DiskIoError(f"disk {self.location} is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.parallel_reads:
                self._idle.append(conn)
                return
        conn.close()

    def _fail_status(self, resp: http.client.HTTPResponse, what: str) -> DiskIoError:
        body = resp.read(512)
        if 300 <= resp.status < 400:
            # http.client never follows: the cookie must not go to a host we did not pick.
            target = resp.getheader("Location") or "(no Location header)"
            return DiskIoError(
                f"{what}: HTTP {resp.status} redirect to {target}; the http transport does "
                "not follow redirects (the session cookie would go along): set vcenter.url to "
                "the address vCenter itself answers on, or use another transport"
            )
        if resp.status in (401, 403):
            return DiskIoError(
                f"{what}: HTTP {resp.status}: the session cookie was rejected (log in again)"
            )
        if resp.status == 404:
            return DiskIoError(
                f"{what}: HTTP 404: no such file on datastore {self.location.datastore}"
            )
        return DiskIoError(f"{what}: HTTP {resp.status} {resp.reason}: {body[:200]!r}")

    def _head(self) -> int:
        what = f"HEAD {self.location.datastore}:{self.flat_path}"
        conn = self._acquire()
        try:
            conn.request("HEAD", self.url, headers=self._headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 404:
                raise self._no_flat_file(what)
            if resp.status != 200:
                raise self._fail_status(resp, what)
            length = resp.getheader("Content-Length")
            if length is None:
                raise DiskIoError(f"{what}: no Content-Length in the answer")
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return int(length)

    # -- reading --------------------------------------------------------------------------

    def _check(self, offset: int, length: int) -> None:
        check_range(f"disk {self.location}", offset, length, self.capacity)

    def read(self, offset: int, length: int) -> bytearray:
        self._check(offset, length)
        buf = bytearray(length)  # past the end of a short file: zeros already
        end = min(offset + length, self.file_size)
        if end > offset:
            self._get_into(memoryview(buf)[: end - offset], offset, self.url, self.flat_path)
        return buf

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill `view` with the bytes at `offset` (no allocation: for recycled buffers)."""
        length = len(view)
        self._check(offset, length)
        end = min(offset + length, self.file_size)
        if end > offset:
            self._get_into(view[: end - offset], offset, self.url, self.flat_path)
        if end - offset < length:
            view[max(0, end - offset) :] = bytes(length - max(0, end - offset))

    def _get_into(self, view: memoryview, start: int, url: str, name: str) -> None:
        """Fill `view` with bytes [start, start+len(view)), resuming after dropped connections."""
        n = len(view)
        got = 0
        failures = 0
        while got < n:
            first, last = start + got, start + n - 1
            what = f"GET {self.location.datastore}:{name} bytes {first}-{last}"
            conn = self._acquire()
            try:
                conn.request(
                    "GET", url, headers={**self._headers, "Range": f"bytes={first}-{last}"}
                )
                resp = conn.getresponse()
                if resp.status != 206:
                    raise self._fail_status(resp, what)
                m = _CONTENT_RANGE.fullmatch(resp.getheader("Content-Range", ""))
                if not m or int(m.group(1)) != first or int(m.group(2)) != last:
                    raise DiskIoError(
                        f"{what}: the server answered Content-Range "
                        f"{resp.getheader('Content-Range')!r}"
                    )
                while got < n:
                    k = resp.readinto(view[got:])
                    if not k:
                        raise http.client.IncompleteRead(b"", n - got)
                    got += k
                if resp.read(1):
                    raise DiskIoError(f"{what}: the server sent more bytes than asked for")
            except DiskIoError:
                conn.close()
                raise
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                failures += 1
                if failures > RETRIES:
                    raise DiskIoError(f"{what}: {failures} attempts failed, last: {exc!r}") from exc
                log.warning(
                    "http.resume", disk=str(self.location), offset=start + got, error=repr(exc)
                )
                time.sleep(0.05 * failures)
                continue
            self._release(conn)

    def allocated_extents(self) -> list[Extent] | None:
        if self.file_size < self.capacity:
            return [Extent(0, self.file_size)] if self.file_size else []
        return None  # the datastore service cannot tell holes from data

    def _descriptor(self) -> tuple[int, bytes]:
        """(HTTP status, bytes) of the disk's text descriptor."""
        url = folder_url(self.location, self.location.path)
        conn = self._acquire()
        try:
            conn.request(
                "GET", url, headers={**self._headers, "Range": f"bytes=0-{MAX_DESCRIPTOR}"}
            )
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return resp.status, data

    def _no_flat_file(self, what: str) -> DiskIoError:
        """The error for a flat file that is not there: the disk is missing altogether, or
        its backing has no flat file (vSAN, vVols), which only VDDK can read."""
        status, data = self._descriptor()
        if status not in (200, 206):
            return DiskIoError(
                f"{what}: HTTP 404: no such file on datastore {self.location.datastore}"
            )
        reason = no_flat_reason(parse_extents(data)) or (
            f"the descriptor {self.location.path} exists, its flat extent does not"
        )
        return TransportUnavailable(
            f"disk {self.location}: no flat file {self.flat_path} ({reason}); {NO_FLAT}"
        )

    def metadata(self) -> dict[str, str]:
        """The ddb.* entries of the text descriptor (empty when it has none)."""
        status, data = self._descriptor()
        if status not in (200, 206):
            # 416: an empty descriptor (the simulator's); anything else deserves a look.
            report = log.info if status == 416 else log.warning
            report("http.no_descriptor", disk=str(self.location), status=status)
            return {}
        return parse_descriptor_bytes(data)

    # -- writing --------------------------------------------------------------------------

    def write(self, offset: int, data: Buffer) -> None:
        if not self.writable:
            raise DiskIoError(f"disk {self.location} was opened read-only")
        self._check(offset, len(data))
        with self._write_lock:
            if self._uploaded:
                raise DiskIoError(f"disk {self.location}: the upload was already completed")
            if offset < self._pos:
                raise DiskIoError(
                    f"disk {self.location}: the http transport writes one streamed PUT, in "
                    f"ascending offsets; got offset {offset} after {self._pos}"
                )
            conn = self._put or self._start_put()
            try:
                while self._pos < offset:
                    k = min(len(ZEROS), offset - self._pos)
                    conn.send(ZEROS[:k])
                    self._pos += k
                conn.send(data)
                self._pos += len(data)
            except (OSError, http.client.HTTPException) as exc:
                self._abort_put()
                raise DiskIoError(
                    f"PUT {self.location.datastore}:{self.flat_path} failed at offset "
                    f"{self._pos}: {exc!r} (a streamed upload cannot resume; restart the restore)"
                ) from exc

    def _start_put(self) -> http.client.HTTPConnection:
        conn = self._connect()
        conn.putrequest("PUT", self.url, skip_accept_encoding=True)
        for k, v in self._headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(self.capacity))
        conn.endheaders()
        self._put = conn
        return conn

    def _abort_put(self) -> None:
        conn, self._put = self._put, None
        if conn is not None:
            conn.close()

    def write_metadata(self, values: dict[str, str]) -> None:
        if values:
            log.warning("http.metadata_not_written", disk=str(self.location), keys=sorted(values))

    def flush(self) -> None:
        """For a writable disk: send the rest as zeros and finish the upload."""
        if not self.writable:
            return
        with self._write_lock:
            if self._uploaded:
                return
            conn = self._put or self._start_put()
            what = f"PUT {self.location.datastore}:{self.flat_path}"
            try:
                while self._pos < self.capacity:
                    k = min(len(ZEROS), self.capacity - self._pos)
                    conn.send(ZEROS[:k])
                    self._pos += k
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._abort_put()
                raise DiskIoError(f"{what}: {exc!r}") from exc
            self._abort_put()
            if resp.status not in (200, 201, 204):
                raise DiskIoError(f"{what}: HTTP {resp.status} {resp.reason}")
            self._uploaded = True
            log.info("http.uploaded", disk=str(self.location), bytes=self.capacity)

    def close(self) -> None:
        with self._write_lock:
            if self._put is not None:
                log.warning("http.upload_aborted", disk=str(self.location), at=self._pos)
                self._abort_put()
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> HttpDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
