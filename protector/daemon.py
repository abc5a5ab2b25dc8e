"""`vigil watch`: the auto-protector.

One asyncio process composing the watcher (inventory events), the policy store (hot
reloaded), the scheduler (RPO deadlines inside backup windows), the job runner (limits,
retries) and the repository. A VM that comes into a policy's scope is backed up at once
when the policy says `on_match = "immediate"` and it has no good point younger than its
RPO; every protected VM is queued again before its RPO runs out. State is rebuilt from
the repository's manifests at start, so a restart never repeats a backup that is still
within its RPO.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import anyio
import structlog

from policies.engine import CompiledSet, evaluate_one
from policies.errors import PolicyLoadError
from policies.model import Policy
from policies.reload import PolicyStore, ReloadOutcome
from policies.schedule import DEFAULT_MARGIN, in_window, next_run
from repository import Repository, prune
from repository.prune import PruneResult
from watcher.events import VmAdded, VmChanged, VmEvent, VmMoved, VmRemoved, VmRenamed
from watcher.inventory import retrieve_objects
from watcher.session import Session
from watcher.soap import VsphereConnectionError, VsphereError, VsphereFault
from watcher.updates import Watcher

from .backup import BackupOptions, backup_vm
from .config import Config, parse_hhmm
from .connect import connect_session
from .context import Context
from .errors import UserError
from .jobs import JobRecord, JobRequest, JobRunner, Limits
from .metrics import Metrics
from .policyaccess import PruneScope, options_of, retention_rules, vm_facts
from .repoaccess import open_catalog, open_repository
from .snapshots import SNAPSHOT_NAME, is_leftover, remove_snapshot, walk_snapshots
from .status import StatusServer
from .vmlock import VmBusyError

log = structlog.get_logger(__name__)

SCHEDULER_TICK = 30.0  # seconds between scheduler scans when nothing wakes it


def planning_margin(rpo: timedelta) -> timedelta:
    """How long before the RPO runs out a scheduled backup should start: the usual margin,
    but at most a quarter of the RPO — a 30 min margin on a 15 min RPO would make every
    point due the moment it is taken, and the VM would be backed up in a loop."""
    return min(DEFAULT_MARGIN, rpo / 4)


def identity_key(vcenter_uuid: str, instance_uuid: str) -> str:
    """The watcher's VmNode.identity for a VM a manifest names."""
    return f"{vcenter_uuid}/{instance_uuid}"


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


class VmGone(Exception):
    """The VM a job was for no longer exists: nothing to retry, nothing failing."""


@dataclass
class VmState:
    newest_good: datetime | None = None
    newest_point: str | None = None
    points: int = 0
    last_error: str = ""


@dataclass
class DaemonStats:
    started_at: float = field(default_factory=time.time)
    events: int = 0
    triggered: int = 0
    scheduled: int = 0
    orphaned: int = 0
    prune_failures: int = 0


