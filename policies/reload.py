"""The policy set in force, and its hot reload.

A valid new set replaces the old one in a single assignment (readers on the event loop see
either the old or the new set, never a mix); an invalid set is rejected and the old one stays
in force, its errors kept in `store.errors` for the status page and metrics. When the store
knows the inventory, a VM the new set leaves in an equal-priority conflict keeps the policy
that protected it (holds.py): `store.compiled` carries those holds, and `store.policy(name)`
finds a kept policy the edit removed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import anyio.to_thread
import structlog
import watchfiles

from .engine import CompiledSet, DiffEntry, Evaluation, PolicyDiff, compile_set, diff, evaluate
from .errors import PolicyError, PolicyLoadError
from .holds import keep_through_conflicts
from .loader import load_policies
from .model import Policy, PolicySet, VmFacts

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
    evaluation: Evaluation | None = None  # the new set on that inventory, holds included


class PolicyStore:
    """Holds the policy set in force. The first load raises PolicyLoadError when invalid."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        inventory: Inventory | None = None,
        debounce_ms: int = 500,
        step_ms: int = 50,
        vcenters: Iterable[str] | None = None,
    ) -> None:
        self.path = Path(path)
        # The configured vCenter names: a reload naming another is rejected like any error.
        self.vcenters = tuple(vcenters) if vcenters is not None else None
        self.inventory = inventory
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self._set = load_policies(self.path, vcenters=self.vcenters)
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
        """The set in force, compiled, with the VMs held through a conflict (holds.py)."""
        return self._compiled

    def policy(self, name: str) -> Policy | None:
        """The policy of that name in force: in the current set, else one a VM is held on
        (an edit removed or renamed it but left the VM in conflict)."""
        p = self._set.get(name)
        if p is None:
            cp = self._compiled.compiled_policy(name)
            p = cp.policy if cp is not None else None
        return p

    def subscribe(self, callback: Callable[[ReloadOutcome], None]) -> None:
        """Call `callback` with every outcome of a reload that changed something."""
        self._subscribers.append(callback)

    # -- reloading --------------------------------------------------------------------------

    def _prepare(self, vms: list[VmFacts] | None) -> _Prepared:
        """The blocking part: read, validate, compile, evaluate (safe in a worker thread)."""
        try:
            new = load_policies(self.path, vcenters=self.vcenters)
        except PolicyLoadError as exc:
            return _Prepared(None, None, None, None, tuple(exc.errors))
        compiled = compile_set(new)
        if vms is None or new == self._set:
            return _Prepared(new, compiled, None, None, ())
        in_force = self._compiled
        before = evaluate(in_force, vms)
        compiled, after = keep_through_conflicts(in_force, before, compiled, vms)
        return _Prepared(new, compiled, diff(before, after), after, ())

    def _commit(self, prepared: _Prepared) -> ReloadOutcome:
        new, compiled, d, after, errors = prepared
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
                    generation=self.generation,
                    **reload_counts(new, compiled, d, after),
                )
                if d is not None and d.held:
                    log.warning(
                        "policies.conflict_kept_previous",
                        path=str(self.path),
                        vms=len(d.held),
                        held=[_held_line(e) for e in d.held[:HELD_LOGGED]],
                        note="the new set gives these VMs equal-priority policies; each keeps "
                        "the policy that protected it until a priority resolves the conflict",
                    )
            elif had_errors:
                log.info("policies.errors_cleared", path=str(self.path))
            outcome = ReloadOutcome(True, changed, self._set, old, (), d, after)
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
        outcome = self._commit(self._prepare(self._inventory()))
        self._notify(outcome, _worth_reporting(outcome, had_errors))
        return outcome

    async def reload(self) -> ReloadOutcome:
        """Reload with the file reading and evaluation in a worker thread."""
        had_errors = bool(self.errors)
        vms = self._inventory()  # snapshot taken on the loop, where the tree lives
        prepared = await anyio.to_thread.run_sync(self._prepare, vms)
        outcome = self._commit(prepared)
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


HELD_LOGGED = 20  # VMs named in the log line; the count is always whole


class _Prepared(NamedTuple):
    new: PolicySet | None
    compiled: CompiledSet | None
    diff: PolicyDiff | None
    evaluation: Evaluation | None
    errors: tuple[PolicyError, ...]


def reload_counts(
    new: PolicySet, compiled: CompiledSet, d: PolicyDiff | None, after: Evaluation | None
) -> dict[str, int]:
    """What a reload log line reports: the set, and when the inventory is known, the state of
    every VM under it and what the reload changed (0 is a count, never left out)."""
    counts = {"policies": len(new), "enabled": len(compiled.names)}
    if after is not None and d is not None:
        counts.update(
            vms=len(after.results),
            protected=sum(1 for r in after.results.values() if r.winner is not None),
            unprotected=sum(1 for r in after.results.values() if r.winner is None),
            conflicts=sum(1 for r in after.results.values() if r.conflict),
            held=len(d.held),
            newly_protected=len(d.protected),
            no_longer_protected=len(d.unprotected),
            changed_policy=len(d.changed),
        )
    return counts


def _held_line(e: DiffEntry) -> str:
    return f"{e.path}: keeps {e.new} (tied: {', '.join(e.conflict)})"


def _worth_reporting(outcome: ReloadOutcome, had_errors: bool) -> bool:
    return not outcome.accepted or outcome.changed or had_errors
