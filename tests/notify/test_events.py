"""The pure part: grouping, rate limits, recovery and the message text."""

from protector.notify.events import Batcher, Event, Kind, format_message


def test_fifty_failures_in_the_window_make_one_message_naming_three():
    b = Batcher(window=30, min_interval=300)
    for i in range(50):
        b.add(Event(Kind.FAILING, f"vm{i:02d}", "snapshot failed"), now=100 + i * 0.1)
    assert b.due(now=129) == []  # the window since the first event is not over
    [msg] = b.due(now=130, status_url="https://vigil.example/status")
    assert msg.title == "vigil: 50 VMs failing their backups"
    assert "vm00, vm01, vm02 … and 47 more" in msg.body
    assert "Status: https://vigil.example/status" in msg.body
    assert msg.severity == "failure"
    assert b.due(now=1000) == []  # sent once, nothing left


def test_a_kind_is_sent_at_most_once_per_min_interval_and_late_events_wait():
    b = Batcher(window=10, min_interval=300)
    b.add(Event(Kind.FAILING, "a"), 0)
    assert len(b.due(10)) == 1
    b.add(Event(Kind.FAILING, "b"), 20)
    b.add(Event(Kind.FAILING, "c"), 200)
    assert b.due(100) == [] and b.due(309) == []
    assert b.next_wakeup(309) == 310
    [msg] = b.due(310)
    assert "b, c" in msg.body and msg.title == "vigil: 2 VMs failing their backups"


def test_kinds_are_limited_separately():
    b = Batcher(window=0, min_interval=300)
    b.add(Event(Kind.FAILING, "a"), 0)
    b.add(Event(Kind.PRUNE_ERROR, "prune", "lock timeout"), 0)
    assert {m.kind for m in b.due(0)} == {Kind.FAILING, Kind.PRUNE_ERROR}


def test_recovery_only_after_reported_trouble_and_rate_limited_too():
    b = Batcher(window=0, min_interval=60)
    b.add(Event(Kind.RECOVERED, "fine"), 0)  # never in trouble: not news
    assert b.due(0) == []
    b.add(Event(Kind.FAILING, "x"), 0)
    b.add(Event(Kind.RPO_BREACH, "y"), 0)
    assert len(b.due(0)) == 2
    b.add(Event(Kind.RECOVERED, "x"), 1)
    [msg] = b.due(1)
    assert msg.kind is Kind.RECOVERED and msg.severity == "success" and "x" in msg.title
    b.add(Event(Kind.RECOVERED, "y"), 2)
    assert b.due(2) == []  # recoveries are rate-limited like the rest
    assert "y" in b.due(61)[0].title
    b.add(Event(Kind.RECOVERED, "x"), 200)  # a second success is not a recovery
    assert b.due(300) == []


def test_a_failure_that_recovers_before_it_was_sent_is_not_reported_as_failing():
    b = Batcher(window=30, min_interval=0)
    b.add(Event(Kind.FAILING, "x", "boom"), 0)
    b.add(Event(Kind.RECOVERED, "x"), 5)
    kinds = [m.kind for m in b.due(40)]
    assert kinds == [Kind.RECOVERED]


def test_one_event_names_its_subject_and_long_details_are_clipped():
    msg = format_message(Kind.PRUNE_ERROR, [Event(Kind.PRUNE_ERROR, "prune", "x" * 2000)])
    assert msg.title == "vigil: prune error: prune"
    assert len(msg.body) < 400 and msg.body.endswith("…")
