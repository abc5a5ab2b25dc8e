"""The I/O pool's read pipeline: order, back-pressure, errors, cancellation."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import anyio
import pytest

from disk_io import IoPool
from disk_io.filedisk import FileDisk

MIB = 1024 * 1024


class SlowFile(FileDisk):
    """A real FileDisk that sleeps in each read and counts what is in flight."""

    def __init__(self, path: Path, capacity: int, delay: float = 0.0, fail_at: int = -1):
        super().__init__(path, capacity)
        self.delay, self.fail_at = delay, fail_at
        self.lock = threading.Lock()
        self.running = self.max_running = self.started = 0
        self.closed = False
        self.parallel_reads = 4

    def read(self, offset: int, length: int) -> bytes:
        with self.lock:
            self.running += 1
            self.started += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(self.delay)
            if offset == self.fail_at:
                raise OSError(f"injected failure at {offset}")
            return super().read(offset, length)
        finally:
            with self.lock:
                self.running -= 1

    def close(self) -> None:
        self.closed = True
        super().close()


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(24 * MIB)
    path = tmp_path / "disk-flat.vmdk"
    path.write_bytes(data)
    return path, data


async def test_chunks_come_in_order_and_match(image: tuple[Path, bytes]) -> None:
    path, data = image
    pool = IoPool(4)
    ranges = [(0, 4 * MIB), (8 * MIB, 8 * MIB + 512), (20 * MIB, 4 * MIB)]
    disk = SlowFile(path, len(data), delay=0.002)
    got = []
    async with pool.read_chunks(disk, ranges, io_size=MIB) as chunks:
        async for off, buf in chunks:
            got.append((off, len(buf)))
            assert buf == data[off : off + len(buf)]
    expected = [(o, MIB) for o in range(0, 4 * MIB, MIB)]
    expected += [(o, MIB) for o in range(8 * MIB, 16 * MIB, MIB)] + [(16 * MIB, 512)]
    expected += [(o, MIB) for o in range(20 * MIB, 24 * MIB, MIB)]
    assert got == expected
    assert disk.max_running > 1  # reads overlapped


async def test_back_pressure_bounds_reads_ahead_of_the_consumer(image: tuple[Path, bytes]) -> None:
    path, data = image
    pool = IoPool(2)
    disk = SlowFile(path, len(data))
    consumed = 0
    async with pool.read_chunks(disk, [(0, len(data))], io_size=MIB, depth=3) as chunks:
        async for _off, _buf in chunks:
            consumed += 1
            await anyio.sleep(0.01)  # a slow consumer: readers must wait for it
            assert disk.started - consumed <= 3 - 1 + 1  # window of 3, this one handed on
            assert disk.max_running <= 2
    assert disk.started == consumed == 24


async def test_a_failed_read_raises_in_order(image: tuple[Path, bytes]) -> None:
    path, data = image
    disk = SlowFile(path, len(data), fail_at=5 * MIB)
    seen = []
    with pytest.raises(OSError, match="injected failure at 5242880"):
        async with IoPool(4).read_chunks(disk, [(0, 10 * MIB)], io_size=MIB) as chunks:
            async for off, _ in chunks:
                seen.append(off)
    assert seen == [i * MIB for i in range(5)]


async def test_cancellation_closes_the_disk_and_leaves_no_read_running(
    image: tuple[Path, bytes],
) -> None:
    path, data = image
    pool = IoPool(4)
    holder: list[SlowFile] = []

    def opener() -> SlowFile:
        disk = SlowFile(path, len(data), delay=0.05)
        holder.append(disk)
        return disk

    with anyio.move_on_after(0.12):
        async with pool.opened(opener) as disk:
            async with pool.read_chunks(disk, [(0, len(data))], io_size=MIB) as chunks:
                async for _ in chunks:
                    pass
    disk = holder[0]
    assert disk.closed
    assert disk.running == 0
    assert 0 < disk.started < 24


async def test_recycled_buffers_deliver_the_same_bytes(image: tuple[Path, bytes]) -> None:
    path, data = image
    pool = IoPool(3)
    got = bytearray()
    with FileDisk(path, len(data)) as disk:
        ranges = [(0, 5 * MIB + 512), (10 * MIB, 3 * MIB)]
        async with pool.read_chunks(disk, ranges, io_size=MIB, reuse_buffers=True) as chunks:
            offsets = []
            async for off, view in chunks:
                offsets.append(off)
                got += view  # used before asking for the next one
    assert bytes(got) == data[: 5 * MIB + 512] + data[10 * MIB : 13 * MIB]
    assert offsets == [*range(0, 6 * MIB, MIB), *range(10 * MIB, 13 * MIB, MIB)]
