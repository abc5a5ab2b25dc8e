"""Per-repository figures without a daemon: the points no longer under object lock (the
generation arithmetic of repository/s3/retention.py on point ids), and how the status
page and `vigil status` show a primary and its copies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from protector.cli.status import render_repositories
from protector.daemon.repo_size import lock_figures, point_time
from protector.daemon.status_html import render_html
from protector.daemon.views import unlocked_text
from repository.s3.retention import RetentionPolicy


def pid(vm: str, t: datetime, seq: int) -> str:
    return f"{vm}-{t:%Y%m%dT%H%M%S}Z-{seq:06d}"


def test_lock_figures_follow_the_generation_floor() -> None:
    lock = RetentionPolicy(days=30, generation_days=7)
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    times = [now - timedelta(days=d) for d in (60, 45, 40, 31, 10, 0)]
    ids = [pid("aaaa", t, i + 1) for i, t in enumerate(times)] + ["garbage-name"]
    fig = lock_figures(ids, lock, now)
    # A point is unlocked once the floor its objects are held to has passed.
    expected = [i for i, t in zip(ids, times, strict=False) if lock.floor(t) <= now]
    assert fig["unlocked_points"] == len(expected) >= 2
    assert fig["oldest_unlocked"]["point"] == ids[0]
    assert fig["oldest_unlocked"]["unlocked_since"] == lock.floor(times[0]).isoformat()
    # The floor is at least 31 days (lock + a day's margin) after the commit.
    assert not any(lock.floor(t) <= now for t in times[3:])
    assert point_time(ids[0]) == times[0].replace(microsecond=0)
    assert lock_figures(ids[3:], lock, now) == {"unlocked_points": 0, "oldest_unlocked": None}


def repos() -> list[dict[str, Any]]:
    return [
        {
            "where": "repository",
            "name": "",
            "role": "primary",
            "location": "/srv/vigil",
            "object_lock_days": 0,
            "size_bytes": 3 * 2**30,
            "objects": 4000,
            "size_at": "2026-12-06T12:00:00+00:00",
        },
        {
            "where": "copies.cloud",
            "name": "cloud",
            "role": "copy",
            "location": "s3://b/p",
            "state": "failing",
            "points_waiting": 7,
            "copied": 2,
            "error": "the S3 service did not answer",
            "retry_at": "2026-12-06T12:05:00+00:00",
            "problems": {},
            "object_lock_days": 30,
            "unlocked_points": 2,
            "oldest_unlocked": {
                "point": "aaaa-20261001T000000Z-000001",
                "committed_at": "2026-10-01T00:00:00+00:00",
                "unlocked_since": "2026-11-05T00:00:00+00:00",
            },
        },
    ]


def test_status_page_and_cli_show_each_repository() -> None:
    primary, cloud = repos()
    assert unlocked_text(primary) == "n/a (no object lock)"
    assert unlocked_text(cloud).startswith("aaaa-20261001T000000Z-000001 (unlocked since 2026")
    assert unlocked_text(cloud | {"unlocked_points": 0, "oldest_unlocked": None}) == (
        "none (every point locked)"
    )
    assert unlocked_text({"object_lock_days": 30}) == "not measured yet"

    lines = render_repositories([primary, cloud])
    assert (
        lines[0]
        == "repository /srv/vigil: 3.00 GiB in 4000 objects (as of 2026-12-06T12:00:00+00:00)"
    )
    assert "  FAILING: 7 point(s) waiting to be copied, 2 copied since the daemon started" in lines
    assert any(line.startswith("  error: the S3 service did not answer") for line in lines)

    status = {
        "vcenter": "https://vc/sdk",
        "healthy": True,
        "generated_at": "now",
        "counts": {},
        "vms": [],
        "jobs": {"running": [], "queued": [], "recent": []},
        "errors": [],
        "policy_errors": [],
        "repositories": [primary, cloud],
    }
    page = render_html(status)
    table = page.split("<h2 id='repositories'>")[1].split("</table>")[0]
    assert "3.0 GiB · 4000 objects" in table and "n/a (no object lock)" in table
    assert "<td class='waiting'>7</td>" in table and "did not answer (next try" in table
