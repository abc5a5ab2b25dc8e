"""Helpers for watching the simulator: a running Watcher and an event collector.

(A module of its own, not conftest.py: test modules import it by name.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from pyVmomi import vim

from protector.simulator import Simulator
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
        self, pred: Callable[[VmEvent], bool], what: str, timeout: float = 5.0
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
