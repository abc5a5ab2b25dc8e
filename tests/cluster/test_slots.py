"""Cluster-wide slots as advisory locks: limits, all-or-nothing, release with the session,
and a job cancelled when its slot connection dies."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from cluster import db, slots
from cluster.queue import prepare_database

pytestmark = pytest.mark.timeout(60)


async def _conns(url: str, n: int) -> list[psycopg.AsyncConnection]:
    await prepare_database(url)
    return [await db.connect(url, f"slot-test-{i}") for i in range(n)]


async def _eventually(probe, timeout: float = 10.0):
    """The server ends a closed session's backend (and frees its locks) a moment after the
    client returns from close(): poll, bounded."""
    for _ in range(int(timeout / 0.05)):
        if (got := await probe()) is not None:
            return got
        await asyncio.sleep(0.05)
    return await probe()


def test_slot_needs_are_sorted_and_deduplicated():
    needs = slots.slot_needs("h1", ["ds-b", "ds-a", "ds-b", ""], 2, 3)
    assert [(n.kind, n.name, n.limit) for n in needs] == [
        ("host", "h1", 2),
        ("datastore", "ds-a", 3),
        ("datastore", "ds-b", 3),
    ]
    assert len(set(needs[1].keys())) == 3
    assert set(needs[1].keys()).isdisjoint(needs[2].keys())


async def test_limit_holds_across_connections_and_frees_with_the_session(pg_url):
    c1, c2, c3 = await _conns(pg_url, 3)
    need = slots.slot_needs("h1", [], 2, 1)
    assert await slots.try_take(c1, need) is not None
    assert await slots.try_take(c2, need) is not None
    assert await slots.try_take(c3, need) is None
    await c1.close()  # a dead worker: its session ends, the server frees its locks
    assert await _eventually(lambda: slots.try_take(c3, need)) is not None
    for c in (c2, c3):
        await c.close()


async def test_all_or_nothing(pg_url):
    c1, c2 = await _conns(pg_url, 2)
    # c1 fills ds-x; c2 needs h1 and ds-x, gets neither, so h1 stays free for others.
    assert await slots.try_take(c1, slots.slot_needs("", ["ds-x"], 1, 1)) is not None
    assert await slots.try_take(c2, slots.slot_needs("h1", ["ds-x"], 1, 1)) is None
    held = await (
        await c2.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype='advisory' AND pid = pg_backend_pid()"
        )
    ).fetchone()
    assert held == (0,)
    await slots.give_back(c1, (await slots.try_take(c1, [])) or [])
    await c1.close()
    both = slots.slot_needs("h1", ["ds-x"], 1, 1)
    assert await _eventually(lambda: slots.try_take(c2, both)) is not None
    await c2.close()


async def test_job_is_cancelled_when_its_slot_connection_dies(pg_url):
    (conn,) = await _conns(pg_url, 1)
    await slots.take(conn, slots.slot_needs("h1", [], 1, 1))
    cancelled = asyncio.Event()

    async def backup() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def kill_session() -> None:
        await asyncio.sleep(0.5)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'slot-test-0'"
            )

    killer = asyncio.create_task(kill_session())
    with pytest.raises(slots.LeaseLost):
        await slots.run_holding(conn, backup(), check_interval=0.2)
    assert cancelled.is_set()
    await killer


class _AnsweringConn:
    """A connection whose ping the test answers by hand, so that a cancel can land in the
    very loop turn the answer does (what a worker's shutdown abort met now and then)."""

    def __init__(self) -> None:
        self.pinged = asyncio.Event()
        self.answer: asyncio.Future[None] | None = None

    async def execute(self, query: str) -> None:
        self.answer = asyncio.get_running_loop().create_future()
        self.pinged.set()
        await self.answer


async def test_a_cancel_landing_as_a_ping_answers_still_cancels_the_job():
    """Python 3.11's asyncio.wait_for returns the inner result when the outer task is
    cancelled as the inner one finishes: the cancel is lost, the job ran on, and a worker
    told to stop waited for it (test_queue's SIGTERM-past-the-timeout test, 1 in ~20)."""
    conn = _AnsweringConn()
    body_cancelled = asyncio.Event()

    async def backup() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            body_cancelled.set()
            raise

    job = asyncio.create_task(slots.run_holding(conn, backup(), check_interval=0.01))  # type: ignore[arg-type]
    await asyncio.wait_for(conn.pinged.wait(), 10)
    assert conn.answer is not None
    conn.answer.set_result(None)
    job.cancel()
    done, _ = await asyncio.wait({job}, timeout=10)
    assert done, "the cancel was swallowed: the job runs on"
    assert job.cancelled() and body_cancelled.is_set()
