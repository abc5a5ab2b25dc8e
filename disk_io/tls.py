"""TLS to vCenter for the data plane: a connection verified by vigil's SHA-256 pin or by the
CA before anything (the session cookie least of all) is sent, and the certificate it saw."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import re
import ssl

from .errors import DiskIoError, ThumbprintMismatch
from .model import VcenterAccess


def normalize_thumbprint(value: str) -> str:
    return value.strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")


def colon_hex(digest: bytes) -> str:
    """`AB:CD:...`: the form vcenter.thumbprint is written in."""
    return ":".join(f"{b:02X}" for b in digest)


def check_thumbprint(der: bytes, expected: str, host: str = "the server") -> None:
    """The pin is the full SHA-256 of the leaf certificate, compared in constant time
    (a SHA-1 or truncated pin would let a forged certificate through more cheaply)."""
    want = normalize_thumbprint(expected)
    if not re.fullmatch(r"[0-9a-f]{64}", want):
        raise ThumbprintMismatch(
            f"pinned thumbprint {expected!r} is not a SHA-256 fingerprint (64 hex digits); "
            "set vcenter.thumbprint to the SHA-256 of the vCenter certificate"
        )
    got = hashlib.sha256(der).digest()
    if not hmac.compare_digest(got, bytes.fromhex(want)):
        raise ThumbprintMismatch(
            f"TLS certificate of {host} is not the pinned thumbprint: expected {expected}, "
            f"got {colon_hex(got)}; if the certificate was replaced on purpose, update "
            "vcenter.thumbprint"
        )


def _ssl_context(access: VcenterAccess) -> ssl.SSLContext:
    if access.thumbprint:
        # The pin is the trust anchor (as in VMware's own tools): checked after connect.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if access.ssl_context is not None:
        return access.ssl_context
    ctx = ssl.create_default_context()
    if not access.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(
    access: VcenterAccess, ctx: ssl.SSLContext | None, timeout: float
) -> http.client.HTTPConnection:
    """A connection to vCenter whose certificate passed verification (CA or pin) before
    anything, the session cookie least of all, is sent over it."""
    a = access
    conn: http.client.HTTPConnection
    if ctx is not None:
        conn = http.client.HTTPSConnection(a.host, a.port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(a.host, a.port, timeout=timeout)
    try:
        conn.connect()
    except ssl.SSLCertVerificationError as exc:
        conn.close()
        raise DiskIoError(
            f"TLS certificate of {a.host}:{a.port} is not trusted ({exc}); set "
            "vcenter.ca_file to the CA that signed it, or pin it with vcenter.thumbprint"
        ) from None
    if ctx is not None and a.thumbprint:
        try:
            check_thumbprint(_peer_der(conn), a.thumbprint, f"{a.host}:{a.port}")
        except ThumbprintMismatch:
            conn.close()
            raise
    return conn


def _peer_der(conn: http.client.HTTPConnection) -> bytes:
    sock = conn.sock
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    if not der:
        raise ThumbprintMismatch(f"{conn.host}: no server certificate to check")
    return der


def server_certificate(access: VcenterAccess, timeout: float = 30.0) -> bytes | None:
    """The DER certificate of vCenter, read over a connection verified as the http transport
    verifies it (the pin, else the CA unless verification is off); None over plain http.
    A pin mismatch raises ThumbprintMismatch."""
    if access.scheme != "https":
        return None
    conn = connect(access, _ssl_context(access), timeout)
    try:
        return _peer_der(conn)
    finally:
        conn.close()


def server_thumbprint(access: VcenterAccess, timeout: float = 30.0) -> str:
    """The SHA-256 thumbprint (`AB:CD:..`) of vCenter's certificate, read over a connection
    verified as the http transport verifies it. For VDDK, which trusts a certificate by
    thumbprint only: handing it the one vigil verified keeps VDDK's connection verified."""
    if access.scheme != "https":
        return ""
    conn = connect(access, _ssl_context(access), timeout)
    try:
        return colon_hex(hashlib.sha256(_peer_der(conn)).digest())
    finally:
        conn.close()
