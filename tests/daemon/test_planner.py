"""The planner's pure decisions (protector/daemon/planner.py), without vCenter or a loop:
when a VM is due, what an event trigger does, the job's deadline and reason."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from policies.model import Policy, Retention, Schedule, Selector, Trigger, Window
from protector.daemon.planner import (
    Trigger as Decision,
)
from protector.daemon.planner import (
    due_reason,
    is_fresh,
    job_deadline,
    next_start,
    planning_margin,
    trigger_decision,
)
from protector.daemon.state import VmState, identity_key, states_from

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, noon UTC


def policy(rpo_hours: float = 24, window: tuple[int, int] | None = None, **trigger) -> Policy:
    return Policy(
        name="p",
        priority=1,
        select=Selector(names=("*",)),
        schedule=Schedule(
            rpo=timedelta(hours=rpo_hours),
            window=Window(time(window[0]), time(window[1])) if window else None,
        ),
        retention=Retention(keep_last=1),
        trigger=Trigger(**trigger),
    )


def test_the_margin_is_at_most_a_quarter_of_a_short_rpo() -> None:
    assert planning_margin(timedelta(minutes=15)) == timedelta(minutes=15) / 4
    assert planning_margin(timedelta(days=1)) < timedelta(days=1) / 4


def test_fresh_means_a_good_point_younger_than_the_rpo() -> None:
    p = policy(rpo_hours=24)
    assert is_fresh(VmState(newest_good=NOW - timedelta(hours=23)), p, NOW)
    assert not is_fresh(VmState(newest_good=NOW - timedelta(hours=25)), p, NOW)
    assert not is_fresh(VmState(), p, NOW) and not is_fresh(None, p, NOW)


def test_a_fresh_vm_is_due_before_its_rpo_runs_out_and_not_before_its_cooldown() -> None:
    p = policy(rpo_hours=24)
    st = VmState(newest_good=NOW - timedelta(hours=1))
    start = next_start(st, p, NOW, tz=UTC)
    assert NOW < start < st.newest_good + p.schedule.rpo
    later = (NOW + timedelta(hours=30)).timestamp()
    assert next_start(st, p, NOW, tz=UTC, cooldown_until=later) == datetime.fromtimestamp(
        later, UTC
    )


def test_a_deferred_trigger_makes_the_vm_due_at_the_window_despite_a_fresh_point() -> None:
    p = policy(rpo_hours=72, window=(14, 16))
    st = VmState(newest_good=NOW - timedelta(hours=1))
    assert next_start(st, p, NOW, tz=UTC) > NOW + timedelta(hours=40)
    deferred = next_start(st, p, NOW, tz=UTC, deferred=True)
    assert NOW < deferred <= NOW.replace(hour=16)


def test_a_trigger_is_skipped_when_fresh_deferred_when_the_window_is_closed() -> None:
    fresh = VmState(newest_good=NOW - timedelta(minutes=5))
    assert trigger_decision(fresh, policy(), NOW, UTC, even_if_fresh=False) is Decision.SKIP
    assert trigger_decision(fresh, policy(), NOW, UTC, even_if_fresh=True) is Decision.SUBMIT
    closed = policy(window=(20, 22), outside_window=False)
    assert trigger_decision(None, closed, NOW, UTC, even_if_fresh=False) is Decision.DEFER
    allowed = policy(window=(20, 22), outside_window=True)
    assert trigger_decision(None, allowed, NOW, UTC, even_if_fresh=False) is Decision.SUBMIT


def test_the_deadline_is_now_for_a_trigger_else_when_the_rpo_runs_out() -> None:
    p = policy(rpo_hours=24)
    st = VmState(newest_good=NOW - timedelta(hours=1))
    now = NOW.timestamp()
    assert job_deadline(st, p, immediate=True, now=now) == now
    assert job_deadline(None, p, immediate=False, now=now) == now
    assert job_deadline(st, p, immediate=False, now=now) == (NOW + timedelta(hours=23)).timestamp()


def test_the_due_reason_names_a_deferred_trigger() -> None:
    assert due_reason(None, None) == "no restore point yet"
    assert due_reason(VmState(newest_good=NOW), None) == "RPO due"
    assert due_reason(VmState(newest_good=NOW), "moved") == "moved (deferred to the window)"


def test_states_are_rebuilt_from_manifests_newest_good_wins() -> None:
    class M:
        def __init__(self, point: str, at: datetime) -> None:
            self.point_id, self.committed_at = point, at
            self.vm = type("V", (), {"vcenter_uuid": "vc", "instance_uuid": "i1"})

    state = states_from([M("a", NOW), M("b", NOW + timedelta(hours=1)), M("c", NOW)])
    st = state[identity_key("vc", "i1")]
    assert (st.points, st.newest_point, st.newest_good) == (3, "b", NOW + timedelta(hours=1))
