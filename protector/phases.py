"""Which phase a command is in, for two audiences:

- whoever shows it (`announce`/`listening`): the CLI's progress line says "creating the
  snapshot" or "removing the snapshot" while vCenter works, where a byte count has nothing
  to show, and says so after Ctrl-C, when the cleanup can take minutes and a silent
  terminal invites a second Ctrl-C that would leave the snapshot behind; the daemon's
  worker listens the same way to show a job's phase on the status page. A context
  variable, not a parameter threaded through every workflow: the listener set around one
  command or job reaches the snapshot code of that task (and the tasks it starts) and no
  other.
- where the time goes (`timed`/`atimed`/`timed_await`/`record`): one `phase` debug log
  line per phase, e.g.

      {"event": "phase", "phase": "login", "seconds": 0.0412, ...}

  `vigil --log-level debug backup VM` prints start-up, repository_open, login, lookup,
  prepare, snapshot, read, snapshot_removal, commit and exit (issue 18: a backup's fixed
  cost next to its data path); bench/bench_backup_cli.py sums them per phase. Phases that
  run concurrently (the repository's key derivation and the vCenter login) each report
  their own duration. Logging only: the timing half changes nothing a command does.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("vigil.phase")
T = TypeVar("T")

# --- announcing a slow step to a listener (CLI progress line, daemon job phase) ---

Listener = Callable[[str], None]

_listener: ContextVar[Listener | None] = ContextVar("vigil_phase_listener", default=None)

# What the admin is told after Ctrl-C (or SIGTERM) while the snapshot is removed.
REMOVING_AFTER_INTERRUPT = (
    "interrupted: removing the snapshot, this can take minutes on a busy vCenter "
    "(wait for it; a second Ctrl-C leaves it for the next backup to remove)"
)


def announce(text: str) -> None:
    """Tell the listener, if any, that a slow step starts; a display must never break the
    operation it displays, so its errors are dropped."""
    fn = _listener.get()
    if fn is not None:
        with contextlib.suppress(Exception):
            fn(text)


@contextlib.contextmanager
def listening(fn: Listener) -> Iterator[None]:
    token = _listener.set(fn)
    try:
        yield
    finally:
        _listener.reset(token)


# --- timing each phase as a debug log line ---

_IMPORTED = time.monotonic()


def process_age() -> float:
    """Seconds since this process started (Linux: from /proc, so interpreter start-up and
    imports count), else since this module was first imported."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


def record(phase: str, seconds: float, logger: Any = None, **kw: Any) -> None:
    (logger or log).debug("phase", phase=phase, seconds=round(seconds, 4), **kw)


@contextlib.contextmanager
def timed(phase: str, logger: Any = None, **kw: Any) -> Iterator[None]:
    """Records the block's duration as `phase`, also when it raises."""
    t = time.monotonic()
    try:
        yield
    finally:
        record(phase, time.monotonic() - t, logger, **kw)


@contextlib.asynccontextmanager
async def atimed(phase: str, logger: Any = None, **kw: Any) -> AsyncIterator[None]:
    with timed(phase, logger, **kw):
        yield


async def timed_await(phase: str, aw: Awaitable[T], logger: Any = None) -> T:
    """`await aw`, recorded as `phase` (for one of several awaited concurrently)."""
    with timed(phase, logger):
        return await aw
