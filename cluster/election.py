"""Leader election per vCenter: a session-level PostgreSQL advisory lock on a dedicated
connection, plus an epoch (see fencing.py).

PostgreSQL releases a session-level advisory lock when the session ends ("Advisory Locks"
in the PostgreSQL manual): a leader killed with kill -9 loses it as soon as the kernel
closes its socket, a vanished host when TCP keepalives give up (db.py: 11 s), and a frozen
one (SIGSTOP, a paused VM) when its session has been idle for `idle_session_timeout`
(db.LEASE_IDLE_TIMEOUT_S = 10 s: a live leader pings every second). Standbys try
`pg_try_advisory_lock` every `retry_interval` (1 s), so a standby leads within ~1 s of a
process death and ~11–12 s of a host death or freeze.

The leader pings its connection every `check_interval` with a `check_timeout`; the first
failure ends its term at once (is_leader False, the term's work cancelled) — within
interval + timeout = 4 s of losing the database, before the server could hand the lock to
anyone else (11 s). Anything still in flight is fenced by the epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import psycopg
import structlog

from cluster import db
from cluster.fencing import take_over

log = structlog.get_logger("vigil.cluster.election")


class LeaderElector:
    """Campaigns for the leadership of one vCenter (by its `about.instanceUuid`).

    `await elector.run()` until `stop()`; `is_leader` and `epoch` say where it stands;
    `lead(work)` runs `work(epoch)` during each term and cancels it when the term ends."""

    def __init__(
        self,
        url: str,
        vcenter: str,
        node: str,
        *,
        retry_interval: float = 1.0,
        check_interval: float = 1.0,
        check_timeout: float = 3.0,
    ) -> None:
        self.url = url
        self.vcenter = vcenter
        self.node = node
        self.key = db.lock_key("leader", vcenter)
        self.retry_interval = retry_interval
        if not check_interval * 2 <= db.LEASE_IDLE_TIMEOUT_S:
            raise ValueError("check_interval must be at most half of db.LEASE_IDLE_TIMEOUT_S")
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self.epoch: int | None = None
        self.terms = 0
        self._stop = asyncio.Event()
        self._elected = asyncio.Event()
        self._ended = asyncio.Event()
        self._resign = asyncio.Event()
        self.resign_pause = 5.0  # after resigning, let a standby win before campaigning

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None

    def stop(self) -> None:
        self._stop.set()

    def resign(self) -> None:
        """End the current term (its lock is released) and campaign again after
        `resign_pause`, so that a healthy standby takes over."""
        if self.is_leader:
            self._resign.set()

    async def wait_elected(self) -> int:
        """The epoch of the next (or current) term."""
        while True:
            await self._elected.wait()
            if self.epoch is not None:
                return self.epoch

    async def run(self) -> None:
        backoff = self.retry_interval
        while not self._stop.is_set():
            try:
                conn = await db.connect(self.url, f"vigil-leader:{self.node}", lease=True)
            except psycopg.Error as exc:
                log.warning("cannot reach the database", vcenter=self.vcenter, error=str(exc))
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = self.retry_interval
            try:
                await self._campaign(conn)
            except (psycopg.Error, TimeoutError) as exc:
                if self.is_leader:
                    log.warning(
                        "lost the database: no longer leader",
                        vcenter=self.vcenter,
                        epoch=self.epoch,
                        error=str(exc) or type(exc).__name__,
                    )
            finally:
                self._step_down()
                # Closing ends the session, which releases the lock (if the server still
                # has it); never let a dead socket hold the loop.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await conn.close()
            if self._resign.is_set():
                self._resign.clear()
                await self._sleep(self.resign_pause)
            elif not self._stop.is_set():
                await self._sleep(self.retry_interval)

    async def _campaign(self, conn: psycopg.AsyncConnection) -> None:
        await db.apply_schema(conn)
        while not self._stop.is_set():
            async with asyncio.timeout(self.check_timeout):
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            row = await cur.fetchone()
            if row and row[0]:
                break
            await self._sleep(self.retry_interval)
        else:
            return
        async with asyncio.timeout(self.check_timeout):
            epoch = await take_over(conn, self.vcenter, self.node)
        self.terms += 1
        self.epoch = epoch
        self._ended.clear()
        self._elected.set()
        log.info("leader", vcenter=self.vcenter, node=self.node, epoch=epoch)
        while not self._stop.is_set() and not self._resign.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval):
                    await self._resign.wait()
            async with asyncio.timeout(self.check_timeout):
                await conn.execute("SELECT 1")

    def _step_down(self) -> None:
        if self.epoch is not None:
            log.info("no longer leader", vcenter=self.vcenter, node=self.node, epoch=self.epoch)
        self.epoch = None
        self._elected.clear()
        self._ended.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def lead(self, work: Callable[[int], Awaitable[None]]) -> None:
        """Run `work(epoch)` in every term until `stop()`; the term's work is cancelled the
        moment the term ends (the scheduler's watcher, planner and pruner go there). Work
        that returns early simply waits for the term to end; work that fails resigns the
        term, so a standby whose scheduler works can lead instead of a broken one."""
        stop = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                elected = asyncio.create_task(self.wait_elected())
                await asyncio.wait({elected, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not elected.done():
                    elected.cancel()
                    break
                epoch = elected.result()
                task = asyncio.create_task(work(epoch), name=f"leader-term-{epoch}")
                ended = asyncio.create_task(self._ended.wait())
                await asyncio.wait({ended, stop, task}, return_when=asyncio.FIRST_COMPLETED)
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error(
                        "the leader's work failed: resigning",
                        vcenter=self.vcenter,
                        epoch=epoch,
                        exc_info=task.exception(),
                    )
                    self.resign()
                if not ended.done() and not stop.done():
                    await asyncio.wait({ended, stop}, return_when=asyncio.FIRST_COMPLETED)
                ended.cancel()
                task.cancel()
                # Its failure, if any, was logged above.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finally:
            stop.cancel()
