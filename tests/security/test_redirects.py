"""Credentials go only to the vCenter they belong to: a redirect (a misconfigured proxy,
a load balancer, a compromised vCenter front end) must not carry the SOAP session
cookie, the vAPI session token or the Basic credentials to another host. vigil does not
follow redirects on authenticated requests; it fails with an error naming both places."""

from __future__ import annotations

import types

import pytest

from disk_io import DiskIoError, DiskLocation, VcenterAccess
from disk_io.httpdisk import HttpDisk
from protector.vsphere.disks import fetch_datastore_file
from watcher.soap import Endpoint, SoapClient, VsphereError
from watcher.tags import TagClient

COOKIE = "cookie-0123456789-must-stay-home"
PASSWORD = "pw-Zq81-distinctive"
TOKEN = "vapi-token-4711-must-stay-home"


def assert_nothing_leaked(other) -> None:  # type: ignore[no-untyped-def]
    sent = other.headers_text()
    for secret in (COOKIE, TOKEN, PASSWORD):
        assert secret not in sent, f"{secret} was sent to the redirect target"
    assert "Authorization" not in sent


async def test_soap_call_is_not_redirected_with_the_cookie(redirect_pair, no_proxy_env):
    url, other = redirect_pair
    client = SoapClient(Endpoint(url + "/sdk"))
    client.cookie = COOKIE
    try:
        with pytest.raises(VsphereError) as exc:
            await client.call(client.moref("ServiceInstance", "ServiceInstance"), "CurrentTime")
        with pytest.raises(VsphereError):
            await client.get_bytes("/sdk/vimServiceVersions.xml")
    finally:
        await client.close()
    assert_nothing_leaked(other)
    assert not other.seen, "vigil must not follow a redirect away from vCenter"
    assert "redirect" in str(exc.value) and other.url in str(exc.value)


async def test_tagging_service_is_not_redirected_with_credentials(redirect_pair, no_proxy_env):
    url, other = redirect_pair
    tags = TagClient(Endpoint(url + "/sdk"), "user", PASSWORD)
    try:
        with pytest.raises(VsphereError) as exc:
            await tags.login()  # Basic credentials
        tags._token = TOKEN  # an established vAPI session
        with pytest.raises(VsphereError):
            await tags.vm_tags()
        tags._token = ""
    finally:
        await tags.close()
    assert_nothing_leaked(other)
    assert not other.seen
    assert "redirect" in str(exc.value) and other.url in str(exc.value)


async def test_datastore_file_fetch_is_not_redirected_with_the_cookie(redirect_pair, no_proxy_env):
    url, other = redirect_pair
    client = SoapClient(Endpoint(url + "/sdk"))
    session = types.SimpleNamespace(client=client, session_cookie=COOKIE)
    ctx = types.SimpleNamespace(session=session, datacenter_of={"vm-1": "DC0"})
    vm = types.SimpleNamespace(_moId="vm-1")
    try:
        with pytest.raises(VsphereError) as exc:
            await fetch_datastore_file(ctx, vm, "[LocalDS_0] vm-1/vss-manifest.zip")  # type: ignore[arg-type]
    finally:
        await client.close()
    assert_nothing_leaked(other)
    assert not other.seen
    assert "redirect" in str(exc.value) and other.url in str(exc.value)


async def test_http_disk_reports_a_redirect_and_does_not_follow_it(redirect_pair, no_proxy_env):
    url, other = redirect_pair
    loc = DiskLocation("DC0", "LocalDS_0", "vm/vm.vmdk", 1 << 20, "vm-1")
    access = VcenterAccess(url + "/sdk", COOKIE)
    # HttpDisk blocks: run it in a thread so the servers on this loop can answer.
    import anyio

    with pytest.raises(DiskIoError) as exc:
        await anyio.to_thread.run_sync(lambda: HttpDisk(loc, access))
    assert_nothing_leaked(other)
    assert not other.seen
    assert "redirect" in str(exc.value) and other.url in str(exc.value)
