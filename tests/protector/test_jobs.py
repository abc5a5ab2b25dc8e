"""The job runner's limits, coalescing, retries and shutdown (pure asyncio, no vCenter)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from protector.daemon.jobs import JobRecord, JobRequest, JobRunner, Limits


def max_overlap(records: list[JobRecord], key) -> int:
    """Largest number of records sharing `key` that ran at the same instant."""
    events = []
    for r in records:
        for k in key(r):
            events.append((r.started, 1, k))
            events.append((r.finished, -1, k))
    load: dict[str, int] = {}
    worst = 0
    for _, delta, k in sorted(events, key=lambda e: (e[0], e[1])):
        load[k] = load.get(k, 0) + delta
        worst = max(worst, load[k])
    return worst


async def until(cond, what: str, timeout: float = 10.0) -> None:
    """Let the loop run until `cond()` holds: a job starting takes a few loop turns, which a
    descheduled process may not get within a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.005)


async def test_limits_are_never_exceeded_with_twenty_vms():
    rng = random.Random(7)
    active = {"all": 0, "max": 0}

    async def run(req: JobRequest, rec: JobRecord) -> None:
        active["all"] += 1
        active["max"] = max(active["max"], active["all"])
        await asyncio.sleep(rng.uniform(0.01, 0.05))
        active["all"] -= 1

    runner = JobRunner(run, Limits(concurrent=3, per_host=2, per_datastore=2))
    loop = asyncio.create_task(runner.run())
    for i in range(20):
        runner.submit(
            JobRequest(
                vm_key=f"vm{i}",
                vm_name=f"vm{i}",
                host=f"host-{i % 3}",
                datastores=(f"ds-{i % 4}",),
                reason="test",
                deadline=i,
            )
        )
    await asyncio.wait_for(runner.drain(), 10)
    loop.cancel()
    recs = list(runner.history)
    assert len(recs) == 20 and all(r.outcome == "success" for r in recs)
    assert active["max"] <= 3
    assert max_overlap(recs, lambda r: ["all"]) <= 3
    assert max_overlap(recs, lambda r: [r.host]) <= 2
    assert max_overlap(recs, lambda r: r.datastores) <= 2
    assert active["max"] == 3, "the runner should use the concurrency it is given"


async def test_busy_host_does_not_hold_up_other_hosts():
    started: list[str] = []
    gate = asyncio.Event()

    async def run(req: JobRequest, rec: JobRecord) -> None:
        started.append(req.vm_name)
        if req.host == "h1":
            await gate.wait()

    runner = JobRunner(run, Limits(concurrent=4, per_host=1, per_datastore=9))
    loop = asyncio.create_task(runner.run())
    for name, host, dl in [("a", "h1", 0), ("b", "h1", 1), ("c", "h2", 2)]:
        runner.submit(JobRequest(name, name, host, (), "t", deadline=dl))
    await until(lambda: len(started) >= 2, "two jobs to start")
    await asyncio.sleep(0.05)  # room for b to start wrongly
    assert started == ["a", "c"], "b waits for h1; c must not wait behind b"
    gate.set()
    await asyncio.wait_for(runner.drain(), 5)
    loop.cancel()


async def test_one_job_per_vm_events_coalesce():
    gate = asyncio.Event()
    calls = 0

    async def run(req: JobRequest, rec: JobRecord) -> None:
        nonlocal calls
        calls += 1
        await gate.wait()

    runner = JobRunner(run, Limits())
    loop = asyncio.create_task(runner.run())
    assert runner.submit(JobRequest("v", "v", "h", (), "created"))
    await asyncio.sleep(0.02)
    assert not runner.submit(JobRequest("v", "v", "h", (), "renamed"))
    assert runner.coalesced == 1
    gate.set()
    await asyncio.wait_for(runner.drain(), 5)
    loop.cancel()
    assert calls == 1


async def test_failures_retry_with_backoff_then_stay_visible_without_blocking_others():
    attempts: dict[str, int] = {}

    async def run(req: JobRequest, rec: JobRecord) -> None:
        attempts[req.vm_name] = attempts.get(req.vm_name, 0) + 1
        if req.vm_name == "bad":
            raise RuntimeError("datastore unreachable")

    runner = JobRunner(run, Limits(concurrent=1), retry_attempts=3, retry_backoff=0.05)
    loop = asyncio.create_task(runner.run())
    runner.submit(JobRequest("bad", "bad", "h", (), "t", deadline=0))
    runner.submit(JobRequest("good", "good", "h", (), "t", deadline=1))
    await asyncio.wait_for(runner.drain(), 5)
    loop.cancel()
    assert attempts == {"bad": 3, "good": 1}
    assert runner.failures["bad"].error == "datastore unreachable"
    assert runner.failures["bad"].attempt == 3
    assert runner.outcomes["failed"] == 3 and runner.outcomes["success"] == 1
    reasons = [r.reason for r in runner.history if r.vm_name == "bad"]
    assert reasons == ["t", "retry 2/3: t", "retry 3/3: t"], "retry prefixes never nest"


