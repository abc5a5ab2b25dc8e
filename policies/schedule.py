"""When must the next scheduled backup start so the RPO holds?

The RPO is elapsed time: the newest good restore point must never be older than `rpo`, so
the deadline is `newest_good + rpo` and a backup should start by `deadline - margin` (margin:
the time a backup needs). Without a window the planned start is that moment (or now, when it
has passed). With a window the start must fall inside the window, no later than `margin`
before it closes; the planned start is the *latest* such moment that still keeps the RPO, so
backups run no more often than the RPO asks. When no window moment is left before the
deadline, the start is the earliest window moment from now and the plan is `at_risk`.

Windows are local wall-clock times in `tz` (a zoneinfo zone, so DST changes are followed); a
window edge that falls into a DST gap moves past the gap, an ambiguous one takes the first
occurrence. A VM with no good point is due at once and reported as breached.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .model import Window

DEFAULT_MARGIN = timedelta(minutes=30)
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class NextRun:
    start: datetime  # when the next scheduled backup should start, in tz
    deadline: datetime | None  # newest good point + RPO; None without a good point
    breached: bool  # the RPO is already broken now
    at_risk: bool  # no start inside the window keeps the RPO: it will be broken


def local_zone() -> tzinfo:
    """The daemon's local time zone as a DST-aware zone: $TZ, else /etc/localtime's link
    target, else /etc/timezone; a fixed offset only when none of them names a zone.
    (The one function here that looks outside its arguments; call it once at startup.)"""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        link = os.readlink("/etc/localtime")
        if "zoneinfo/" in link:
            candidates.append(link.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    try:
        with open("/etc/timezone") as f:
            candidates.append(f.read().strip())
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def in_window(window: Window, t: time) -> bool:
    """Whether a local wall-clock time lies inside the window (end exclusive)."""
    t = t.replace(tzinfo=None)
    if window.crosses_midnight:
        return t >= window.start or t < window.end
    return window.start <= t < window.end


def _at(d: date, t: time, tz: tzinfo) -> datetime:
    # fold=0 maps a time inside a DST gap past the gap, and an ambiguous one to its first
    # occurrence; converting through UTC normalizes both.
    return datetime.combine(d, t, tzinfo=tz).astimezone(UTC)


def window_slots(
    window: Window, tz: tzinfo, first: date, last: date, margin: timedelta
) -> Iterator[tuple[datetime, datetime]]:
    """[earliest, latest] start moments (UTC) of the window opening on each local date."""
    d = first
    while d <= last:
        s = _at(d, window.start, tz)
        e = _at(d + timedelta(days=1) if window.crosses_midnight else d, window.end, tz)
        # The window's end is exclusive: even without a margin, start a second before it.
        yield s, max(s, e - max(margin, _SECOND))
        d += timedelta(days=1)


def next_run(
    newest_good: datetime | None,
    rpo: timedelta,
    window: Window | None,
    now: datetime,
    *,
    tz: tzinfo | None = None,
    margin: timedelta = DEFAULT_MARGIN,
) -> NextRun:
    """Plan the next scheduled backup of one VM (pure; all datetimes timezone-aware)."""
    if now.tzinfo is None or (newest_good is not None and newest_good.tzinfo is None):
        raise ValueError("next_run needs timezone-aware datetimes")
    zone = tz or now.tzinfo
    assert zone is not None
    now_u = now.astimezone(UTC)
    if newest_good is None:
        deadline = None
        target = now_u
    else:
        deadline = newest_good.astimezone(UTC) + rpo
        target = deadline - margin
    breached = deadline is None or now_u > deadline

    def out(start: datetime, at_risk: bool) -> NextRun:
        return NextRun(
            start.astimezone(zone),
            deadline.astimezone(zone) if deadline is not None else None,
            breached,
            at_risk,
        )

    if window is None:
        return out(max(now_u, target), deadline is not None and target < now_u)

    now_day = now_u.astimezone(zone).date()
    if target > now_u:
        # The latest window moment in [now, target]; scan local dates backwards from target.
        top = target.astimezone(zone).date()
        first = max(now_day - timedelta(days=1), top - timedelta(days=3))
        slots = list(window_slots(window, zone, first, top, margin))
        for s, latest in reversed(slots):
            lo, hi = max(s, now_u), min(latest, target)
            if lo <= hi:
                return out(hi, False)
            if latest < now_u:
                break
    # Too late to keep the RPO inside the window (or no point yet): the earliest moment.
    for s, latest in window_slots(
        window, zone, now_day - timedelta(days=1), now_day + timedelta(days=3), margin
    ):
        if latest >= now_u:
            start = max(s, now_u)
            return out(start, deadline is not None and start > target)
    raise AssertionError("a daily window always opens within three days")  # pragma: no cover
