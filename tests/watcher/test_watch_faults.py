"""The update loop against a live simulator whose answers a proxy breaks: faults
that force a new collector, and values the parser cannot read."""

from __future__ import annotations

import asyncio
import json
import re

from structlog.testing import capture_logs
from watchkit import SoapProxy, run_task, soap_fault, wait_until, watching

from watcher.events import VmChanged, VmRenamed
from watcher.soap import Endpoint, VsphereFault
from watcher.tags import TagClient


async def test_forced_resyncs_leave_no_filters_or_collectors_behind(vcsim_fresh):
    """Each collector fault makes the loop build a new collector and filter; the old
    ones are destroyed first, so the number of live filters stays at one."""
    faults = 0

    def intercept(method: str, body: bytes):
        nonlocal faults
        if method == "WaitForUpdatesEx" and faults > 0 and b">-</version>" in body:
            faults -= 1
            return soap_fault("InvalidCollectorVersion", "collector version is invalid")
        return None

    async with (
        SoapProxy(vcsim_fresh, intercept=intercept) as proxy,
        watching(proxy, max_wait_seconds=1, backoff_base=0.01) as (w, col),
    ):
        session = w._session
        for round_ in range(1, 4):
            faults, target = 1, 1 + round_
            await wait_until(lambda: w.resyncs == target and w.healthy, "a resync")  # noqa: B023
        assert w._session is session  # a collector fault keeps the session
        collectors = {
            m.group(1).decode()
            for method, data in proxy.answers
            if method == "CreatePropertyCollector"
            for m in [re.search(rb"<returnval[^>]*>([^<]+)</returnval>", data)]
        }
        assert len(collectors) == 4
        live = 0
        for value in collectors:
            pc = session.moref("PropertyCollector", value)
            try:
                filters = (await session.properties(pc, ["filter"])).get("filter") or []
            except VsphereFault as exc:
                assert exc.fault_type == "ManagedObjectNotFound"
                continue
            live += len(filters)
        assert live == 1, f"{live} filters alive after 3 forced resyncs"
        # and the loop still follows changes
        vm = w.tree.vms()[0]
        await run_task(
            session, session.moref("VirtualMachine", vm.moref), "Rename_Task", newName="after"
        )
        await col.expect(lambda e: isinstance(e, VmRenamed), "VmRenamed")
        assert not [e for e in col.events[len(col.initial) :] if not isinstance(e, VmRenamed)]


async def test_unreadable_value_in_a_live_answer_is_retried_and_reconciled(vcsim_fresh):
    """One WaitForUpdatesEx answer carries a value that contradicts its xsi:type. The
    loop logs it and goes on (the next rename is seen at once), and the change that
    answer carried comes back through the reconcile (the simulator, unlike vCenter,
    does not re-deliver it)."""
    broken = 0

    def rewrite(method: str, data: bytes) -> bytes:
        nonlocal broken
        if method == "WaitForUpdatesEx" and b">lost-rename<" in data and not broken:
            broken += 1
            return re.sub(
                rb':type="xsd:string">lost-rename<', b':type="xsd:int">lost-rename<', data
            )
        return data

    async with (
        SoapProxy(vcsim_fresh, rewrite=rewrite) as proxy,
        watching(proxy, max_wait_seconds=1, reconcile_interval=3, backoff_base=0.01) as (
            w,
            col,
        ),
    ):
        session = w._session
        first, second = sorted(w.tree.vms(), key=lambda v: v.name)[:2]
        await run_task(
            session,
            session.moref("VirtualMachine", first.moref),
            "Rename_Task",
            newName="lost-rename",
        )
        await wait_until(lambda: w.bad_responses == 1, "the bad answer")
        assert broken == 1 and w.tree.get_vm(first.moref).name == first.name
        await run_task(
            session, session.moref("VirtualMachine", second.moref), "Rename_Task", newName="seen"
        )
        ev = await col.expect(lambda e: isinstance(e, VmRenamed), "the next rename")
        assert ev.vm.moref == second.moref
        ev = await col.expect(lambda e: isinstance(e, VmRenamed), "the reconciled rename")
        assert (ev.vm.moref, ev.new_name) == (first.moref, "lost-rename")
        assert w.missed_updates == 1 and w.healthy and w.resyncs == 1


