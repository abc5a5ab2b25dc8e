"""What decides the next run: which policy covers each VM, when each protected VM is due
(RPO, backup window, cooldown after failures), whether an inventory event or a policy edit
triggers a backup now, in the window, or not at all; and the scheduler loop that hands the
due VMs to the job queue.

The decisions are pure functions of their arguments (`now` included), tested directly.
`Planner` keeps the per-VM plan (winner, conflict, due time, deferred trigger) and applies
them. It needs the VM states, the policy store, a way to find a VM node by identity and a
job queue (the JobQueue protocol: the local JobRunner today, a remote worker pool when the
cluster roles come) — no vCenter session, no repository: the scheduler role on its own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from enum import Enum
from typing import Any, Protocol

import structlog

from policies.engine import CompiledSet, evaluate_one
from policies.model import Policy
from policies.reload import PolicyStore
from policies.schedule import DEFAULT_MARGIN, in_window, next_run
from protector.backup.model import BackupOptions
from protector.daemon.jobs import JobRecord, JobRequest
from protector.daemon.state import VmState
from protector.notify.events import Kind
from protector.notify.sender import Notifier
from protector.policyaccess import options_of, vm_facts
from watcher.events import VmAdded, VmChanged, VmEvent, VmMoved, VmRemoved, VmRenamed

log = structlog.get_logger(__name__)

SCHEDULER_TICK = 30.0  # seconds between scheduler scans when nothing wakes it


# -- pure decisions ----------------------------------------------------------------------


def planning_margin(rpo: timedelta) -> timedelta:
    """How long before the RPO runs out a scheduled backup should start: the usual margin,
    but at most a quarter of the RPO — a 30 min margin on a 15 min RPO would make every
    point due the moment it is taken, and the VM would be backed up in a loop."""
    return min(DEFAULT_MARGIN, rpo / 4)


def is_fresh(st: VmState | None, policy: Policy, now: datetime) -> bool:
    """Whether the VM has a good point younger than the policy's RPO."""
    return bool(st and st.newest_good and now - st.newest_good < policy.schedule.rpo)


def next_start(
    st: VmState | None,
    policy: Policy,
    now: datetime,
    *,
    tz: tzinfo,
    deferred: bool = False,
    cooldown_until: float | None = None,
) -> datetime:
    """When the VM's next scheduled backup starts. A deferred trigger makes it due at the
    window's first moment even with a point within the RPO; a VM whose retries are used up
    waits out its cooldown, or the scheduler would fail it again in a tight loop."""
    nr = next_run(
        None if deferred else (st.newest_good if st else None),
        policy.schedule.rpo,
        policy.schedule.window,
        now,
        tz=tz,
        margin=planning_margin(policy.schedule.rpo),
    )
    start = nr.start
    if cooldown_until is not None:
        start = max(start, datetime.fromtimestamp(cooldown_until, UTC))
    return start


class Trigger(Enum):
    SKIP = "skip"  # a good point within the RPO
    DEFER = "defer"  # the policy's window is closed: the scheduler takes it in the window
    SUBMIT = "submit"


def trigger_decision(
    st: VmState | None, policy: Policy, now: datetime, tz: tzinfo, *, even_if_fresh: bool
) -> Trigger:
    """What an event-triggered backup does now."""
    if not even_if_fresh and is_fresh(st, policy, now):
        return Trigger.SKIP
    window = policy.schedule.window
    if window and not policy.trigger.outside_window:
        if not in_window(window, now.astimezone(tz).time()):
            return Trigger.DEFER
    return Trigger.SUBMIT


def job_deadline(st: VmState | None, policy: Policy, *, immediate: bool, now: float) -> float:
    """The job's deadline (the queue runs earliest deadline first): now for a trigger, else
    when the RPO of the newest good point runs out."""
    if immediate or not (st and st.newest_good):
        return now
    return (st.newest_good + policy.schedule.rpo).timestamp()


def due_reason(st: VmState | None, deferred: str | None) -> str:
    """Why the scheduler queues a due VM (the job's reason, shown in status and logs)."""
    if deferred is not None:
        return f"{deferred} (deferred to the window)"
    return "RPO due" if st and st.newest_good else "no restore point yet"


def event_reason(ev: VmEvent) -> str:
    if isinstance(ev, VmChanged):
        return "changed " + ", ".join(sorted(ev.changes))
    return {VmAdded: "created or appeared", VmMoved: "moved", VmRenamed: "renamed"}[type(ev)]


def options_differ(policy: Policy, ran: BackupOptions) -> bool:
    """Whether a backup under `policy` would differ from one that ran with `ran`."""
    wanted = options_of(policy, full=ran.full)
    return replace(wanted, policy=None) != replace(ran, policy=None)


# -- the plan ----------------------------------------------------------------------------


