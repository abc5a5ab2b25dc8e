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
- A VM a policy selects through `vapps` is backed up with its vApp as one set: the first
  member due defers ONE job for the whole set (`route`), keyed by the vApp (set_key); every
  member is busy while it waits or runs, and when it ends each member's points are re-read
  and its plan moves on, as if it had run a job of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import procrastinate
import structlog

from cluster.queue import BACKUP_TASK, BackupJob, defer_backup, lock_for
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


@dataclass(frozen=True)
class SetMember:
    key: str  # the VM's identity
    name: str
    moref: str
    path: str
    host: str
    datastores: tuple[str, ...]
    known_point: str  # its newest point as the plan knew it ("" none)


@dataclass(frozen=True)
class SetUnit:
    """A vApp set as the scheduler sees it: the outermost vApp a policy's `vapps` selects
    around a VM, with every VM in it (nested vApps too)."""

    key: str  # cluster.queue.set_key(vcenter, moref)
    moref: str
    path: str
    members: tuple[SetMember, ...]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class Route(Enum):
    BUSY = "busy"  # the VM's own job, or its set's, waits or runs
    VM = "vm"  # a job of its own
    SET = "set"  # one job for its whole vApp set
    JOIN = "join"  # its set's job already waits or runs (a member it did not know): covered


def route(
    vm_key: str, unit: SetUnit | None, active: Collection[str], member_of: Mapping[str, str]
) -> Route:
    """Pure: what a submitted request of `vm_key` becomes. `active` holds the keys (VM
    identities and set keys) whose jobs wait or run; `member_of` maps a VM to the set job
    it is part of. A member of an active set never gets a job of its own, and a set is
    never deferred twice, so no VM is in two jobs at once from this scheduler (the
    workers' per-VM mutexes cover jobs from anywhere else)."""
    if vm_key in active or member_of.get(vm_key) in active:
        return Route.BUSY
    if unit is None:
        return Route.VM
    return Route.JOIN if unit.key in active else Route.SET


def job_of_set(
    req: JobRequest, unit: SetUnit, vcenter: str, epoch: int, extra: Mapping[str, Any]
) -> BackupJob:
    """Pure: the cluster job that backs up a vApp set: the union of the members' hosts and
    datastores (slots all or none), each member's mutex, what the plan knew of each."""
    members = unit.members
    return BackupJob(
        vcenter=vcenter,
        vm=unit.key,
        host="",
        datastores=tuple(sorted({f"{vcenter}/{d}" for m in members for d in m.datastores})),
        epoch=epoch,
        payload={
            "name": f"vApp {unit.name}",
            "reason": req.reason,
            "policy": req.policy,
            "full": req.full,
            "manual": req.manual,
            "path": unit.path,
            "paths": {m.moref: m.path for m in members},
            "known_points": {m.key: m.known_point for m in members},
            **extra,
        },
        vapp=unit.moref,
        members=tuple(sorted(m.key for m in members)),
        hosts=tuple(sorted({f"{vcenter}/{m.host}" for m in members if m.host})),
    )


def member_request(unit: SetUnit, m: SetMember, like: JobRequest) -> JobRequest:
    """A member's request, as if it had been submitted with its set's first one."""
    return JobRequest(
        vm_key=m.key,
        vm_name=m.name,
        host=m.host,
        datastores=m.datastores,
        reason=f"{like.reason} (vApp set {unit.path})",
        policy=like.policy,
        full=like.full,
        manual=like.manual,
        cooldown_cap=like.cooldown_cap,
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
        unit_of: Callable[[JobRequest], SetUnit | None] = lambda req: None,
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
        self.unit_of = unit_of  # the vApp set a VM is backed up with, if any
        # vApp sets: set key → the set and its members' requests, and each member's set,
        # while the set's job waits or runs.
        self.units: dict[str, SetUnit] = {}
        self.set_members: dict[str, dict[str, JobRequest]] = {}
        self.member_of: dict[str, str] = {}
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
        return route(vm_key, None, self._active(), self.member_of) is Route.BUSY

    def _active(self) -> Collection[str]:
        return self.running.keys() | self.queued.keys()

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
        unit = self.unit_of(req)
        decision = route(req.vm_key, unit, self._active(), self.member_of)
        if decision is Route.BUSY:
            self.coalesced += 1
            return False
        if decision is Route.JOIN:
            assert unit is not None
            self.member_of[req.vm_key] = unit.key
            self.set_members[unit.key].setdefault(req.vm_key, req)
            self.coalesced += 1
            return False
        if decision is Route.SET:
            assert unit is not None
            return self._submit_set(req, unit)
        self.queued[req.vm_key] = req
        self._spawn(self._defer(req))
        return True

    def _submit_set(self, req: JobRequest, unit: SetUnit) -> bool:
        """One job for the whole vApp set; every member is busy until it ends."""
        members = {m.key: member_request(unit, m, req) for m in unit.members}
        members[req.vm_key] = req
        self.units[unit.key] = unit
        self.set_members[unit.key] = members
        for key in members:
            self.member_of[key] = unit.key
        self.queued[unit.key] = JobRequest(
            vm_key=unit.key,
            vm_name=f"vApp {unit.name}",
            host="",
            datastores=tuple(sorted({d for m in unit.members for d in m.datastores})),
            reason=req.reason,
            deadline=req.deadline,
            policy=req.policy,
            full=req.full,
            manual=req.manual,
            cooldown_cap=req.cooldown_cap,
        )
        self._spawn(self._defer(self.queued[unit.key]))
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
        unit = self.units.get(req.vm_key)
        if unit is not None:
            job = job_of_set(req, unit, self.vcenter, self.epoch, {})
        else:
            job = job_of(req, self.vcenter, self.epoch, self.describe(req.vm_key))
        try:
            job_id = await defer_backup(self.app, job)
        except Exception as exc:  # the database is away: the planner submits again
            log.warning("cluster.defer_failed", vm=req.vm_name, error=str(exc) or repr(exc))
            self.queued.pop(req.vm_key, None)
            self._release_members(req.vm_key)
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
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
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
            jobs = list(await jm.list_jobs_async(task=BACKUP_TASK, lock=lock_for(key)))
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
        if key not in self.units:
            await self.refresh(key)
            self._book(req, rec)
            return
        # A set's job: each member's points are re-read and its plan moves on. All are
        # re-read before any is free again: the planner runs between these awaits, and a
        # member freed with its old points would look due and defer the set a second time.
        self.history.append(rec)
        for member_key in list(self.set_members.get(key, {})):
            await self.refresh(member_key)
        members = self._release_members(key)
        for member in members.values():
            mrec = JobRecord.start(job_id or 0, member, rec.attempt)
            mrec.started, mrec.finished = rec.started, rec.finished
            mrec.outcome, mrec.error = rec.outcome, rec.error
            self._book(member, mrec, history=False)

    def _release_members(self, key: str) -> dict[str, JobRequest]:
        """A set's job ended (or was never deferred): its members are free again."""
        self.units.pop(key, None)
        members = self.set_members.pop(key, {})
        for member in members:
            if self.member_of.get(member) == key:
                del self.member_of[member]
        return members

    def _book(self, req: JobRequest, rec: JobRecord, *, history: bool = True) -> None:
        if history:
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
