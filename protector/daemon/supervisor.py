"""Lifecycle: the daemon's long-running tasks, started by name; the first one that crashes
stops the whole process (exit 1, so the service manager restarts it) and is named in the
status page's errors; short fire-and-forget tasks are kept referenced until done."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Supervisor:
    def __init__(self, errors: Any) -> None:
        self.errors = errors  # a deque of lines for the status page
        self.stopping = asyncio.Event()
        self.crashed: str | None = None  # the task whose crash stopped the daemon
        self._tasks: list[asyncio.Task[Any]] = []
        self._bg: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        if exc is not None:
            log.error("daemon.task_crashed", task=task.get_name(), error=repr(exc), exc_info=exc)
            self.errors.append(f"internal task {task.get_name()} crashed: {exc!r}")
            self.crashed = self.crashed or task.get_name()
            self.stopping.set()

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """A short fire-and-forget task, referenced until done (asyncio keeps weak refs)."""
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("daemon.stopping")
            self.stopping.set()

    async def cancel_all(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
