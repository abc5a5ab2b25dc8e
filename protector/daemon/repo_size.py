"""The repository's size for the status page, cheaply: the sum of its objects' sizes is a
walk of the whole backend (minutes on a large S3 bucket), so it is computed in a thread at
most once per TTL and a request only reads the last figure — never waits for a walk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger(__name__)

SIZE_TTL = 3600.0  # seconds a figure is shown before the next walk starts


class RepoSizeCache:
    def __init__(self, repo: Callable[[], Any], ttl: float = SIZE_TTL) -> None:
        self._repo = repo  # the daemon's repository, once opened
        self.ttl = ttl
        self._figure: dict[str, Any] = {}
        self._taken = float("-inf")  # monotonic time the last walk started
        self._task: asyncio.Future[None] | None = None

    def figure(self) -> dict[str, Any]:
        """The last size ({} before the first walk ends); starts a walk when it is stale."""
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
        for info in repo.backend.list(""):
            total += info.size
            objects += 1
        self._figure = {
            "size_bytes": total,
            "objects": objects,
            "size_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _done(self, fut: asyncio.Future[None]) -> None:
        self._task = None
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("daemon.repo_size_failed", error=str(fut.exception()))