class JobQueue(Protocol):
    """What the planner needs of the job runner."""

    cooldown_until: Mapping[str, float]

    def submit(self, req: JobRequest) -> bool: ...
    def forget(self, key: str) -> None: ...
    def busy(self, key: str) -> bool: ...
    def in_cooldown(self, key: str) -> bool: ...


class Planner:
    def __init__(self, state: dict[str, VmState], stats: Any, tz: tzinfo) -> None:
        self.state = state
        self.stats = stats  # its triggered, scheduled and orphaned counts are kept here
        self.tz = tz
        self.winners: dict[str, str | None] = {}  # identity key → winning policy
        self.conflicts: dict[str, tuple[str, ...]] = {}
        self.due: dict[str, datetime] = {}  # identity key → next scheduled start
        # Triggers that asked for a backup now but met a closed window: the VM is due at
        # the window's first moment, even when it has a point within its RPO.
        self.deferred: dict[str, str] = {}
        self.wake = asyncio.Event()
        self.policies: PolicyStore | None = None
        self.jobs: JobQueue | None = None
        self.find_node: Callable[[str], Any] = lambda key: None
        # The configured name of a node's vCenter (a policy's `vcenters` matches on it).
        self.vcenter_of: Callable[[Any], str] = lambda node: ""
        self.notify = Notifier(None)  # the Daemon's, once composed

    def policy(self, name: str | None) -> Policy | None:
        if name is None or self.policies is None:
            return None
        return self.policies.policy(name)  # also a policy a VM is held on (policies/holds.py)

    def policy_of(self, key: str) -> Policy | None:
        """The policy covering the VM now."""
        return self.policy(self.winners.get(key))

    def evaluate(self, node: Any, compiled: CompiledSet) -> str | None:
        res = evaluate_one(compiled, vm_facts(node, self.vcenter_of(node)))
        key = node.identity
        if res.conflict:
            if key not in self.conflicts:
                self.notify.report(Kind.CONFLICT, node.name, "policies " + ", ".join(res.conflict))
            self.conflicts[key] = res.conflict
        else:
            self.conflicts.pop(key, None)
        self.winners[key] = res.winner
        return res.winner

    def reschedule(self, key: str, now: datetime | None = None) -> None:
        policy = self.policy_of(key)
        if policy is None:
            self.due.pop(key, None)
            return
        self.due[key] = next_start(
            self.state.get(key),
            policy,
            now or datetime.now(UTC),
            tz=self.tz,
            deferred=key in self.deferred,
            cooldown_until=self.jobs.cooldown_until.get(key) if self.jobs else None,
        )

    def evaluate_all(self, nodes: list[Any]) -> None:
        """The first complete inventory: evaluate every VM at once, then start scheduling."""
        assert self.policies is not None
        compiled = self.policies.compiled
        now = datetime.now(UTC)
        for node in nodes:
            self.evaluate(node, compiled)
            self.reschedule(node.identity, now)
        self.wake.set()

    # -- events and policy edits ---------------------------------------------------------

    def on_event(self, ev: VmEvent, *, initial: bool = False) -> None:
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
            assert self.jobs is not None
            self.jobs.forget(key)
            self.due.pop(key, None)
            self.conflicts.pop(key, None)
            return
        if initial:
            return  # the initial sync evaluates everything at once
        old = self.winners.get(key)
        new = self.evaluate(node, self.policies.compiled)
        why = event_reason(ev)
        if new is None:
            if old is not None:
                self.left_policies(node, old, why)
            self.due.pop(key, None)
            return
        policy = self.policy(new)
        assert policy is not None
        self.reschedule(key)
        if old != new:
            log.info("daemon.vm_in_scope", vm=node.path, policy=new, previous=old, why=why)
            self.maybe_trigger(node, policy, f"came into scope of {new} ({why})")
        elif isinstance(ev, VmChanged) and "power_state" in ev.changes:
            _, now_state = ev.changes["power_state"]
            if now_state == "poweredOff" and policy.trigger.on_power_off:
                self.trigger_if_due(node, policy, "guest powered off")
        self.wake.set()

    def policies_changed(self, nodes: list[Any]) -> None:
        """A policy edit was accepted: re-evaluate every VM; newly covered ones may trigger."""
        compiled = self.policies.compiled if self.policies else None
        assert compiled is not None
        for node in nodes:
            key = node.identity
            old = self.winners.get(key)
            new = self.evaluate(node, compiled)
            self.reschedule(key)
            if new and new != old:
                policy = self.policy(new)
                assert policy is not None
                self.maybe_trigger(node, policy, f"policy edit: now covered by {new}")
            elif old and not new:
                self.left_policies(node, old, "policy edit")
        self.wake.set()

    def left_policies(self, node: Any, old: str, why: str) -> None:
        """Counted and logged; a job still queued for it is dropped (nothing protects it
        now), a running one finishes and its point is kept like the others."""
        self.stats.orphaned += 1
        self.notify.report(Kind.UNPROTECTED, node.name, f"left policy {old} ({why})")
        log.warning(
            "daemon.vm_left_policies",
            vm=node.path,
            policy=old,
            why=why,
            note="its restore points are kept (orphan retention)",
        )
        if self.jobs is not None:
            self.jobs.forget(node.identity)

    # -- triggers and submission ---------------------------------------------------------

    def maybe_trigger(
        self, node: Any, policy: Policy, reason: str, *, even_if_fresh: bool = False
    ) -> None:
        if policy.trigger.on_match == "immediate":
            self.trigger_if_due(node, policy, reason, even_if_fresh=even_if_fresh)

    def trigger_if_due(
        self, node: Any, policy: Policy, reason: str, *, even_if_fresh: bool = False
    ) -> None:
        """An event-triggered backup, unless the VM has a fresh point or the policy's window
        is closed (the scheduler then takes it in the window)."""
        now = datetime.now(UTC)
        decision = trigger_decision(
            self.state.get(node.identity), policy, now, self.tz, even_if_fresh=even_if_fresh
        )
        if decision is Trigger.SKIP:
            log.info(
                "daemon.trigger_skipped",
                vm=node.path,
                trigger=reason,
                why="a good point within the RPO",
            )
            return
        if decision is Trigger.DEFER:
            log.info("daemon.trigger_deferred", vm=node.path, trigger=reason, until="the window")
            self.deferred[node.identity] = reason
            self.reschedule(node.identity, now)
            self.wake.set()
            return
        self.submit(node, policy, reason, immediate=True)

    def submit(
        self,
        node: Any,
        policy: Policy,
        reason: str,
        *,
        immediate: bool,
        manual: bool = False,
        full: bool = False,
    ) -> bool:
        assert self.jobs is not None
        key = node.identity
        now = time.time()
        ok = self.jobs.submit(
            JobRequest(
                vm_key=key,
                vm_name=node.name,
                host=node.host or "",
                datastores=tuple(node.datastores),
                reason=reason,
                deadline=job_deadline(self.state.get(key), policy, immediate=immediate, now=now),
                policy=policy.name,
                manual=manual,
                full=full,
                cooldown_cap=policy.schedule.rpo.total_seconds(),
            )
        )
        if ok:
            if immediate:
                self.stats.triggered += 1
            else:
                self.stats.scheduled += 1
        return ok

    # -- the scheduler loop ----------------------------------------------------------------

    async def run(self, ready: asyncio.Event, stopping: asyncio.Event) -> None:
        await ready.wait()
        while not stopping.is_set():
            now = datetime.now(UTC)
            soonest = now + timedelta(seconds=SCHEDULER_TICK)
            assert self.jobs is not None
            for key, start in list(self.due.items()):
                if start > now:
                    soonest = min(soonest, start)
                    continue
                if self.jobs.busy(key):
                    continue
                if self.jobs.in_cooldown(key):
                    self.reschedule(key, now)  # due again when the cooldown ends
                    soonest = min(soonest, self.due.get(key, soonest))
                    continue
                node = self.find_node(key)
                policy = self.policy_of(key)
                if node is None or policy is None:
                    self.due.pop(key, None)
                    continue
                reason = due_reason(self.state.get(key), self.deferred.get(key))
                self.submit(node, policy, reason, immediate=False)
            self.wake.clear()
            delay = max(0.05, (soonest - datetime.now(UTC)).total_seconds())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.wake.wait()

    # -- after a job -------------------------------------------------------------------------

    def job_finished(self, req: JobRequest, rec: JobRecord, ran: BackupOptions | None) -> None:
        if rec.outcome == "success":
            self.deferred.pop(req.vm_key, None)
            if ran is not None:
                self._policy_changed_during(req, rec, ran)
        if rec.outcome == "gone":
            # vCenter said so before the watcher's VmRemoved came: nothing to schedule.
            self.due.pop(req.vm_key, None)
        else:
            self.reschedule(req.vm_key)
        self.wake.set()

    def _policy_changed_during(self, req: JobRequest, rec: JobRecord, ran: BackupOptions) -> None:
        """The VM moved to another policy while its backup ran: the event's trigger was
        coalesced into that job, whose point was taken with the old policy's options. When
        the new policy backs up differently, it gets a backup of its own now."""
        node = self.find_node(req.vm_key)
        policy = self.policy_of(req.vm_key)
        if node is None or policy is None or policy.name == rec.policy:
            return
        if not options_differ(policy, ran):
            return
        log.info(
            "daemon.policy_changed_during_backup",
            vm=node.path,
            ran_under=rec.policy,
            now=policy.name,
        )
        self.maybe_trigger(
            node,
            policy,
            f"policy edit: now covered by {policy.name} (the backup under {rec.policy} "
            "used its options)",
            even_if_fresh=True,
        )