class Daemon:
    def __init__(self, cfg: Config, *, tz: tzinfo | None = None) -> None:
        self.cfg = cfg
        self.tz = tz or datetime.now().astimezone().tzinfo or UTC
        self.metrics = Metrics()
        self.stats = DaemonStats()
        self.state: dict[str, VmState] = {}
        self.winners: dict[str, str | None] = {}  # identity key → winning policy
        self.conflicts: dict[str, tuple[str, ...]] = {}
        self.due: dict[str, datetime] = {}  # identity key → next scheduled start
        # Triggers that asked for a backup now but met a closed window: the VM is due at
        # the window's first moment, even when it has a point within its RPO.
        self.deferred: dict[str, str] = {}
        self.errors: deque[str] = deque(maxlen=100)
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._job_session: Session | None = None
        self._job_session_lock = asyncio.Lock()
        self.repo: Repository | None = None
        self.catalog: Any = None
        self.policies: PolicyStore | None = None
        self.watcher: Watcher | None = None
        self.runner: JobRunner | None = None
        self.status: StatusServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._bg: set[asyncio.Task[Any]] = set()
        self.crashed: str | None = None  # the internal task whose crash stopped the daemon
        self.last_prune: dict[str, Any] | None = None
        self._io_limiter: anyio.CapacityLimiter | None = None  # one for every job
        self._ran_with: dict[str, BackupOptions] = {}  # vm key → options of its running job

    # -- lifecycle ---------------------------------------------------------------------

    def _preflight(self) -> str:
        """Refuse settings that would silently weaken security; returns the status token."""
        cfg = self.cfg
        token = ""
        env = cfg.daemon.status_token_env
        if env:
            token = os.environ.get(env, "")
            if not token:
                # Starting anyway would serve the status page to anyone, unauthenticated.
                raise UserError(
                    f"{cfg.path}: daemon.status_token_env names the environment variable "
                    f"{env}, which is unset or empty; set it to the bearer token in the "
                    "daemon's environment (e.g. systemd EnvironmentFile=), or remove "
                    "daemon.status_token_env to serve the status page without a token"
                )
        vc = cfg.vcenter
        if not vc.verify_tls and not vc.thumbprint and vc.url.startswith("https:"):
            log.warning(
                "daemon.tls_unverified",
                vcenter=vc.url,
                risk="anyone on the path can impersonate vCenter and read the password",
                next_step="pin the certificate with vcenter.thumbprint (SHA-256) or set "
                "vcenter.verify_tls = true",
            )
        return token

    async def run(self, *, install_signals: bool = True) -> int:
        cfg = self.cfg
        token = self._preflight()
        try:
            self.policies = PolicyStore(cfg.policies_path, inventory=self._all_facts)
        except PolicyLoadError as exc:
            raise UserError(f"policies are invalid, nothing started:\n{exc}") from None
        self.repo = await open_repository(cfg, create=True)
        self.catalog = await open_catalog(self.repo)
        await self._load_state()
        self.watcher = Watcher(
            self._connect,
            tag_interval=cfg.daemon.tag_interval,
            reconcile_interval=cfg.daemon.reconcile_interval,
        )
        lim = cfg.limits
        self.runner = JobRunner(
            self._run_job,
            Limits(lim.concurrent_backups, lim.per_host, lim.per_datastore),
            retry_attempts=cfg.daemon.retry_attempts,
            retry_backoff=cfg.daemon.retry_backoff,
            cooldown_max=cfg.daemon.failure_cooldown_max,
            retry_later=(VmBusyError,),  # a restore elsewhere holds the VM: not a failure
            give_up=(VmGone,),
            on_finish=self._job_finished,
        )
        self.status = StatusServer(
            self.status_data,
            self.healthy,
            self.metrics,
            token=token,
            before_metrics=self._refresh_metrics,
        )
        try:
            await self.status.start(cfg.daemon.status_listen)
        except OSError as exc:
            await self.catalog.close()
            raise UserError(
                f"{cfg.path}: daemon.status_listen {cfg.daemon.status_listen}: cannot serve "
                f"the status page ({exc.strerror or exc}); is another `vigil watch` running "
                "with this configuration? Stop it, or choose another port"
            ) from None
        log.info(
            "daemon.started",
            status=f"http://{cfg.daemon.status_listen.rpartition(':')[0]}:{self.status.port}/status",
            policies=len(self.policies.current),
            known_vms=len(self.state),
        )
        if install_signals:
            self._install_signals()
        spawn = self._spawn
        spawn(self.watcher.run(), "watcher")
        spawn(self.runner.run(), "job-runner")
        spawn(self._consume_events(), "events")
        spawn(self._initial_sync(), "initial-sync")
        spawn(self._watch_policies(), "policy-reload")
        spawn(self._scheduler(), "scheduler")
        spawn(self._pruner(), "pruner")
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown()
        if self.crashed is not None:
            # Exit 1 so the service manager sees a failure and restarts us.
            log.error("daemon.exit_after_crash", task=self.crashed)
            return 1
        return 0

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        if exc is not None:
            log.error("daemon.task_crashed", task=task.get_name(), error=repr(exc), exc_info=exc)
            self.errors.append(f"internal task {task.get_name()} crashed: {exc!r}")
            self.crashed = self.crashed or task.get_name()
            self.stopping.set()

    def _background(self, coro: Any) -> None:
        """A short fire-and-forget task, referenced until done (asyncio keeps weak refs)."""
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("daemon.stopping")
            self.stopping.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._background(self._reload()))

    async def _shutdown(self) -> None:
        # No new jobs; running ones are cancelled and remove their snapshots first.
        if self.runner:
            await self.runner.stop(timeout=50)
        if self.watcher:
            await self.watcher.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._job_session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._job_session.close(), 5)
        if self.status:
            await self.status.stop()
        if self.catalog:
            await self.catalog.close()
        log.info("daemon.stopped")

    # -- vCenter sessions ----------------------------------------------------------------
    # The watcher has its own and logs it out whenever its update loop fails; the jobs
    # share a second one, whose cookie the disk readers (datastore HTTP, VDDK) carry for
    # the whole read, so a watcher hiccup never cuts a backup off mid-disk.

    async def _connect(self) -> Session:
        # connect_session closes the HTTP client of a failed attempt: the watcher retries
        # for as long as vCenter is away, and each attempt would otherwise leak one.
        return await connect_session(self.cfg)

    async def session(self) -> Session:
        """The jobs' session: logged in on first use, re-logged in by Session itself when
        it expires. While vCenter is unreachable this keeps trying with backoff (the job
        waits, it does not fail for an outage)."""
        async with self._job_session_lock:
            delay = 1.0
            while self._job_session is None:
                try:
                    session = await connect_session(self.cfg)
                except VsphereConnectionError as exc:
                    log.info("daemon.jobs_session_waiting", error=str(exc), retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                self._job_session = session
            return self._job_session

    def healthy(self) -> bool:
        return bool(self.watcher and self.watcher.healthy)

    # -- state -------------------------------------------------------------------------

    async def _load_state(self) -> None:
        assert self.repo is not None
        manifests = await anyio.to_thread.run_sync(self.repo.manifests)
        for m in manifests:
            st = self.state.setdefault(
                identity_key(m.vm.vcenter_uuid, m.vm.instance_uuid), VmState()
            )
            st.points += 1
            if st.newest_good is None or m.committed_at > st.newest_good:
                st.newest_good, st.newest_point = m.committed_at, m.point_id

    def _all_facts(self) -> list[Any]:
        tree = self.watcher.tree if self.watcher else None
        return [vm_facts(v) for v in tree.vms()] if tree else []

    def _policy(self, name: str | None) -> Policy | None:
        if name is None or self.policies is None:
            return None
        return next((p for p in self.policies.current if p.name == name), None)

    def _evaluate(self, node: Any, compiled: CompiledSet) -> str | None:
        res = evaluate_one(compiled, vm_facts(node))
        key = node.identity
        if res.conflict:
            self.conflicts[key] = res.conflict
        else:
            self.conflicts.pop(key, None)
        self.winners[key] = res.winner
        return res.winner

    def _fresh(self, key: str, policy: Policy, now: datetime) -> bool:
        """Whether the VM has a good point younger than the policy's RPO."""
        st = self.state.get(key)
        return bool(st and st.newest_good and now - st.newest_good < policy.schedule.rpo)

    def _reschedule(self, key: str, now: datetime | None = None) -> None:
        policy = self._policy(self.winners.get(key))
        if policy is None:
            self.due.pop(key, None)
            return
        st = self.state.get(key)
        nr = next_run(
            None if key in self.deferred else (st.newest_good if st else None),
            policy.schedule.rpo,
            policy.schedule.window,
            now or datetime.now(UTC),
            tz=self.tz,
            margin=planning_margin(policy.schedule.rpo),
        )
        start = nr.start
        # A VM whose retries are used up waits out its cooldown, or the scheduler would find
        # it due at once and fail it again in a tight loop.
        until = self.runner.cooldown_until.get(key) if self.runner else None
        if until is not None:
            start = max(start, datetime.fromtimestamp(until, UTC))
        self.due[key] = start

    # -- events ------------------------------------------------------------------------

    async def _consume_events(self) -> None:
        assert self.watcher is not None
        async for ev in self.watcher.events():
            self.stats.events += 1
            self.metrics.events.labels(type(ev).__name__).inc()
            # Until the first complete tree, _initial_sync evaluates everything at once.
            self._on_event(ev, initial=not self.ready.is_set())

    async def _initial_sync(self) -> None:
        """Once the first tree is complete: clean leftovers, evaluate all, start scheduling."""
        assert self.watcher is not None and self.policies is not None
        await self.watcher.ready.wait()
        # Before any job can start: a job's own fresh snapshot must never look like a leftover.
        try:
            await self._remove_leftover_snapshots()
        except VsphereError as exc:
            log.warning("daemon.leftover_scan_failed", error=str(exc))
        compiled = self.policies.compiled
        now = datetime.now(UTC)
        for node in self.watcher.tree.vms():
            self._evaluate(node, compiled)
            self._reschedule(node.identity, now)
        self.ready.set()
        self._wake.set()
        log.info(
            "daemon.inventory_ready",
            vms=len(self.watcher.tree.vms()),
            protected=sum(1 for w in self.winners.values() if w),
        )

    def _on_event(self, ev: VmEvent, *, initial: bool = False) -> None:
        assert self.policies is not None
        node = ev.vm
        key = node.identity
        if isinstance(ev, VmRemoved):
            if self.winners.pop(key, None):
                self.stats.orphaned += 1
                log.warning(
                    "daemon.vm_removed",
                    vm=node.path,
                    note="its restore points are kept (orphan retention)",
                )
            assert self.runner is not None
            self.runner.forget(key)
            self.due.pop(key, None)
            self.conflicts.pop(key, None)
            return
        if initial:
            return  # the initial sync evaluates everything at once
        old = self.winners.get(key)
        new = self._evaluate(node, self.policies.compiled)
        why = {
            VmAdded: "created or appeared",
            VmMoved: "moved",
            VmRenamed: "renamed",
            VmChanged: "changed",
        }[type(ev)]
        if isinstance(ev, VmChanged):
            why = "changed " + ", ".join(sorted(ev.changes))
        if new is None:
            if old is not None:
                self._left_policies(node, old, why)
            self.due.pop(key, None)
            return
        policy = self._policy(new)
        assert policy is not None
        self._reschedule(key)
        if old != new:
            log.info("daemon.vm_in_scope", vm=node.path, policy=new, previous=old, why=why)
            self._maybe_trigger(node, policy, f"came into scope of {new} ({why})")
        elif isinstance(ev, VmChanged) and "power_state" in ev.changes:
            _, now_state = ev.changes["power_state"]
            if now_state == "poweredOff" and policy.trigger.on_power_off:
                self._trigger_if_due(node, policy, "guest powered off")
        self._wake.set()

    def _maybe_trigger(
        self, node: Any, policy: Policy, reason: str, *, even_if_fresh: bool = False
    ) -> None:
        if policy.trigger.on_match == "immediate":
            self._trigger_if_due(node, policy, reason, even_if_fresh=even_if_fresh)

    def _trigger_if_due(
        self, node: Any, policy: Policy, reason: str, *, even_if_fresh: bool = False
    ) -> None:
        """An event-triggered backup, unless the VM has a fresh point or the policy's window
        is closed (the scheduler then takes it in the window)."""
        now = datetime.now(UTC)
        if not even_if_fresh and self._fresh(node.identity, policy, now):
            log.info(
                "daemon.trigger_skipped",
                vm=node.path,
                trigger=reason,
                why="a good point within the RPO",
            )
            return
        window = policy.schedule.window
        if window and not policy.trigger.outside_window:
            if not in_window(window, now.astimezone(self.tz).time()):
                log.info(
                    "daemon.trigger_deferred", vm=node.path, trigger=reason, until="the window"
                )
                self.deferred[node.identity] = reason
                self._reschedule(node.identity, now)
                self._wake.set()
                return
        self._submit(node, policy, reason, immediate=True)

    def _submit(
        self, node: Any, policy: Policy, reason: str, *, immediate: bool, manual: bool = False
    ) -> bool:
        assert self.runner is not None
        key = node.identity
        st = self.state.get(key)
        deadline = (
            (st.newest_good + policy.schedule.rpo).timestamp()
            if st and st.newest_good
            else time.time()
        )
        ok = self.runner.submit(
            JobRequest(
                vm_key=key,
                vm_name=node.name,
                host=node.host or "",
                datastores=tuple(node.datastores),
                reason=reason,
                deadline=time.time() if immediate else deadline,
                policy=policy.name,
                manual=manual,
                cooldown_cap=policy.schedule.rpo.total_seconds(),
            )
        )
        if ok:
            if immediate:
                self.stats.triggered += 1
            else:
                self.stats.scheduled += 1
        return ok

    def backup_now(self, moref: str, reason: str = "requested") -> bool:
        """Queue a backup of a protected VM now (coalesced with a running or queued one)."""
        node = self.watcher.tree.get_vm(moref) if self.watcher else None
        policy = self._policy(self.winners.get(node.identity)) if node else None
        if node is None or policy is None:
            raise LookupError(f"{moref} is not a VM that a policy protects")
        return self._submit(node, policy, reason, immediate=True, manual=True)

    # -- policies ----------------------------------------------------------------------

    async def _watch_policies(self) -> None:
        assert self.policies is not None
        async for outcome in self.policies.watch(self.stopping):
            self._on_policies(outcome)

    async def _reload(self) -> None:
        if self.policies is not None:
            log.info("daemon.sighup_reload")
            outcome = await self.policies.reload()
            self._on_policies(outcome)

    def _on_policies(self, outcome: ReloadOutcome) -> None:
        if not outcome.accepted:
            self.metrics.policy_reload_errors.inc()
            for e in outcome.errors:
                self.errors.append(f"policy error (old policies kept): {e}")
            return
        if not outcome.changed or not self.ready.is_set() or self.watcher is None:
            return
        compiled = self.policies.compiled if self.policies else None
        assert compiled is not None
        for node in self.watcher.tree.vms():
            key = node.identity
            old = self.winners.get(key)
            new = self._evaluate(node, compiled)
            self._reschedule(key)
            if new and new != old:
                policy = self._policy(new)
                assert policy is not None
                self._maybe_trigger(node, policy, f"policy edit: now covered by {new}")
            elif old and not new:
                self._left_policies(node, old, "policy edit")
        self._wake.set()

    def _left_policies(self, node: Any, old: str, why: str) -> None:
        """Counted and logged; a job still queued for it is dropped (nothing protects it
        now), a running one finishes and its point is kept like the others."""
        self.stats.orphaned += 1
        log.warning(
            "daemon.vm_left_policies",
            vm=node.path,
            policy=old,
            why=why,
            note="its restore points are kept (orphan retention)",
        )
        if self.runner is not None:
            self.runner.forget(node.identity)

    # -- scheduling --------------------------------------------------------------------

    async def _scheduler(self) -> None:
        await self.ready.wait()
        while not self.stopping.is_set():
            now = datetime.now(UTC)
            soonest = now + timedelta(seconds=SCHEDULER_TICK)
            assert self.watcher is not None and self.runner is not None
            for key, start in list(self.due.items()):
                if start > now:
                    soonest = min(soonest, start)
                    continue
                if self.runner.busy(key):
                    continue
                if self.runner.in_cooldown(key):
                    self._reschedule(key, now)  # due again when the cooldown ends
                    soonest = min(soonest, self.due.get(key, soonest))
                    continue
                node = self.watcher.tree.find_vm_by_identity(key)
                policy = self._policy(self.winners.get(key))
                if node is None or policy is None:
                    self.due.pop(key, None)
                    continue
                st = self.state.get(key)
                reason = "RPO due" if st and st.newest_good else "no restore point yet"
                if key in self.deferred:
                    reason = f"{self.deferred[key]} (deferred to the window)"
                self._submit(node, policy, reason, immediate=False)
            self._wake.clear()
            delay = max(0.05, (soonest - datetime.now(UTC)).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    # -- jobs --------------------------------------------------------------------------

    async def _run_job(self, req: JobRequest, rec: JobRecord) -> None:
        assert self.watcher is not None and self.repo is not None
        node = self.watcher.tree.find_vm_by_identity(req.vm_key)
        if node is None:
            raise VmGone(f"VM {req.vm_name} was deleted from vCenter; nothing to back up")
        # The policy covering the VM now: it may have changed since the job was queued.
        policy = self._policy(self.winners.get(req.vm_key)) or self._policy(req.policy)
        rec.policy = policy.name if policy else req.policy
        opts = options_of(policy, full=req.full)
        self._ran_with[req.vm_key] = opts
        session = await self.session()
        ctx = self._job_context(session)
        vm = session.moref("VirtualMachine", node.moref)
        try:
            result = await backup_vm(ctx, vm, opts, path=node.path, job_id=f"job-{rec.id}")
        except Exception as exc:
            if await self._deleted(session, vm):
                raise VmGone(
                    f"VM {req.vm_name} ({node.moref}) was deleted from vCenter during its "
                    f"backup ({exc}); its earlier points are kept"
                ) from exc
            raise
        rec.point_id = result.point_id
        rec.read_bytes = result.read_bytes
        rec.stored_bytes = result.stored_bytes
        st = self.state.setdefault(req.vm_key, VmState())
        st.newest_good = result.finished_at
        st.newest_point = result.point_id
        st.points += 1
        st.last_error = ""
        self.metrics.bytes_read.inc(result.read_bytes)
        self.metrics.bytes_stored.inc(result.stored_bytes)
        self.metrics.backup_duration.observe(
            (result.finished_at - result.started_at).total_seconds()
        )

    @staticmethod
    async def _deleted(session: Session, vm: Any) -> bool:
        """Whether vCenter no longer knows the VM (a failed backup's likeliest cause then);
        any other answer, or none, leaves the failure a failure."""
        try:
            await session.properties(vm, ["name"])
        except VsphereFault as exc:
            return exc.fault_type == "ManagedObjectNotFound"
        except VsphereError:
            return False
        return False

    def _job_context(self, session: Session) -> Context:
        """A job's context; all jobs share one I/O limiter, so concurrent backups together
        use at most limits.io_threads threads (made here: it needs the running loop)."""
        if self._io_limiter is None:
            self._io_limiter = anyio.CapacityLimiter(self.cfg.limits.io_threads)
        repo: Any = self.repo  # set by run() before any job
        return Context.create(self.cfg, session, repo, self.catalog, io_limiter=self._io_limiter)

    def _job_finished(self, req: JobRequest, rec: JobRecord) -> None:
        self.metrics.jobs.labels(rec.outcome).inc()
        ran_with = self._ran_with.pop(req.vm_key, None)
        if rec.outcome == "success":
            self.deferred.pop(req.vm_key, None)
        if rec.outcome == "success" and ran_with is not None:
            self._policy_changed_during(req, rec, ran_with)
        if rec.outcome == "failed":
            st = self.state.setdefault(req.vm_key, VmState())
            st.last_error = rec.error
            self.errors.append(f"{req.vm_name}: backup attempt {rec.attempt} failed: {rec.error}")
        if rec.outcome == "gone":
            # vCenter said so before the watcher's VmRemoved came: nothing to schedule.
            self.due.pop(req.vm_key, None)
        else:
            self._reschedule(req.vm_key)
        self._wake.set()
        if self.catalog is not None:  # on_finish only ever sees a finished record
            self._background(self._record_job(rec))

    def _policy_changed_during(self, req: JobRequest, rec: JobRecord, ran: BackupOptions) -> None:
        """The VM moved to another policy while its backup ran: the event's trigger was
        coalesced into that job, whose point was taken with the old policy's options. When
        the new policy backs up differently, it gets a backup of its own now."""
        node = self.watcher.tree.find_vm_by_identity(req.vm_key) if self.watcher else None
        policy = self._policy(self.winners.get(req.vm_key))
        if node is None or policy is None or policy.name == rec.policy:
            return
        wanted = options_of(policy, full=ran.full)
        if replace(wanted, policy=None) == replace(ran, policy=None):
            return
        log.info(
            "daemon.policy_changed_during_backup",
            vm=node.path,
            ran_under=rec.policy,
            now=policy.name,
        )
        self._maybe_trigger(
            node,
            policy,
            f"policy edit: now covered by {policy.name} (the backup under {rec.policy} "
            "used its options)",
            even_if_fresh=True,
        )

    async def _record_job(self, rec: JobRecord) -> None:
        with contextlib.suppress(Exception):
            await self.catalog.record_job(
                f"job-{rec.id}-{int(rec.started)}",
                "backup",
                datetime.fromtimestamp(rec.started, UTC),
                vm_key=rec.vm_key,
                finished_at=datetime.fromtimestamp(rec.finished or time.time(), UTC),
                outcome=rec.outcome,
                error=rec.error or None,
                point_id=rec.point_id or None,
            )

    async def _remove_leftover_snapshots(self) -> None:
        """After a crash, our snapshots may still exist on VMs whose points are fresh (and so
        get no job soon): find them all in one PropertyCollector read and remove them."""
        from pyVmomi import vim

        session = await self.session()
        objs = await retrieve_objects(session, {vim.VirtualMachine: ["snapshot"]})
        now = datetime.now(UTC)
        for oc in objs:
            for prop in oc.propSet or []:
                if prop.name != "snapshot" or prop.val is None:
                    continue
                for node in walk_snapshots(prop.val.rootSnapshotList):
                    if node.name == SNAPSHOT_NAME and is_leftover(node, now):
                        log.warning("daemon.leftover_snapshot", vm=oc.obj._moId)
                        try:
                            await remove_snapshot(session, session.client.bind(node.snapshot))
                        except VsphereError as exc:
                            # One stuck snapshot must not keep the others; the VM's next
                            # backup tries again (it removes leftovers first).
                            log.error(
                                "daemon.leftover_snapshot_not_removed",
                                vm=oc.obj._moId,
                                error=str(exc),
                                next_step="the VM's next backup retries; else remove it "
                                "in the vSphere client",
                            )
                            self.errors.append(
                                f"leftover snapshot on {oc.obj._moId} not removed: {exc}"
                            )

    # -- prune -------------------------------------------------------------------------

    async def _pruner(self) -> None:
        await self.ready.wait()
        hhmm = parse_hhmm(self.cfg.daemon.prune_at)
        assert hhmm is not None, "validated by load_config"
        while not self.stopping.is_set():
            now = datetime.now(self.tz)
            at = now.replace(hour=hhmm[0], minute=hhmm[1], second=0, microsecond=0)
            if at <= now:
                at += timedelta(days=1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), (at - now).total_seconds())
            await self._wait_in_sync()
            if not self.stopping.is_set():
                await self._scheduled_prune()

    async def _scheduled_prune(self) -> None:
        """The daily prune; a failure is logged and counted and tomorrow's run goes ahead."""
        try:
            await self.prune_now()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.prune_failures += 1
            log.error("daemon.prune_failed", error=repr(exc), exc_info=exc)
            self.errors.append(f"prune failed (next try tomorrow): {exc!r}")
            self.last_prune = {
                "at": datetime.now(UTC).isoformat(),
                "outcome": "failed",
                "error": repr(exc),
            }

    def in_sync(self) -> bool:
        """Whether the inventory is live and complete: only then can prune tell an orphan
        from a VM it merely cannot see."""
        return self.ready.is_set() and self.healthy()

    async def _wait_in_sync(self) -> None:
        if self.in_sync():
            return
        log.warning("daemon.prune_waiting", until="the vCenter inventory is live and in sync")
        while not self.in_sync() and not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 5)

    def _prune_scope(self) -> PruneScope:
        """Evaluated afresh from the tree, not from events that may still be queued."""
        assert self.watcher is not None and self.policies is not None
        compiled = self.policies.compiled
        return PruneScope.of(self.watcher.tree.vms(), lambda f: evaluate_one(compiled, f))

    async def prune_now(self, *, dry_run: bool = False) -> PruneResult | None:
        """Apply retention and sweep; None when deferred because the inventory is not in
        sync (every VM would look like an orphan)."""
        assert self.repo is not None and self.policies is not None and self.runner is not None
        started = datetime.now(UTC)
        if not self.in_sync():
            reason = "the vCenter inventory is not live and in sync; orphans cannot be told"
            log.warning("daemon.prune_deferred", reason=reason)
            self.last_prune = {"at": started.isoformat(), "outcome": "deferred", "reason": reason}
            return None
        rule_for = retention_rules(self.policies.current, self._prune_scope(), self.tz)
        max_pause = self.cfg.daemon.prune_max_pause
        if not dry_run:
            # Backups hold the repository lock shared; with new ones starting all the time
            # the sweep would never get it exclusive. Hold them back, for a bounded time.
            self.runner.pause("prune: chunk sweep")
        try:
            if not dry_run:
                await self.runner.wait_idle_running(max_pause)
            left = max(5.0, max_pause - (datetime.now(UTC) - started).total_seconds())
            result = await anyio.to_thread.run_sync(
                lambda: prune(
                    self.repo,
                    rule_for,
                    dry_run=dry_run,
                    orphan_keep_days=self.cfg.repository.orphan_keep_days,
                    lock_timeout=left,
                )
            )
        finally:
            self.runner.resume()
        for line in result.lines()[-2:]:
            log.info("daemon.prune", result=line)
        self.last_prune = {
            "at": started.isoformat(),
            "outcome": "done",
            "dry_run": dry_run,
            "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
            "points_deleted": len(result.deleted_points),
            "indexes_deleted": result.indexes_deleted,
            "chunks_deleted": result.chunks_deleted,
            "bytes_freed": result.bytes_freed,
            "sweep_deferred": result.sweep_deferred,
            "sweep_limited": result.sweep_limited,
        }
        if result.sweep_deferred:
            self.errors.append(f"prune: chunk sweep deferred: {result.sweep_deferred}")
        if result.sweep_limited:
            self.errors.append(f"prune: chunk sweep limited: {result.sweep_limited}")
        return result

    # -- status ------------------------------------------------------------------------

    def vm_status(self) -> list[dict[str, Any]]:
        if self.watcher is None or self.runner is None:
            return []
        now = datetime.now(UTC)
        out = []
        for node in sorted(self.watcher.tree.vms(), key=lambda v: v.path):
            key = node.identity
            policy = self._policy(self.winners.get(key))
            st = self.state.get(key)
            age = (now - st.newest_good).total_seconds() if st and st.newest_good else None
            breached = policy is not None and (
                age is None or age > policy.schedule.rpo.total_seconds()
            )
            state = self._state_of(key, policy, age, breached)
            rpo = policy.schedule.rpo.total_seconds() if policy else None
            out.append(
                {
                    "path": node.path,
                    "name": node.name,
                    "moref": node.moref,
                    "identity": node.identity,
                    "policy": policy.name if policy else None,
                    "conflict": list(self.conflicts.get(key, ())),
                    "state": state,
                    "newest_point": st.newest_point if st else None,
                    "newest_point_at": st.newest_good.isoformat()
                    if st and st.newest_good
                    else None,
                    "age_seconds": age,
                    "age_text": format_age(age),
                    "rpo_seconds": rpo,
                    "rpo_text": format_age(rpo),
                    "next_run": self.due[key].isoformat() if key in self.due else None,
                    "breached": breached,
                    "last_error": st.last_error if st else "",
                    "consecutive_failures": self.runner.consecutive_failures.get(key, 0),
                    "retry_at": _iso(self.runner.cooldown_until.get(key)),
                }
            )
        return out

    def _state_of(self, key: str, policy: Policy | None, age: float | None, breached: bool) -> str:
        """One word per VM; an RPO breach is also a flag of its own, whatever the state."""
        assert self.runner is not None
        if key in self.runner.running:
            return "running"
        if key in self.runner.failures:
            return "failing"  # retries used up; cooling down or trying again
        if key in self.runner.queued or key in self.runner.retry_timers:
            return "queued"
        if key in self.conflicts:
            return "conflict"
        if policy is None:
            return "unprotected"
        if breached:
            return "breached"
        assert age is not None
        return "due" if age > 0.9 * policy.schedule.rpo.total_seconds() else "ok"

    def status_data(self) -> dict[str, Any]:
        vms = self.vm_status()
        counts: dict[str, int] = {}
        for v in vms:
            counts[v["state"]] = counts.get(v["state"], 0) + 1
        runner = self.runner
        return {
            "generated_at": datetime.now(UTC).isoformat(),
            "vcenter": self.cfg.vcenter.url,
            "healthy": self.healthy(),
            "inventory_lag_seconds": self.watcher.lag_seconds if self.watcher else None,
            "counts": counts,
            "breached": sum(1 for v in vms if v["breached"]),
            "vms": vms,
            "jobs": {
                "running": [r.as_dict() for _, r, _ in runner.running.values()] if runner else [],
                "queued": [
                    {"vm_name": q.vm_name, "reason": q.reason, "state": "queued"}
                    for q in (runner.queued.values() if runner else [])
                ],
                "recent": [r.as_dict() for r in runner.history][-50:] if runner else [],
                "outcomes": dict(runner.outcomes) if runner else {},
                "coalesced": runner.coalesced if runner else 0,
            },
            "prune": self.last_prune,
            "dispatch_paused": runner.paused if runner else None,
            "errors": list(self.errors),
            "policy_errors": [str(e) for e in self.policies.errors] if self.policies else [],
            "stats": dict(self.stats.__dict__),
        }

    def _refresh_metrics(self) -> None:
        vms = self.vm_status()
        for state in (
            "ok",
            "due",
            "running",
            "queued",
            "breached",
            "failing",
            "conflict",
            "unprotected",
        ):
            self.metrics.vms.labels(state).set(sum(1 for v in vms if v["state"] == state))
        self.metrics.rpo_breaches.set(sum(1 for v in vms if v["breached"]))
        lag = self.watcher.lag_seconds if self.watcher else None
        self.metrics.update_lag.set(lag if lag is not None else float("nan"))
        self.metrics.policy_errors.set(len(self.policies.errors) if self.policies else 0)
