"""Job runner glue, the worker's side: run one queued backup (the policy covering the VM
now, the jobs' session, one I/O limiter for all jobs), tell a deleted VM from a failure,
update the VM's state and the metrics, and record the finished job in the catalog. Needs
no planner: a worker role can run it against any queue of JobRequests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from policies.model import Policy
from protector import phases
from protector.backup import BackupOptions, BackupResult, VappBackupResult, backup_vapp, backup_vm
from protector.backup_record import result_record
from protector.config import Config
from protector.context import Context
from protector.daemon.jobs import JobRecord, JobRequest
from protector.daemon.metrics import Metrics
from protector.daemon.sessions import JobSessions
from protector.daemon.state import VmState
from protector.daemon.vcenters import VcenterSet
from protector.policyaccess import options_of, vapp_root
from watcher.session import Session
from watcher.soap import VsphereError, VsphereFault


def job_phase(announced: str) -> str:
    """The status page's phase word for a slow step phases.announce() names."""
    if "removing" in announced or "removed" in announced:
        return "snapshot removal"
    if "creating the snapshot" in announced:
        return "snapshot"
    return announced


class VmGone(Exception):
    """The VM a job was for no longer exists: nothing to retry, nothing failing."""


class BackupWorker:
    def __init__(
        self,
        cfg: Config,
        sessions: JobSessions | VcenterSet,
        state: dict[str, VmState],
        metrics: Metrics,
        *,
        find_node: Callable[[str], Any],
        policy_for: Callable[[JobRequest], Policy | None],
    ) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.state = state
        self.metrics = metrics
        self.find_node = find_node
        self.policy_for = policy_for  # the policy covering the VM now, else the job's
        self.repo: Any = None  # set before any job runs
        self.catalog: Any = None
        self.ran_with: dict[str, BackupOptions] = {}  # vm key → options of its running job
        # vApp sets (a policy selecting VMs through `vapps`): one set backup at a time per
        # vApp, and the last one's result, which covers member jobs submitted before it ended.
        self._set_locks: dict[str, asyncio.Lock] = {}
        self._sets_done: dict[str, tuple[float, VappBackupResult]] = {}
        self._io_limiter: anyio.CapacityLimiter | None = None

    async def run_job(
        self,
        req: JobRequest,
        rec: JobRecord,
        *,
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        assert self.repo is not None
        node = self.find_node(req.vm_key)
        if node is None:
            raise VmGone(f"VM {req.vm_name} was deleted from vCenter; nothing to back up")
        # The policy covering the VM now: it may have changed since the job was queued.
        policy = self.policy_for(req)
        rec.policy = policy.name if policy else req.policy
        opts = options_of(policy, full=req.full)
        self.ran_with[req.vm_key] = opts
        session = await self.sessions.session_for(req.vm_key)  # the VM's own vCenter
        ctx = self.context(session)
        vm = session.moref("VirtualMachine", node.moref)

        def progress(done: int, total: int) -> None:
            rec.phase, rec.read_bytes, rec.total_bytes = "read", done, total

        async def committing() -> None:
            rec.phase = "commit"
            if before_commit is not None:
                await before_commit()

        # With [cluster], a vApp set is a job of its own (ClusterBackup.run_set, locked on
        # the vApp and every member's mutex); a VM job there backs up its VM alone.
        in_set = policy is not None and self.cfg.cluster is None
        root = vapp_root(node, policy.select.vapps) if in_set else None
        try:
            with phases.listening(lambda text: setattr(rec, "phase", job_phase(text))):
                if root is not None:
                    result, covered = await self._set_member(
                        req, rec, node, root, opts, ctx, progress, committing
                    )
                    if covered:  # booked (state, metrics) by the job that ran the set
                        rec.point_id = result.point_id
                        return
                else:
                    result = await backup_vm(
                        ctx,
                        vm,
                        opts,
                        path=node.path,
                        job_id=f"job-{rec.id}",
                        progress=progress,
                        before_commit=committing,
                    )
        except Exception as exc:
            if await vm_deleted(session, vm):
                raise VmGone(
                    f"VM {req.vm_name} ({node.moref}) was deleted from vCenter during its "
                    f"backup ({exc}); its earlier points are kept"
                ) from exc
            raise
        rec.point_id = result.point_id
        rec.read_bytes = result.read_bytes
        rec.stored_bytes = result.stored_bytes
        rec.summary = result_record(result)
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

    async def _set_member(
        self,
        req: JobRequest,
        rec: JobRecord,
        node: Any,
        root: str,
        opts: BackupOptions,
        ctx: Context,
        progress: Callable[[int, int], None],
        committing: Callable[[], Awaitable[None]],
    ) -> tuple[BackupResult, bool]:
        """The VM's point from a backup of its whole vApp as one set (backup/vapp.py), and
        whether an earlier job's set covered it (a set that ended after this job was
        submitted); else this job backs the set up, booking the other members' state and
        bytes. The VM's own failure in the set fails this job."""
        # Keyed by vCenter too: two vCenters may each have a vApp at the same path.
        set_key = f"{req.vm_key.partition('/')[0]}:{root}"
        lock = self._set_locks.setdefault(set_key, asyncio.Lock())
        async with lock:
            done = self._sets_done.get(set_key)
            mine = _member_result(done[1], node.moref) if done else None
            covered = not (done is None or done[0] < req.submitted or mine is None)
            if not covered:
                session = ctx.session
                idx = session.content.searchIndex
                ref = await session.call(idx, "FindByInventoryPath", inventoryPath=root.strip("/"))
                if ref is None:
                    raise VmGone(f"vApp {root} of VM {req.vm_name} is gone from vCenter")
                res = await self.backup_set(
                    ctx,
                    session.client.bind(ref),
                    root,
                    opts,
                    rec,
                    vm_paths={node.moref: node.path},
                    progress=progress,
                    before_commit=committing,
                    booked_by_caller=node.moref,
                )
                self._sets_done[set_key] = (time.time(), res)
                mine = _member_result(res, node.moref)
            if isinstance(mine, BackupResult):
                return mine, covered
            raise RuntimeError(
                f"VM {req.vm_name} failed in the backup of its vApp {root}: {mine}"
                if mine
                else f"VM {req.vm_name} is no longer in vApp {root}"
            )

    async def backup_set(
        self,
        ctx: Context,
        vapp: Any,
        path: str,
        opts: BackupOptions,
        rec: JobRecord,
        *,
        vm_paths: dict[str, str],
        progress: Callable[[int, int], None],
        before_commit: Callable[[], Awaitable[None]] | None,
        booked_by_caller: str = "",
    ) -> VappBackupResult:
        """Back a vApp up as one set (backup/vapp.py) and book every member's new point
        (state, bytes) but `booked_by_caller`'s, whose job books its own. Used by the
        in-process daemon (a member's job runs its set) and by a cluster worker (a set
        job, cluster mode: protector/daemon/clustered.py)."""
        res = await backup_vapp(
            ctx,
            vapp,
            opts,
            path=path,
            vm_paths=vm_paths,
            job_id=f"job-{rec.id}",
            progress=progress,
            before_commit=before_commit,
        )
        for r in res.results:
            if r.vm.moref == booked_by_caller:
                continue
            key = f"{r.vm.vcenter_uuid}/{r.vm.instance_uuid}"
            st = self.state.setdefault(key, VmState())
            st.newest_good, st.newest_point = r.finished_at, r.point_id
            st.points += 1
            self.metrics.bytes_read.inc(r.read_bytes)
            self.metrics.bytes_stored.inc(r.stored_bytes)
            st.last_error = ""
        return res

    def context(self, session: Session) -> Context:
        """A job's context; all jobs share one I/O limiter, so concurrent backups together
        use at most limits.io_threads threads (made here: it needs the running loop)."""
        if self._io_limiter is None:
            self._io_limiter = anyio.CapacityLimiter(self.cfg.limits.io_threads)
        return Context.create(
            self.cfg, session, self.repo, self.catalog, io_limiter=self._io_limiter
        )

    def finished(self, req: JobRequest, rec: JobRecord) -> BackupOptions | None:
        """Book a finished job; returns the options it ran with (None if it never started)."""
        self.metrics.jobs.labels(rec.outcome).inc()
        if rec.outcome == "failed":
            self.state.setdefault(req.vm_key, VmState()).last_error = rec.error
        return self.ran_with.pop(req.vm_key, None)

    async def record(self, rec: JobRecord) -> None:
        """The finished job into the catalog (best effort: the catalog is an index)."""
        if self.catalog is None:
            return
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


async def vm_deleted(session: Session, vm: Any) -> bool:
    """Whether vCenter no longer knows the VM (a failed backup's likeliest cause then);
    any other answer, or none, leaves the failure a failure."""
    try:
        await session.properties(vm, ["name"])
    except VsphereFault as exc:
        return exc.fault_type == "ManagedObjectNotFound"
    except VsphereError:
        return False
    return False


def _member_result(res: VappBackupResult, moref: str) -> BackupResult | str | None:
    """A member's point in a set, else its error, else None (not a member)."""
    for r in res.results:
        if r.vm.moref == moref:
            return r
    for vm, err in res.failures:
        if vm == moref:
            return err
    return None
