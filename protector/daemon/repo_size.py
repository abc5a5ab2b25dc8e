"""A repository's figures for the status page and the metrics, cheaply: its size and
object count are a walk of the whole backend (minutes on a large S3 bucket), so they are
computed in a thread at most once per TTL and a request only reads the last figures —
never waits for a walk. The same walk lists the restore points, which gives, under S3
object lock, the points whose lock has run out (`lock_figures`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger(__name__)

SIZE_TTL = 3600.0  # seconds a figure is shown before the next walk starts


def point_time(point_id: str) -> datetime | None:
    """The commit time a point id carries (`<vm key>-<YYYYmmddTHHMMSS>Z-<seq>`), to the
    second; None for a name of another shape."""
    parts = point_id.split("-")
    try:
        return datetime.strptime(parts[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except (IndexError, ValueError):
        return None


def lock_figures(point_ids: Iterable[str], retention: Any, now: datetime) -> dict[str, Any]:
    """How many points are no longer locked, and the oldest of them. Under object lock in
    generations (repository/s3/retention.py) every object of a point committed at t is
    retained at least until `retention.floor(t)`; from then on some of its objects may be
    deleted by anyone holding the keys. Computed from the point ids (their time is the
    commit time, to the second): a copy's points were locked when they were copied, later
    than their commit, so for a copy this errs early — it may call a point unlocked that is
    still held a while longer, never the reverse."""
    unlocked: list[tuple[datetime, str]] = []
    for pid in point_ids:
        t = point_time(pid)
        if t is not None and retention.floor(t) <= now:
            unlocked.append((t, pid))
    if not unlocked:
        return {"unlocked_points": 0, "oldest_unlocked": None}
    t, pid = min(unlocked)
    return {
        "unlocked_points": len(unlocked),
        "oldest_unlocked": {
            "point": pid,
            "committed_at": t.isoformat(),
            "unlocked_since": retention.floor(t).isoformat(),
        },
    }


class RepoSizeCache:
    def __init__(self, repo: Callable[[], Any], ttl: float = SIZE_TTL) -> None:
        self._repo = repo  # the daemon's repository, once opened
        self.ttl = ttl
        self._figure: dict[str, Any] = {}
        self._taken = float("-inf")  # monotonic time the last walk started
        self._task: asyncio.Future[None] | None = None

    def figure(self) -> dict[str, Any]:
        """The last figures ({} before the first walk ends); starts a walk when stale."""
        repo = self._repo()
        if repo is not None and self._task is None and time.monotonic() - self._taken > self.ttl:
            self._taken = time.monotonic()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return dict(self._figure)
            self._task = loop.run_in_executor(None, self._walk, repo)
            self._task.add_done_callback(self._done)
        return dict(self._figure)

    def _walk(self, repo: Any) -> None:
        total = objects = 0
        points: list[str] = []
        for info in repo.backend.list(""):
            total += info.size
            objects += 1
            if info.key.startswith("manifests/"):
                points.append(info.key.removeprefix("manifests/"))
        now = datetime.now(UTC)
        figure: dict[str, Any] = {
            "size_bytes": total,
            "objects": objects,
            "size_at": now.isoformat(timespec="seconds"),
        }
        retention = getattr(repo.backend, "retention", None)  # S3 with object lock only
        if retention is not None:
            figure |= lock_figures(points, retention, now)
        self._figure = figure

    def _done(self, fut: asyncio.Future[None]) -> None:
        self._task = None
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("daemon.repo_size_failed", error=str(fut.exception()))
