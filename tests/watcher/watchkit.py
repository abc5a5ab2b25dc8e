"""Helpers for watching the simulator: a running Watcher and an event collector.

(A module of its own, not conftest.py: test modules import it by name.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from pyVmomi import vim

from protector.devtools.simulator import Simulator
from watcher.events import VmEvent
from watcher.session import Credentials, Session
from watcher.soap import Endpoint
from watcher.tasks import wait_for_task
from watcher.updates import Watcher


class Collected:
    """Events seen so far, with waiting for specific ones."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.events: list[VmEvent] = []
        self.initial: list[VmEvent] = []  # the events of the first full sync
        self._seen = 0
        self._cond = asyncio.Condition()
        self._task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async for event in self.watcher.events():
            async with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    async def expect(
        self, pred: Callable[[VmEvent], bool], what: str, timeout: float = 20.0
    ) -> VmEvent:
        """The first not-yet-consumed event matching `pred` (events before it are skipped)."""

        async def find() -> VmEvent:
            async with self._cond:
                while True:
                    for i in range(self._seen, len(self.events)):
                        if pred(self.events[i]):
                            self._seen = i + 1
                            return self.events[i]
                    await self._cond.wait()

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            got = self.events[self._seen :]
            raise AssertionError(f"no {what} within {timeout} s; got {got}") from None

    def drain(self) -> list[VmEvent]:
        out = self.events[self._seen :]
        self._seen = len(self.events)
        return out

    async def quiet(self, seconds: float) -> list[VmEvent]:
        """Everything that arrives in the next `seconds`."""
        await asyncio.sleep(seconds)
        return self.drain()


async def wait_until(pred: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    """Poll `pred` until true; fail naming `what` after `timeout` (a bound on a broken
    watcher, not a timing assertion: a loaded machine may take many times the usual)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


def connector(sim: Simulator) -> Callable[[], Any]:
    async def connect() -> Session:
        return await Session(
            Endpoint(sim.url, connect_timeout=2), Credentials(sim.user, sim.password)
        ).connect()

    return connect


@contextlib.asynccontextmanager
async def watching(sim: Simulator, **kw: Any) -> AsyncIterator[tuple[Watcher, Collected]]:
    kw.setdefault("tag_interval", 0)
    kw.setdefault("max_wait_seconds", 5)
    w = Watcher(connector(sim), **kw)
    run = asyncio.create_task(w.run())
    col = Collected(w)
    try:
        await asyncio.wait_for(w.ready.wait(), 20)
        while not w._queue.empty():  # noqa: ASYNC110 (the queue has no "drained" event)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        col.initial = col.drain()
        yield w, col
    finally:
        await w.close()
        await asyncio.wait_for(run, 5)
        await asyncio.wait_for(col._task, 5)


async def run_task(session: Session, mo: Any, method: str, **kw: Any) -> Any:
    result = await wait_for_task(session, await session.call(mo, method, **kw))
    return session.client.bind(result) if isinstance(result, vim.ManagedEntity) else result


def resource_spec() -> Any:
    def alloc() -> Any:
        return vim.ResourceAllocationInfo(
            reservation=0,
            limit=-1,
            expandableReservation=True,
            shares=vim.SharesInfo(level="normal", shares=0),
        )

    return vim.ResourceConfigSpec(cpuAllocation=alloc(), memoryAllocation=alloc())


def vm_spec(name: str) -> Any:
    return vim.vm.ConfigSpec(
        name=name, guestId="otherGuest", files=vim.vm.FileInfo(vmPathName="[LocalDS_0]")
    )


SOAP_METHOD = re.compile(rb"<(?:\w+:)?Body[^>]*>\s*<(?:\w+:)?(\w+)")
FAULT = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
    "<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>{message}</faultstring>"
    '<detail><{kind}Fault xmlns="urn:vim25" xsi:type="{kind}"></{kind}Fault></detail>'
    "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
)


def soap_fault(kind: str, message: str = "") -> web.Response:
    body = FAULT.format(kind=kind, message=message or kind).encode()
    return web.Response(status=500, body=body, content_type="text/xml")


_FORWARDED_HEADERS = {"cookie", "soapaction", "authorization", "vmware-api-session-id"}
# (SOAP method, request body) -> an answer of the test's own, or None to forward
Intercept = Callable[[str, bytes], web.Response | None]
# (SOAP method, upstream answer body) -> the body to pass on
Rewrite = Callable[[str, bytes], bytes]


@dataclass
class SoapProxy:
    """A forwarding proxy in front of a simulator, where a test can answer a call
    itself (`intercept`) or bend the simulator's answer (`rewrite`). Looks like a
    Simulator to `watching()` and `connector()`. Calls are named by their SOAP method,
    REST calls (the tagging service) by their path."""

    sim: Simulator
    intercept: Intercept | None = None
    rewrite: Rewrite | None = None
    calls: Counter[str] = field(default_factory=Counter)
    answers: list[tuple[str, bytes]] = field(default_factory=list)  # forwarded ones
    url: str = ""
    _runner: web.AppRunner | None = None
    _http: aiohttp.ClientSession | None = None

    @property
    def user(self) -> str:
        return self.sim.user

    @property
    def password(self) -> str:
        return self.sim.password

    async def __aenter__(self) -> SoapProxy:
        self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/sdk"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        found = SOAP_METHOD.search(body)
        method = found.group(1).decode() if found else request.path
        self.calls[method] += 1
        if self.intercept is not None:
            mine = self.intercept(method, body)
            if mine is not None:
                return mine
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED_HEADERS}
        headers["Content-Type"] = request.headers.get("Content-Type", "text/xml")
        assert self._http is not None
        upstream = self.sim.url.rsplit("/sdk", 1)[0] + request.path_qs
        async with self._http.request(request.method, upstream, data=body, headers=headers) as r:
            data = await r.read()
            if self.rewrite is not None:
                data = self.rewrite(method, data)
            self.answers.append((method, data))
            out = web.Response(status=r.status, body=data)
            out.headers["Content-Type"] = r.headers.get("Content-Type", "text/xml")
            for cookie in r.headers.getall("Set-Cookie", []):
                out.headers.add("Set-Cookie", cookie)
            return out
