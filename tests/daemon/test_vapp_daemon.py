"""The daemon protects a vApp a policy selects as one set: the members' jobs share one
vApp backup (every member in one set, each with its own point), not one set per member."""

from __future__ import annotations

import pytest

from protector.vappsets import vapp_sets

from .helpers import policy, wait_for, write_config
from .test_daemon import running, vm_state

pytestmark = pytest.mark.slow

APP = "/DC0/host/DC0_C0/Resources/DC0_C0_APP0"


async def test_daemon_backs_up_a_selected_vapp_as_one_set(tmp_path, make_vcsim):
    sim = make_vcsim(args=["-app", "1"])
    cfg = write_config(
        tmp_path,
        sim,
        policy("shop", f'vapps = ["{APP}"]', extra="[policy.backup]\nquiesce = false\n"),
    )
    members = ["DC0_C0_APP0_VM0", "DC0_C0_APP0_VM1"]
    async with running(cfg) as daemon:
        assert daemon.repo is not None
        for name in members:
            await wait_for(
                lambda n=name: vm_state(daemon, n)["state"] == "ok", 60, f"{name} protected"
            )
            assert vm_state(daemon, name)["policy"] == "shop"
        manifests = daemon.repo.manifests()
        [vset] = vapp_sets(manifests)
        assert vset.complete and sorted(m.vm.name for m in vset.points.values()) == members
        # one point per member: the second member's job was covered by the set
        assert sorted(m.vm.name for m in manifests) == members
        assert all(m.policy == "shop" for m in manifests)
        outcomes = [r.outcome for r in daemon.runner.history if r.vm_name in members]
        assert outcomes.count("success") == 2, outcomes
        # each member's state counts its one point (none twice for the covered job)
        by_name = {m.vm.name: f"{m.vm.vcenter_uuid}/{m.vm.instance_uuid}" for m in manifests}
        assert [daemon.state[by_name[n]].points for n in members] == [1, 1]
        assert daemon.gone_vms() == []  # the booked keys are the watcher's identities
        jobs = {r.vm_name: r.point_id for r in daemon.runner.history if r.outcome == "success"}
        assert {m.vm.name: m.point_id for m in manifests} == jobs
