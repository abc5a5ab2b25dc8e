"""`vigil watch --role all|scheduler|worker` with a `[cluster]` table: one node of the
cluster (docs/cluster.md). The node opens the shared repository once, serves its status
page, and runs its roles:

- scheduler: per vCenter a LeaderElector; while it leads, a SchedulerTerm (the watcher,
  policies, planner and prune; jobs deferred with the term's epoch), cancelled the moment
  the term ends; its node heartbeat says `scheduler`;
- worker: cluster.worker.run_worker with ClusterBackup (it beats as `worker`, or `all`);
- all: both in one process.

The status page shows the whole cluster (nodes, roles, the leader per vCenter, the jobs
running and where) read from PostgreSQL every few seconds, and, on the leading
scheduler, its VMs as the one-machine daemon does.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import deque
from datetime import UTC, datetime
from typing import Any

import structlog

from cluster import nodes
from cluster.config import ClusterConfig, database_url, redact_url
from cluster.election import LeaderElector
from cluster.queue import make_app, prepare_database
from cluster.worker import WorkerSettings, run_worker
from protector.config import Config
from protector.daemon.cluster_metrics import ClusterMetrics
from protector.daemon.cluster_view import ClusterView
from protector.daemon.clustered import ClusterBackup, SchedulerTerm
from protector.daemon.daemon import preflight
from protector.daemon.metrics import Metrics
from protector.daemon.status_server import StatusServer
from protector.daemon.vcenters import VcenterSet
from protector.errors import UserError
from protector.repoaccess import open_catalog, open_repository
from protector.vsphere.connect import connect_session
from watcher.soap import VsphereConnectionError

log = structlog.get_logger(__name__)

ROLES = ("all", "scheduler", "worker")
NODE_BEAT_S = 5.0


class ClusterNode:
    def __init__(self, cfg: Config, role: str) -> None:
        assert cfg.cluster is not None and role in ROLES
        self.cfg = cfg
        self.cc: ClusterConfig = cfg.cluster
        self.role = role
        self.url = ""
        self.stop = asyncio.Event()
        self.metrics = Metrics()
        self.errors: deque[str] = deque(maxlen=100)
        self.electors: list[LeaderElector] = []
        # The terms this node leads now, by vCenter name (one election per vCenter).
        self.terms: dict[str, SchedulerTerm] = {}
        self.backup: ClusterBackup | None = None
        self.cluster_view: dict[str, Any] = {}
        self.view: ClusterView | None = None  # the reader of cluster_view, while it runs
        self.repo: Any = None
        self.catalog: Any = None
        self.cluster_metrics: ClusterMetrics | None = None

    async def run(self) -> int:
        token = preflight(self.cfg)
        try:
            self.url = database_url(self.cc)
        except ValueError as exc:
            raise UserError(f"{self.cfg.path}: {exc}") from None
        try:
            await prepare_database(self.url)
        except Exception as exc:
            raise UserError(
                f"{self.cfg.path}: cannot prepare the cluster database "
                f"{redact_url(self.url)}: {exc}"
            ) from None
        self.repo = await open_repository(self.cfg, create=True)
        self.catalog = await open_catalog(self.repo)
        # The whole cluster's series on this node's /metrics, read at scrape time (cached).
        cluster_metrics = ClusterMetrics(
            self.url,
            self.cc.node,
            host_slots=self.cc.host_slots,
            datastore_slots=self.cc.datastore_slots,
            heartbeat_s=NODE_BEAT_S,
        )
        self.cluster_metrics = cluster_metrics
        self.metrics.registry.register(cluster_metrics)
        status = StatusServer(
            self.status_view,
            self.healthy,
            self.metrics,
            complete=self.complete_rows,
            token=token,
            before_metrics=self._before_metrics,
        )
        try:
            await status.start(self.cfg.daemon.status_listen)
        except OSError as exc:
            await self.catalog.close()
            raise UserError(
                f"{self.cfg.path}: daemon.status_listen {self.cfg.daemon.status_listen}: "
                f"cannot serve the status page ({exc.strerror or exc})"
            ) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        log.info(
            "cluster.node_started",
            node=self.cc.node,
            role=self.role,
            database=redact_url(self.url),
            status_port=status.port,
        )
        tasks = [asyncio.create_task(self._view_loop(), name="cluster-view")]
        if self.role in ("scheduler", "all"):
            tasks.append(asyncio.create_task(self._schedule(), name="scheduler"))
        if self.role == "scheduler":
            beat = nodes.heartbeat_loop(
                self.url, self.cc.node, self.role, interval=NODE_BEAT_S, stop=self.stop
            )
            tasks.append(asyncio.create_task(beat, name="node-heartbeat"))
        if self.role in ("worker", "all"):
            sessions = VcenterSet(self.cfg)  # a session per vCenter, opened on first use
            self.backup = ClusterBackup(self.cfg, self.repo, self.catalog, self.metrics, sessions)
            settings = WorkerSettings.from_config(self.cc)
            work = run_worker(
                self.url,
                self.backup,
                settings,
                stop=self.stop,
                install_signal_handlers=False,
                role=self.role,
            )
            tasks.append(asyncio.create_task(work, name="worker"))
        crashed = asyncio.create_task(self._first_crash(tasks))
        await asyncio.wait(
            {crashed, asyncio.create_task(self.stop.wait())}, return_when="FIRST_COMPLETED"
        )
        self.stop.set()
        for e in self.electors:
            e.stop()
        grace = self.cc.shutdown_timeout_s + 15
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        crashed.cancel()
        if self.backup is not None:
            await self.backup.sessions.close()
        await status.stop()
        await cluster_metrics.close()
        await self.catalog.close()
        log.info("cluster.node_stopped", node=self.cc.node)
        return 1 if any(self._failed(t) for t in tasks) else 0

    @staticmethod
    def _failed(task: asyncio.Task[Any]) -> bool:
        return task.done() and not task.cancelled() and task.exception() is not None

    async def _first_crash(self, tasks: list[asyncio.Task[Any]]) -> None:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when="FIRST_COMPLETED")
            for t in done:
                if self._failed(t) and not self.stop.is_set():
                    exc = t.exception()
                    log.error("cluster.task_crashed", task=t.get_name(), exc_info=exc)
                    self.errors.append(f"internal task {t.get_name()} crashed: {exc!r}")
                    return

    # -- the scheduler role ------------------------------------------------------------

    async def _vcenter_uuid(self, cfg: Config) -> str:
        delay = 1.0
        while True:
            try:
                session = await connect_session(cfg, keepalive_interval=0)
            except VsphereConnectionError as exc:
                log.info(
                    "cluster.vcenter_waiting",
                    vcenter=cfg.vcenter.name,
                    error=str(exc),
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            try:
                return session.vcenter_uuid
            finally:
                await session.close()

    async def _schedule(self) -> None:
        """One election per configured vCenter, each on its own: a vCenter that is down
        (its uuid unknown yet) delays only its own."""
        await asyncio.gather(*(self._schedule_one(name) for name in self.cfg.vcenters))

    async def _schedule_one(self, name: str) -> None:
        cfg = self.cfg.for_vcenter(name)
        vcenter = await self._vcenter_uuid(cfg)
        elector = LeaderElector(self.url, vcenter, self.cc.node)
        self.electors.append(elector)
        app = make_app(self.url, node=self.cc.node)

        async def term(epoch: int) -> None:
            t = SchedulerTerm(cfg, app, vcenter, epoch, tz=None, metrics=self.metrics)
            self.terms[name] = t
            try:
                await t.run_term(self.repo, self.catalog)
            finally:
                self.terms.pop(name, None)

        async with app.open_async():
            runner = asyncio.create_task(elector.run(), name="election")
            try:
                await elector.lead(term)
            finally:
                elector.stop()
                await runner

    # -- status ------------------------------------------------------------------------

    async def _before_metrics(self) -> None:
        self.refresh_metrics()  # the VM states of every vCenter this node leads
        if self.cluster_metrics is not None:
            await self.cluster_metrics.refresh()

    async def _view_loop(self) -> None:
        """The cluster's picture, read every few seconds (status_data must not block)."""
        view = ClusterView(self.url, self.cc.node, alive_s=NODE_BEAT_S)
        self.view = view
        try:
            while not self.stop.is_set():
                try:
                    self.cluster_view = await view.read()
                except Exception as exc:  # shown on the page; the next read reconnects
                    self.cluster_view = {**self.cluster_view, "error": str(exc) or repr(exc)}
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self.stop.wait()
        finally:
            await asyncio.shield(view.close())

    @property
    def term(self) -> SchedulerTerm | None:
        """A term this node leads (the first configured vCenter's, when it leads several)."""
        return next((self.terms[n] for n in self.cfg.vcenters if n in self.terms), None)

    def healthy(self) -> bool:
        if self.terms:
            return all(t.healthy() for t in self.terms.values())
        return not self.cluster_view.get("error")

    def refresh_metrics(self) -> None:
        """The per-VM series of every vCenter this node leads (one set, all terms')."""
        terms = list(self.terms.values())
        if not terms:
            return
        from protector.daemon import views

        lags = [t.watcher.lag_seconds if t.watcher else None for t in terms]
        views.refresh_metrics(
            self.metrics,
            [v for t in terms for v in t.vm_rows()],
            None if None in lags else max(x for x in lags if x is not None),
            sum(len(t.policies.errors) if t.policies else 0 for t in terms),
            self.healthy(),
        )

    def status_data(self) -> dict[str, Any]:
        """The whole status with every VM's full row, by path (for callers in process)."""
        from protector.daemon import views

        return views.completed(self.status_view(), self.complete_rows)

    def complete_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Full rows of light rows from any term this node leads: each by its own term."""
        from protector.daemon import views

        terms = [t for t in self.terms.values() if t.watcher is not None]
        out = []
        for row in rows:
            term = next(
                (t for t in terms if t.watcher.tree.find_vm_by_identity(row["identity"])), None
            )
            if term is not None:
                out.extend(term.complete_rows([row]))
            else:  # gone from the inventory since the page was cut: the same keys, said so
                out.append({**views.GONE_DETAIL, **row})
        return out

    def status_view(self) -> dict[str, Any]:
        """The status with light VM rows (the status server completes those it shows)."""
        base: dict[str, Any]
        if self.terms:
            base = merge_terms([self.terms[n] for n in self.cfg.vcenters if n in self.terms])
        else:
            # A node that does not lead shows its own backups; the VMs are the leader's.
            mine = self.backup
            base = {
                "generated_at": datetime.now(UTC).isoformat(),
                "vcenter": self.cfg.vcenter.url,
                "healthy": self.healthy(),
                "counts": {},
                "breached": 0,
                "vms": [],
                "jobs": {
                    "running": [r.as_dict() for r in mine.running.values()] if mine else [],
                    "queued": [],
                    "recent": [r.as_dict() for r in mine.history][-50:] if mine else [],
                    "outcomes": {},
                },
                "policy_errors": [],
                "errors": [],
            }
        base["errors"] = [*base.get("errors", []), *self.errors]
        worker: dict[str, Any] = {}
        if self.backup is not None:
            worker = {
                "running": [r.as_dict() for r in self.backup.running.values()],
                "recent": [r.as_dict() for r in self.backup.history][-50:],
            }
        base["cluster"] = {
            **self.cluster_view,
            "this_node": {"node": self.cc.node, "role": self.role},
            "leading": [
                {"vcenter": e.vcenter, "epoch": e.epoch} for e in self.electors if e.is_leader
            ],
            "worker": worker,
        }
        return base


def merge_terms(terms: list[SchedulerTerm]) -> dict[str, Any]:
    """The status of the vCenters this node leads as one: the first term's, with every
    term's VMs, counts, jobs and errors (each term plans one vCenter)."""
    datas = [t.status_view() for t in terms]
    base = datas[0]
    if len(datas) == 1:
        return base
    from protector.daemon import views

    vms = [v for d in datas for v in d["vms"]]
    base["vms"] = vms
    base["counts"] = views.state_counts(vms)
    base["breached"] = sum(d["breached"] for d in datas)
    base["healthy"] = all(d["healthy"] for d in datas)
    base["vcenters"] = [row for d in datas for row in d.get("vcenters", [])]
    for key in ("running", "queued", "recent"):
        base["jobs"][key] = [j for d in datas for j in d["jobs"].get(key, [])]
    base["gone"] = [g for d in datas for g in d.get("gone", [])]
    base["errors"] = [e for d in datas for e in d["errors"]]
    base["policy_errors"] = sorted({e for d in datas for e in d["policy_errors"]})
    return base
