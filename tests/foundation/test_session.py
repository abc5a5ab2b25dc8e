"""The shared vSphere session against the bundled simulator."""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from watcher.session import Credentials, LoginError, Session
from watcher.soap import (
    Endpoint,
    SoapClient,
    TlsPinError,
    VsphereConnectionError,
    VsphereFault,
)
from watcher.tasks import wait_for_task

CREDS = Credentials("user", "pass")
SOAP_METHOD = re.compile(rb"<(?:\w+:)?Body[^>]*>\s*<(?:\w+:)?(\w+)")


def first_vm(session: Session):
    from pyVmomi import vmodl

    from watcher.traversal import inventory_filter_spec

    async def find():
        objs = await session.retrieve([inventory_filter_spec(session.content.rootFolder)])
        vms = [o.obj for o in objs if type(o.obj).__name__ == "vim.VirtualMachine"]
        assert vms, "simulator has no VMs"
        return vms[0]

    del vmodl
    return find()


async def test_login_and_logout_invalidates_the_cookie(vcsim):
    s = await Session(Endpoint(vcsim.url), CREDS).connect()
    assert s.session_cookie
    assert s.vcenter_uuid
    cookie = s.session_cookie
    await s.close()
    # A client presenting the logged-out cookie is no longer authenticated.
    probe = SoapClient(Endpoint(vcsim.url))
    await probe.negotiate_version()
    probe.cookie = cookie
    si = probe.moref("ServiceInstance", "ServiceInstance")
    with pytest.raises(VsphereFault) as exc:
        await probe.call(si, "CurrentTime")
    await probe.close()
    assert exc.value.fault_type == "NotAuthenticated"


async def test_wrong_password_names_user_and_url(vcsim):
    with pytest.raises(LoginError) as exc:
        async with Session(Endpoint(vcsim.url), Credentials("user", "wrong")):
            pass
    assert str(exc.value) == f"login failed for user at {vcsim.url}"
    assert "wrong" not in repr(exc.value)


def test_password_never_in_repr():
    assert "s3cret" not in repr(Credentials("u", "s3cret"))


async def test_unreachable_host_fails_fast_and_distinctly():
    ep = Endpoint("http://127.0.0.1:9/sdk", connect_timeout=2)
    start = time.monotonic()
    with pytest.raises(VsphereConnectionError) as exc:
        async with Session(ep, CREDS):
            pass
    assert time.monotonic() - start < 5
    assert not isinstance(exc.value, VsphereFault)
    assert "127.0.0.1:9" in str(exc.value)


def test_plain_http_refused_for_remote_hosts():
    with pytest.raises(ValueError, match="refusing plain http"):
        Endpoint("http://vcenter.example.com/sdk")
    Endpoint("http://127.0.0.1:1234/sdk")  # loopback (the simulator) is fine
    Endpoint("http://[::1]:1234/sdk")


async def test_session_expiry_heals_with_one_login_for_many_callers(make_vcsim):
    sim = make_vcsim(args=["-idle-timeout", "2s"])
    async with Session(Endpoint(sim.url), CREDS, keepalive_interval=0) as s:
        vm = await first_vm(s)
        assert s.logins == 1
        await asyncio.sleep(4.5)  # the simulator expires idle sessions every 2 s
        results = await asyncio.gather(*(s.properties(vm, ["name"]) for _ in range(20)))
        assert all(r["name"] for r in results)
        assert s.logins == 2, "expired session must be healed by exactly one login"


async def test_fifty_concurrent_calls_on_one_session(vcsim):
    async with Session(Endpoint(vcsim.url), CREDS) as s:
        vm = await first_vm(s)
        results = await asyncio.gather(
            *(s.properties(vm, ["name", "runtime.powerState"]) for _ in range(50))
        )
        assert len(results) == 50
        assert len({r["name"] for r in results}) == 1
        assert s.logins == 1


async def test_tls_verified_by_default_and_thumbprint_pinning(make_vcsim):
    sim = make_vcsim(tls=True)
    assert sim.url.startswith("https://") and sim.thumbprint
    # Self-signed: verification on → refused.
    with pytest.raises(VsphereConnectionError):
        async with Session(Endpoint(sim.url), CREDS):
            pass
    # Pinned to the right thumbprint → accepted without a CA.
    async with Session(Endpoint(sim.url, thumbprint=sim.thumbprint), CREDS) as s:
        assert s.session_cookie
    # Pinned to another thumbprint → refused with a message that says what to do.
    wrong = "00:" * 31 + "00"
    with pytest.raises(TlsPinError) as exc:
        async with Session(Endpoint(sim.url, thumbprint=wrong), CREDS):
            pass
    assert "vcenter.thumbprint" in str(exc.value)
    assert sim.thumbprint.replace(":", "")[:8] in str(exc.value).replace(":", "")


