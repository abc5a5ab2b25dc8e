"""Changed-area paging, validation and chunk alignment (pure), with hypothesis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disk_io import InvalidChangedAreas
from disk_io.extents import (
    ChangedAreaPager,
    align_to_chunks,
    chunk_slots,
    collect_changed_areas,
    intersect,
    iter_changed_areas,
    normalize,
    sector_span,
    slot_ranges,
    split,
    to_sectors,
)


def points(extents: list[tuple[int, int]]) -> set[int]:
    return {p for s, n in extents for p in range(s, s + n)}


extent_lists = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), max_size=12)


@st.composite
def disk_with_pages(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], list[int]]:
    capacity = draw(st.integers(1, 400))
    cuts = sorted(draw(st.sets(st.integers(1, capacity - 1), max_size=8))) if capacity > 1 else []
    bounds = [0, *cuts, capacity]
    raw = draw(extent_lists)
    ext = [(s, n) for s, n in normalize(raw) if s + n <= capacity]
    return capacity, ext, bounds


def pages_for(ext: list[tuple[int, int]], bounds: list[int]) -> dict[int, tuple]:
    """What a well-behaved vCenter answers: extents cut at page boundaries."""
    pages = {}
    for lo, hi in itertools.pairwise(bounds):
        pages[lo] = (lo, hi - lo, intersect(ext, [(lo, hi - lo)]))
    return pages


@given(disk_with_pages())
def test_paging_returns_every_changed_byte(case: tuple) -> None:
    capacity, ext, bounds = case
    pages = pages_for(ext, bounds)
    calls: list[int] = []

    def fetch(start: int) -> tuple:
        calls.append(start)
        return pages[start]

    got = list(iter_changed_areas(fetch, capacity))
    assert calls == bounds[:-1]
    assert points(got) == points(ext)


async def test_async_collect_merges_page_cuts() -> None:
    pages = {0: (0, 100, [(50, 50)]), 100: (100, 100, [(100, 10), (150, 50)])}

    async def fetch(start: int) -> tuple:
        return pages[start]

    assert await collect_changed_areas(fetch, 200) == [(50, 60), (150, 50)]


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ((10, 100, []), "starts at 10, expected 0"),
        ((0, 0, []), "no progress"),
        ((0, 100, [(20, 10), (25, 10)]), "unsorted or overlapping"),
        ((0, 100, [(20, 10), (5, 1)]), "unsorted or overlapping"),
        ((0, 100, [(90, 20)]), "ends past the page"),
        ((0, 1000, [(190, 20)]), "ends past the page/capacity end 200"),
        ((0, 100, [(10, 0)]), "non-positive length"),
    ],
)
def test_invalid_answers_are_errors(page: tuple, message: str) -> None:
    pager = ChangedAreaPager(200)
    with pytest.raises(InvalidChangedAreas, match=message):
        pager.feed(page)


def test_second_page_must_start_where_the_first_ended() -> None:
    answers = iter([(0, 100, [(0, 10)]), (120, 80, [])])
    with pytest.raises(InvalidChangedAreas, match="starts at 120, expected 100"):
        list(iter_changed_areas(lambda _s: next(answers), 200))


def test_extent_before_the_page_is_outside() -> None:
    pager = ChangedAreaPager(200)
    pager.feed((0, 100, []))
    with pytest.raises(InvalidChangedAreas, match="outside the page"):
        pager.feed((100, 100, [(90, 20)]))


@given(extent_lists, extent_lists)
def test_intersect_matches_the_point_model(a: list, b: list) -> None:
    got = intersect(a, b)
    assert points(got) == points(a) & points(b)
    assert got == normalize(got)


@given(extent_lists)
def test_normalize_is_sorted_disjoint_and_keeps_points(a: list) -> None:
    got = normalize(a)
    assert points(got) == points(a)
    for x, y in itertools.pairwise(got):
        assert x.end < y.start


@settings(max_examples=200)
@given(extent_lists, st.integers(1, 350), st.sampled_from([1, 7, 16, 64]))
def test_chunk_alignment_covers_exactly_the_touched_chunks(
    a: list, capacity: int, chunk: int
) -> None:
    slots = chunk_slots(a, capacity, chunk)
    inside = points(a) & set(range(capacity))
    assert slots == sorted({p // chunk for p in inside})
    ranges = align_to_chunks(a, capacity, chunk)
    covered = points(ranges)
    assert inside <= covered
    assert covered == {p for s in slots for p in range(s * chunk, min((s + 1) * chunk, capacity))}
    for r in ranges:
        assert r.start % chunk == 0
        assert r.end % chunk == 0 or r.end == capacity


def test_slot_ranges_merges_runs_and_rejects_slots_past_capacity() -> None:
    assert slot_ranges([0, 1, 3], capacity=4 * 10 - 5, chunk_size=10) == [(0, 20), (30, 5)]
    with pytest.raises(ValueError, match="beyond the capacity"):
        slot_ranges([4], capacity=40, chunk_size=10)


@given(extent_lists, st.integers(1, 17))
def test_split_preserves_order_and_bytes(a: list, piece: int) -> None:
    ranges = normalize(a)
    pieces = list(split(ranges, piece))
    assert all(0 < p.length <= piece for p in pieces)
    assert [p.start for p in pieces] == sorted(p.start for p in pieces)
    assert points(pieces) == points(ranges)


def test_sector_helpers() -> None:
    assert to_sectors(1024, 4096) == (2, 8)
    with pytest.raises(ValueError, match="offset=100 length=512"):
        to_sectors(100, 512)
    assert sector_span(100, 500) == (0, 1024)
    assert sector_span(512, 512) == (512, 512)
