"""Leader election per vCenter on a real PostgreSQL: one leader, epochs, failover after
kill -9 or a freeze, a deposed leader's work fenced.

Issue 16's acceptance number is failover within 15 s; that figure is measured by
bench/bench_cluster.py (its failover part). A frozen leader takes about 11 s here (the
server's idle_session_timeout), too close to 15 s for a test on a loaded CI machine, so
these tests bound failover by FAILOVER_BOUND_S: it still fails a takeover that waits for
something else entirely (a TCP timeout of minutes, or no takeover at all)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import psycopg
import pytest
from cluster_helpers import nodes, wait_for

from cluster import db
from cluster.election import LeaderElector
from cluster.fencing import StaleEpochError, check_epoch, current_epochs

pytestmark = pytest.mark.timeout(180)

FAILOVER_BOUND_S = 45.0


async def _run(elector: LeaderElector) -> asyncio.Task[None]:
    return asyncio.create_task(elector.run())


async def test_one_leader_per_vcenter_and_epoch_increments_on_takeover(pg_url):
    a = LeaderElector(pg_url, "vc-1", "node-a")
    b = LeaderElector(pg_url, "vc-1", "node-b")
    other = LeaderElector(pg_url, "vc-2", "node-b")
    tasks = [await _run(a)]
    assert await asyncio.wait_for(a.wait_elected(), 30) == 1
    tasks += [await _run(b), await _run(other)]
    # A different vCenter has its own lock: node-b leads vc-2 while node-a leads vc-1.
    assert await asyncio.wait_for(other.wait_elected(), 30) == 1
    await asyncio.sleep(2.5)  # b campaigns (every second) and must not win
    assert a.is_leader and not b.is_leader
    a.stop()
    await tasks[0]
    assert not a.is_leader
    assert await asyncio.wait_for(b.wait_elected(), 30) == 2
    async with await db.connect(pg_url, "test") as conn:
        assert (await current_epochs(conn))["vc-1"] == (2, "node-b")
        await check_epoch(conn, "vc-1", 2)
        with pytest.raises(StaleEpochError, match="epoch 1 is stale"):
            await check_epoch(conn, "vc-1", 1)
        with pytest.raises(StaleEpochError, match="no leader was ever elected"):
            await check_epoch(conn, "vc-9", 1)
    for e in (b, other):
        e.stop()
    await asyncio.gather(*tasks)


async def test_leader_that_loses_its_connection_stops_leading_at_once(pg_url):
    a = LeaderElector(pg_url, "vc-1", "node-a", check_interval=0.2)
    term_cancelled = asyncio.Event()

    async def work(epoch: int) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            term_cancelled.set()
            raise

    runner = await _run(a)
    leading = asyncio.create_task(a.lead(work))
    assert await asyncio.wait_for(a.wait_elected(), 30) == 1
    # The server ends the leader's session (what a database restart or failover does).
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'vigil-leader:node-a'"
        )
    await asyncio.wait_for(term_cancelled.wait(), 10)
    assert not a.is_leader or a.epoch == 2
    # It campaigns again on a new connection and, alone, wins a new term.
    assert await asyncio.wait_for(a.wait_elected(), 30) == 2
    a.stop()
    await asyncio.gather(runner, leading)


async def test_failover_after_kill_9_of_the_leader_process(pg_url, tmp_path):
    with nodes(tmp_path) as start:
        first = start("elector", pg_url, "node-a")
        await wait_for(lambda: "LEADER" in first.text(), 60, "node-a to lead")
        second = start("elector", pg_url, "node-b")
        await wait_for(
            lambda: _app_connected(pg_url, "vigil-leader:node-b"), 60, "node-b to campaign"
        )
        (old_epoch,) = map(int, re.findall(r"LEADER (\d+)", first.text()))
        killed_at = time.time()
        first.kill9()
        line = await wait_for(
            lambda: re.search(r"LEADER (\d+) ([\d.]+)", second.text()),
            FAILOVER_BOUND_S + 15,
            "node-b to lead",
        )
    new_epoch, elected_at = int(line.group(1)), float(line.group(2))
    assert new_epoch == old_epoch + 1
    took = elected_at - killed_at
    assert took < FAILOVER_BOUND_S, f"failover took {took:.1f} s"
    # The dead leader's epoch no longer passes the fence.
    async with await db.connect(pg_url, "test") as conn:
        with pytest.raises(StaleEpochError):
            await check_epoch(conn, "vc-1", old_epoch)
        await check_epoch(conn, "vc-1", new_epoch)


def _app_connected(url: str, name: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return bool(
            conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
        )


async def test_failover_from_a_frozen_leader_and_it_steps_down_when_it_wakes(pg_url, tmp_path):
    """SIGSTOP: the process lives, the kernel keeps its connection open and answers TCP
    keepalives, so only the server's idle_session_timeout on the lease ends the term."""
    with nodes(tmp_path) as start:
        first = start("elector", pg_url, "node-a")
        await wait_for(lambda: "LEADER" in first.text(), 60, "node-a to lead")
        second = start("elector", pg_url, "node-b")
        await wait_for(
            lambda: _app_connected(pg_url, "vigil-leader:node-b"), 60, "node-b to campaign"
        )
        frozen_at = time.time()
        os.kill(first.pid, signal.SIGSTOP)
        try:
            line = await wait_for(
                lambda: re.search(r"LEADER (\d+) ([\d.]+)", second.text()),
                FAILOVER_BOUND_S + 15,
                "node-b to lead",
            )
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert int(line.group(1)) == 2
        took = float(line.group(2)) - frozen_at
        assert took < FAILOVER_BOUND_S, f"failover from a frozen leader took {took:.1f} s"
        # Awake again, node-a finds its session gone and ends its term.
        await wait_for(lambda: "LOST 1" in first.text(), 30, "node-a to step down")
        assert "LEADER 2" not in first.text()


async def test_leader_whose_work_fails_resigns_and_a_standby_leads(pg_url):
    a = LeaderElector(pg_url, "vc-1", "node-a")
    b = LeaderElector(pg_url, "vc-1", "node-b")
    a.resign_pause = 30.0  # long enough that only b can win the next term

    async def broken(epoch: int) -> None:
        raise RuntimeError("the watcher cannot log in")

    async def healthy(epoch: int) -> None:
        await asyncio.Event().wait()

    runners = [await _run(a)]
    assert await asyncio.wait_for(a.wait_elected(), 30) == 1
    runners.append(await _run(b))
    leading = [asyncio.create_task(a.lead(broken)), asyncio.create_task(b.lead(healthy))]
    assert await asyncio.wait_for(b.wait_elected(), 30) == 2
    assert not a.is_leader
    for e in (a, b):
        e.stop()
    await asyncio.gather(*runners, *leading)
