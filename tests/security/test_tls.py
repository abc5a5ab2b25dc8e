"""TLS on every connection vigil makes: SOAP, the vAPI tagging REST service and the
datastore HTTP disk transport all verify certificates by default, accept a CA file,
and pin the full SHA-256 of the leaf certificate (compared in constant time) when a
thumbprint is configured. Run against the simulator serving HTTPS."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import anyio
import pytest

from disk_io import DiskIoError, DiskLocation, ThumbprintMismatch
from disk_io.httpdisk import HttpDisk, check_thumbprint
from protector.vsphere.disks import vcenter_access
from watcher.session import Credentials, Session
from watcher.soap import Endpoint, TlsPinError, VsphereConnectionError
from watcher.tags import TagClient

MIB = 1024 * 1024
WRONG_PIN = "AB:" * 31 + "AB"


def creds(sim) -> Credentials:  # type: ignore[no-untyped-def]
    return Credentials(sim.user, sim.password)


class DigestSpy:
    """Counts calls of hmac.compare_digest on 32-byte values (SHA-256 digests)."""

    def __init__(self) -> None:
        self.sha256_compares = 0
        self._real = hmac.compare_digest

    def __call__(self, a, b):  # type: ignore[no-untyped-def]
        if len(a) == 32 and len(b) == 32:
            self.sha256_compares += 1
        return self._real(a, b)


def put_disk(sim, name: str, data: bytes) -> DiskLocation:  # type: ignore[no-untyped-def]
    d = sim.datastore_dirs[0] / name
    d.mkdir(exist_ok=True)
    (d / f"{name}.vmdk").write_text('ddb.adapterType = "pvscsi"\n')
    (d / f"{name}-flat.vmdk").write_bytes(data)
    return DiskLocation("DC0", "LocalDS_0", f"{name}/{name}.vmdk", len(data), "vm-1")


# -- SOAP ----------------------------------------------------------------------------------


async def test_soap_refuses_an_untrusted_certificate_and_trusts_a_ca_file(tls_sim, sim_ca_file):
    with pytest.raises(VsphereConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        async with Session(Endpoint(tls_sim.url), creds(tls_sim), keepalive_interval=0):
            pass
    ep = Endpoint(tls_sim.url, ca_file=str(sim_ca_file))
    async with Session(ep, creds(tls_sim), keepalive_interval=0) as s:
        assert s.session_cookie


async def test_soap_pin_compares_the_sha256_in_constant_time(tls_sim, monkeypatch):
    spy = DigestSpy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    ep = Endpoint(tls_sim.url, thumbprint=tls_sim.thumbprint)
    async with Session(ep, creds(tls_sim), keepalive_interval=0) as s:
        assert s.session_cookie
    assert spy.sha256_compares >= 1, "the pin must be compared with hmac.compare_digest"


def test_soap_pin_must_be_a_full_sha256():
    sha1 = "AB:" * 19 + "AB"
    with pytest.raises(ValueError, match="SHA-256"):
        Endpoint("https://vc.example.com/sdk", thumbprint=sha1)
    with pytest.raises(ValueError, match="SHA-256"):
        Endpoint("https://vc.example.com/sdk", thumbprint=WRONG_PIN[:-3])


# -- vAPI tagging REST -----------------------------------------------------------------------


async def test_tags_refuse_an_untrusted_certificate(tls_sim):
    tags = TagClient(Endpoint(tls_sim.url), tls_sim.user, tls_sim.password)
    try:
        with pytest.raises(VsphereConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await tags.vm_tags()
    finally:
        await tags.close()


async def test_tags_trust_a_ca_file_and_a_pin(tls_sim, sim_ca_file):
    for ep in (
        Endpoint(tls_sim.url, ca_file=str(sim_ca_file)),
        Endpoint(tls_sim.url, thumbprint=tls_sim.thumbprint),
    ):
        tags = TagClient(ep, tls_sim.user, tls_sim.password)
        try:
            assert await tags.vm_tags() == {}
        finally:
            await tags.close()


async def test_tags_pin_mismatch_is_a_pin_error_showing_the_actual_thumbprint(tls_sim):
    tags = TagClient(Endpoint(tls_sim.url, thumbprint=WRONG_PIN), tls_sim.user, tls_sim.password)
    try:
        with pytest.raises(TlsPinError) as exc:
            await tags.vm_tags()
    finally:
        await tags.close()
    assert tls_sim.thumbprint in str(exc.value)
    assert "vcenter.thumbprint" in str(exc.value)


# -- datastore HTTP (http.client) ------------------------------------------------------------


async def _access(sim, **endpoint_kw):  # type: ignore[no-untyped-def]
    """A VcenterAccess as the daemon builds it, from a session logged in with `endpoint_kw`."""
    pin = Endpoint(sim.url, thumbprint=sim.thumbprint)
    session = await Session(pin, creds(sim), keepalive_interval=0).connect()
    access = vcenter_access(session)
    # Same session, but trust configured as the test says.
    session.endpoint = Endpoint(sim.url, **endpoint_kw)
    return session, vcenter_access(session), access


async def test_http_disk_refuses_an_untrusted_certificate_with_a_clear_error(tls_sim):
    loc = put_disk(tls_sim, "tlsdefault", os.urandom(MIB))
    session, access, _ = await _access(tls_sim)
    try:
        with pytest.raises(DiskIoError) as exc:
            HttpDisk(loc, access)
    finally:
        await session.close()
    msg = str(exc.value)
    assert "CERTIFICATE_VERIFY_FAILED" in msg
    assert "127.0.0.1" in msg and "vcenter.ca_file" in msg and "vcenter.thumbprint" in msg


async def test_http_disk_trusts_a_ca_file(tls_sim, sim_ca_file: Path):
    data = os.urandom(MIB)
    loc = put_disk(tls_sim, "tlsca", data)
    session, access, _ = await _access(tls_sim, ca_file=str(sim_ca_file))
    try:
        with HttpDisk(loc, access) as disk:
            assert disk.read(0, MIB) == data
    finally:
        await session.close()


async def test_http_disk_pin_is_the_full_sha256_in_constant_time(tls_sim, monkeypatch):
    data = os.urandom(MIB)
    loc = put_disk(tls_sim, "tlspin", data)
    session, _, pinned = await _access(tls_sim)
    spy = DigestSpy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    try:
        with HttpDisk(loc, pinned) as disk:
            assert disk.read(0, MIB) == data
        assert spy.sha256_compares >= 1, "the pin must be compared with hmac.compare_digest"
        wrong = type(pinned)(pinned.url, pinned.session_cookie, thumbprint=WRONG_PIN)
        with pytest.raises(ThumbprintMismatch) as exc:
            HttpDisk(loc, wrong)
    finally:
        await session.close()
    # The actual thumbprint, in the form vcenter.thumbprint takes, and what to do.
    assert tls_sim.thumbprint in str(exc.value)
    assert "vcenter.thumbprint" in str(exc.value)


def test_http_disk_pin_refuses_sha1_and_short_prefixes():
    der = b"certificate bytes"
    sha256 = hashlib.sha256(der).hexdigest()
    check_thumbprint(der, sha256)
    with pytest.raises(ThumbprintMismatch, match="SHA-256"):
        check_thumbprint(der, hashlib.sha1(der).hexdigest())  # a SHA-1 pin is too weak
    with pytest.raises(ThumbprintMismatch, match="SHA-256"):
        check_thumbprint(der, sha256[:32])


# -- VDDK ----------------------------------------------------------------------------------


async def test_vddk_gets_the_thumbprint_of_the_ca_verified_certificate(tls_sim, sim_ca_file):
    """VDDK verifies vCenter only by thumbprint: with CA verification and no pin, vigil
    hands it the thumbprint of the certificate it verified itself (and refuses an
    untrusted one), so VDDK's connection is never the unverified one."""
    from disk_io.transport import TransportSettings
    from protector.vsphere.disks import pinned_for_vddk

    vddk = TransportSettings(modes=("vddk", "http"), vddk_libdir="/opt/vmware-vix-disklib")
    session, verified, _ = await _access(tls_sim, ca_file=str(sim_ca_file))
    try:
        assert verified.thumbprint == ""
        pinned = await anyio.to_thread.run_sync(lambda: pinned_for_vddk(verified, vddk, None))
        assert pinned.thumbprint == tls_sim.thumbprint
        assert pinned.session_cookie == verified.session_cookie
        # No VDDK in play: nothing to do.
        no_vddk = TransportSettings(modes=("http",))
        assert pinned_for_vddk(verified, no_vddk, None) is verified
        assert pinned_for_vddk(verified, vddk, ("http",)) is verified
        session.endpoint = Endpoint(tls_sim.url)  # no CA file: the self-signed cert fails
        untrusted = vcenter_access(session)
        with pytest.raises(DiskIoError, match="not trusted"):
            await anyio.to_thread.run_sync(lambda: pinned_for_vddk(untrusted, vddk, None))
    finally:
        await session.close()


def test_credentials_in_the_vcenter_url_are_refused_without_echoing_them():
    """vcenter.url is logged and shown in errors: a password inside it would leak there."""
    with pytest.raises(ValueError) as exc:
        Endpoint("https://backup:Url-Pw-distinct@vc.example.com/sdk")
    assert "Url-Pw-distinct" not in str(exc.value)
    assert "password_env" in str(exc.value)
