"""End to end: the daemon against the simulator, two VMs whose backups keep failing (the
file transport with no datastore mounted, as in tests/daemon/test_daemon_faults.py), and a
loopback webhook that must receive exactly one grouped message naming both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from protector.daemon import views
from tests.daemon.helpers import policy, wait_for, write_config
from tests.daemon.test_daemon import points_of, running

from .test_sender import Webhook

pytestmark = pytest.mark.slow


async def test_failing_vms_produce_one_grouped_message(tmp_path, vcsim_fresh):
    hook = Webhook()
    try:
        cfg = write_config(
            tmp_path,
            vcsim_fresh,
            policy("two", 'names = ["DC0_H0_VM0", "DC0_H0_VM1"]'),
            modes='["file"]',
            daemon="retry_attempts = 2",
        )
        with cfg.open("a") as f:
            f.write(
                f'[notify]\nurls = ["json://127.0.0.1:{hook.port}/vigil"]\n'
                'status_url = "http://127.0.0.1:9273/status"\n'
                "group_window = 10\nmin_interval = 3600\n"
            )
        async with running(cfg) as daemon:
            await wait_for(
                lambda: (
                    {r.vm_name for r in daemon.runner.failures.values()}
                    >= {"DC0_H0_VM0", "DC0_H0_VM1"}
                ),
                30,
                "both VMs to use up their retries",
            )
            await wait_for(lambda: hook.posts, 30, "the grouped message")
            # More rounds fail after the cooldown; min_interval holds them back.
            await wait_for(lambda: len(daemon.runner.history) >= 6, 30, "a later round")
        [(path, post)] = hook.posts
        assert path == "/vigil"
        assert post["title"] == "vigil: 2 VMs failing their backups"
        assert "DC0_H0_VM0, DC0_H0_VM1" in post["message"]
        assert "Status: http://127.0.0.1:9273/status" in post["message"]
    finally:
        hook.close()


async def test_policy_edits_report_conflict_unprotected_and_rejected_files(tmp_path, vcsim_fresh):
    hook = Webhook()
    main = tmp_path / "policies.d" / "main.toml"
    try:
        cfg = write_config(
            tmp_path,
            vcsim_fresh,
            policy("a", 'names = ["DC0_H0_VM0"]') + policy("c", 'names = ["DC0_H0_VM1"]'),
        )
        with cfg.open("a") as f:
            f.write(f'[notify]\nurls = ["json://127.0.0.1:{hook.port}/v"]\ngroup_window = 0\n')

        def titles() -> set[str]:
            return {p["title"] for _, p in hook.posts}

        async with running(cfg) as daemon:
            # VM0 now in two policies of equal priority; VM1 in none.
            main.write_text(
                policy("a", 'names = ["DC0_H0_VM0"]')
                + policy("b", 'names = ["DC0_H0_VM0"]')
                + policy("c", 'names = ["nothing-matches"]')
            )
            await wait_for(lambda: len(titles()) >= 2, 30, "the conflict and unprotected messages")
            main.write_text("[[policy]]\nname = 3\n")
            await wait_for(lambda: len(titles()) >= 3, 30, "the rejected-policies message")
            assert daemon.notifier.enabled
        assert titles() == {
            "vigil: VM in a policy conflict: DC0_H0_VM0",
            "vigil: VM no longer protected: DC0_H0_VM1",
            "vigil: policy files rejected: policies",
        }
        by_title = {p["title"]: p["message"] for _, p in hook.posts}
        assert "policies a, b" in by_title["vigil: VM in a policy conflict: DC0_H0_VM0"]
        assert "left policy c" in by_title["vigil: VM no longer protected: DC0_H0_VM1"]
        assert "main.toml" in by_title["vigil: policy files rejected: policies"]
    finally:
        hook.close()


async def test_a_damaged_manifest_found_at_start_is_reported(tmp_path, vcsim_fresh):
    cfg = write_config(tmp_path, vcsim_fresh, policy("p", 'names = ["DC0_H0_VM0"]'))
    async with running(cfg) as daemon:
        await wait_for(lambda: points_of(daemon, "DC0_H0_VM0"), 60, "VM0's point")
        [point] = points_of(daemon, "DC0_H0_VM0")
    [obj] = [p for p in (tmp_path / "repo").rglob(f"*{point.point_id}*") if "manifests" in p.parts]
    obj.write_bytes(b"\0" * 64)  # a bad sector where the manifest was
    hook = Webhook()
    try:
        with cfg.open("a") as f:
            f.write(f'[notify]\nurls = ["json://127.0.0.1:{hook.port}/v"]\ngroup_window = 0\n')
        async with running(cfg):
            await wait_for(lambda: hook.posts, 30, "the damage message")
        [(_, post)] = [p for p in hook.posts if "damage" in p[1]["title"]]
        assert post["title"] == f"vigil: repository damage found: {point.point_id}"
        assert "manifest unreadable" in post["message"]
    finally:
        hook.close()


async def test_breached_lists_a_protected_vm_whose_point_is_older_than_its_rpo(
    tmp_path, vcsim_fresh
):
    cfg = write_config(tmp_path, vcsim_fresh, policy("p", 'names = ["DC0_H0_VM0"]', rpo="1h"))
    async with running(cfg) as daemon:
        # The point is committed a moment before the daemon's state has it.
        await wait_for(
            lambda: any(st.newest_good for st in daemon.state.values()), 60, "VM0's point"
        )
        now = datetime.now(UTC)
        assert views.breached(daemon.planner, now) == {}
        # Two hours on, with no newer point (the clock is moved, not the point).
        assert views.breached(daemon.planner, now + timedelta(hours=2)) == {
            "DC0_H0_VM0": "newest point 2h old (policy p)"
        }
