"""The daemon's offsite copies: every point of a policy with `copy_to = ["NAME"]` goes to
the repository of [copies.NAME] after it commits (repository/copy.py does the copying).

One loop per configured copy, each on its own: a slow or unreachable copy never holds up
backups (they run in the job runner) nor the other copies. What a copy lacks is found by
comparing object names — the source's `manifests/` against the copy's `manifests/` and
`tombstones/` — never by remembering what was sent, so a restart, a crash mid-copy or a
copy that was down for a week all resume the same way: the next pass copies what is
missing, one VM at a time (a copy job per VM per target). A failure backs off, doubling
`daemon.retry_backoff` per consecutive failure up to `daemon.failure_cooldown_max`, and
shows on the status page until a pass succeeds. The daily prune pauses the copies, prunes
each copy by its policies' `copy_retention` and lets them go on (pruner.py calls
`prune_copies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import anyio
import structlog

from policies.model import Policy, PolicySet
from protector.config import Config
from protector.notify.events import Kind
from protector.notify.sender import Notifier
from protector.policyaccess import PruneScope, copy_policies, retention_rules
from protector.repoconfig import RepositoryConfig
from repository.copy import copy_points, failure_reason
from repository.manifest import VmIdentity
from repository.points import seq_of, vm_key_of
from repository.repo import Repository

log = structlog.get_logger(__name__)

COPY_TICK = 300.0  # seconds between comparisons when no backup commits meanwhile


@dataclass
class CopyTarget:
    """One [copies.NAME] as the daemon sees it."""

    name: str
    rc: RepositoryConfig
    repo: Repository | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # VMs (manifest keys) that committed a point since the last pass: a pass after a commit
    # compares only them; every COPY_TICK, after a failure and at start, all VMs.
    committed: set[str] = field(default_factory=set)
    full_due: float = 0.0  # time.monotonic() of the next comparison of every VM
    # vm key -> seqs the source has and the copy lacks, for VMs whose policy copies here
    waiting: dict[str, list[int]] = field(default_factory=dict)
    compared_at: str | None = None
    running: str = ""  # the VM key being copied now
    copied: int = 0  # points copied since the daemon started
    last_copy_at: str | None = None
    failures: int = 0  # consecutive failed passes
    retry_at: float = 0.0  # time.time() before which the next pass waits
    error: str = ""  # the last failure, until a pass succeeds
    problems: dict[str, str] = field(default_factory=dict)  # vm key -> why its chain stopped
    last_prune: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "location": self.rc.location,
            "state": "failing" if self.error else ("copying" if self.running else "ok"),
            "points_waiting": sum(len(s) for s in self.waiting.values()),
            "vms_waiting": len(self.waiting),
            "compared_at": self.compared_at,
            "copying": self.running or None,
            "copied": self.copied,
            "last_copy_at": self.last_copy_at,
            "consecutive_failures": self.failures,
            "retry_at": (
                datetime.fromtimestamp(self.retry_at, UTC).isoformat() if self.error else None
            ),
            "error": self.error,
            "problems": dict(self.problems),
            "last_prune": self.last_prune,
        }


def missing_points(
    src: Repository, dst: Repository, vm_keys: set[str] | None = None
) -> dict[str, list[int]]:
    """vm key -> seqs of points the source holds and the copy has neither as a point nor as
    a tombstone, from object names alone (listings, no reads); of the VMs `vm_keys` only
    (their own prefixes listed) when given."""
    scopes = [""] if vm_keys is None else [f"{k}-" for k in sorted(vm_keys)]
    have: dict[str, set[int]] = {}
    out: dict[str, list[int]] = {}
    for scope in scopes:
        for prefix in ("manifests/", "tombstones/"):
            for info in dst.backend.list(prefix + scope):
                pid = info.key.removeprefix(prefix)
                have.setdefault(vm_key_of(pid), set()).add(seq_of(pid))
        for info in src.backend.list("manifests/" + scope):
            pid = info.key.removeprefix("manifests/")
            vm, seq = vm_key_of(pid), seq_of(pid)
            if seq not in have.get(vm, ()):
                out.setdefault(vm, []).append(seq)
    return {vm: sorted(seqs) for vm, seqs in out.items()}


class Copier:
    def __init__(
        self,
        cfg: Config,
        tz: tzinfo,
        errors: Any,
        stopping: asyncio.Event,
    ) -> None:
        self.cfg = cfg
        self.tz = tz
        self.errors = errors  # the status page's deque of lines
        self.notify = Notifier(None)  # the Daemon's, once composed
        self.stopping = stopping
        self.src: Callable[[], Repository | None] = lambda: None
        self.policies: Any = None  # PolicyStore
        # Identity ("vcenter uuid/instance uuid") -> the policy protecting that VM now.
        self.protected: Callable[[], dict[str, Policy | None]] = dict
        self.targets = {n: CopyTarget(n, rc) for n, rc in sorted(cfg.copies.items())}
        self._paused = asyncio.Event()
        self._idle: dict[str, asyncio.Event] = {}
        self._named: dict[str, str | None] = {}  # vm key -> policy named in its newest point
        self._keys: dict[str, str] = {}  # identity -> the vm key its points are named with

    # -- which copies are wanted ---------------------------------------------------------

    def _current(self) -> PolicySet:
        return self.policies.current if self.policies is not None else PolicySet()

    def in_use(self, name: str) -> bool:
        return any(name in p.copy_to for p in self._current())

    def _by_vm_key(self) -> dict[str, Policy | None]:
        """The policies protecting VMs now, by the key their points are named with."""
        out: dict[str, Policy | None] = {}
        for identity, policy in self.protected().items():
            key = self._keys.get(identity)
            if key is None:  # a hash per VM, once: identities never change
                vc, _, inst = identity.partition("/")
                key = self._keys[identity] = VmIdentity(vcenter_uuid=vc, instance_uuid=inst).key
            out[key] = policy
        return out

    async def _policy_for(
        self, vm_key: str, src: Repository, now: dict[str, Policy | None]
    ) -> Policy | None:
        """The policy protecting the VM now; for a VM gone from vCenter, the one named in
        its newest point (so its last points still reach the copy; read once, in a thread,
        and remembered here on the event loop)."""
        if vm_key in now:
            return now[vm_key]
        if vm_key not in self._named:
            newest = await anyio.to_thread.run_sync(src.latest_point, vm_key)
            self._named[vm_key] = newest.policy if newest is not None else None
        name = self._named[vm_key]
        return self._current().get(name) if name else None

    # -- the loops -----------------------------------------------------------------------

    def point_committed(self, identity: str = "") -> None:
        """A backup of the VM `identity` ("vcenter uuid/instance uuid") committed: compare
        it (and copy) now, not at the next tick; "" compares every VM."""
        vc, _, inst = identity.partition("/")
        key = VmIdentity(vcenter_uuid=vc, instance_uuid=inst).key if inst else ""
        for t in self.targets.values():
            if key:
                t.committed.add(key)
            else:
                t.full_due = 0.0
            t.wake.set()

    async def run(self, ready: asyncio.Event) -> None:
        await ready.wait()
        async with anyio.create_task_group() as tg:
            for t in self.targets.values():
                self._idle[t.name] = asyncio.Event()
                self._idle[t.name].set()
                tg.start_soon(self._loop, t)

    async def _loop(self, t: CopyTarget) -> None:
        while not self.stopping.is_set():
            t.wake.clear()
            if self.in_use(t.name) and not self._paused.is_set() and time.time() >= t.retry_at:
                self._idle[t.name].clear()
                try:
                    await self._pass(t)
                finally:
                    self._idle[t.name].set()
            delay = COPY_TICK
            if t.error:
                delay = min(delay, max(0.05, t.retry_at - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await t.wake.wait()

    async def _pass(self, t: CopyTarget) -> None:
        src = self.src()
        if src is None:
            return
        only: set[str] | None = None
        if time.monotonic() < t.full_due and t.committed:
            only = set(t.committed)
        t.committed.clear()
        try:
            if t.repo is None:
                from protector.repoaccess import open_configured

                t.repo = await anyio.to_thread.run_sync(open_configured, t.rc, self.cfg)
            if only is None:
                t.full_due = time.monotonic() + COPY_TICK
            await self._copy_missing(t, src, t.repo, only)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            t.full_due = 0.0  # the retry compares every VM
            self._failed(t, failure_reason(exc))
            return
        if t.error:
            log.info("daemon.copy_recovered", copy=t.name)
        t.error, t.failures, t.retry_at = "", 0, 0.0

    async def _copy_missing(
        self, t: CopyTarget, src: Repository, dst: Repository, only: set[str] | None
    ) -> None:
        missing = await anyio.to_thread.run_sync(missing_points, src, dst, only)
        if only is None:
            self._named = {k: v for k, v in self._named.items() if k in missing}
        wanted: dict[str, list[int]] = {}
        now = self._by_vm_key()
        for vm_key, seqs in missing.items():
            policy = await self._policy_for(vm_key, src, now)
            if policy is not None and t.name in policy.copy_to:
                wanted[vm_key] = seqs
        if only is None:
            t.waiting = wanted
            t.compared_at = datetime.now(UTC).isoformat(timespec="seconds")
        else:
            t.waiting = {k: v for k, v in t.waiting.items() if k not in only} | wanted
        threads = self.cfg.limits.io_threads
        stopped: list[str] = []
        for vm_key in sorted(wanted):
            if self.stopping.is_set() or self._paused.is_set():
                return
            t.running = vm_key
            try:
                result = await anyio.to_thread.run_sync(
                    lambda k=vm_key: copy_points(src, dst, {k}, threads=threads)
                )
            finally:
                t.running = ""
            t.waiting.pop(vm_key, None)
            if result.copied:
                t.copied += len(result.copied)
                t.last_copy_at = datetime.now(UTC).isoformat(timespec="seconds")
                log.info("daemon.copied", copy=t.name, points=result.copied)
            if result.problems:  # this VM's chain stops; the other VMs still go
                t.problems[vm_key] = "; ".join(result.problems)
                stopped.append(t.problems[vm_key])
            else:
                t.problems.pop(vm_key, None)
        if stopped:
            raise CopyChainStopped("; ".join(stopped))

    def _failed(self, t: CopyTarget, error: str) -> None:
        t.failures += 1
        d = self.cfg.daemon
        wait = min(d.failure_cooldown_max, d.retry_backoff * 2 ** (t.failures - 1))
        t.retry_at = time.time() + wait
        t.error = error
        line = f"copy to {t.name} ({t.rc.location}) failed, retried in {wait:g} s: {error}"
        self.errors.append(line)
        log.warning("daemon.copy_failed", copy=t.name, error=error, retry_in=wait)
        if t.failures == d.retry_attempts:  # once per streak, when a retry did not help
            self.notify.report(Kind.COPY_ERROR, t.name, line)

    # -- the prune's window ----------------------------------------------------------------

    def pause(self) -> None:
        """No new copy job starts (the prune's sweep needs the repository lock alone)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        self.point_committed()  # a pass cut short by the pause: compare every VM again

    async def wait_idle(self, timeout: float) -> bool:
        """Wait for the running copy jobs to end (a copy job is one VM's missing points)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for ev in self._idle.values():
                    await ev.wait()
                return True
        return False

    async def prune_copies(
        self,
        scope: PruneScope,
        lock_timeout: float,
        narrow: Callable[[Any], Any] = lambda rule_for: rule_for,
    ) -> None:
        """Each copy in use pruned by its policies' copy_retention (object lock respected
        like the primary's prune: a locked point stays whole until it can go). `narrow`
        wraps the rules as the primary's prune does (a cluster leader judges only its own
        vCenter's VMs)."""
        from repository import prune

        rule_for = narrow(retention_rules(copy_policies(self._current()), scope, self.tz))
        for t in self.targets.values():
            if t.repo is None or not self.in_use(t.name):
                continue
            started = datetime.now(UTC)
            repo, keep_days = t.repo, t.rc.orphan_keep_days
            try:
                result = await anyio.to_thread.run_sync(
                    lambda r=repo, k=keep_days: prune(
                        r, rule_for, orphan_keep_days=k, lock_timeout=lock_timeout
                    )
                )
            except Exception as exc:
                t.last_prune = {"at": started.isoformat(), "outcome": "failed", "error": str(exc)}
                self.errors.append(f"prune of the copy {t.name} failed: {exc}")
                log.error("daemon.copy_prune_failed", copy=t.name, error=str(exc))
                continue
            t.last_prune = {
                "at": started.isoformat(),
                "outcome": "done",
                "points_deleted": len(result.deleted_points),
                "chunks_deleted": result.chunks_deleted,
                "bytes_freed": result.bytes_freed,
                "kept_locked": len(result.locked),
                "sweep_deferred": result.sweep_deferred,
            }
            log.info("daemon.copy_pruned", copy=t.name, result=result.lines()[-1])

    def view(self) -> list[dict[str, Any]]:
        return [t.view() for t in self.targets.values() if self.in_use(t.name) or t.repo]


class CopyChainStopped(Exception):
    """A VM's chain has a gap in the source (a damaged or missing point): its later points
    are not copied until `vigil verify` and a repair; retried with back-off meanwhile."""
