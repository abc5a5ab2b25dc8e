"""The status server: loopback unless a bearer token protects it, the token compared in
constant time and never echoed, only its fixed routes served (no files, no listing)."""

from __future__ import annotations

import hmac

import aiohttp
import pytest

from protector.daemon.metrics import Metrics
from protector.daemon.status_server import StatusServer

TOKEN = "status-token-8d2e-distinct"
STATUS = {
    "vcenter": "https://vc.example.com/sdk",
    "healthy": True,
    "generated_at": "now",
    "counts": {},
    "vms": [],
    "jobs": {"running": [], "queued": [], "recent": []},
    "errors": [],
    "policy_errors": [],
}


def server(token: str = "") -> StatusServer:
    return StatusServer(lambda: STATUS, lambda: True, Metrics(), token=token)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", ":0", "[::]:0"])
async def test_a_network_address_is_refused_without_a_token(listen):
    srv = server()
    with pytest.raises(ValueError) as exc:
        await srv.start(listen)
    await srv.stop()
    assert listen in str(exc.value) and "daemon.status_token_env" in str(exc.value)


async def test_a_network_address_is_served_with_a_token():
    srv = server(TOKEN)
    await srv.start("0.0.0.0:0")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{srv.port}/status.json") as r:
                assert r.status == 401
                assert TOKEN not in await r.text()
    finally:
        await srv.stop()


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:0", "[::1]:0"])
async def test_loopback_needs_no_token(listen):
    srv = server()
    await srv.start(listen)
    await srv.stop()


async def test_token_compared_in_constant_time_and_only_bearer_accepted(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):  # type: ignore[no-untyped-def]
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    srv = server(TOKEN)
    await srv.start("127.0.0.1:0")
    base = f"http://127.0.0.1:{srv.port}"
    try:
        async with aiohttp.ClientSession() as http:
            for value in (TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ", "bearer"):
                async with http.get(f"{base}/status", headers={"Authorization": value}) as r:
                    assert r.status == 401, value
                    assert TOKEN not in await r.text()
            async with http.head(f"{base}/status") as r:
                assert r.status == 401
            good = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(f"{base}/status", headers=good) as r:
                assert r.status == 200
    finally:
        await srv.stop()
    assert calls, "the token must be compared with hmac.compare_digest"


@pytest.mark.parametrize(
    "path",
    [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/",
        "/status.json/../../etc/passwd",
        "//etc/passwd",
        "/.git/config",
    ],
)
async def test_no_files_no_listing_no_traversal(path):
    srv = server()
    await srv.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{srv.port}{path}"
            async with http.get(aiohttp.client.URL(url, encoded=True)) as r:
                body = await r.text()
                assert r.status == 404 or (r.status == 200 and "<h1>vigil</h1>" in body)
                assert "root:" not in body and "[core]" not in body and "Index of" not in body
    finally:
        await srv.stop()


async def test_error_texts_on_the_pages_are_redacted():
    """Errors on the pages come from exceptions of any library: a secret quoted in one
    (a header, a URL with a password) is blanked as in the logs."""
    cookie, pw = "cookie-value-6f1d-distinct", "Pw-in-url-distinct"
    status = dict(
        STATUS,
        vms=[
            {
                "path": "/DC0/vm/web-1",
                "state": "failing",
                "last_error": f'GET /folder: upstream sent vmware_soap_session="{cookie}"',
            }
        ],
        errors=[f"cannot reach https://admin:{pw}@vc.example.com/sdk"],
    )
    srv = StatusServer(lambda: status, lambda: True, Metrics())
    await srv.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/status", "/status.json"):
                async with http.get(f"http://127.0.0.1:{srv.port}{path}") as r:
                    body = await r.text()
                assert "upstream sent" in body and "vc.example.com" in body
                assert cookie not in body and pw not in body, path
    finally:
        await srv.stop()


@pytest.mark.parametrize(
    ("listen", "host", "status"),
    [
        ("127.0.0.1:0", "evil.example", 421),  # DNS rebinding: evil.example → 127.0.0.1
        ("127.0.0.1:0", "evil.example:8080", 421),
        ("127.0.0.1:0", "localhost", 200),
        ("127.0.0.1:0", "127.0.0.1:9", 200),
        ("127.0.0.1:0", "[::1]:9", 200),
        ("127.0.0.2:0", "127.0.0.2", 200),
    ],
)
async def test_the_host_header_must_name_this_server(listen, host, status):
    """A page on evil.example whose DNS name is re-pointed at 127.0.0.1 runs in the admin's
    browser and could read every VM's name and error; its requests carry its own name."""
    srv = server()
    await srv.start(listen)
    ip = listen.rsplit(":", 1)[0]
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/status.json", "/status", "/metrics"):
                async with http.get(f"http://{ip}:{srv.port}{path}", headers={"Host": host}) as r:
                    assert r.status == status, (path, host)
                    if status == 421:
                        assert "vcenter" not in await r.text()
    finally:
        await srv.stop()


async def test_with_a_token_any_host_name_is_served():
    """Behind the token (which a rebinding page cannot know) a scraper may use the host's
    DNS name."""
    srv = server(TOKEN)
    await srv.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Host": "backup01.example:9273", "Authorization": f"Bearer {TOKEN}"}
            async with http.get(f"http://127.0.0.1:{srv.port}/metrics", headers=headers) as r:
                assert r.status == 200
    finally:
        await srv.stop()
