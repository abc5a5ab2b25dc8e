"""The tag client: what one poll costs vCenter, renames, and the two URL flavours.

The simulator serves the tagging API under /api (as vCenter 7.0 U2+) and /rest, or
only /rest with -vapi-rest-only (vcsim/vapi_api.go); a proxy counts the requests."""

from __future__ import annotations

import math

from watchkit import SoapProxy

from watcher.session import Credentials, Session
from watcher.soap import Endpoint
from watcher.tags import TagClient


async def _vms(sim) -> list[str]:
    from watcher.inventory import read_inventory

    async with Session(Endpoint(sim.url), Credentials(sim.user, sim.password)) as s:
        return sorted(vm.moref for vm in (await read_inventory(s)).vms())


async def _tagged(sim, vms: list[str], per_category: int, categories: int) -> dict[str, set]:
    """Tags attached round-robin to the VMs; returns the expected VM -> labels."""
    admin = TagClient(Endpoint(sim.url), sim.user, sim.password)
    expected: dict[str, set] = {}
    try:
        n = 0
        for c in range(categories):
            cat = await admin.create_category(f"cat{c}")
            for t in range(per_category):
                tag = await admin.create_tag(cat, f"t{t}")
                vm = vms[n % len(vms)]
                await admin.attach(tag, vm)
                expected.setdefault(vm, set()).add(f"cat{c}:t{t}")
                n += 1
    finally:
        await admin.close()
    return expected


async def test_api_is_preferred_and_rest_is_the_fallback(make_vcsim):
    for args, flavor in (([], "api"), (["-vapi-rest-only"], "rest")):
        sim = make_vcsim(args=args)
        vms = await _vms(sim)
        expected = await _tagged(sim, vms, per_category=2, categories=1)
        async with SoapProxy(sim) as proxy:
            reader = TagClient(Endpoint(proxy.url), sim.user, sim.password)
            try:
                got = await reader.vm_tags(vms)
                assert reader.flavor == flavor
            finally:
                await reader.close()
        assert got == {vm: frozenset(labels) for vm, labels in expected.items()}
        paths = [p for p in proxy.calls if p.startswith(("/api", "/rest"))]
        if flavor == "api":
            assert paths and all(p.startswith("/api/") for p in paths), paths
        else:  # one probe of /api/session, then /rest only
            assert proxy.calls["/api/session"] == 1
            assert all(p.startswith("/rest/") for p in paths if p != "/api/session"), paths


async def test_a_poll_reads_each_tag_once_then_only_its_refresh_budget(make_vcsim):
    sim = make_vcsim(args=[])
    vms = await _vms(sim)
    expected = await _tagged(sim, vms, per_category=20, categories=3)  # 60 tags in use
    reader = TagClient(Endpoint(sim.url), sim.user, sim.password, refresh_budget=5)
    try:
        await reader.login()
        start = reader.requests
        first = await reader.vm_tags(vms)
        # one batch call for the VMs, then each tag and category once
        assert reader.requests - start == 1 + 60 + 3
        assert first == {vm: frozenset(labels) for vm, labels in expected.items()}
        for _ in range(3):
            start = reader.requests
            assert await reader.vm_tags(vms) == first
            assert reader.requests - start == 1 + 5
    finally:
        await reader.close()


async def test_a_renamed_tag_is_seen_within_the_refresh_window(make_vcsim):
    sim = make_vcsim(args=[])
    vms = await _vms(sim)
    await _tagged(sim, vms, per_category=6, categories=2)  # 12 tags + 2 categories in use
    admin = TagClient(Endpoint(sim.url), sim.user, sim.password)
    reader = TagClient(Endpoint(sim.url), sim.user, sim.password, refresh_budget=4)
    try:
        before = await reader.vm_tags(vms)
        vm, labels = next((vm, labels) for vm, labels in before.items() if "cat1:t5" in labels)
        tag_id = next(
            t
            for t, (name, cat) in reader._tag_cache.items()
            if name == "t5" and reader._cat_cache[cat] == "cat1"
        )
        await admin.rename_tag(tag_id, "renamed")
        window = math.ceil(14 / 4)
        for _poll in range(window):
            now = await reader.vm_tags(vms)
            if "cat1:renamed" in now[vm]:
                break
        else:
            raise AssertionError(f"rename not seen within {window} polls")
        assert now[vm] == (labels - {"cat1:t5"}) | {"cat1:renamed"}
    finally:
        await admin.close()
        await reader.close()
