"""The job queue: a procrastinate app with the `backup_vm` task and the stalled-job requeue.

What procrastinate gives (3.x, read in its source and docs): jobs in PostgreSQL fetched
with SELECT ... FOR UPDATE SKIP LOCKED; `lock` (no two jobs with one lock run at once) and
`queueing_lock` (at most one such job waiting); retry strategies with backoff; abort;
worker rows with a heartbeat every `update_heartbeat_interval`. What it does not do: a job
whose worker died stays `doing` for ever ("Retry stalled jobs" in its how-to guides). So
a periodic task here asks `JobManager.get_stalled_jobs` (jobs whose worker has not beaten
for `stalled_after_s`, or whose worker row was pruned) and hands them to
`JobManager.retry_job` — procrastinate's own API. Another periodic task deletes finished
jobs past their retention (retention.py: the one statement of ours on its tables).

One backup per VM at a time: every job of a VM carries the VM's identity as both `lock`
and `queueing_lock`, so one may run and one more may wait; a further defer is refused
(`defer_backup` returns None: the waiting job will pick up the latest state anyway).

A vApp set (a policy selecting VMs through `vapps`) is one job for all its members: its
lock is the vApp's identity (vCenter uuid + vApp MoRef), and it holds every member's
per-VM mutex with its slots, all or none, so no member is in a set job and a VM job at
once.

The backup itself is an async callable given to the worker (`additional_context`), so
this package never imports protector.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import procrastinate
import psycopg
import structlog
from procrastinate import exceptions as pexc
from procrastinate import jobs as pjobs
from procrastinate.retry import RetryDecision, RetryStrategy
from procrastinate.schema import SchemaManager

from cluster import db, slots
from cluster.fencing import StaleEpochError, check_epoch
from cluster.leases import LeasePool
from cluster.retention import Retention, forget_silent_nodes, prune_jobs

log = structlog.get_logger("vigil.cluster.queue")

BACKUP_TASK = "vigil.backup_vm"
REQUEUE_TASK = "vigil.requeue_stalled"
PRUNE_TASK = "vigil.prune_jobs"
# Every 15 minutes: the statement is cheap on a table kept short by this very task.
PRUNE_CRON = "*/15 * * * *"
BACKUP_QUEUE = "backups"
MAINT_QUEUE = "maintenance"
CONTEXT_KEY = "vigil"


@dataclass(frozen=True)
class BackupJob:
    """What the scheduler asks for; travels as the job's JSON arguments."""

    vcenter: str  # the vCenter's about.instanceUuid
    vm: str  # the VM's identity (vCenter uuid + VM instance uuid), the daemon's spelling
    host: str  # the ESXi host it runs on (for the per-host slot)
    datastores: tuple[str, ...]  # where its disks live (per-datastore slots)
    epoch: int  # the deferring scheduler's epoch (fencing token)
    payload: Mapping[str, Any] = field(default_factory=dict)  # opaque: reason, policy...
    # A vApp set: `vm` is then the set's key (set_key), `vapp` the vApp's MoRef, `members`
    # the member VMs' identities and `hosts` every host they run on ("" / empty: a VM job).
    vapp: str = ""
    members: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    def to_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "vcenter": self.vcenter,
            "vm": self.vm,
            "host": self.host,
            "datastores": list(self.datastores),
            "epoch": self.epoch,
            "payload": dict(self.payload),
        }
        if self.vapp:
            args |= {"vapp": self.vapp, "members": list(self.members), "hosts": list(self.hosts)}
        return args

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> BackupJob:
        return cls(
            vcenter=str(args["vcenter"]),
            vm=str(args["vm"]),
            host=str(args.get("host", "")),
            datastores=tuple(str(d) for d in args.get("datastores", ())),
            epoch=int(args["epoch"]),
            payload=dict(args.get("payload") or {}),
            vapp=str(args.get("vapp") or ""),
            members=tuple(str(m) for m in args.get("members") or ()),
            hosts=tuple(str(h) for h in args.get("hosts") or ()),
        )

    @property
    def lock(self) -> str:
        return lock_for(self.vm)

    @property
    def mutexes(self) -> tuple[str, ...]:
        """The VMs whose per-VM mutex the job holds while it runs: its VM, or every member
        of its set (the same mutex a member's own job takes, so the two never overlap)."""
        return tuple(sorted(self.members)) if self.vapp else (self.vm,)


def set_key(vcenter: str, vapp_moref: str) -> str:
    """The identity of a vApp set job: the vCenter's uuid and the vApp's MoRef (a MoRef is
    unique within its vCenter and survives a rename or a move)."""
    return f"{vcenter}/vapp:{vapp_moref}"


def lock_for(key: str) -> str:
    """The procrastinate lock and queueing lock of the job for a VM identity or set key."""
    return f"vapp:{key}" if "/vapp:" in key else f"vm:{key}"


