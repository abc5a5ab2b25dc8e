"""Which restore points to keep: the semantics of restic's `forget --keep-*`.

Points are taken newest first. `keep_last` keeps the newest N good points. Each bucket rule
(`daily`, `weekly` by ISO week, `monthly`, `yearly`, all in local time) keeps the newest good
point of each of the newest N buckets that hold a good point. A point kept by any rule is
kept, with every reason that applies. Points that are not good (failed or incomplete) never
count toward a rule and are dropped; the newest good point is never dropped, whatever the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo

from .model import Retention


@dataclass(frozen=True)
class RetentionPoint:
    id: str
    time: datetime  # timezone-aware
    good: bool = True


@dataclass(frozen=True)
class RetentionDecision:
    point: RetentionPoint
    reasons: tuple[str, ...]  # why kept, or why dropped


@dataclass(frozen=True)
class RetentionResult:
    keep: tuple[RetentionDecision, ...]  # newest first
    drop: tuple[RetentionDecision, ...]  # newest first

    @property
    def keep_ids(self) -> frozenset[str]:
        return frozenset(d.point.id for d in self.keep)

    @property
    def drop_ids(self) -> frozenset[str]:
        return frozenset(d.point.id for d in self.drop)


def _buckets(tz: tzinfo) -> list[tuple[str, Callable[[datetime], str]]]:
    def local(t: datetime) -> datetime:
        return t.astimezone(tz)

    def week(t: datetime) -> str:
        y, w, _ = local(t).isocalendar()
        return f"{y}-W{w:02d}"

    return [
        ("daily", lambda t: f"{local(t):%Y-%m-%d}"),
        ("weekly", week),
        ("monthly", lambda t: f"{local(t):%Y-%m}"),
        ("yearly", lambda t: f"{local(t):%Y}"),
    ]


def plan_retention(
    points: Iterable[RetentionPoint], rule: Retention, tz: tzinfo
) -> RetentionResult:
    """Split restore points into keep and drop, each with its reasons."""
    pts = list(points)
    for p in pts:
        if p.time.tzinfo is None or p.time.utcoffset() is None:
            raise ValueError(f"restore point {p.id}: time {p.time} has no timezone")
    # Newest first; the id breaks ties so the outcome never depends on input order.
    pts.sort(key=lambda p: (p.time, p.id), reverse=True)
    good = [p for p in pts if p.good]
    reasons: dict[str, list[str]] = {p.id: [] for p in pts}

    for i, p in enumerate(good[: rule.keep_last]):
        reasons[p.id].append(f"last {i + 1}/{rule.keep_last}")
    for name, bucket_of in _buckets(tz):
        limit: int = getattr(rule, name)
        if limit <= 0:
            continue
        seen: set[str] = set()
        for p in good:
            b = bucket_of(p.time)
            if b in seen:
                continue
            seen.add(b)
            if len(seen) > limit:
                break
            reasons[p.id].append(f"{name} {b} ({len(seen)}/{limit})")
    if good and not reasons[good[0].id]:
        reasons[good[0].id].append("newest good point")

    keep: list[RetentionDecision] = []
    drop: list[RetentionDecision] = []
    for p in pts:
        if reasons[p.id]:
            keep.append(RetentionDecision(p, tuple(reasons[p.id])))
        elif not p.good:
            drop.append(RetentionDecision(p, ("not a good point",)))
        else:
            drop.append(RetentionDecision(p, ("no keep rule applies",)))
    return RetentionResult(tuple(keep), tuple(drop))
