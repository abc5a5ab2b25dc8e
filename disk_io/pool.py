"""The I/O thread pool and the read pipeline.

All blocking disk calls run in anyio worker threads bounded by one CapacityLimiter
(`limits.io_threads`). Calls are never abandoned on cancellation: a cancelled caller
waits for the thread to return, so a handle is always closed by whoever opened it. The
read pipeline keeps a few reads in flight per disk, hands results on in order, and
bounds the memory it holds to `depth × io_size` bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import structlog

from .extents import split
from .transport import DiskTransport

log = structlog.get_logger(__name__)

T = TypeVar("T")

IO_SIZE = 2 * 1024 * 1024


class IoPool:
    """`io_threads` worker threads shared by every disk of the process."""

    def __init__(self, threads: int = 8) -> None:
        if threads < 1:
            raise ValueError(f"limits.io_threads must be >= 1, got {threads}")
        self.threads = threads
        self.limiter = anyio.CapacityLimiter(threads)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    @asynccontextmanager
    async def opened(self, open_fn: Callable[[], T]) -> AsyncIterator[T]:
        """Open in a worker thread; close (shielded from cancellation) on the way out."""
        disk = await self.run(open_fn)
        try:
            yield disk
        finally:
            with anyio.CancelScope(shield=True):
                await self.run(disk.close)  # type: ignore[attr-defined]

    @asynccontextmanager
    async def read_chunks(
        self,
        disk: DiskTransport,
        ranges: Sequence[tuple[int, int]],
        *,
        io_size: int = IO_SIZE,
        depth: int | None = None,
        reuse_buffers: bool = False,
    ) -> AsyncIterator[AsyncIterator[tuple[int, bytes | bytearray | memoryview]]]:
        """`async with pool.read_chunks(disk, ranges) as chunks: async for off, data in chunks`.

        Ranges are cut into reads of at most `io_size` bytes; up to `depth` of them
        (default 2 × io_threads) are in flight or waiting to be consumed, so the memory
        held is at most depth × io_size. Reads run concurrently up to the transport's
        `parallel_reads` (1 for VDDK, whose handle takes one thread at a time). Results
        come in range order; a failed read raises when its turn comes.

        With `reuse_buffers` (and a transport that has `read_into`), the pipeline recycles
        `depth` buffers instead of allocating one per read: cache-friendly and much faster,
        but each handed-on memoryview is valid only until the consumer asks for the next.
        """
        window = depth if depth is not None else 2 * self.threads
        if window < 1:
            raise ValueError(f"depth must be >= 1, got {window}")
        parallel = max(1, min(window, int(getattr(disk, "parallel_reads", 1))))
        pieces = list(split(ranges, io_size))
        slots = anyio.Semaphore(window)  # pieces started and not yet handed on
        running = anyio.Semaphore(parallel)
        done = [anyio.Event() for _ in pieces]
        results: dict[int, Any] = {}
        read_into = getattr(disk, "read_into", None) if reuse_buffers else None
        free: list[bytearray] = []

        def fill(off: int, length: int) -> memoryview:
            buf = free.pop() if free else bytearray(io_size)
            view = memoryview(buf)[:length]
            read_into(off, view)  # type: ignore[misc]
            return view

        async def read_one(i: int) -> None:
            off, length = pieces[i]
            try:
                async with running:
                    if read_into is not None:
                        results[i] = (True, await self.run(fill, off, length))
                    else:
                        results[i] = (True, await self.run(disk.read, off, length))
            except Exception as exc:  # delivered in order by the consumer
                results[i] = (False, exc)
            done[i].set()

        async def launcher(tg: anyio.abc.TaskGroup) -> None:
            for i in range(len(pieces)):
                await slots.acquire()
                tg.start_soon(read_one, i)

        async def consume() -> AsyncIterator[tuple[int, bytes | bytearray | memoryview]]:
            previous: memoryview | None = None
            for i, (off, length) in enumerate(pieces):
                if previous is not None:  # the consumer is done with it: recycle
                    free.append(previous.obj)  # type: ignore[arg-type]
                    previous = None
                    slots.release()
                await done[i].wait()
                ok, value = results.pop(i)
                if not ok:
                    slots.release()
                    raise value
                if len(value) != length:
                    slots.release()
                    raise OSError(f"short read at offset {off}: {len(value)} of {length} bytes")
                if read_into is not None:
                    previous = value
                else:
                    slots.release()
                yield off, value

        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(launcher, tg)
            try:
                yield consume()
            except Exception as exc:  # re-raised below, not as an ExceptionGroup
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
