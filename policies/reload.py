"""The policy set in force, and its hot reload.

A valid new set replaces the old one in a single assignment (readers on the event loop see
either the old or the new set, never a mix); an invalid set is rejected and the old one stays
in force, its errors kept in `store.errors` for the status page and metrics.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio.to_thread
import structlog
import watchfiles

from .engine import CompiledSet, PolicyDiff, compile_set, diff, evaluate
from .errors import PolicyError, PolicyLoadError
from .loader import load_policies
from .model import PolicySet, VmFacts

log = structlog.get_logger(__name__)

Inventory = Callable[[], Iterable[VmFacts]]


@dataclass(frozen=True)
class ReloadOutcome:
    accepted: bool
    changed: bool  # the set in force changed
    policies: PolicySet  # the set in force afterwards
    previous: PolicySet
    errors: tuple[PolicyError, ...] = ()  # why a set was rejected
    diff: PolicyDiff | None = None  # per-VM effect, when the store knows the inventory


class PolicyStore:
    """Holds the policy set in force. The first load raises PolicyLoadError when invalid."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        inventory: Inventory | None = None,
        debounce_ms: int = 500,
        step_ms: int = 50,
    ) -> None:
        self.path = Path(path)
        self.inventory = inventory
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self._set = load_policies(self.path)
        self._compiled = compile_set(self._set)
        self.errors: tuple[PolicyError, ...] = ()
        self.generation = 1
        self.loaded_at = datetime.now(UTC)
        self.rejected_at: datetime | None = None
        self.rejections = 0
        self._subscribers: list[Callable[[ReloadOutcome], None]] = []

    @property
    def current(self) -> PolicySet:
        return self._set

    @property
    def compiled(self) -> CompiledSet:
        return self._compiled

    def subscribe(self, callback: Callable[[ReloadOutcome], None]) -> None:
        """Call `callback` with every outcome of a reload that changed something."""
        self._subscribers.append(callback)

    # -- reloading --------------------------------------------------------------------------

    def _prepare(
        self, vms: list[VmFacts] | None
    ) -> tuple[PolicySet | None, CompiledSet | None, PolicyDiff | None, tuple[PolicyError, ...]]:
        """The blocking part: read, validate, compile, evaluate (safe in a worker thread)."""
        try:
            new = load_policies(self.path)
        except PolicyLoadError as exc:
            return None, None, None, tuple(exc.errors)
        compiled = compile_set(new)
        d = None
        if vms is not None and new != self._set:
            d = diff(evaluate(self._compiled, vms), evaluate(compiled, vms))
        return new, compiled, d, ()

    def _commit(
        self,
        new: PolicySet | None,
        compiled: CompiledSet | None,
        d: PolicyDiff | None,
        errors: tuple[PolicyError, ...],
    ) -> ReloadOutcome:
        old = self._set
        if new is None:
            self.errors = errors
            self.rejected_at = datetime.now(UTC)
            self.rejections += 1
            log.error(
                "policies.rejected",
                path=str(self.path),
                count=len(errors),
                errors=[str(e) for e in errors],
                in_force=self.generation,
            )
            outcome = ReloadOutcome(False, False, old, old, errors)
        else:
            had_errors = bool(self.errors)
            changed = new != old
            self.errors = ()
            if changed:
                assert compiled is not None
                self._set, self._compiled = new, compiled
                self.generation += 1
                self.loaded_at = datetime.now(UTC)
                log.info(
                    "policies.reloaded",
                    path=str(self.path),
                    policies=len(new),
                    generation=self.generation,
                    protected=len(d.protected) if d else None,
                    unprotected=len(d.unprotected) if d else None,
                    changed=len(d.changed) if d else None,
                )
            elif had_errors:
                log.info("policies.errors_cleared", path=str(self.path))
            outcome = ReloadOutcome(True, changed, self._set, old, (), d)
        return outcome

    def _notify(self, outcome: ReloadOutcome, report: bool) -> None:
        if report:
            for cb in self._subscribers:
                cb(outcome)

    def _inventory(self) -> list[VmFacts] | None:
        return list(self.inventory()) if self.inventory is not None else None

    def reload_now(self) -> ReloadOutcome:
        """Reload at once (e.g. on SIGHUP), blocking; returns what happened."""
        had_errors = bool(self.errors)
        outcome = self._commit(*self._prepare(self._inventory()))
        self._notify(outcome, _worth_reporting(outcome, had_errors))
        return outcome

    async def reload(self) -> ReloadOutcome:
        """Reload with the file reading and evaluation in a worker thread."""
        had_errors = bool(self.errors)
        vms = self._inventory()  # snapshot taken on the loop, where the tree lives
        prepared = await anyio.to_thread.run_sync(self._prepare, vms)
        outcome = self._commit(*prepared)
        self._notify(outcome, _worth_reporting(outcome, had_errors))
        return outcome

    def _filter(self) -> Callable[[watchfiles.Change, str], bool]:
        target = self.path.resolve()
        if self.path.is_dir():
            return lambda _c, p: p.endswith(".toml") and Path(p).parent.resolve() == target
        return lambda _c, p: Path(p).resolve() == target

    async def watch(self, stop_event: asyncio.Event | None = None) -> AsyncIterator[ReloadOutcome]:
        """Watch the policy path; yield the outcome of every reload that changed something
        (a new set in force, a rejected set, or errors cleared)."""
        watched = self.path if self.path.is_dir() else self.path.parent
        async for _changes in watchfiles.awatch(
            watched,
            watch_filter=self._filter(),
            debounce=self.debounce_ms,
            step=self.step_ms,
            stop_event=stop_event,
            recursive=False,
        ):
            had_errors = bool(self.errors)
            outcome = await self.reload()
            if _worth_reporting(outcome, had_errors):
                yield outcome


def _worth_reporting(outcome: ReloadOutcome, had_errors: bool) -> bool:
    return not outcome.accepted or outcome.changed or had_errors
