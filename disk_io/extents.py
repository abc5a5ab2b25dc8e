"""Changed and allocated extents: paging, validation, intersection, chunk alignment (pure).

QueryChangedDiskAreas answers one page per call; the caller advances by
`startOffset + length` until the capacity is covered. Any inconsistency in an answer is
an error (InvalidChangedAreas), never silently skipped data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence

from .errors import InvalidChangedAreas
from .model import SECTOR, Extent

# One QueryChangedDiskAreas answer: (startOffset, length, [(start, length), ...]).
Page = tuple[int, int, Sequence[tuple[int, int]]]


# -- sector helpers ------------------------------------------------------------------------


def align_down(value: int, alignment: int) -> int:
    return value - value % alignment


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def is_sector_aligned(offset: int, length: int = 0) -> bool:
    return offset % SECTOR == 0 and length % SECTOR == 0


def to_sectors(offset: int, length: int) -> tuple[int, int]:
    """(first sector, sector count) of a sector-aligned byte range."""
    if offset < 0 or length < 0 or not is_sector_aligned(offset, length):
        raise ValueError(
            f"byte range offset={offset} length={length} is not a non-negative multiple of "
            f"{SECTOR}-byte sectors"
        )
    return offset // SECTOR, length // SECTOR


def check_range(what: str, offset: int, length: int, capacity: int) -> None:
    """Raise ValueError naming `what` when [offset, offset+length) is not within `capacity`."""
    if offset < 0 or length < 0 or offset + length > capacity:
        raise ValueError(
            f"{what}: range offset={offset} length={length} outside the capacity {capacity}"
        )


def sector_span(offset: int, length: int) -> tuple[int, int]:
    """The smallest sector-aligned byte range covering [offset, offset + length)."""
    start = align_down(offset, SECTOR)
    return start, align_up(offset + length, SECTOR) - start


# -- QueryChangedDiskAreas paging ---------------------------------------------------------


class ChangedAreaPager:
    """Validates pages in order and says where the next one starts (no I/O here)."""

    def __init__(self, capacity: int, start: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.next_offset = start

    @property
    def done(self) -> bool:
        return self.next_offset >= self.capacity

    def feed(self, page: Page) -> list[Extent]:
        start, length, extents = page
        if start != self.next_offset:
            raise InvalidChangedAreas(
                f"changed-areas page starts at {start}, expected {self.next_offset}"
            )
        if length <= 0:
            raise InvalidChangedAreas(
                f"changed-areas page at {start} has length {length}: no progress before the "
                f"capacity {self.capacity} is covered"
            )
        page_end = start + length
        limit = min(page_end, self.capacity)
        out: list[Extent] = []
        prev_end = start
        for ext_start, ext_len in extents:
            if ext_len <= 0:
                raise InvalidChangedAreas(
                    f"changed area at {ext_start} has non-positive length {ext_len}"
                )
            if ext_start < prev_end:
                what = "outside the page" if ext_start < start else "unsorted or overlapping"
                raise InvalidChangedAreas(
                    f"changed area ({ext_start}, {ext_len}) is {what} (page starts at {start}, "
                    f"previous area ends at {prev_end})"
                )
            if ext_start + ext_len > limit:
                raise InvalidChangedAreas(
                    f"changed area ({ext_start}, {ext_len}) ends past the page/capacity end {limit}"
                )
            out.append(Extent(ext_start, ext_len))
            prev_end = ext_start + ext_len
        self.next_offset = page_end
        return out


def iter_changed_areas(
    fetch: Callable[[int], Page], capacity: int, start: int = 0
) -> Iterator[Extent]:
    """Every changed extent from `start` to `capacity`, one fetch(startOffset) per page."""
    pager = ChangedAreaPager(capacity, start)
    while not pager.done:
        yield from pager.feed(fetch(pager.next_offset))


async def collect_changed_areas(
    fetch: Callable[[int], Awaitable[Page]], capacity: int, start: int = 0
) -> list[Extent]:
    """The async twin of iter_changed_areas, for a SOAP fetcher; returns merged extents."""
    pager = ChangedAreaPager(capacity, start)
    found: list[Extent] = []
    while not pager.done:
        found.extend(pager.feed(await fetch(pager.next_offset)))
    return normalize(found)


# -- extent algebra --------------------------------------------------------------------------


def normalize(extents: Iterable[tuple[int, int]]) -> list[Extent]:
    """Sorted, merged (touching ranges joined), empty ranges dropped."""
    out: list[Extent] = []
    for start, length in sorted(e for e in extents if e[1] > 0):
        if out and start <= out[-1].end:
            last = out[-1]
            out[-1] = Extent(last.start, max(last.end, start + length) - last.start)
        else:
            out.append(Extent(start, length))
    return out


def intersect(a: Iterable[tuple[int, int]], b: Iterable[tuple[int, int]]) -> list[Extent]:
    """Byte ranges present in both lists."""
    xs, ys = normalize(a), normalize(b)
    out: list[Extent] = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        lo = max(xs[i].start, ys[j].start)
        hi = min(xs[i].end, ys[j].end)
        if lo < hi:
            out.append(Extent(lo, hi - lo))
        if xs[i].end <= ys[j].end:
            i += 1
        else:
            j += 1
    return out


def clip(extents: Iterable[tuple[int, int]], capacity: int) -> list[Extent]:
    return intersect(extents, [(0, capacity)]) if capacity > 0 else []


def chunk_slots(extents: Iterable[tuple[int, int]], capacity: int, chunk_size: int) -> list[int]:
    """Indices of the chunk slots any extent touches, sorted and unique."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    slots: list[int] = []
    for ext in clip(extents, capacity):
        first = ext.start // chunk_size
        last = (ext.end - 1) // chunk_size
        if slots and first <= slots[-1]:
            first = slots[-1] + 1
        slots.extend(range(first, last + 1))
    return slots


def slot_ranges(slots: Iterable[int], capacity: int, chunk_size: int) -> list[Extent]:
    """Runs of consecutive slots as byte ranges, the last one clipped to the capacity."""
    out: list[Extent] = []
    for slot in sorted(set(slots)):
        start = slot * chunk_size
        if start >= capacity:
            raise ValueError(f"chunk slot {slot} lies beyond the capacity {capacity}")
        end = min(start + chunk_size, capacity)
        if out and out[-1].end == start:
            out[-1] = Extent(out[-1].start, end - out[-1].start)
        else:
            out.append(Extent(start, end - start))
    return out


def align_to_chunks(
    extents: Iterable[tuple[int, int]], capacity: int, chunk_size: int
) -> list[Extent]:
    """Extents widened to whole chunks and merged: what a chunked reader must read."""
    return slot_ranges(chunk_slots(extents, capacity, chunk_size), capacity, chunk_size)


def split(ranges: Iterable[tuple[int, int]], piece: int) -> Iterator[Extent]:
    """Ranges cut into pieces of at most `piece` bytes, in order."""
    if piece <= 0:
        raise ValueError(f"piece size must be positive, got {piece}")
    for start, length in ranges:
        off, end = start, start + length
        while off < end:
            n = min(piece, end - off)
            yield Extent(off, n)
            off += n
