"""The planner's JobQueue on the cluster's queue: a leading scheduler defers `backup_vm`
jobs carrying its epoch to procrastinate (cluster/queue.py) instead of running them here,
and follows them there to learn when each VM's job is done (docs/cluster.md).

It keeps the in-process runner's shape (queued, running, history, failures, cooldowns), so
the planner, the pruner and the status views work unchanged. What differs:

- `submit` defers in the background; one VM has at most one job waiting and one running
  (procrastinate's queueing lock and lock on the VM identity); a VM with a job in the
  queue — whoever deferred it — is busy.
- Retries with backoff are procrastinate's (BackupRetry); a job that failed for good puts
  the VM in the same capped cooldown as the in-process runner, so it is not deferred again
  in a tight loop.
- Limits per host and datastore are the workers' cluster-wide slots; `host`/`datastores`
  travel with the job, prefixed with the vCenter's uuid (two vCenters may both have a
  `host-21`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import procrastinate
import structlog

from cluster.queue import BACKUP_TASK, BackupJob, defer_backup
from protector.daemon.jobs import JobRecord, JobRequest, failure_cooldown

log = structlog.get_logger(__name__)

FINAL = {"succeeded": "success", "failed": "failed", "cancelled": "cancelled", "aborted": "failed"}


def job_of(req: JobRequest, vcenter: str, epoch: int, extra: Mapping[str, Any]) -> BackupJob:
    """Pure: the cluster job for a planner request."""
    return BackupJob(
        vcenter=vcenter,
        vm=req.vm_key,
        host=f"{vcenter}/{req.host}" if req.host else "",
        datastores=tuple(f"{vcenter}/{d}" for d in req.datastores),
        epoch=epoch,
        payload={
            "name": req.vm_name,
            "reason": req.reason,
            "policy": req.policy,
            "full": req.full,
            "manual": req.manual,
            **extra,
        },
    )


def active_by_vm(jobs: list[tuple[str, Any]], vcenter: str) -> dict[str, tuple[int, str, int]]:
    """Pure: vm identity → (job id, status, attempts) of this vCenter's todo/doing jobs."""
    out: dict[str, tuple[int, str, int]] = {}
    for status, job in jobs:
        kw = job.task_kwargs
        if kw.get("vcenter") != vcenter or job.id is None:
            continue
        vm = str(kw.get("vm"))
        # A running job and a waiting one: the VM is running.
        if vm not in out or status == "doing":
            out[vm] = (job.id, status, job.attempts)
    return out


