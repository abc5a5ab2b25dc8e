"""Object-lock retention in generations: pure date arithmetic, no I/O.

A restore point made at time t needs every object it references retained until at least
t + N days (`object_lock_days`). Extending each reused chunk on every backup would cost one
request per chunk per backup. Instead every retain-until date vigil sets is a *generation
boundary* — a multiple of G days (`object_lock_generation_days`) since the Unix epoch — and
is chosen a generation ahead:

    write_until(t) = ceil_G(t + N + margin + G)

so an object written or extended at t already covers every point made in the next G days.
By induction every object a point made at t references is retained until at least
`floor(t) = ceil_G(t + N + margin)` (retain-until dates are boundaries, and each is at
least t + N + margin), so a writer whose base point's floor already covers the new point
(`base_covers`) makes no retention call at all; otherwise it extends the reused objects
once, and the next G days of backups again need none. Calls per incremental: zero on most
days, one per referenced object about once every G days (measured in bench/bench_s3.py).
`margin` (one day) covers a backup that runs long between its start and its commit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

DAY = 86400.0
MARGIN = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    days: int
    mode: str = "COMPLIANCE"
    generation_days: int = 7

    def __post_init__(self) -> None:
        if self.days < 1 or self.generation_days < 1:
            raise ValueError(f"retention days {self.days}/{self.generation_days} must be >= 1")

    def ceil(self, t: datetime) -> datetime:
        """The first generation boundary at or after `t`."""
        g = self.generation_days * DAY
        return datetime.fromtimestamp(math.ceil(t.timestamp() / g) * g, UTC)

    def required(self, t: datetime) -> datetime:
        """What a point made at `t` needs from each object it references."""
        return t + timedelta(days=self.days) + MARGIN

    def write_until(self, t: datetime) -> datetime:
        """The retain-until date for objects written or extended at `t`."""
        return self.ceil(self.required(t) + timedelta(days=self.generation_days))

    def floor(self, point_time: datetime) -> datetime:
        """Every object of a point made at `point_time` is retained at least this long."""
        return self.ceil(self.required(point_time))

    def base_covers(self, base_time: datetime, now: datetime) -> bool:
        """Whether objects reused from a point made at `base_time` need no extension now."""
        return self.floor(base_time) >= self.required(now)


class RetentionMemo:
    """Retain-until dates this process set itself, so objects it just wrote cost no call
    when the point that references them commits. Entries are forgotten `horizon` seconds
    after they were set, which bounds a long-running daemon's memory to about one day of
    writes; a forgotten key only costs one extra PutObjectRetention. Not thread-safe: the
    backend holds its lock around it."""

    def __init__(self, horizon: float = DAY, clock: Callable[[], float] = time.monotonic) -> None:
        self.horizon = horizon
        self._clock = clock
        self._entries: dict[str, tuple[datetime, float]] = {}  # insertion order = age

    def set(self, key: str, until: datetime) -> None:
        self._entries.pop(key, None)  # re-insert at the young end
        self._entries[key] = (until, self._clock())

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def get(self, key: str) -> datetime | None:
        self._expire()
        entry = self._entries.get(key)
        return entry[0] if entry else None

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self) -> None:
        limit = self._clock() - self.horizon
        while self._entries:
            key, (_until, stamp) = next(iter(self._entries.items()))
            if stamp >= limit:
                return
            del self._entries[key]
