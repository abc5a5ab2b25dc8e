"""Next start times that keep the RPO: windows across midnight, DST, breaches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from policies import in_window, next_run, parse_window

BERLIN = ZoneInfo("Europe/Berlin")
H = timedelta(hours=1)
M30 = timedelta(minutes=30)


def t(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def test_without_window_start_margin_before_the_deadline() -> None:
    r = next_run(t("2024-03-01T10:00:00+00:00"), 24 * H, None, t("2024-03-01T12:00:00+00:00"))
    assert r.start == t("2024-03-02T09:30:00+00:00")
    assert r.deadline == t("2024-03-02T10:00:00+00:00")
    assert not r.breached and not r.at_risk


def test_breached_rpo_starts_now() -> None:
    now = t("2024-03-03T12:00:00+00:00")
    r = next_run(t("2024-03-01T10:00:00+00:00"), 24 * H, None, now)
    assert r.start == now and r.breached and r.at_risk


def test_within_the_margin_is_at_risk_but_not_yet_breached() -> None:
    now = t("2024-03-02T09:45:00+00:00")
    r = next_run(t("2024-03-01T10:00:00+00:00"), 24 * H, None, now)
    assert r.start == now and r.at_risk and not r.breached


def test_no_good_point_is_due_now_and_breached() -> None:
    now = t("2024-03-01T12:00:00+00:00")
    r = next_run(None, 24 * H, None, now)
    assert r.start == now and r.breached and r.deadline is None and not r.at_risk


def test_window_across_midnight_latest_start_that_keeps_the_rpo() -> None:
    w = parse_window("20:00-06:00")
    now = t("2024-03-01T22:00:00+00:00")
    # deadline 03-02 21:00, so start by 20:30: the evening window of 03-02 allows it
    r = next_run(t("2024-03-01T21:00:00+00:00"), 24 * H, w, now, tz=UTC)
    assert r.start == t("2024-03-02T20:30:00+00:00") and not r.at_risk
    # deadline 03-02 19:00: the night window, no later than 30 min before it closes
    r = next_run(t("2024-03-01T19:00:00+00:00"), 24 * H, w, now, tz=UTC)
    assert r.start == t("2024-03-02T05:30:00+00:00") and not r.at_risk


def test_window_missed_before_the_deadline_is_at_risk() -> None:
    w = parse_window("01:00-05:00")
    r = next_run(t("2024-03-01T00:30:00+00:00"), 24 * H, w, t("2024-03-01T12:00:00+00:00"), tz=UTC)
    assert r.start == t("2024-03-02T01:00:00+00:00")
    assert r.at_risk and not r.breached


def test_due_now_waits_for_the_window_or_starts_inside_it() -> None:
    w = parse_window("20:00-06:00")
    assert next_run(None, H, w, t("2024-03-01T12:00:00+00:00")).start == t(
        "2024-03-01T20:00:00+00:00"
    )
    assert next_run(None, H, w, t("2024-03-02T02:00:00+00:00")).start == t(
        "2024-03-02T02:00:00+00:00"
    )
    # too close to the window's end (margin): the next opening
    assert next_run(None, H, w, t("2024-03-02T05:45:00+00:00")).start == t(
        "2024-03-02T20:00:00+00:00"
    )


def test_rpo_is_elapsed_time_across_spring_forward() -> None:
    # Berlin jumps from 02:00 CET to 03:00 CEST on 2024-03-31: 24 h after 02:00 CET on
    # 03-30 is 03:00 CEST on 03-31, not 02:00.
    r = next_run(
        t("2024-03-30T02:00:00+01:00"), 24 * H, None, t("2024-03-30T12:00:00+01:00"), tz=BERLIN
    )
    assert r.deadline == t("2024-03-31T03:00:00+02:00")
    assert r.start == t("2024-03-31T01:30:00+01:00")


def test_window_edges_follow_local_time_on_dst_days() -> None:
    w = parse_window("01:00-04:00")
    # spring forward: the window lasts 2 real hours (01:00 CET - 04:00 CEST)
    r = next_run(None, H, w, t("2024-03-31T00:30:00+01:00"), tz=BERLIN)
    assert r.start == t("2024-03-31T01:00:00+01:00")
    late = next_run(None, H, w, t("2024-03-31T03:40:00+02:00"), tz=BERLIN)
    assert late.start == t("2024-04-01T01:00:00+02:00")  # less than the margin left
    # fall back: 01:00 CEST - 04:00 CET is 4 real hours; 24 h after 03:00 CEST on 10-26
    # is 02:00 CET, so start by 02:30 CEST (the first 02:30 of the night)
    r = next_run(
        t("2024-10-26T03:00:00+02:00"), 24 * H, w, t("2024-10-26T12:00:00+02:00"), tz=BERLIN
    )
    # (compare instants in UTC: Python never equates an ambiguous local time across zones)
    assert r.deadline.astimezone(UTC) == t("2024-10-27T01:00:00+00:00")  # 02:00 CET
    assert r.start.astimezone(UTC) == t("2024-10-27T00:30:00+00:00")  # 02:30 CEST, 1st time


def test_window_opening_in_the_dst_gap_opens_after_it() -> None:
    w = parse_window("02:30-05:00")  # 02:30 does not exist in Berlin on 2024-03-31
    r = next_run(None, H, w, t("2024-03-31T01:00:00+01:00"), tz=BERLIN)
    assert r.start == t("2024-03-31T03:30:00+02:00")


def test_in_window() -> None:
    night, day = parse_window("22:00-02:00"), parse_window("08:00-17:00")
    assert in_window(night, t("2024-01-01T23:59:00").time())
    assert in_window(night, t("2024-01-01T00:00:00").time())
    assert not in_window(night, t("2024-01-01T02:00:00").time())
    assert in_window(day, t("2024-01-01T08:00:00").time())
    assert not in_window(day, t("2024-01-01T17:00:00").time())


# -- properties -----------------------------------------------------------------------------

# Edges outside Berlin's 02:00-03:00 DST gap/overlap: there wall-clock membership is fuzzy by
# nature (see test_window_opening_in_the_dst_gap_opens_after_it).
windows = st.sampled_from(
    [None, "20:00-06:00", "22:00-05:00", "01:00-04:00", "08:00-17:00", "23:30-00:45"]
).map(lambda s: s and parse_window(s))
moments = st.datetimes(
    min_value=datetime(2024, 3, 25), max_value=datetime(2024, 11, 3), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(
    windows,
    moments,
    st.one_of(st.none(), st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10))),
    st.sampled_from([timedelta(hours=h) for h in (1, 6, 24, 48, 24 * 7)]),
    st.sampled_from([timedelta(0), M30]),
)
def test_start_properties(window, now, age, rpo, margin) -> None:
    good = None if age is None else now - age
    r = next_run(good, rpo, window, now, tz=BERLIN, margin=margin)
    assert r.start >= now
    assert r.start.tzinfo is BERLIN
    if window is not None:
        assert in_window(window, r.start.time())
        if r.at_risk or good is None:  # as soon as the window allows, never a day later
            assert r.start - now <= timedelta(days=1, hours=1)
        else:  # the latest opening before the deadline, never one earlier
            assert r.start >= good + rpo - margin - timedelta(days=1, hours=1)
    if good is not None:
        assert r.breached == (now > good + rpo)
        if not r.at_risk:
            assert r.start <= good + rpo - margin
        if window is None:
            assert r.at_risk == (good + rpo - margin < now)


def test_local_zone_is_dst_aware(monkeypatch) -> None:
    from policies import local_zone

    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert local_zone() == BERLIN
