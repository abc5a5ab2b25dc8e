"""The job runner: one backup per VM at a time, within global, per-host and per-datastore limits.

Queued jobs start earliest deadline first; a job whose host or datastore is at its limit
is passed over (not waited on), so one busy host never holds up VMs elsewhere. Failures
are retried with exponential back-off off the queue, so a VM that keeps failing never
blocks the others; after the last attempt the failure stays visible in `failures` and the
VM cools down (capped exponential in its consecutive failures) before anything but a
person may queue it again — otherwise the scheduler would find it due at once and loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger(__name__)

NEXT_START = "the daemon's next start queues it again if the VM is still due"

_RETRY_PREFIX = re.compile(r"^retry \d+/\d+: ")


@dataclass
class JobRequest:
    vm_key: str  # stable identity
    vm_name: str
    host: str  # host MoRef, for the per-host limit
    datastores: tuple[str, ...]  # datastore MoRefs, for the per-datastore limit
    reason: str
    deadline: float = 0.0  # wall-clock seconds; earlier runs first
    policy: str = ""
    full: bool = False
    attempt: int = 1
    manual: bool = False  # asked for by a person: not held back by a failure cooldown
    cooldown_cap: float = 0.0  # seconds; caps the failure cooldown (the RPO), 0 = none
    submitted: float = field(default_factory=time.time)


@dataclass
class JobRecord:
    """One finished or running attempt, for status and for the limit audits in tests."""

    id: int
    vm_key: str
    vm_name: str
    host: str
    datastores: tuple[str, ...]
    reason: str
    policy: str
    attempt: int
    started: float
    finished: float | None = None
    # running, success, failed, busy (retried later), gone (the VM no longer exists), cancelled
    outcome: str = "running"
    error: str = ""
    point_id: str = ""
    read_bytes: int = 0
    stored_bytes: int = 0
    # While running: the slow step (snapshot, read, commit, snapshot removal) and the bytes
    # planned for the read, for the status page's progress column.
    phase: str = ""
    total_bytes: int = 0
    # The new point as `vigil backup --json` prints it (protector/backup_record.py), for a
    # `vigil backup` that handed its job to this daemon (control.py).
    summary: dict[str, Any] | None = None

    @classmethod
    def start(cls, job_id: int, req: JobRequest, attempt: int) -> JobRecord:
        """The record of an attempt at `req` that starts now."""
        return cls(
            id=job_id,
            vm_key=req.vm_key,
            vm_name=req.vm_name,
            host=req.host,
            datastores=req.datastores,
            reason=req.reason,
            policy=req.policy,
            attempt=attempt,
            started=time.time(),
        )

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        del d["summary"]  # the point's disks: for the waiting `vigil backup`, not the status
        return d


@dataclass(frozen=True)
class Limits:
    concurrent: int = 4
    per_host: int = 2
    per_datastore: int = 2


def limit_reason(
    req: JobRequest,
    running: int,
    limits: Limits,
    host_load: Mapping[str, int],
    ds_load: Mapping[str, int],
) -> str:
    """Which concurrency limit keeps a queued job waiting, in words; "" when none does."""
    if running >= limits.concurrent:
        return f"concurrency limit: {running} of {limits.concurrent} backups running"
    if req.host and host_load.get(req.host, 0) >= limits.per_host:
        return f"per-host limit: {limits.per_host} backups running on host {req.host}"
    full = [d for d in req.datastores if ds_load.get(d, 0) >= limits.per_datastore]
    if full:
        return f"per-datastore limit: {limits.per_datastore} backups on {', '.join(full)}"
    return ""


def failure_cooldown(consecutive: int, base: float, cap: float) -> float:
    """Seconds to wait after a VM's retries are used up: base doubled per consecutive
    failed attempt, at most `cap`."""
    return min(cap, base * 2 ** max(0, consecutive - 1))


RunFn = Callable[[JobRequest, JobRecord], Awaitable[None]]


class JobRunner:
    def __init__(
        self,
        run: RunFn,
        limits: Limits,
        *,
        retry_attempts: int = 3,
        retry_backoff: float = 60.0,
        cooldown_max: float = 3600.0,
        retry_later: tuple[type[BaseException], ...] = (),
        give_up: tuple[type[BaseException], ...] = (),
        history_size: int = 500,
        on_finish: Callable[[JobRequest, JobRecord], None] | None = None,
    ) -> None:
        self._run = run
        self.limits = limits
        self.retry_attempts = retry_attempts
        self.retry_backoff = retry_backoff
        self.cooldown_max = cooldown_max
        # Errors meaning "not now" (another process holds the VM): retried after
        # retry_backoff, never counted as a failed attempt.
        self.retry_later = retry_later
        # Errors meaning "there is nothing left to back up" (the VM was deleted): never
        # retried, never counted as a failure.
        self.give_up = give_up
        self.on_finish = on_finish
        self.queued: dict[str, JobRequest] = {}
        self.running: dict[str, tuple[JobRequest, JobRecord, asyncio.Task[None]]] = {}
        self.retry_timers: dict[str, asyncio.TimerHandle] = {}
        self.history: deque[JobRecord] = deque(maxlen=history_size)
        self.failures: dict[str, JobRecord] = {}  # vm_key → last failure after all retries
        self.consecutive_failures: Counter[str] = Counter()  # failed attempts since a success
        self.cooldown_until: dict[str, float] = {}  # vm_key → time.time() it may run again
        self.outcomes: Counter[str] = Counter()
        self.coalesced = 0
        self._ids = itertools.count(1)
        self.last_id = 0  # of the newest attempt started: ids only grow
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set whenever a job finishes or a retry is queued
        self._accepting = True
        self.paused: str | None = None  # why dispatch is held back (the prune's chunk sweep)
        self._host_load: Counter[str] = Counter()
        self._ds_load: Counter[str] = Counter()

    # -- submission ------------------------------------------------------------

    def busy(self, vm_key: str) -> bool:
        return vm_key in self.running or vm_key in self.queued or vm_key in self.retry_timers

    def in_cooldown(self, vm_key: str, now: float | None = None) -> bool:
        until = self.cooldown_until.get(vm_key)
        return until is not None and (now or time.time()) < until

    def cancel_retry(self, vm_key: str) -> None:
        """Drop a VM's pending retry (a person asks for its backup now instead)."""
        timer = self.retry_timers.pop(vm_key, None)
        if timer is not None:
            timer.cancel()
            self._idle.set()

    def forget(self, vm_key: str) -> None:
        """Drop everything pending for a VM that was deleted or left every policy: its queued
        job, its retry, its failure and cooldown. A running job goes on (its point is kept)."""
        self.queued.pop(vm_key, None)
        timer = self.retry_timers.pop(vm_key, None)
        if timer is not None:
            timer.cancel()
            self._idle.set()  # drain() may be waiting for exactly this retry
        self.failures.pop(vm_key, None)
        self.consecutive_failures.pop(vm_key, None)
        self.cooldown_until.pop(vm_key, None)

    def submit(self, req: JobRequest) -> bool:
        """Queue a backup; coalesced into a queued or running job of the same VM."""
        if not self._accepting:
            return False
        if not req.manual and self.in_cooldown(req.vm_key):
            log.debug("job.cooling_down", vm=req.vm_name, reason=req.reason)
            return False
        if req.vm_key in self.running or req.vm_key in self.retry_timers:
            self.coalesced += 1
            log.info("job.coalesced", vm=req.vm_name, reason=req.reason, into="running job")
            return False
        queued = self.queued.get(req.vm_key)
        if queued is not None:
            self.coalesced += 1
            queued.deadline = min(queued.deadline, req.deadline)
            queued.full = queued.full or req.full
            return False
        self.queued[req.vm_key] = req
        log.info("job.queued", vm=req.vm_name, reason=req.reason, policy=req.policy)
        self._wake.set()
        return True

    # -- dispatch --------------------------------------------------------------

    def _fits(self, req: JobRequest) -> bool:
        if len(self.running) >= self.limits.concurrent:
            return False
        if req.host and self._host_load[req.host] >= self.limits.per_host:
            return False
        return all(self._ds_load[d] < self.limits.per_datastore for d in req.datastores)

    def held_by(self, req: JobRequest) -> str:
        """Why a queued job has not started: which limit it waits for (status page)."""
        if self.paused is not None:
            return f"new backups held back: {self.paused}"
        return limit_reason(req, len(self.running), self.limits, self._host_load, self._ds_load)

    def pause(self, reason: str) -> None:
        """Start no new jobs (queued ones wait; running ones go on) until resume()."""
        self.paused = reason
        log.info("job.dispatch_paused", reason=reason)

    def resume(self) -> None:
        if self.paused is not None:
            self.paused = None
            log.info("job.dispatch_resumed")
            self._wake.set()

    async def wait_idle_running(self, timeout: float) -> bool:
        """Wait up to `timeout` s until no job runs; whether none does."""
        deadline = time.monotonic() + timeout
        while self.running:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._idle.wait()
        return True

    def _dispatch(self) -> None:
        if self.paused is not None:
            return
        for req in sorted(self.queued.values(), key=lambda r: (r.deadline, r.submitted)):
            if len(self.running) >= self.limits.concurrent:
                return
            if self._fits(req):
                del self.queued[req.vm_key]
                self._start(req)

    def _start(self, req: JobRequest) -> None:
        rec = JobRecord.start(next(self._ids), req, req.attempt)
        self.last_id = rec.id
        self._host_load[req.host] += 1
        for d in req.datastores:
            self._ds_load[d] += 1
        task = asyncio.create_task(self._execute(req, rec), name=f"backup {req.vm_name}")
        self.running[req.vm_key] = (req, rec, task)
        log.info("job.started", vm=req.vm_name, job=rec.id, attempt=req.attempt)

    async def _execute(self, req: JobRequest, rec: JobRecord) -> None:
        try:
            await self._run(req, rec)
            rec.outcome = "success"
        except asyncio.CancelledError:
            rec.outcome = "cancelled"
            rec.error = "cancelled (shutdown)"
            # Said, not silent: a first backup stopped here left no point, and the admin
            # reading the log must know it is not forgotten (the next start queues every
            # VM still due, planner.evaluate_all).
            log.warning(
                "job.cancelled",
                vm=req.vm_name,
                job=rec.id,
                reason=req.reason,
                state="running",
                next=NEXT_START,
            )
            raise
        except self.give_up as exc:
            rec.outcome = "gone"
            rec.error = str(exc) or type(exc).__name__
            log.warning("job.gone", vm=req.vm_name, job=rec.id, error=rec.error)
        except self.retry_later as exc:
            rec.outcome = "busy"
            rec.error = str(exc) or type(exc).__name__
            log.info("job.busy", vm=req.vm_name, job=rec.id, error=rec.error)
        except Exception as exc:
            rec.outcome = "failed"
            rec.error = str(exc) or type(exc).__name__
            log.error(
                "job.failed", vm=req.vm_name, job=rec.id, attempt=req.attempt, error=rec.error
            )
        finally:
            rec.finished = time.time()
            self._host_load[req.host] -= 1
            for d in req.datastores:
                self._ds_load[d] -= 1
            self.running.pop(req.vm_key, None)
            self.history.append(rec)
            self.outcomes[rec.outcome] += 1
            self._after(req, rec)
            self._wake.set()
            self._idle.set()

    def _after(self, req: JobRequest, rec: JobRecord) -> None:
        if rec.outcome in ("success", "gone"):
            self.failures.pop(req.vm_key, None)
            self.consecutive_failures.pop(req.vm_key, None)
            self.cooldown_until.pop(req.vm_key, None)
        elif rec.outcome == "busy" and self._accepting:
            # The same attempt again later; the holder (a restore, say) may take a while.
            again = JobRequest(**{**req.__dict__})
            loop = asyncio.get_running_loop()
            self.retry_timers[req.vm_key] = loop.call_later(
                self.retry_backoff, self._requeue, again
            )
        elif rec.outcome == "failed":
            self.consecutive_failures[req.vm_key] += 1
            if req.attempt < self.retry_attempts and self._accepting:
                delay = self.retry_backoff * (2 ** (req.attempt - 1))
                retry = JobRequest(**{**req.__dict__, "attempt": req.attempt + 1})
                first = _RETRY_PREFIX.sub("", req.reason)  # "retry 3/3: why", not nested
                retry.reason = f"retry {req.attempt + 1}/{self.retry_attempts}: {first}"
                loop = asyncio.get_running_loop()
                self.retry_timers[req.vm_key] = loop.call_later(delay, self._requeue, retry)
                log.info("job.retry_scheduled", vm=req.vm_name, in_seconds=delay)
            else:
                self.failures[req.vm_key] = rec
                self._cool_down(req)
        if self.on_finish:
            self.on_finish(req, rec)

    def _cool_down(self, req: JobRequest) -> None:
        cap = min(self.cooldown_max, req.cooldown_cap or self.cooldown_max)
        n = self.consecutive_failures[req.vm_key]
        delay = failure_cooldown(n, self.retry_backoff, cap)
        self.cooldown_until[req.vm_key] = time.time() + delay
        log.warning(
            "job.cooling_down",
            vm=req.vm_name,
            consecutive_failures=n,
            retry_in_seconds=round(delay, 1),
        )

    def _requeue(self, req: JobRequest) -> None:
        self.retry_timers.pop(req.vm_key, None)
        if self._accepting:
            self.queued[req.vm_key] = req
            self._wake.set()
        self._idle.set()

    async def run(self) -> None:
        """Dispatch until stopped."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._accepting:
                self._dispatch()

    async def drain(self) -> None:
        """Wait until nothing is queued, running or waiting for a retry (tests, `backup --all`)."""
        while self.queued or self.running or self.retry_timers:
            self._idle.clear()
            await self._idle.wait()

    async def stop(self, *, timeout: float = 50.0) -> None:
        """Take no new jobs, cancel running ones and wait for their cleanup."""
        self._accepting = False
        for req in self.queued.values():
            log.warning(
                "job.cancelled", vm=req.vm_name, reason=req.reason, state="queued", next=NEXT_START
            )
        self.queued.clear()
        for h in self.retry_timers.values():
            h.cancel()
        self.retry_timers.clear()
        tasks = [t for _, _, t in self.running.values()]
        for t in tasks:
            t.cancel()
        if tasks:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait(tasks, timeout=timeout)
