"""Retention and garbage collection.

Order: decide per VM which points to keep; delete the others' manifests (tombstone first);
then, holding the repository's exclusive lock object (no backup or restore running on any
host), sweep the indexes and chunks that no remaining manifest references and that are
older than the grace period (a second guard, for writers older than lock objects)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from repository.codec import chunk_key
from repository.errors import (
    BackendError,
    CorruptObjectError,
    ManifestError,
    ObjectNotFoundError,
    PointNotFoundError,
    PointPinnedError,
    RepositoryBusyError,
)
from repository.manifest import Manifest, VmIdentity
from repository.objects import index_key, manifest_key
from repository.points import DamagedObject, warn_damaged
from repository.repo import Repository
from repository.s3.errors import ObjectLockedError

log = structlog.get_logger(__name__)


class KeepRule(Protocol):
    """A retention rule: which of one VM's points to keep (the policies package's GFS rule
    satisfies this)."""

    def keep(self, points: Sequence[Manifest]) -> set[str]: ...


def explanations(rule: KeepRule, points: Sequence[Manifest]) -> dict[str, str]:
    """Point id → which part of the rule kept it (or why none did), for a rule that can say
    (an optional `explain(points)`); {} for one that cannot, which is then named whole."""
    explain = getattr(rule, "explain", None)
    return dict(explain(points)) if callable(explain) else {}


@dataclass(frozen=True, slots=True)
class KeepLast:
    """Keep the newest `n` points: the fallback until a policy supplies GFS rules."""

    n: int

    def keep(self, points: Sequence[Manifest]) -> set[str]:
        newest = sorted(points, key=lambda m: m.committed_at, reverse=True)
        return {m.point_id for m in newest[: self.n]}

    def __str__(self) -> str:
        return f"keep-last {self.n}"


# Called with a VM and the policy named in its newest point; None = no policy covers it.
RuleFor = Callable[[VmIdentity, str | None], KeepRule | None]


@dataclass(frozen=True, slots=True)
class Decision:
    point_id: str
    vm_name: str
    delete: bool
    reason: str


@dataclass(slots=True)
class PruneResult:
    decisions: list[Decision] = field(default_factory=list)
    dry_run: bool = False
    sweep_deferred: str | None = None
    sweep_limited: str | None = None  # swept, but kept every index (damaged manifests)
    indexes_deleted: int = 0
    chunks_deleted: int = 0
    bytes_freed: int = 0
    temp_files_removed: int = 0
    # Objects under an unexpired object lock (S3): kept now, deleted by a prune after then.
    locked: list[str] = field(default_factory=list)

    @property
    def deleted_points(self) -> list[str]:
        return [d.point_id for d in self.decisions if d.delete]

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        out = [
            f"{'delete' if d.delete else 'keep  '} {d.point_id} ({d.vm_name}): {d.reason}"
            for d in self.decisions
        ]
        out.append(
            f"{verb} {len(self.deleted_points)} points, {self.indexes_deleted} indexes, "
            f"{self.chunks_deleted} chunks ({self.bytes_freed} bytes)"
        )
        if self.sweep_deferred:
            out.append(f"chunk sweep deferred: {self.sweep_deferred}")
        if self.sweep_limited:
            out.append(f"chunk sweep limited: {self.sweep_limited}")
        if self.locked:
            out.append(
                f"kept {len(self.locked)} object(s) under object lock, retried by a later "
                f"prune after expiry: {', '.join(self.locked[:3])}"
            )
        return out


PINNED = "pinned (`vigil unpin` lets retention delete it)"


def plan(
    manifests: Sequence[Manifest],
    rule_for: RuleFor,
    now: datetime,
    orphan_keep_days: float,
    pinned: Collection[str] = (),
) -> list[Decision]:
    """Pure: the keep/delete decision for every point, with the reason. A pinned point is
    always kept; it still counts for the rules (a pin adds a point, it takes none away)."""
    return [
        Decision(d.point_id, d.vm_name, False, PINNED) if d.point_id in pinned else d
        for d in _plan(manifests, rule_for, now, orphan_keep_days)
    ]


def _plan(
    manifests: Sequence[Manifest], rule_for: RuleFor, now: datetime, orphan_keep_days: float
) -> list[Decision]:
    by_vm: dict[str, list[Manifest]] = defaultdict(list)
    for m in manifests:
        by_vm[m.vm.key].append(m)
    out: list[Decision] = []
    for points in by_vm.values():
        newest = max(points, key=lambda m: m.seq)
        rule = rule_for(newest.vm, newest.policy)
        if rule is None:
            cutoff = now - timedelta(days=orphan_keep_days)
            for m in points:
                old = m.committed_at < cutoff
                why = f"VM in no policy; point {'older' if old else 'newer'} than "
                out.append(Decision(m.point_id, m.vm.name, old, why + f"{orphan_keep_days} days"))
            continue
        kept = rule.keep(points)
        detail = explanations(rule, points)
        for m in points:
            keep = m.point_id in kept
            verdict = "kept" if keep else "not kept"
            by = (
                f"{verdict}: {detail[m.point_id]}"
                if m.point_id in detail
                else f"{verdict} by {rule}"
            )
            why = f"{by} (policy {newest.policy})"
            out.append(Decision(m.point_id, m.vm.name, not keep, why))
    return sorted(out, key=lambda d: d.point_id)


def prune(
    repo: Repository,
    rule_for: RuleFor,
    *,
    dry_run: bool = False,
    orphan_keep_days: float = 30,
    grace: timedelta = timedelta(hours=1),
    lock_timeout: float = 60,
    now: datetime | None = None,
) -> PruneResult:
    now = now or datetime.now(UTC)
    manifests, damaged = repo.scan_manifests()
    warn_damaged(damaged)
    pinned = repo.pinned_points()
    decisions = plan(manifests, rule_for, now, orphan_keep_days, pinned) + _keep_damaged(damaged)
    result = PruneResult(sorted(decisions, key=lambda d: d.point_id), dry_run)
    reasons = {d.point_id: d.reason for d in result.decisions if d.delete}
    doomed = set(reasons)
    if not dry_run:
        for m in manifests:
            if m.point_id in doomed:
                until = _locked_until(repo, manifest_key(m.point_id), now)
                if until is not None:  # keep it whole (no tombstone) until it can go
                    result.locked.append(f"{manifest_key(m.point_id)} until {until:%Y-%m-%d}")
                    doomed.discard(m.point_id)
                    continue
                try:
                    repo.delete_point(m, reasons[m.point_id])
                except PointPinnedError:  # pinned since we planned: it stays
                    doomed.discard(m.point_id)
                    result.decisions = [
                        Decision(d.point_id, d.vm_name, False, PINNED)
                        if d.point_id == m.point_id
                        else d
                        for d in result.decisions
                    ]
        repo.points.drop_old_heads()
    try:
        # A dry run only reads: it shares the lock with backups instead of waiting for them.
        with _sweep_lock(repo, dry_run, lock_timeout):
            _sweep(repo, result, doomed, (now - grace).timestamp(), dry_run)
    except RepositoryBusyError as exc:
        result.sweep_deferred = f"backups or restores are running ({exc})"
    log.info(
        "repository.pruned",
        points=len(doomed),
        chunks=result.chunks_deleted,
        bytes=result.bytes_freed,
        dry_run=dry_run,
        deferred=bool(result.sweep_deferred),
        limited=bool(result.sweep_limited),
    )
    return result


def _sweep_lock(
    repo: Repository, dry_run: bool, timeout: float
) -> contextlib.AbstractContextManager[object]:
    """The exclusive lock object for a sweep; a dry run shares (and on read-only storage,
    where no lock object can be written, goes without: nothing can change there)."""
    try:
        return repo.lock(not dry_run, timeout, "prune sweep" + (" (dry run)" if dry_run else ""))
    except BackendError:
        if not dry_run:
            raise
        return contextlib.nullcontext()


def _locked_until(repo: Repository, key: str, now: datetime) -> datetime | None:
    retention_of = getattr(repo.backend, "retention_of", None)  # object-lock backends only
    held = retention_of(key) if retention_of is not None else None
    return held[1] if held is not None and held[1] > now else None


def _keep_damaged(damaged: Sequence[DamagedObject]) -> list[Decision]:
    """An unreadable point is never deleted: its VM, age and policy are unknown."""
    return [
        Decision(
            d.point_id,
            "?",
            False,
            f"manifest unreadable, kept with its chunks ({d.reason}); run `vigil verify`",
        )
        for d in damaged
    ]


def _live_indexes(repo: Repository, doomed: set[str], result: PruneResult) -> set[str]:
    """Index ids the remaining points use. Re-listed under the lock: points committed
    since planning count too; a point deleted meanwhile is simply gone."""
    live: set[str] = set()
    damaged: list[str] = []
    for pid in repo.list_points():
        if pid in doomed:
            continue
        try:
            live.update(d.index_id for d in repo.load_manifest(pid).disks)
        except PointNotFoundError:
            continue
        except (ManifestError, BackendError):  # unreadable (EACCES, EIO) counts as damaged
            damaged.append(pid)
    if damaged:
        # Which indexes an unreadable manifest uses is unknown, so every stored index stays
        # and so does every chunk any index references; crash debris still goes.
        live.update(i.key.removeprefix("indexes/") for i in repo.backend.list("indexes/"))
        result.sweep_limited = (
            f"{len(damaged)} unreadable manifest(s) ({', '.join(damaged[:3])}): every index "
            "and the chunks they reference were kept; run `vigil verify`"
        )
    return live


def _sweep(
    repo: Repository, result: PruneResult, doomed: set[str], cutoff: float, dry_run: bool
) -> None:
    live_indexes = _live_indexes(repo, doomed, result)
    live_chunks: set[str] = set()
    for iid in live_indexes:
        try:
            index = repo.load_index(iid)
        except (CorruptObjectError, ObjectNotFoundError) as exc:
            # Without every index we cannot know what is referenced: delete nothing.
            result.sweep_deferred = f"index {iid} unreadable ({exc}); run verify"
            return
        live_chunks.update(chunk_key(c) for c in index.referenced())
    live_index_keys = {index_key(i) for i in live_indexes}
    for prefix, live in (("indexes/", live_index_keys), ("chunks/", live_chunks)):
        for info in repo.backend.list(prefix):
            if info.key in live or info.mtime >= cutoff:
                continue
            if not dry_run:
                try:
                    repo.backend.delete(info.key)
                except ObjectLockedError as exc:
                    when = f"{exc.until:%Y-%m-%d}" if exc.until else "its legal hold is lifted"
                    result.locked.append(f"{info.key} until {when}")
                    continue
            if prefix == "chunks/":
                result.chunks_deleted += 1
            else:
                result.indexes_deleted += 1
            result.bytes_freed += info.size
    if not dry_run:
        result.temp_files_removed = repo.backend.cleanup(cutoff)
