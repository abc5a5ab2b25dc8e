"""The daemon's parts as cluster roles (docs/cluster.md, "Wiring it into the daemon"):

- SchedulerTerm: one term of a leading scheduler of one vCenter — the Daemon's watcher,
  policies, planner and pruner, with the planner submitting to ClusterJobQueue (jobs
  deferred to PostgreSQL with the term's epoch) instead of the in-process runner. Each term
  starts from scratch: it cancels the waiting jobs of older epochs, re-reads the points
  from the repository and does the watcher's full read, so nothing that changed during a
  failover is missed and nothing backed up meanwhile is backed up again.
- ClusterBackup: the worker's backup callable — resolves the VM by its identity in vCenter,
  runs today's backup workflow (which first removes leftover snapshots of ours: a job whose
  worker was killed left one), and checks the epoch right before the point is committed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

import anyio
import procrastinate
import structlog

from cluster.fencing import StaleEpochError
from cluster.queue import BackupJob, JobRun, set_key, supersede_stale_jobs
from policies.reload import PolicyStore
from protector import phases
from protector.config import Config
from protector.daemon.cluster_queue import ClusterJobQueue, SetMember, SetUnit
from protector.daemon.daemon import Daemon
from protector.daemon.jobs import JobRecord, JobRequest
from protector.daemon.metrics import Metrics
from protector.daemon.state import VmState, states_from
from protector.daemon.vcenters import VcenterLink, VcenterSet
from protector.daemon.worker import BackupWorker, VmGone, job_phase
from protector.policyaccess import options_of, vapp_root
from protector.vappsets import vapp_sets
from repository import Manifest, Repository, VmIdentity
from watcher.session import Session
from watcher.soap import VsphereFault

log = structlog.get_logger(__name__)


class TermFailed(Exception):
    """A part of the leader's work crashed: the term ends and the elector resigns, so a
    standby whose scheduler works can lead."""


class SchedulerTerm(Daemon):
    def __init__(
        self,
        cfg: Config,
        app: procrastinate.App,
        vcenter: str,
        epoch: int,
        *,
        tz: tzinfo | None,
        metrics: Metrics | None = None,
    ) -> None:
        # One term leads one vCenter (cfg.vcenter): it watches and plans that one alone.
        super().__init__(cfg, tz=tz, vcenters=[cfg.vcenter.name])
        if metrics is not None:  # the node's /metrics: VM states, events, policy errors
            self.metrics = metrics
        self.app = app
        self.vcenter = vcenter
        self.epoch = epoch
        if cfg.several_vcenters:  # the other vCenters' points are their leaders' to prune
            self.pruner.judges = lambda vcenter_uuid: vcenter_uuid == vcenter
        self.superseded: list[int] = []

    def _make_runner(self) -> ClusterJobQueue:
        d = self.cfg.daemon
        return ClusterJobQueue(
            self.app,
            self.vcenter,
            self.epoch,
            on_finish=self._job_finished,
            refresh=self._refresh_vm,
            describe=self._describe,
            unit_of=self._unit_of,
            retry_backoff=d.retry_backoff,
            cooldown_max=d.failure_cooldown_max,
        )

    async def _clean_leftovers(self, link: VcenterLink) -> None:
        # Not the scheduler's to do in a cluster: the workers' running jobs hold snapshots
        # of ours right now. A job killed with its worker is retried, and the retry removes
        # the leftover first (backup/workflow.py).
        return

    def _describe(self, key: str) -> dict[str, Any]:
        """What the worker is told besides the request: the path for its logs, and the
        newest point this plan was made with (see ClusterBackup.already_done)."""
        node = self._find_node(key)
        st = self.state.get(key)
        return {
            "path": node.path if node is not None else "",
            "known_point": (st.newest_point or "") if st else "",
        }

    def _unit_of(self, req: JobRequest) -> SetUnit | None:
        """The vApp set the VM is backed up with: the outermost vApp around it that its
        policy's `vapps` selects (as on one machine, protector/policyaccess.vapp_root), with
        every VM the inventory has in it; None when the policy selects it otherwise."""
        node = self._find_node(req.vm_key)
        policy = self.planner.policy_of(req.vm_key) or self.planner.policy(req.policy)
        if node is None or policy is None or self.watcher is None:
            return None
        root = vapp_root(node, policy.select.vapps)
        if root is None:
            return None
        tree = self.vcenters.tree_of(node.identity)  # its own vCenter's: MoRefs are per vCenter
        if tree is None:
            return None
        refs = dict(zip(node.vapps, tree.vapp_morefs(node.moref), strict=False))
        if root not in refs:
            return None  # the tree lost the chain mid-update: a VM job this time
        members = []
        for vm in tree.vms():
            if root in vm.vapps:
                st = self.state.get(vm.identity)
                members.append(
                    SetMember(
                        key=vm.identity,
                        name=vm.name,
                        moref=vm.moref,
                        path=vm.path,
                        host=vm.host or "",
                        datastores=tuple(vm.datastores),
                        known_point=(st.newest_point or "") if st else "",
                    )
                )
        return SetUnit(set_key(self.vcenter, refs[root]), refs[root], root, tuple(members))

    def _job_finished(self, req: JobRequest, rec: JobRecord) -> None:
        # The worker that ran it counted it and recorded it in its catalog; here only the
        # plan moves on.
        if rec.outcome == "failed":
            self.errors.append(f"{req.vm_name}: {rec.error}")
        elif rec.outcome == "success":
            self.copier.point_committed(req.vm_key)
        self.planner.job_finished(req, rec, None)

    async def _refresh_vm(self, key: str) -> None:
        """A job of this VM ended: its newest point is whatever the repository now has."""
        assert self.repo is not None
        vc, _, inst = key.partition("/")
        vm_key = VmIdentity(vcenter_uuid=vc, instance_uuid=inst).key
        manifests = await anyio.to_thread.run_sync(self.repo.manifests, vm_key)
        st = states_from(manifests).get(key)
        if st is not None:
            self.state[key] = st

    async def run_term(self, repo: Repository, catalog: Any) -> None:
        """Lead until cancelled (the term ended) or a part crashes (TermFailed)."""
        self._load_policies()
        self.superseded = await supersede_stale_jobs(self.app, self.vcenter, self.epoch)
        if self.superseded:
            log.info("cluster.superseded", jobs=len(self.superseded), epoch=self.epoch)
        await self._compose(repo, catalog)
        self._spawn_scheduling()
        log.info("cluster.term_started", vcenter=self.vcenter, epoch=self.epoch)
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown_term()
        if self.supervisor.crashed is not None:
            raise TermFailed(f"the scheduler's task {self.supervisor.crashed} crashed")

    async def _shutdown_term(self) -> None:
        self.supervisor.stopping.set()
        if self.runner is not None:
            await self.runner.stop()
        await self.vcenters.close_watchers()
        await self.supervisor.cancel_all()
        await self.vcenters.close_sessions()  # after the tasks that might still use them
        log.info("cluster.term_ended", vcenter=self.vcenter, epoch=self.epoch)


@dataclass
class VmRef:
    """What BackupWorker needs of an inventory node."""

    moref: str
    name: str
    path: str


async def find_vm(session: Session, identity: str) -> VmRef | None:
    """The VM with this identity (vCenter uuid / instance uuid) in the live inventory, by
    SearchIndex.FindByUuid with instanceUuid = true ("search for virtual machines whose
    instance UUID matches", vSphere API: FindByUuidRequestType); None when it is gone."""
    vc, _, inst = identity.partition("/")
    if vc != session.vcenter_uuid:
        raise ValueError(
            f"the job is for vCenter {vc}, but this node's [vcenter] is {session.vcenter_uuid}"
        )
    ref = await session.call(
        session.content.searchIndex, "FindByUuid", uuid=inst, vmSearch=True, instanceUuid=True
    )
    if ref is None:
        return None
    props = await session.properties(session.moref("VirtualMachine", ref._moId), ["name"])
    return VmRef(ref._moId, props.get("name", ""), "")


class ClusterBackup:
    """`await backup(job, run)` for cluster.worker.run_worker."""

    def __init__(
        self, cfg: Config, repo: Repository, catalog: Any, metrics: Metrics, sessions: VcenterSet
    ) -> None:
        self.cfg = cfg
        self.policies = PolicyStore(cfg.policies_path, vcenters=cfg.vcenters)
        self.nodes: dict[str, VmRef] = {}
        self.state: dict[str, VmState] = {}
        self.worker = BackupWorker(
            cfg,
            sessions,
            self.state,
            metrics,
            find_node=self.nodes.get,
            policy_for=lambda req: self.policies.policy(req.policy),
        )
        self.worker.repo, self.worker.catalog = repo, catalog
        self.sessions = sessions
        self.running: dict[int, JobRecord] = {}
        self.history: deque[JobRecord] = deque(maxlen=200)

    async def __call__(self, job: BackupJob, run: JobRun) -> None:
        p = job.payload
        req = JobRequest(
            vm_key=job.vm,
            vm_name=str(p.get("name") or job.vm),
            host=job.host,
            datastores=job.datastores,
            reason=str(p.get("reason", "")),
            policy=str(p.get("policy", "")),
            full=bool(p.get("full")),
            attempt=run.attempt + 1,
        )
        rec = JobRecord.start(run.job_id, req, req.attempt)  # req.host/datastores: the job's
        self.running[run.job_id] = rec
        try:
            await self.policies.reload()  # the policy's options as the files say now
            if job.vapp:
                await self.run_set(job, run, req, rec)
            else:
                await self.run_vm(job, run, req, rec)
            if rec.outcome == "running":
                rec.outcome = "success"
        except VmGone as exc:
            rec.outcome, rec.error = "gone", str(exc)
            log.warning("job.gone", vm=req.vm_name, job=run.job_id, error=rec.error)
            return  # not a failure, nothing to retry
        except StaleEpochError as exc:
            rec.outcome, rec.error = "stale", str(exc)
            raise
        except asyncio.CancelledError:
            rec.outcome, rec.error = "cancelled", "cancelled (lease lost or shutdown)"
            raise
        except Exception as exc:
            rec.outcome, rec.error = "failed", str(exc) or type(exc).__name__
            log.error("job.failed", vm=req.vm_name, job=run.job_id, error=rec.error)
            raise
        finally:
            rec.finished = time.time()
            self.running.pop(run.job_id, None)
            self.nodes.pop(job.vm, None)
            self.worker.finished(req, rec)
            self.history.append(rec)
            log.info("job.finished", vm=req.vm_name, job=run.job_id, outcome=rec.outcome)
        await self.worker.record(rec)

    async def run_vm(self, job: BackupJob, run: JobRun, req: JobRequest, rec: JobRecord) -> None:
        """A VM job: the VM found by its identity, skipped when a newer point made it moot,
        else today's BackupWorker.run_job with the epoch checked before the commit."""
        session = await self.sessions.session_for(job.vm)  # the VM's own vCenter
        ref = await find_vm(session, job.vm)
        if ref is None:
            raise VmGone(f"VM {req.vm_name} is no longer in vCenter; nothing to back up")
        ref.path = str(job.payload.get("path") or ref.name)
        if done := await self.already_done(job):
            rec.outcome, rec.point_id = "already done", done
            log.info("job.already_done", vm=req.vm_name, job=run.job_id, point=done)
            return
        self.nodes[job.vm] = ref
        await self.worker.run_job(req, rec, before_commit=run.check_epoch)

    async def run_set(self, job: BackupJob, run: JobRun, req: JobRequest, rec: JobRecord) -> None:
        """A vApp set job: every member of the vApp backed up as one set, through the
        one-machine daemon's code (BackupWorker.backup_set → backup/vapp.py), the epoch
        checked before each member's point commits. Each member's backup removes leftover
        snapshots of ours first, so a retry after a killed worker cleans up. A member that
        fails fails the job: it is retried as a whole, so the vApp gets a complete set."""
        p = job.payload
        session = await self.sessions.session_for(job.vcenter)  # the vApp's own vCenter
        vapp = session.moref("VirtualApp", job.vapp)
        try:
            await session.properties(vapp, ["name"])
        except VsphereFault as exc:
            if exc.fault_type == "ManagedObjectNotFound":
                raise VmGone(f"{req.vm_name} ({job.vapp}) is no longer in vCenter") from exc
            raise
        if done := await self.set_done(job):
            rec.outcome, rec.point_id = "already done", done
            log.info("job.already_done", vm=req.vm_name, job=run.job_id, set=done)
            return
        policy = self.policies.policy(req.policy)
        rec.policy = policy.name if policy else req.policy
        opts = options_of(policy, full=req.full)
        ctx = self.worker.context(session)

        def progress(done: int, total: int) -> None:
            rec.phase, rec.read_bytes, rec.total_bytes = "read", done, total

        stale: list[StaleEpochError] = []

        async def committing() -> None:
            rec.phase = "commit"
            try:
                await run.check_epoch()
            except StaleEpochError as exc:
                # backup_vapp records a member's failure and goes on with the next one
                # (which is refused too); the job must end as stale, never be retried.
                stale.append(exc)
                raise

        paths = {str(k): str(v) for k, v in (p.get("paths") or {}).items()}
        with phases.listening(lambda text: setattr(rec, "phase", job_phase(text))):
            res = await self.worker.backup_set(
                ctx,
                vapp,
                str(p.get("path") or ""),
                opts,
                rec,
                vm_paths=paths,
                progress=progress,
                before_commit=committing,
            )
        if stale:
            raise stale[0]
        rec.point_id = res.group_id
        rec.read_bytes = sum(r.read_bytes for r in res.results)
        rec.stored_bytes = sum(r.stored_bytes for r in res.results)
        if res.failures:
            failed = "; ".join(f"{vm}: {err}" for vm, err in res.failures)
            raise RuntimeError(
                f"{req.vm_name}: {len(res.failures)} of {len(res.members)} members failed, "
                f"the set {res.group_id} is incomplete ({failed}); the set is retried"
            )
        log.info("job.vapp_set", vm=req.vm_name, job=run.job_id, set=res.group_id)

    async def set_done(self, job: BackupJob) -> str:
        """The id of the set that makes this set job moot, or "": every member's newest
        point belongs to one complete set of this vApp, and that set is not the one the
        plan knew (a job of the previous leader that committed just before a failover, or a
        retry of a job whose set did commit). A manual job always runs."""
        known = job.payload.get("known_points")
        if job.payload.get("manual") or not isinstance(known, dict) or not job.members:
            return ""
        assert self.worker.repo is not None
        newest = []
        for member in job.members:
            vc, _, inst = member.partition("/")
            key = VmIdentity(vcenter_uuid=vc, instance_uuid=inst).key
            manifests = await anyio.to_thread.run_sync(self.worker.repo.manifests, key)
            if not manifests:
                return ""
            newest.append(max(manifests, key=lambda m: m.committed_at))
        return moot_set(newest, job.vapp, [known.get(m, "") for m in job.members])

    async def already_done(self, job: BackupJob) -> str:
        """The point that makes this job moot, or "". A job planned on the VM's points as
        they were (`known_point`) finds a newer one when another job of the VM committed
        in between — a job of the previous leader that passed its epoch check just before
        a failover, say. Backing up again would give two points within one RPO. A job a
        person asked for (`manual`) always runs."""
        if job.payload.get("manual") or "known_point" not in job.payload:
            return ""
        vc, _, inst = job.vm.partition("/")
        vm_key = VmIdentity(vcenter_uuid=vc, instance_uuid=inst).key
        assert self.worker.repo is not None
        manifests = await anyio.to_thread.run_sync(self.worker.repo.manifests, vm_key)
        if not manifests:
            return ""
        newest = max(manifests, key=lambda m: m.committed_at)
        return newest.point_id if newest.point_id != job.payload["known_point"] else ""


def moot_set(newest: list[Manifest], vapp_moref: str, known: list[str]) -> str:
    """Pure: the set id when the members' newest points (`newest`, one per member) are all
    of one complete set of vApp `vapp_moref` and at least one is not the point the plan
    knew of its member (`known`, same order): that set was made after the plan. Else ""."""
    sets = vapp_sets(newest)
    if len(sets) != 1 or not newest:
        return ""
    [vset] = sets
    if not vset.complete or vset.group.get("moref") != vapp_moref:
        return ""
    if len(vset.points) != len(newest):
        return ""  # a member's newest point is not of this set
    if all(m.point_id == k for m, k in zip(newest, known, strict=True)):
        return ""  # the plan knew this set: its RPO is due again
    return vset.id