@dataclass
class JobRun:
    """What the backup callable gets besides the job: who runs it, the attempt, and the
    fence to call right before committing a restore point."""

    job_id: int
    attempt: int  # 0 on the first run
    worker: str
    conn: psycopg.AsyncConnection  # holds the job's slots; do not close
    job: BackupJob

    async def check_epoch(self) -> None:
        """Raise StaleEpochError if the scheduler that deferred this job is no longer
        the leader of its vCenter. Call before the point's commit."""
        await check_epoch(self.conn, self.job.vcenter, self.job.epoch)


BackupCallable = Callable[[BackupJob, JobRun], Awaitable[None]]


@dataclass(frozen=True)
class WorkerContext:
    """Handed to tasks through procrastinate's `additional_context`."""

    url: str
    node: str
    backup: BackupCallable
    host_slots: int = 2
    datastore_slots: int = 4
    stalled_after_s: float = 30.0
    max_attempts: int = 5
    lease_check_interval: float = 1.0
    lease_keep: int = 4  # idle slot connections kept for the next jobs (= concurrency)
    retention: Retention = field(default_factory=Retention)
    leases: LeasePool = field(init=False)

    def __post_init__(self) -> None:
        # One pool per worker run (its connections belong to that event loop).
        object.__setattr__(self, "leases", LeasePool(self.url, self.node, keep=self.lease_keep))


class BackupRetry(RetryStrategy):
    """Backoff `wait + exponential_wait ** (attempts + 1)` seconds; a stale epoch is final
    (the current leader plans again), everything else — a lost lease, a vCenter error, an
    abort at shutdown — is retried up to max_attempts."""

    def get_retry_decision(
        self, *, exception: BaseException, job: pjobs.Job
    ) -> RetryDecision | None:
        if isinstance(exception, StaleEpochError):
            return None
        return super().get_retry_decision(exception=exception, job=job)


def make_app(
    url: str,
    *,
    node: str = "vigil",
    pool_size: int = 4,
    requeue_every_s: int = 10,
    max_attempts: int = 5,
    retry_wait_s: int = 5,
    retry_exponential_s: int = 2,
    prune_cron: str = PRUNE_CRON,
) -> procrastinate.App:
    """The procrastinate app on `url`. Schedulers use it to defer, workers to run."""
    connector = procrastinate.PsycopgConnector(
        conninfo=url,
        kwargs=db.connect_kwargs(f"vigil-queue:{node}"),
        min_size=1,
        max_size=pool_size,
        # Fail a checkout after 10 s instead of 30 when the database is down: the worker
        # loop then restarts the worker, which reconnects.
        timeout=10.0,
    )
    app = procrastinate.App(connector=connector)
    retry = BackupRetry(
        max_attempts=max_attempts, wait=retry_wait_s, exponential_wait=retry_exponential_s
    )

    @app.task(name=BACKUP_TASK, queue=BACKUP_QUEUE, pass_context=True, retry=retry)
    async def backup_vm(context: procrastinate.JobContext, **args: Any) -> None:
        await _run_backup(context, BackupJob.from_args(args))

    if not 1 <= requeue_every_s <= 59 or 60 % requeue_every_s:
        raise ValueError("requeue_every_s must divide 60")

    @app.periodic(cron=f"* * * * * */{requeue_every_s}", periodic_id="requeue-stalled")
    @app.task(name=REQUEUE_TASK, queue=MAINT_QUEUE, queueing_lock=REQUEUE_TASK, pass_context=True)
    async def requeue_stalled_task(context: procrastinate.JobContext, timestamp: int) -> None:
        ctx = _worker_context(context)
        await requeue_stalled(app, ctx.stalled_after_s, max_attempts=ctx.max_attempts)

    @app.periodic(cron=prune_cron, periodic_id="prune-jobs")
    @app.task(name=PRUNE_TASK, queue=MAINT_QUEUE, queueing_lock=PRUNE_TASK, pass_context=True)
    async def prune_jobs_task(context: procrastinate.JobContext, timestamp: int) -> None:
        retention = _worker_context(context).retention
        deleted = await prune_jobs(app, retention, maintenance_queue=MAINT_QUEUE)
        if deleted:
            log.info("pruned finished jobs", **deleted)
        if forgotten := await forget_silent_nodes(app, retention):
            log.info("forgot nodes silent past the retention", nodes=forgotten)

    return app


def _worker_context(context: procrastinate.JobContext) -> WorkerContext:
    ctx = context.additional_context.get(CONTEXT_KEY)
    if not isinstance(ctx, WorkerContext):
        raise RuntimeError("this worker was started without vigil's WorkerContext")
    return ctx