async def test_tag_service_answers_of_the_wrong_shape_do_not_stop_the_watch(vcsim_fresh):
    """The tagging service answers JSON of an unexpected shape. The inventory is
    synced without tags (logged), and tags are picked up once the answers are sane."""
    sim = vcsim_fresh
    admin_tags = TagClient(Endpoint(sim.url), sim.user, sim.password)
    breaking = True

    def rewrite(method: str, data: bytes) -> bytes:
        if breaking and method.startswith("/api/cis/tagging/tag/"):
            return b'["not", "a", "tag"]'
        return data

    try:
        tag = await admin_tags.create_tag(await admin_tags.create_category("backup"), "gold")
        async with SoapProxy(sim, rewrite=rewrite) as proxy:
            with capture_logs() as logs:
                async with watching(proxy, tag_interval=0.5) as (w, col):
                    assert len(w.tree) > 0 and w.healthy
                    vm = w.tree.vms()[0]
                    await admin_tags.attach(tag, vm.moref)
                    # Two polls, both unreadable: counted from the log, not assumed to fit in
                    # a sleep (a poll slowed by load would leave only one).
                    await wait_until(
                        lambda: sum(e["event"] == "watcher.tags_unreadable" for e in logs) >= 2,
                        "two unreadable tag polls",
                        30,
                    )
                    assert w.tree.get_vm(vm.moref).tags == frozenset()
                    breaking = False
                    ev = await col.expect(lambda e: isinstance(e, VmChanged), "tags", 20)
                    assert ev.changes == {"tags": (frozenset(), frozenset({"backup:gold"}))}
            unreadable = [e for e in logs if e["event"] == "watcher.tags_unreadable"]
            assert len(unreadable) >= 2
            assert "tagging service" in unreadable[0]["error"]
    finally:
        await admin_tags.close()


async def test_a_tag_deleted_during_a_poll_does_not_fail_the_poll(vcsim_fresh):
    """Between listing a VM's attached tags and reading each tag, an admin deletes one:
    its GET is a 404. The poll must still return every other tag (else all tag changes
    stall), by either batch call (with and without a VM list)."""
    sim = vcsim_fresh
    admin_tags = TagClient(Endpoint(sim.url), sim.user, sim.password)
    gone = "urn:vmomi:InventoryServiceTag:deleted-meanwhile:GLOBAL"

    def rewrite(method: str, data: bytes) -> bytes:
        if method.endswith("/tagging/tag-association") and b"tag_id" in data:
            listed = json.loads(data)  # /api: not wrapped in {"value": ...}
            for entry in listed:
                if "object_id" in entry:  # list-attached-tags-on-objects
                    entry["tag_ids"] = [*(entry.get("tag_ids") or []), gone]
            if listed and "tag_id" in listed[0]:  # list-attached-objects-on-tags
                listed.append({"tag_id": gone, "object_ids": listed[0]["object_ids"]})
            return json.dumps(listed).encode()
        return data

    try:
        tag = await admin_tags.create_tag(await admin_tags.create_category("backup"), "gold")
        async with SoapProxy(sim, rewrite=rewrite) as proxy:
            async with watching(proxy) as (w, _col):
                vm = w.tree.vms()[0]
            await admin_tags.attach(tag, vm.moref)
            for vms in ([vm.moref], None):
                reader = TagClient(Endpoint(proxy.url), sim.user, sim.password)
                try:
                    assert await reader.vm_tags(vms) == {vm.moref: frozenset({"backup:gold"})}
                finally:
                    await reader.close()
                deleted_reads = [m for m, _ in proxy.answers if "deleted-meanwhile" in m]
                assert len(deleted_reads) == (1 if vms else 2)
    finally:
        await admin_tags.close()


async def test_close_ends_run_cleanly_when_the_wait_outlives_the_cancel(vcsim_fresh):
    """A wait that starts just as close() sends CancelWaitForUpdates (or a vCenter that
    ignores the cancel) makes close() cancel run() itself: that is the requested stop, and
    whoever awaits run() must not get a CancelledError for it."""

    def intercept(method: str, body: bytes):
        if method == "CancelWaitForUpdates":
            return soap_fault("InvalidState", "nothing to cancel")  # the cancel does not land
        return None

    async with SoapProxy(vcsim_fresh, intercept=intercept) as proxy:
        from watchkit import connector

        from watcher.updates import Watcher

        w = Watcher(connector(proxy), tag_interval=0, max_wait_seconds=30)
        run = asyncio.create_task(w.run())
        await asyncio.wait_for(w.ready.wait(), 20)
        await asyncio.sleep(0.3)  # parked in WaitForUpdatesEx
        await w.close()
        await asyncio.wait_for(run, 5)  # raises CancelledError if the stop leaked out
        assert w.stopped_by_cancel and not run.cancelled()
