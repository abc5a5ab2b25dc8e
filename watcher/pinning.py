"""The SHA-256 certificate pin as aiohttp takes it, compared in constant time."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import aiohttp


class PinnedFingerprint(aiohttp.Fingerprint):
    """aiohttp's SHA-256 pin, compared in constant time (aiohttp itself uses `!=`)."""

    def check(self, transport: asyncio.Transport) -> None:
        if not transport.get_extra_info("sslcontext"):
            return
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        got = hashlib.sha256(der or b"").digest()
        if not der or not hmac.compare_digest(got, self.fingerprint):
            host, port, *_ = transport.get_extra_info("peername")
            raise aiohttp.ServerFingerprintMismatch(self.fingerprint, got, host, port)
