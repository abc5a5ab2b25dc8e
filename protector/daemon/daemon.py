"""`vigil watch`: the Daemon composes the parts, each with one job and able to run without
the others (the seam for the cluster roles: a scheduler runs the planner, a worker the job
runner and BackupWorker):

- supervisor.py: long-running tasks, crash → stop (exit 1), signals;
- sessions.py: the jobs' vCenter session (the watcher has its own);
- state.py: each VM's newest good point, rebuilt from the manifests at start;
- planner.py: which policy covers a VM, triggers, RPO and windows, the scheduler loop;
- jobs.py + worker.py: the job queue (limits, retries) and running one backup;
- pruner.py: the daily prune; views.py, status_server.py, metrics.py: status and metrics.

A VM that comes into a policy's scope is backed up at once when the policy says
`on_match = "immediate"` and it has no good point younger than its RPO; every protected VM
is queued again before its RPO runs out. A restart never repeats a backup that is still
within its RPO.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import anyio
import structlog

from policies.errors import PolicyLoadError
from policies.reload import PolicyStore, ReloadOutcome
from protector.config import Config
from protector.controlsock import control_socket_path
from protector.daemon import views
from protector.daemon.control import ControlServer
from protector.daemon.copier import Copier
from protector.daemon.jobs import JobRecord, JobRequest, JobRunner, Limits
from protector.daemon.metrics import Metrics
from protector.daemon.planner import Planner
from protector.daemon.pruner import Pruner
from protector.daemon.repo_size import RepoSizeCache
from protector.daemon.sessions import JobSessions
from protector.daemon.state import VmState, states_from
from protector.daemon.status_server import StatusServer
from protector.daemon.supervisor import Supervisor
from protector.daemon.vcenters import VcenterLink, VcenterSet
from protector.daemon.worker import BackupWorker, VmGone
from protector.errors import UserError
from protector.notify.events import Kind
from protector.notify.sender import Notifier
from protector.policyaccess import config_problems, vm_facts
from protector.repoaccess import open_catalog, open_repository
from protector.vmlock import VmBusyError
from protector.vsphere.snapshots import remove_leftovers_everywhere
from repository import Repository
from repository.points import warn_damaged
from repository.prune import PruneResult
from watcher.session import Session
from watcher.soap import VsphereError
from watcher.updates import Watcher

log = structlog.get_logger(__name__)


@dataclass
class DaemonStats:
    started_at: float = field(default_factory=time.time)
    events: int = 0
    triggered: int = 0
    scheduled: int = 0
    orphaned: int = 0
    prune_failures: int = 0


def preflight(cfg: Config) -> str:
    """Refuse settings that would silently weaken security; returns the status token."""
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
    for vc in cfg.vcenters.values():
        if not vc.verify_tls and not vc.thumbprint and vc.url.startswith("https:"):
            log.warning(
                "daemon.tls_unverified",
                vcenter=vc.url,
                risk="anyone on the path can impersonate vCenter and read the password",
                next_step=f"pin the certificate with {vc.key('thumbprint')} (SHA-256) or set "
                f"{vc.key('verify_tls')} = true",
            )
    return token


class Daemon:
    def __init__(
        self, cfg: Config, *, tz: tzinfo | None = None, vcenters: list[str] | None = None
    ) -> None:
        """`vcenters`: the configured names to protect (default: every one)."""
        self.cfg = cfg
        self.tz = tz or datetime.now().astimezone().tzinfo or UTC
        self.metrics = Metrics()
        self.stats = DaemonStats()
        self.errors: deque[str] = deque(maxlen=100)
        self.state: dict[str, VmState] = {}
        self.supervisor = Supervisor(self.errors)
        self.stopping = self.supervisor.stopping
        self.ready = asyncio.Event()
        self.vcenters = VcenterSet(cfg, vcenters)
        self.planner = Planner(self.state, self.stats, self.tz)
        self.planner.find_node = self._find_node
        self.planner.vcenter_of = self.vcenters.name_of
        self.worker = BackupWorker(
            cfg,
            self.vcenters,
            self.state,
            self.metrics,
            find_node=self._find_node,
            policy_for=lambda req: (
                self.planner.policy_of(req.vm_key) or self.planner.policy(req.policy)
            ),
        )
        self.pruner = Pruner(cfg, self.tz, self.stats, self.errors, self.stopping, self.in_sync)
        self.pruner.vms = lambda: self.watcher.tree.vms() if self.watcher else []
        self.pruner.vcenter_of = self.vcenters.name_of
        self.notifier = self.planner.notify = self.pruner.notify = Notifier(cfg.notify)
        self.repo: Repository | None = None
        self.copier = Copier(cfg, self.tz, self.errors, self.stopping)
        self.copier.src = lambda: self.repo
        self.copier.notify = self.notifier
        self.copier.protected = lambda: {
            key: self.planner.policy(name) for key, name in self.planner.winners.items()
        }
        self.pruner.copier = self.copier
        self.copy_sizes = {
            name: RepoSizeCache(lambda t=t: t.repo) for name, t in self.copier.targets.items()
        }
        self.repo_size = RepoSizeCache(lambda: self.repo)
        self.catalog: Any = None
        self.policies: PolicyStore | None = None
        # Every vCenter's watcher as one inventory (vcenters.py); set by _compose.
        self.watcher: VcenterSet | None = None
        self.runner: Any = None  # JobRunner, or the cluster's queue (planner.JobQueue)
        self.status: StatusServer | None = None
        self.control: ControlServer | None = None  # `vigil backup` hands jobs over here

    # -- lifecycle ---------------------------------------------------------------------

    def _preflight(self) -> str:
        return preflight(self.cfg)

    async def run(self, *, install_signals: bool = True) -> int:
        cfg = self.cfg
        token = self._preflight()
        self.notifier.prepare()
        self._load_policies()
        self.repo = await open_repository(cfg, create=True)
        self.catalog = await open_catalog(self.repo)
        await self._compose(self.repo, self.catalog)
        self.status = StatusServer(
            self.status_view,
            self.healthy,
            self.metrics,
            complete=self.complete_rows,
            token=token,
            before_metrics=self.refresh_metrics,
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
        if isinstance(self.runner, JobRunner):  # a cluster node's queue is PostgreSQL's
            self.control = ControlServer(self, control_socket_path(cfg))
            if not await self.control.start():
                self.control = None
        log.info(
            "daemon.started",
            status=f"http://{cfg.daemon.status_listen.rpartition(':')[0]}:{self.status.port}/status",
            policies=len(self.policies.current),
            known_vms=len(self.state),
        )
        if install_signals:
            self._install_signals()
        self._spawn_scheduling()
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown()
        if self.supervisor.crashed is not None:
            # Exit 1 so the service manager sees a failure and restarts us.
            log.error("daemon.exit_after_crash", task=self.supervisor.crashed)
            return 1
        return 0

    def _load_policies(self) -> None:
        try:
            self.policies = PolicyStore(
                self.cfg.policies_path, inventory=self._all_facts, vcenters=self.cfg.vcenters
            )
            if lock_errors := config_problems(self.policies.current, self.cfg):
                raise PolicyLoadError(lock_errors)
        except PolicyLoadError as exc:
            raise UserError(f"policies are invalid, nothing started:\n{exc}") from None

    def _make_runner(self) -> Any:
        """The queue the planner submits to: here the in-process runner (the cluster's
        scheduler puts a queue on PostgreSQL here, protector/daemon/clustered.py)."""
        cfg = self.cfg
        lim = cfg.limits
        return JobRunner(
            self.worker.run_job,
            Limits(lim.concurrent_backups, lim.per_host, lim.per_datastore),
            retry_attempts=cfg.daemon.retry_attempts,
            retry_backoff=cfg.daemon.retry_backoff,
            cooldown_max=cfg.daemon.failure_cooldown_max,
            retry_later=(VmBusyError,),  # a restore elsewhere holds the VM: not a failure
            give_up=(VmGone,),
            on_finish=self._job_finished,
        )

    async def _compose(self, repo: Repository, catalog: Any) -> None:
        """State from the manifests, the watcher, the job queue, and the wiring between."""
        cfg = self.cfg
        assert self.policies is not None
        self.repo, self.catalog = repo, catalog
        manifests, damaged = await anyio.to_thread.run_sync(repo.scan_manifests)
        warn_damaged(damaged)
        for d in damaged:
            self.notifier.report(Kind.REPO_DAMAGE, d.point_id, f"manifest unreadable: {d.reason}")
        self.state.update(states_from(manifests))
        self.vcenters.make_watchers(
            lambda connect: Watcher(
                connect,
                tag_interval=cfg.daemon.tag_interval,
                reconcile_interval=cfg.daemon.reconcile_interval,
            )
        )
        self.watcher = self.vcenters
        self.runner = self._make_runner()
        self.planner.policies = self.pruner.policies = self.copier.policies = self.policies
        self.planner.jobs = self.pruner.runner = self.runner
        self.worker.repo = self.pruner.repo = repo
        self.worker.catalog = catalog

    def _spawn_scheduling(self) -> None:
        assert self.watcher is not None and self.runner is not None
        spawn = self.supervisor.spawn
        for link in self.vcenters.links:
            # Each vCenter on its own: one that is down holds back none of the others.
            suffix = f":{link.name}" if self.vcenters.several else ""
            assert link.watcher is not None
            spawn(link.watcher.run(), "watcher" + suffix)
            spawn(self._consume_events(link), "events" + suffix)
            spawn(self._initial_sync(link), "initial-sync" + suffix)
        spawn(self.runner.run(), "job-runner")
        spawn(self._watch_policies(), "policy-reload")
        spawn(self.planner.run(self.ready, self.stopping), "scheduler")
        spawn(self.pruner.run(self.ready), "pruner")
        spawn(self.copier.run(self.ready), "copier")
        spawn(self.notifier.run(self.stopping), "notifier")
        breached = lambda: views.breached(self.planner, datetime.now(UTC))  # noqa: E731
        spawn(self.notifier.watch_breaches(breached, self.ready, self.stopping), "rpo-watch")

    def request_stop(self) -> None:
        self.supervisor.request_stop()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.supervisor.background(self.reload()))

    async def _shutdown(self) -> None:
        # No new jobs; running ones are cancelled and remove their snapshots first.
        if self.runner:
            await self.runner.stop(timeout=50)
        if self.control:  # after the jobs: a waiting `vigil backup` hears how they ended
            await asyncio.sleep(0)
            await self.control.stop()
        await self.vcenters.close_watchers()
        await self.supervisor.cancel_all()
        await self.vcenters.close_sessions()  # after the tasks that might still use them
        if self.status:
            await self.status.stop()
        if self.catalog:
            await self.catalog.close()
        log.info("daemon.stopped")

    @property
    def sessions(self) -> JobSessions:
        """The first (with one configured, the) vCenter's jobs' sessions."""
        return self.vcenters.links[0].sessions

    async def session(self) -> Session:
        """The first vCenter's jobs' session (sessions.py)."""
        return await self.sessions.session()

    def healthy(self) -> bool:
        """Every vCenter connected and its inventory live."""
        return bool(self.watcher and self.watcher.healthy)

    def in_sync(self) -> bool:
        """Whether every vCenter's inventory is live and complete: only then can prune tell
        an orphan from a VM it merely cannot see."""
        return self.ready.is_set() and self.vcenters.in_sync()

    def _find_node(self, key: str) -> Any:
        return self.watcher.tree.find_vm_by_identity(key) if self.watcher else None

    def _all_facts(self) -> list[Any]:
        tree = self.watcher.tree if self.watcher else None
        return [vm_facts(v, self.vcenters.name_of(v)) for v in tree.vms()] if tree else []

    # -- inventory events and policy edits → the planner ---------------------------------

    async def _consume_events(self, link: VcenterLink) -> None:
        assert link.watcher is not None
        async for ev in link.watcher.events():
            self.stats.events += 1
            self.metrics.events.labels(type(ev).__name__).inc()
            # Until its first complete tree, _initial_sync evaluates everything at once.
            self.planner.on_event(ev, initial=not link.synced.is_set())

    async def _initial_sync(self, link: VcenterLink) -> None:
        """Once a vCenter's first tree is complete: clean its leftovers, evaluate its VMs,
        and start scheduling (with the first vCenter in sync: the others join as they
        come, so one that is down delays nobody)."""
        assert link.watcher is not None and self.policies is not None
        await link.watcher.ready.wait()
        await self._clean_leftovers(link)
        vms = link.watcher.tree.vms()
        self.planner.evaluate_all(vms)
        link.synced.set()
        self.ready.set()
        log.info(
            "daemon.inventory_ready",
            **({"vcenter": link.name} if self.vcenters.several else {}),
            vms=len(vms),
            protected=sum(1 for v in vms if self.planner.winners.get(v.identity)),
        )

    async def _clean_leftovers(self, link: VcenterLink) -> None:
        # Before any job can start: a job's own fresh snapshot must never look like a leftover.
        try:
            session = await link.sessions.session()
            self.errors.extend(await remove_leftovers_everywhere(session))
        except VsphereError as exc:
            log.warning("daemon.leftover_scan_failed", vcenter=link.name, error=str(exc))

    async def _watch_policies(self) -> None:
        assert self.policies is not None
        async for outcome in self.policies.watch(self.stopping):
            self._on_policies(outcome)

    async def reload(self) -> None:
        """Reload the policies now (SIGHUP)."""
        if self.policies is not None:
            log.info("daemon.sighup_reload")
            outcome = await self.policies.reload()
            self._on_policies(outcome)

    def _on_policies(self, outcome: ReloadOutcome) -> None:
        if not outcome.accepted:
            self.metrics.policy_reload_errors.inc()
            for e in outcome.errors:
                self.errors.append(f"policy error (old policies kept): {e}")
            self.notifier.report(
                Kind.POLICY_REJECTED, "policies", "; ".join(map(str, outcome.errors))
            )
            return
        # The reloader (policies/) knows no vigil.toml: the object-lock and copy checks are
        # reported here; prune keeps (and reports) what the lock holds meanwhile, and the
        # copier skips a copy that does not exist.
        for e in config_problems(outcome.policies, self.cfg):
            self.errors.append(f"policy error: {e}")
            log.error("policies.config_mismatch", error=str(e))
        if not outcome.changed or not self.ready.is_set() or self.watcher is None:
            return
        self.planner.policies_changed(self.watcher.tree.vms())

    def backup_now(self, moref: str, reason: str = "requested", *, full: bool = False) -> bool:
        """Queue a backup of a protected VM now (coalesced with a running or queued one);
        `moref` may be its identity (a MoRef is unique within one vCenter only)."""
        node = self.watcher.tree.get_vm(moref) if self.watcher else None
        policy = self.planner.policy_of(node.identity) if node else None
        if node is None or policy is None:
            raise LookupError(f"{moref} is not a VM that a policy protects")
        return self.planner.submit(node, policy, reason, immediate=True, manual=True, full=full)

    def _job_finished(self, req: JobRequest, rec: JobRecord) -> None:
        if self.control is not None:
            self.control.job_finished(rec)
        ran_with = self.worker.finished(req, rec)
        if rec.outcome == "failed":
            self.errors.append(f"{req.vm_name}: backup attempt {rec.attempt} failed: {rec.error}")
            if self.runner.in_cooldown(req.vm_key):  # its retries are used up
                self.notifier.failing(req.vm_name, rec.error)
        elif rec.outcome == "success":
            self.notifier.succeeded(req.vm_name)
            self.copier.point_committed(req.vm_key)
        self.planner.job_finished(req, rec, ran_with)
        if self.catalog is not None:  # on_finish only ever sees a finished record
            self.supervisor.background(self.worker.record(rec))

    async def prune_now(self, *, dry_run: bool = False) -> PruneResult | None:
        """Apply retention and sweep now (pruner.py); None when deferred."""
        return await self.pruner.prune_now(dry_run=dry_run)

    # -- status ------------------------------------------------------------------------

    def vm_rows(self) -> list[dict[str, Any]]:
        """Every VM's light row (views.vm_rows): cheap enough for every request."""
        if self.watcher is None or self.runner is None:
            return []
        return views.vm_rows(
            self.watcher.tree.vms(), self.planner, self.runner, self.vcenters.shown_path
        )

    def complete_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The full rows of light rows from vm_rows() (views.complete)."""
        return views.complete(rows, self.planner, self.runner)

    def gone_vms(self) -> list[dict[str, Any]]:
        if self.watcher is None:
            return []
        return views.gone_vms({n.identity for n in self.watcher.tree.vms()}, self.state)

    def status_data(self) -> dict[str, Any]:
        """The whole status with every VM's full row, by path (for callers in process)."""
        return views.completed(self.status_view(), self.complete_rows)

    def status_view(self) -> dict[str, Any]:
        """The status with light VM rows, unsorted: the status server pages them, then
        completes only the rows it shows (views.complete)."""
        vms = self.vm_rows()
        runner = self.runner
        return {
            "generated_at": datetime.now(UTC).isoformat(),
            "vcenter": self.cfg.vcenter.url,
            **({"vcenters": self.vcenters.status()} if self.vcenters.several else {}),
            "healthy": self.healthy(),
            "inventory_lag_seconds": self.watcher.lag_seconds if self.watcher else None,
            "counts": views.state_counts(vms),
            "breached": sum(1 for v in vms if v["breached"]),
            "vms": vms,
            "jobs": views.jobs_view(runner),
            "gone": self.gone_vms(),
            "repository": {
                **views.repository_view(
                    self.state,
                    self.pruner.last_prune,
                    self.repo.state.last_verify() if self.repo else None,
                ),
                **self.repo_size.figure(),
            },
            "prune": self.pruner.last_prune,
            "repositories": self.repositories(),
            "dispatch_paused": runner.paused if runner else None,
            "errors": list(self.errors),
            "policy_errors": [str(e) for e in self.policies.errors] if self.policies else [],
            "stats": dict(self.stats.__dict__),
        }

    def repositories(self) -> list[dict[str, Any]]:
        """Per repository, the primary first, then each copy in use: size and objects (a
        background walk, repo_size.py), the points under no lock any more, and for a copy
        the points waiting to be copied and its failures (copier.py)."""
        figures = {name: cache.figure() for name, cache in self.copy_sizes.items()}
        return views.repositories_view(
            self.cfg, self.repo_size.figure(), self.copier.view(), figures
        )

    def refresh_metrics(self) -> None:
        views.refresh_metrics(
            self.metrics,
            self.vm_rows(),
            self.watcher.lag_seconds if self.watcher else None,
            len(self.policies.errors) if self.policies else 0,
            self.healthy(),
        )
        self.metrics.set_repositories(self.repositories())
