"""Retention: restic `forget --keep-*` semantics, with reasons, in local time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import Retention, RetentionPoint, plan_retention

BERLIN = ZoneInfo("Europe/Berlin")


def pt(id: str, iso: str, good: bool = True) -> RetentionPoint:
    return RetentionPoint(id, datetime.fromisoformat(iso), good)


def daily_points(days: int, per_day: int = 2) -> list[RetentionPoint]:
    start = datetime(2024, 1, 1, 1, 0, tzinfo=UTC)
    return [
        RetentionPoint(f"d{d:03d}-{k}", start + timedelta(days=d, hours=10 * k))
        for d in range(days)
        for k in range(per_day)
    ]


def test_keep_last_and_daily_keep_newest_point_per_day() -> None:
    pts = daily_points(10)
    r = plan_retention(pts, Retention(keep_last=3, daily=5), UTC)
    # the 3 newest points, then the newest of each of the newest 5 days
    assert sorted(r.keep_ids) == sorted(
        ["d009-1", "d009-0", "d008-1", "d007-1", "d006-1", "d005-1"]
    )
    by_id = {d.point.id: d.reasons for d in r.keep}
    assert by_id["d009-1"] == ("last 1/3", "daily 2024-01-10 (1/5)")
    assert by_id["d009-0"] == ("last 2/3",)
    assert by_id["d005-1"] == ("daily 2024-01-06 (5/5)",)
    assert {d.reasons for d in r.drop} == {("no keep rule applies",)}
    assert len(r.keep) + len(r.drop) == len(pts)


def test_weekly_uses_iso_weeks_monthly_and_yearly() -> None:
    pts = daily_points(400, per_day=1)
    r = plan_retention(pts, Retention(weekly=2, monthly=3, yearly=5), UTC)
    kept = {d.point.id: d.reasons for d in r.keep}
    newest = pts[-1]  # Monday 2025-02-03: ISO week 2025-W06 starts that day
    assert newest.time.date().isoformat() == "2025-02-03"
    assert kept[newest.id] == (
        "weekly 2025-W06 (1/2)",
        "monthly 2025-02 (1/3)",
        "yearly 2025 (1/5)",
    )
    assert kept["d398-0"] == ("weekly 2025-W05 (2/2)",)  # Sunday 2025-02-02
    assert kept["d396-0"] == ("monthly 2025-01 (2/3)",)  # 2025-01-31
    assert kept["d365-0"] == ("monthly 2024-12 (3/3)", "yearly 2024 (2/5)")  # 2024-12-31
    assert len(r.keep) == 4


def test_buckets_follow_local_time() -> None:
    # 23:30 UTC on Jan 1 is already Jan 2 in Berlin.
    pts = [pt("a", "2024-01-01T22:30:00+00:00"), pt("b", "2024-01-01T23:30:00+00:00")]
    assert plan_retention(pts, Retention(daily=2), UTC).keep_ids == {"b"}
    assert plan_retention(pts, Retention(daily=2), BERLIN).keep_ids == {"a", "b"}


def test_bad_points_never_count_and_are_dropped() -> None:
    pts = [
        pt("good-old", "2024-01-01T10:00:00+00:00"),
        pt("good", "2024-01-02T10:00:00+00:00"),
        pt("bad-new", "2024-01-03T10:00:00+00:00", good=False),
    ]
    r = plan_retention(pts, Retention(keep_last=1, daily=2), UTC)
    assert r.keep_ids == {"good", "good-old"}
    assert [(d.point.id, d.reasons) for d in r.drop] == [("bad-new", ("not a good point",))]


def test_newest_good_point_is_kept_even_when_no_rule_keeps_anything() -> None:
    r = plan_retention(daily_points(3), Retention(), UTC)
    assert [(d.point.id, d.reasons) for d in r.keep] == [("d002-1", ("newest good point",))]


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="no timezone"):
        plan_retention([RetentionPoint("x", datetime(2024, 1, 1))], Retention(keep_last=1), UTC)


# -- properties -----------------------------------------------------------------------------

points = st.lists(
    st.builds(
        RetentionPoint,
        id=st.uuids().map(str),
        time=st.datetimes(
            min_value=datetime(2020, 1, 1), max_value=datetime(2026, 1, 1), timezones=st.just(UTC)
        ),
        good=st.booleans(),
    ),
    max_size=40,
    unique_by=lambda p: p.id,
)
rules = st.builds(
    Retention,
    keep_last=st.integers(0, 5),
    daily=st.integers(0, 8),
    weekly=st.integers(0, 5),
    monthly=st.integers(0, 13),
    yearly=st.integers(0, 3),
)
zones = st.sampled_from(
    [UTC, BERLIN, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe")]
)


@settings(max_examples=200, deadline=None)
@given(points, rules, zones)
def test_newest_good_point_is_never_dropped(pts, rule, tz) -> None:
    r = plan_retention(pts, rule, tz)
    good = [p for p in pts if p.good]
    if good:
        newest = max(good, key=lambda p: (p.time, p.id))
        assert newest.id in r.keep_ids
    assert r.keep_ids.isdisjoint(r.drop_ids) and r.keep_ids | r.drop_ids == {p.id for p in pts}
    assert all(p.good for d in r.keep for p in [d.point])


@settings(max_examples=200, deadline=None)
@given(points, rules, zones, st.randoms())
def test_result_does_not_depend_on_input_order(pts, rule, tz, rnd: random.Random) -> None:
    shuffled = list(pts)
    rnd.shuffle(shuffled)
    assert plan_retention(pts, rule, tz) == plan_retention(shuffled, rule, tz)


@settings(max_examples=200, deadline=None)
@given(points, rules, zones)
def test_applying_twice_changes_nothing(pts, rule, tz) -> None:
    first = plan_retention(pts, rule, tz)
    second = plan_retention([d.point for d in first.keep], rule, tz)
    assert second.keep_ids == first.keep_ids and second.drop == ()