async def test_stop_cancels_running_jobs_and_lets_them_clean_up():
    cleaned = asyncio.Event()

    async def run(req: JobRequest, rec: JobRecord) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.01)  # e.g. removing the snapshot
            cleaned.set()

    runner = JobRunner(run, Limits())
    loop = asyncio.create_task(runner.run())
    runner.submit(JobRequest("v", "v", "h", (), "t"))
    await until(lambda: runner.running, "the job to start")
    await asyncio.wait_for(runner.stop(timeout=5), 6)
    loop.cancel()
    assert cleaned.is_set()
    assert runner.history[-1].outcome == "cancelled"
    assert not runner.submit(JobRequest("w", "w", "h", (), "t")), "no new jobs after stop"


class WallClock:
    """time.time() for the runner's cooldowns, moved by the test: the remaining cooldown is
    then exact, not what is left of it after however long this process was descheduled."""

    monotonic = staticmethod(time.monotonic)  # the runner's timeouts stay real

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


async def test_after_the_last_retry_the_vm_cools_down_instead_of_failing_in_a_loop(monkeypatch):
    from protector.daemon import jobs

    clock = WallClock()
    monkeypatch.setattr(jobs, "time", clock)
    attempts = {"n": 0}
    healthy = {"ok": False}

    async def run(req: JobRequest, rec: JobRecord) -> None:
        attempts["n"] += 1
        if not healthy["ok"]:
            raise RuntimeError("datastore unreachable")

    runner = JobRunner(run, Limits(), retry_attempts=2, retry_backoff=0.05, cooldown_max=0.25)
    loop = asyncio.create_task(runner.run())
    try:
        assert runner.submit(JobRequest("bad", "bad", "h", (), "t"))
        await asyncio.wait_for(runner.drain(), 5)
        assert attempts["n"] == 2
        assert runner.consecutive_failures["bad"] == 2
        first = runner.cooldown_until["bad"] - clock.now
        assert first == pytest.approx(0.1), "backoff doubles per consecutive failure: 0.05 * 2"
        # A scheduler or an event asking again during the cooldown is refused, not run.
        assert not runner.submit(JobRequest("bad", "bad", "h", (), "RPO due"))
        await asyncio.sleep(0.05)
        assert attempts["n"] == 2
        # Once the cooldown is over, it runs again.
        clock.now += first + 0.001
        assert runner.submit(JobRequest("bad", "bad", "h", (), "again"))
        await asyncio.wait_for(runner.drain(), 5)
        assert attempts["n"] == 4 and runner.consecutive_failures["bad"] == 4
        second = runner.cooldown_until["bad"] - clock.now
        assert second == pytest.approx(0.25), "0.05 * 2**3 = 0.4, capped at cooldown_max"
        # A per-request cap (the policy's RPO) is smaller still.
        clock.now += second + 0.001
        runner.submit(JobRequest("bad", "bad", "h", (), "again", cooldown_cap=0.08))
        await asyncio.wait_for(runner.drain(), 5)
        assert runner.cooldown_until["bad"] - clock.now == pytest.approx(0.08)
        # Success clears the failure streak.
        clock.now += 0.1
        healthy["ok"] = True
        assert runner.submit(JobRequest("bad", "bad", "h", (), "again"))
        await asyncio.wait_for(runner.drain(), 5)
        assert "bad" not in runner.failures and "bad" not in runner.cooldown_until
        assert "bad" not in runner.consecutive_failures
    finally:
        loop.cancel()


async def test_manual_request_bypasses_the_cooldown():
    calls = 0

    async def run(req: JobRequest, rec: JobRecord) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    runner = JobRunner(run, Limits(), retry_attempts=1, retry_backoff=30)
    loop = asyncio.create_task(runner.run())
    try:
        runner.submit(JobRequest("v", "v", "h", (), "t"))
        await asyncio.wait_for(runner.drain(), 5)
        assert runner.in_cooldown("v")
        assert not runner.submit(JobRequest("v", "v", "h", (), "RPO due"))
        assert runner.submit(JobRequest("v", "v", "h", (), "requested", manual=True))
        await asyncio.wait_for(runner.drain(), 5)
        assert calls == 2
    finally:
        loop.cancel()


async def test_pause_holds_back_new_jobs_but_lets_running_ones_finish():
    gate = asyncio.Event()
    started: list[str] = []

    async def run(req: JobRequest, rec: JobRecord) -> None:
        started.append(req.vm_name)
        if req.vm_name == "a":
            await gate.wait()

    runner = JobRunner(run, Limits(concurrent=4))
    loop = asyncio.create_task(runner.run())
    try:
        runner.submit(JobRequest("a", "a", "h1", (), "t"))
        await until(lambda: started == ["a"], "a to start")
        runner.pause("prune sweep")
        assert runner.paused == "prune sweep"
        runner.submit(JobRequest("b", "b", "h2", (), "t"))
        await asyncio.sleep(0.05)
        assert started == ["a"], "nothing new starts while paused"
        gate.set()
        await runner.wait_idle_running(timeout=1)
        assert not runner.running and "b" in runner.queued
        runner.resume()
        await asyncio.wait_for(runner.drain(), 5)
        assert started == ["a", "b"] and runner.paused is None
    finally:
        loop.cancel()


