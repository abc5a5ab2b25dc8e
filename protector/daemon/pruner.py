"""The daily prune: retention from the policies, then the chunk sweep, at daemon.prune_at.
Only while the inventory is live and in sync (else every VM would look like an orphan);
backups are held back, for a bounded time, so the sweep can take the repository lock; a
failure is logged and counted, and tomorrow's run goes ahead. Needs the repository, the
policies, the inventory tree and the job queue's pause — not the planner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import anyio
import structlog

from policies.engine import evaluate_one
from policies.reload import PolicyStore
from protector.config import Config, parse_hhmm
from protector.notify.events import Kind
from protector.notify.sender import Notifier
from protector.policyaccess import KeepAll, PruneScope, retention_rules
from repository import prune
from repository.prune import PruneResult

log = structlog.get_logger(__name__)


def next_prune_at(now: datetime, hhmm: tuple[int, int]) -> datetime:
    """The next HH:MM after `now` (in now's time zone)."""
    at = now.replace(hour=hhmm[0], minute=hhmm[1], second=0, microsecond=0)
    return at + timedelta(days=1) if at <= now else at


class Pruner:
    def __init__(
        self,
        cfg: Config,
        tz: tzinfo,
        stats: Any,
        errors: Any,
        stopping: asyncio.Event,
        in_sync: Callable[[], bool],
    ) -> None:
        self.cfg = cfg
        self.tz = tz
        self.stats = stats  # its prune_failures count is kept here
        self.errors = errors  # a deque of lines for the status page
        self.notify = Notifier(None)  # the Daemon's, once composed
        self.stopping = stopping
        self.in_sync = in_sync
        self.repo: Any = None
        self.policies: PolicyStore | None = None
        self.vms: Callable[[], list[Any]] = list  # the inventory tree's VMs now
        # The configured name of a VM's vCenter (policies' `vcenters`).
        self.vcenter_of: Callable[[Any], str] = lambda node: ""
        # Whether this prune judges the points of VMs of that vCenter (by instance uuid): a
        # cluster's leader of one vCenter sees only its VMs, so the others' would look
        # like orphans; their own leaders prune them.
        self.judges: Callable[[str], bool] = lambda vcenter_uuid: True
        self.runner: Any = None  # pause / wait_idle_running / resume
        self.copier: Any = None  # copier.Copier: paused too, and prunes the copies
        self.last_prune: dict[str, Any] | None = None

    async def run(self, ready: asyncio.Event) -> None:
        await ready.wait()
        hhmm = parse_hhmm(self.cfg.daemon.prune_at)
        assert hhmm is not None, "validated by load_config"
        while not self.stopping.is_set():
            now = datetime.now(self.tz)
            at = next_prune_at(now, hhmm)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout((at - now).total_seconds()):
                    await self.stopping.wait()
            await self._wait_in_sync()
            if not self.stopping.is_set():
                await self.scheduled_prune()

    async def scheduled_prune(self) -> None:
        """The daily prune; a failure is logged and counted and tomorrow's run goes ahead."""
        try:
            await self.prune_now()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.prune_failures += 1
            log.error("daemon.prune_failed", error=repr(exc), exc_info=exc)
            self.errors.append(f"prune failed (next try tomorrow): {exc!r}")
            self.notify.report(Kind.PRUNE_ERROR, "prune", f"failed, next try tomorrow: {exc!r}")
            self.last_prune = {
                "at": datetime.now(UTC).isoformat(),
                "outcome": "failed",
                "error": repr(exc),
            }

    async def _wait_in_sync(self) -> None:
        if self.in_sync():
            return
        log.warning("daemon.prune_waiting", until="the vCenter inventory is live and in sync")
        while not self.in_sync() and not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.stopping.wait()

    def _scope(self) -> PruneScope:
        """Evaluated afresh from the tree, not from events that may still be queued."""
        assert self.policies is not None
        compiled = self.policies.compiled
        return PruneScope.of(self.vms(), lambda f: evaluate_one(compiled, f), self.vcenter_of)

    def _only_judged(self, rule_for: Callable[[Any, str | None], Any]) -> Any:
        def rule(vm: Any, point_policy: str | None) -> Any:
            if not self.judges(vm.vcenter_uuid):
                return KeepAll("another vCenter's: its own leader prunes it")
            return rule_for(vm, point_policy)

        return rule

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
        scope = self._scope()
        rule_for = self._only_judged(retention_rules(self.policies.current, scope, self.tz))
        max_pause = self.cfg.daemon.prune_max_pause
        copier = self.copier if not dry_run else None
        if not dry_run:
            # Backups hold the repository lock shared; with new ones starting all the time
            # the sweep would never get it exclusive. Hold them back, for a bounded time.
            # Copy jobs read it shared too (and write the copies prune sweeps next).
            self.runner.pause("prune: chunk sweep")
            if copier is not None:
                copier.pause()
        try:
            if not dry_run:
                await self.runner.wait_idle_running(max_pause)
                if copier is not None:
                    spent = (datetime.now(UTC) - started).total_seconds()
                    await copier.wait_idle(max(1.0, max_pause - spent))
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
            self.runner.resume()  # backups go on while the copies are pruned
            if copier is not None and not self.stopping.is_set():
                try:
                    await copier.prune_copies(scope, max_pause, self._only_judged)
                finally:
                    copier.resume()
            elif copier is not None:
                copier.resume()
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
            self.notify.report(
                Kind.PRUNE_ERROR, "prune", f"sweep deferred: {result.sweep_deferred}"
            )
        if result.sweep_limited:
            self.errors.append(f"prune: chunk sweep limited: {result.sweep_limited}")
            self.notify.report(Kind.REPO_DAMAGE, "repository", result.sweep_limited)
        return result
