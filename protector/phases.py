"""Where a command's time goes: one `phase` debug log line per phase, e.g.

    {"event": "phase", "phase": "login", "seconds": 0.0412, ...}

`vigil --log-level debug backup VM` prints start-up, repository_open, login, lookup,
prepare, snapshot, read, snapshot_removal, commit, record and exit (issue 18: a backup's
fixed cost next to its data path); bench/bench_backup_cli.py sums them per phase. Phases
that run concurrently (the repository's key derivation and the vCenter login) each report
their own duration. Logging only: nothing here changes what a command does.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("vigil.phase")
T = TypeVar("T")

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


@contextmanager
def timed(phase: str, logger: Any = None, **kw: Any) -> Iterator[None]:
    """Records the block's duration as `phase`, also when it raises."""
    t = time.monotonic()
    try:
        yield
    finally:
        record(phase, time.monotonic() - t, logger, **kw)


@asynccontextmanager
async def atimed(phase: str, logger: Any = None, **kw: Any) -> AsyncIterator[None]:
    with timed(phase, logger, **kw):
        yield


async def timed_await(phase: str, aw: Awaitable[T], logger: Any = None) -> T:
    """`await aw`, recorded as `phase` (for one of several awaited concurrently)."""
    with timed(phase, logger):
        return await aw