class VmBusyError(Exception):
    """Stands for protector.vmlock.VmBusyError: another process holds the VM."""


async def test_a_busy_vm_is_retried_later_without_counting_as_a_failure():
    busy = {"left": 4}
    calls = 0

    async def run(req: JobRequest, rec: JobRecord) -> None:
        nonlocal calls
        calls += 1
        if busy["left"]:
            busy["left"] -= 1
            raise VmBusyError("VM v is busy: restore by process 12")

    runner = JobRunner(
        run, Limits(), retry_attempts=2, retry_backoff=0.02, retry_later=(VmBusyError,)
    )
    loop = asyncio.create_task(runner.run())
    try:
        runner.submit(JobRequest("v", "v", "h", (), "t"))
        await asyncio.wait_for(runner.drain(), 5)
    finally:
        loop.cancel()
    # Four busy answers would have used up two attempts; busy is not a failure.
    assert calls == 5 and runner.history[-1].outcome == "success"
    assert [r.outcome for r in runner.history][:4] == ["busy"] * 4
    assert all(r.attempt == 1 for r in runner.history)
    assert "v" not in runner.failures and not runner.consecutive_failures
    assert runner.outcomes["failed"] == 0 and runner.outcomes["busy"] == 4


class VmGone(Exception):
    """Stands for protector.daemon.worker.VmGone: the VM was deleted."""


async def test_a_deleted_vm_is_given_up_not_retried_nor_counted_as_failing():
    calls = 0

    async def run(req: JobRequest, rec: JobRecord) -> None:
        nonlocal calls
        calls += 1
        raise VmGone("VM v was deleted from vCenter")

    runner = JobRunner(run, Limits(), retry_attempts=3, retry_backoff=0.02, give_up=(VmGone,))
    loop = asyncio.create_task(runner.run())
    try:
        runner.submit(JobRequest("v", "v", "h", (), "t"))
        await asyncio.wait_for(runner.drain(), 5)
    finally:
        loop.cancel()
    assert calls == 1
    assert runner.history[-1].outcome == "gone" and "deleted" in runner.history[-1].error
    assert not runner.failures and not runner.consecutive_failures and not runner.cooldown_until


async def test_forget_drops_a_vms_queued_job_retry_and_cooldown():
    gate = asyncio.Event()

    async def run(req: JobRequest, rec: JobRecord) -> None:
        if req.vm_name == "blocker":
            await gate.wait()
            return
        raise RuntimeError("datastore unreachable")

    # A backoff long enough that the retry is still pending when forget() comes.
    runner = JobRunner(run, Limits(concurrent=1), retry_attempts=3, retry_backoff=0.5)
    loop = asyncio.create_task(runner.run())
    try:
        runner.submit(JobRequest("bad", "bad", "h", (), "t", deadline=0))
        await until(lambda: "bad" in runner.retry_timers, "bad's first failure")
        runner.forget("bad")
        runner.submit(JobRequest("blocker", "blocker", "h", (), "t", deadline=0))
        runner.submit(JobRequest("queued", "queued", "h", (), "t", deadline=1))
        await asyncio.sleep(0.01)
        runner.forget("queued")
        assert not runner.busy("bad") and not runner.busy("queued")
        gate.set()
        await asyncio.wait_for(runner.drain(), 5)
        await asyncio.sleep(0.7)  # the cancelled retry would have run by now
    finally:
        loop.cancel()
    assert [r.vm_name for r in runner.history] == ["bad", "blocker"]
    assert not runner.consecutive_failures and not runner.failures


async def test_queued_jobs_start_earliest_deadline_first():
    gate = asyncio.Event()
    order: list[str] = []

    async def run(req: JobRequest, rec: JobRecord) -> None:
        order.append(req.vm_name)
        if req.vm_name == "first":
            await gate.wait()

    runner = JobRunner(run, Limits(concurrent=1))
    loop = asyncio.create_task(runner.run())
    try:
        runner.submit(JobRequest("first", "first", "h", (), "t", deadline=0))
        await asyncio.sleep(0.01)
        for name, deadline in [("late", 300.0), ("soon", 100.0), ("mid", 200.0)]:
            runner.submit(JobRequest(name, name, "h", (), "t", deadline=deadline))
        # An event for "late" brings its deadline forward (coalesced, not queued twice).
        runner.submit(JobRequest("late", "late", "h", (), "came into scope", deadline=50.0))
        gate.set()
        await asyncio.wait_for(runner.drain(), 5)
    finally:
        loop.cancel()
    assert order == ["first", "late", "soon", "mid"]
