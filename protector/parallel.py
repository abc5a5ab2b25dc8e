"""Running a blocking function over many items in the I/O pool, a bounded number at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")


async def map_bounded(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    limiter: anyio.CapacityLimiter,
    on_result: Callable[[T, R], None] | None = None,
) -> None:
    """Call `fn(item)` in worker threads, at most `workers` at once (memory stays bounded:
    each worker holds one item's buffers). The first exception cancels the rest."""
    it = iter(items)

    async def worker() -> None:
        for item in it:  # the shared iterator hands each item to exactly one worker
            result = await anyio.to_thread.run_sync(fn, item, limiter=limiter)
            if on_result is not None:
                on_result(item, result)

    async with anyio.create_task_group() as tg:
        for _ in range(max(1, workers)):
            tg.start_soon(worker)