async def _run_backup(context: procrastinate.JobContext, job: BackupJob) -> None:
    ctx = _worker_context(context)
    assert context.job.id is not None
    # A job planned by a deposed scheduler does no work at all (StaleEpochError: final).
    conn = await ctx.leases.acquire(context.job.id, job.vcenter, job.epoch)
    reusable = False
    try:
        # The VM's own mutex first: procrastinate's `lock` keeps two jobs of a VM from
        # running at once as long as its bookkeeping is right; this one holds even when a
        # live but silent worker's job was requeued, because it lives and dies with the
        # session that runs the backup.
        needs = [slots.SlotNeed("vm", vm, 1) for vm in job.mutexes]
        hosts = (job.host, *job.hosts)
        needs += slots.slot_needs(hosts, job.datastores, ctx.host_slots, ctx.datastore_slots)
        await slots.run_holding(conn, slots.take(conn, needs), check_interval=2.0)
        run = JobRun(context.job.id, context.job.attempts, ctx.node, conn, job)
        log.info("backup starts", vm=job.vm, job=run.job_id, attempt=run.attempt, node=ctx.node)
        try:
            await slots.run_holding(
                conn, ctx.backup(job, run), check_interval=ctx.lease_check_interval
            )
        except StaleEpochError:
            reusable = True
            raise
        reusable = True
    finally:
        await ctx.leases.release(conn, reusable=reusable)


async def prepare_database(url: str) -> None:
    """Create procrastinate's schema (its `schema --apply`, once: it is not idempotent)
    and the cluster's tables and functions. Safe when many nodes start at once."""
    async with await db.connect(url, "vigil-schema") as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (db.SCHEMA_LOCK,))
            cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
            row = await cur.fetchone()
            if not (row and row[0]):
                schema = SchemaManager.get_schema()
                await conn.execute(schema)  # type: ignore[arg-type]
                log.info("job queue schema created")
        await db.apply_schema(conn)
        await slots.install(conn)


async def defer_backup(app: procrastinate.App, job: BackupJob, *, priority: int = 0) -> int | None:
    """Queue a backup; None if one for this VM is already waiting (queueing lock)."""
    task = app.tasks[BACKUP_TASK]
    try:
        return await task.configure(
            lock=job.lock, queueing_lock=job.lock, priority=priority
        ).defer_async(**job.to_args())
    except pexc.AlreadyEnqueued:
        return None


async def requeue_stalled(
    app: procrastinate.App, stalled_after_s: float, *, max_attempts: int = 5
) -> list[int]:
    """Put back to `todo` every `doing` job whose worker stopped heart-beating; fail those
    that have used their attempts (a job that kills its worker each time) and those whose
    VM already has a newer job waiting (its queueing lock is taken: that job does the VM).
    Returns the ids requeued."""
    jm = app.job_manager
    requeued: list[int] = []
    stalled = await jm.get_stalled_jobs(seconds_since_heartbeat=stalled_after_s)
    for job in stalled:
        assert job.id is not None
        if job.task_name in (REQUEUE_TASK, PRUNE_TASK):
            # A maintenance run that died with its worker: drop it, the next tick runs.
            await jm.finish_job_by_id_async(job.id, pjobs.Status.FAILED, delete_job=False)
            continue
        if job.attempts + 1 >= max_attempts:
            log.warning("stalled job out of attempts: failed", job=job.id, task=job.task_name)
            await jm.finish_job_by_id_async(job.id, pjobs.Status.FAILED, delete_job=False)
            continue
        try:
            await jm.retry_job(job)
        except pexc.UniqueViolation:
            log.info("stalled job superseded by a waiting one", job=job.id, lock=job.lock)
            await jm.finish_job_by_id_async(job.id, pjobs.Status.FAILED, delete_job=False)
            continue
        log.warning("requeued a job whose worker stopped heart-beating", job=job.id)
        requeued.append(job.id)
    await jm.prune_stalled_workers(stalled_after_s)
    return requeued


async def supersede_stale_jobs(
    app: procrastinate.App, vcenter: str, epoch: int, jobs: Sequence[pjobs.Job] | None = None
) -> list[int]:
    """Cancel the waiting backup jobs of `vcenter` deferred under an older epoch: a new
    leader calls this right after its election, then reconciles and defers again (without
    it, their queueing locks would turn its defers away and the jobs would then be refused
    by the epoch check). Returns the ids cancelled."""
    jm = app.job_manager
    if jobs is None:
        jobs = list(await jm.list_jobs_async(task=BACKUP_TASK, status="todo"))
    cancelled = []
    for job in jobs:
        args = job.task_kwargs
        if args.get("vcenter") == vcenter and int(args.get("epoch", 0)) < epoch:
            assert job.id is not None
            if await jm.cancel_job_by_id_async(job.id):
                cancelled.append(job.id)
    return cancelled