async def test_task_wait_success_and_fault(vcsim_fresh):
    async with Session(Endpoint(vcsim_fresh.url), CREDS) as s:
        vm = await first_vm(s)
        task = await s.call(vm, "PowerOffVM_Task")
        await wait_for_task(s, task, timeout=30)
        assert (await s.properties(vm, ["runtime.powerState"]))["runtime.powerState"] == (
            "poweredOff"
        )
        task = await s.call(vm, "PowerOffVM_Task")
        with pytest.raises(VsphereFault) as exc:
            await wait_for_task(s, task, timeout=30)
        assert exc.value.fault_type == "InvalidPowerState"


async def test_task_wait_timeout_and_cancellation(make_vcsim):
    from watcher.tasks import TaskTimeout

    # The task takes 8 s: a wait that raises well before that was stopped by its own
    # 0.5 s timeout, not by the task ending (the margin holds on a loaded machine).
    sim = make_vcsim(args=["-task-delay", "PowerOffVM_Task=8000"])
    async with Session(Endpoint(sim.url), CREDS) as s:
        vm = await first_vm(s)
        task = await s.call(vm, "PowerOffVM_Task")
        start = time.monotonic()
        with pytest.raises(TaskTimeout, match=r"not finished after 0\.5 s"):
            await wait_for_task(s, task, timeout=0.5)
        assert time.monotonic() - start < 6.0
        # Cancelling the waiter returns promptly (the task itself goes on).
        waiter = asyncio.create_task(wait_for_task(s, task, timeout=30))
        await asyncio.sleep(0.2)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # The same task, waited for long enough, succeeds.
        await wait_for_task(s, task, timeout=30)
        props = await s.properties(vm, ["runtime.powerState"])
        assert props["runtime.powerState"] == "poweredOff"


@pytest.fixture
async def vcenter_cookies(vcsim) -> AsyncIterator[tuple[str, Counter[str]]]:
    """A proxy in front of the simulator that hands out cookies the way vCenter does:
    an answer to a request whose cookie names no live session carries a new,
    unauthenticated session cookie. Those answers are held back a little (0-300 ms),
    so some arrive after a concurrent re-login. Yields (url, SOAP calls by method)."""
    upstream = vcsim.url.rsplit("/sdk", 1)[0]
    calls: Counter[str] = Counter()
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        method = SOAP_METHOD.search(body)
        calls[method.group(1).decode() if method else request.path] += 1
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("cookie", "soapaction")
        }
        headers["Content-Type"] = request.headers.get("Content-Type", "text/xml")
        async with http.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as resp:
            data = await resp.read()
            out = web.Response(status=resp.status, body=data)
            out.headers["Content-Type"] = resp.headers.get("Content-Type", "text/xml")
            for cookie in resp.headers.getall("Set-Cookie", []):
                out.headers.add("Set-Cookie", cookie)
        if b"NotAuthenticated" in data:
            out.headers.add("Set-Cookie", f"vmware_soap_session={secrets.token_hex(20)}")
            await asyncio.sleep(random.uniform(0, 0.3))
        return out

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/sdk", calls
    await runner.cleanup()
    await http.close()


async def test_relogin_is_not_undone_by_cookies_of_late_answers(vcsim, vcenter_cookies):
    """The session is ended on the server while forty calls run. Every call succeeds,
    with one Login: cookies that late NotAuthenticated answers carry must not replace
    the cookie the re-login got."""
    url, calls = vcenter_cookies
    async with Session(Endpoint(url), CREDS, keepalive_interval=0) as s:
        vm = await first_vm(s)
        mgr = s.content.sessionManager
        key = (await s.properties(mgr, ["currentSession"]))["currentSession"].key
        async with Session(Endpoint(vcsim.url), CREDS) as admin:
            await admin.call(admin.content.sessionManager, "TerminateSession", sessionId=[key])
        results = await asyncio.gather(
            *(s.properties(vm, ["name"]) for _ in range(40)), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, f"{len(failed)} of 40 calls failed, first: {failed[0]!r}"
        assert s.logins == 2 and calls["Login"] == 2
        # and the healed session stays healed
        assert (await s.properties(vm, ["name"]))["name"] == results[0]["name"]
        assert calls["Login"] == 2