class ClusterJobQueue:
    def __init__(
        self,
        app: procrastinate.App,
        vcenter: str,
        epoch: int,
        *,
        on_finish: Callable[[JobRequest, JobRecord], None],
        refresh: Callable[[str], Awaitable[None]],
        describe: Callable[[str], Mapping[str, Any]] = lambda key: {},
        retry_backoff: float = 60.0,
        cooldown_max: float = 3600.0,
        poll_interval: float = 1.0,
        history_size: int = 500,
    ) -> None:
        self.app = app
        self.vcenter = vcenter
        self.epoch = epoch
        self.on_finish = on_finish
        self.refresh = refresh  # re-read the VM's points once its job is done
        self.describe = describe  # extra payload (the inventory path) for a VM
        self.retry_backoff = retry_backoff
        self.cooldown_max = cooldown_max
        self.poll_interval = poll_interval
        self.queued: dict[str, JobRequest] = {}
        self.running: dict[str, tuple[JobRequest, JobRecord, None]] = {}
        self.retry_timers: dict[str, Any] = {}  # retries are procrastinate's: always empty
        self.history: deque[JobRecord] = deque(maxlen=history_size)
        self.failures: dict[str, JobRecord] = {}
        self.consecutive_failures: Counter[str] = Counter()
        self.cooldown_until: dict[str, float] = {}
        self.outcomes: Counter[str] = Counter()
        self.coalesced = 0
        self.deferred = 0
        self.paused: str | None = None
        self.job_ids: dict[str, int | None] = {}  # vm → its job (None: one already waited)
        self._deferred_at: dict[str, float] = {}  # vm → when its defer returned (monotonic)
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._wake = asyncio.Event()

    # -- the planner's JobQueue ------------------------------------------------------------

    def busy(self, vm_key: str) -> bool:
        return vm_key in self.running or vm_key in self.queued

    def in_cooldown(self, vm_key: str, now: float | None = None) -> bool:
        until = self.cooldown_until.get(vm_key)
        return until is not None and (now or time.time()) < until

    def forget(self, vm_key: str) -> None:
        """The VM left every policy or was deleted: its waiting job is cancelled (a running
        one finishes, like in-process)."""
        self.failures.pop(vm_key, None)
        self.consecutive_failures.pop(vm_key, None)
        self.cooldown_until.pop(vm_key, None)
        job_id = self.job_ids.get(vm_key)
        if vm_key in self.queued and job_id is not None:
            self._spawn(self._cancel(vm_key, job_id))

    def submit(self, req: JobRequest) -> bool:
        if not self._accepting or self.paused is not None:
            return False
        if not req.manual and self.in_cooldown(req.vm_key):
            return False
        if self.busy(req.vm_key):
            self.coalesced += 1
            return False
        self.queued[req.vm_key] = req
        self._spawn(self._defer(req))
        return True

    # -- the pruner's hooks ----------------------------------------------------------------

    def pause(self, reason: str) -> None:
        """Defer nothing new (jobs already queued run) until resume()."""
        self.paused = reason

    def resume(self) -> None:
        self.paused = None

    async def wait_idle_running(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.running or self.queued:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_interval)
        return True

    # -- deferring and following -----------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _defer(self, req: JobRequest) -> None:
        job = job_of(req, self.vcenter, self.epoch, self.describe(req.vm_key))
        try:
            job_id = await defer_backup(self.app, job)
        except Exception as exc:  # the database is away: the planner submits again
            log.warning("cluster.defer_failed", vm=req.vm_name, error=str(exc) or repr(exc))
            self.queued.pop(req.vm_key, None)
            return
        self.deferred += 1 if job_id is not None else 0
        self.job_ids[req.vm_key] = job_id
        self._deferred_at[req.vm_key] = time.monotonic()
        log.info(
            "job.deferred",
            vm=req.vm_name,
            reason=req.reason,
            job=job_id,
            epoch=self.epoch,
            note=None if job_id is not None else "a job for this VM was already waiting",
        )
        self._wake.set()

    async def _cancel(self, vm_key: str, job_id: int) -> None:
        with contextlib.suppress(Exception):
            await self.app.job_manager.cancel_job_by_id_async(job_id)

    async def run(self) -> None:
        """Follow the deferred jobs until stopped."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            try:
                await self.poll()
            except Exception as exc:  # the database is away: try again next tick
                log.warning("cluster.poll_failed", error=str(exc) or repr(exc))

    async def poll(self) -> None:
        started = time.monotonic()
        jm = self.app.job_manager
        listed: list[tuple[str, Any]] = []
        for status in ("doing", "todo"):
            jobs = await jm.list_jobs_async(task=BACKUP_TASK, status=status)
            listed += [(status, j) for j in jobs]
        active = active_by_vm(listed, self.vcenter)
        for key in list(self.queued) + list(self.running):
            if key not in self._deferred_at or self._deferred_at[key] > started:
                continue  # its defer is still under way, or later than the listing
            found = active.get(key)
            if found is not None:
                job_id, status, attempts = found
                self.job_ids[key] = job_id
                if status == "doing" and key in self.queued:
                    req = self.queued.pop(key)
                    rec = JobRecord.start(job_id, req, attempts + 1)
                    self.running[key] = (req, rec, None)
                continue
            await self._finished(key)

    async def _final_status(self, key: str) -> str | None:
        """The VM's job's final status, or None while it is still todo or doing. Asked by
        id (or by the VM's lock) because the listing above is two queries: a job moving
        between them (todo → doing, or doing → todo for a retry) is in neither."""
        jm = self.app.job_manager
        job_id = self.job_ids.get(key)
        if job_id is not None:
            jobs = list(await jm.list_jobs_async(id=job_id))
        else:
            jobs = list(await jm.list_jobs_async(task=BACKUP_TASK, lock=f"vm:{key}"))
        statuses = {j.status for j in jobs}
        if statuses & {"todo", "doing"}:
            return None
        if job_id is None or not jobs:
            return "succeeded"  # someone else's job: the VM's points tell what it did
        return str(jobs[0].status)

    async def _finished(self, key: str) -> None:
        status = await self._final_status(key)
        if status is None:
            return
        req = self.queued.pop(key, None)
        rec: JobRecord | None = None
        if req is None:
            req, rec, _ = self.running.pop(key)
        job_id = self.job_ids.pop(key, None)
        self._deferred_at.pop(key, None)
        if rec is None:
            rec = JobRecord.start(job_id or 0, req, 1)
        rec.outcome = FINAL.get(status, "failed")
        rec.finished = time.time()
        if rec.outcome == "failed":
            rec.error = f"job {job_id} {status} on the cluster (its worker logged why)"
        await self.refresh(key)
        self._book(req, rec)

    def _book(self, req: JobRequest, rec: JobRecord) -> None:
        self.history.append(rec)
        self.outcomes[rec.outcome] += 1
        if rec.outcome == "success":
            self.failures.pop(req.vm_key, None)
            self.consecutive_failures.pop(req.vm_key, None)
            self.cooldown_until.pop(req.vm_key, None)
        elif rec.outcome == "failed":
            self.failures[req.vm_key] = rec
            self.consecutive_failures[req.vm_key] += 1
            cap = min(self.cooldown_max, req.cooldown_cap or self.cooldown_max)
            n = self.consecutive_failures[req.vm_key]
            self.cooldown_until[req.vm_key] = time.time() + failure_cooldown(
                n, self.retry_backoff, cap
            )
        self.on_finish(req, rec)

    async def stop(self, *, timeout: float = 5.0) -> None:
        """Defer nothing more. Jobs in the queue stay there: they are the cluster's now (a
        later leader cancels those of an older epoch and plans again)."""
        self._accepting = False
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
