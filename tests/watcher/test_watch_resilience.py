"""Tags, simulator restarts mid-watch, and what the update loop does with odd answers."""

from __future__ import annotations

import asyncio
import socket

from watchkit import run_task, wait_until, watching

from protector.devtools.simulator import Simulator
from watcher.events import VmAdded, VmChanged, VmRemoved, VmRenamed
from watcher.inventory import read_inventory
from watcher.session import Credentials, Session
from watcher.soap import Endpoint
from watcher.tags import TagClient


async def test_tag_assignment_is_seen_within_one_poll_interval(vcsim_fresh):
    sim = vcsim_fresh
    tags = TagClient(Endpoint(sim.url), sim.user, sim.password)
    try:
        async with watching(sim, tag_interval=1.0) as (w, col):
            vm = w.tree.vms()[0]
            cat = await tags.create_category("backup")
            tag = await tags.create_tag(cat, "gold")
            await tags.attach(tag, vm.moref)
            ev = await col.expect(lambda e: isinstance(e, VmChanged), "tags change", timeout=20)
            assert ev.vm.moref == vm.moref
            assert ev.changes == {"tags": (frozenset(), frozenset({"backup:gold"}))}
            assert w.tree.get_vm(vm.moref).tags == frozenset({"backup:gold"})
            async with Session(Endpoint(sim.url), Credentials(sim.user, sim.password)) as s:
                one_shot = await read_inventory(s, tags=tags)
            assert one_shot.get_vm(vm.moref).tags == frozenset({"backup:gold"})
            await tags.detach(tag, vm.moref)
            ev = await col.expect(lambda e: isinstance(e, VmChanged), "tag removal", timeout=20)
            assert ev.changes == {"tags": (frozenset({"backup:gold"}), frozenset())}
    finally:
        await tags.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_simulator_restart_resyncs_with_exactly_the_difference(vcsim_binary):
    """The simulator's model is deterministic: VM uuids derive from names, so identities
    survive a restart. The new instance is started with an extra port group, which shifts
    every MoRef, and its datastore MoRefs are random per start. Before the restart one VM
    was renamed and one destroyed, which the restarted model knows nothing about."""
    port = _free_port()
    listen = ["-l", f"127.0.0.1:{port}"]
    first = Simulator(args=listen, binary=vcsim_binary).start()
    second: Simulator | None = None
    try:
        async with watching(first, backoff_cap=1.0) as (w, col):
            before = {vm.identity: vm for vm in w.tree.vms()}
            renamed, destroyed, *_ = sorted(before.values(), key=lambda v: v.name)
            async with Session(Endpoint(first.url), Credentials(first.user, first.password)) as s:
                mo = s.moref("VirtualMachine", renamed.moref)
                await run_task(s, mo, "Rename_Task", newName="renamed-before-crash")
                await col.expect(lambda e: isinstance(e, VmRenamed), "VmRenamed")
                await run_task(s, s.moref("VirtualMachine", destroyed.moref), "PowerOffVM_Task")
                await run_task(s, s.moref("VirtualMachine", destroyed.moref), "Destroy_Task")
                await col.expect(lambda e: isinstance(e, VmRemoved), "VmRemoved")
            col.drain()
            resyncs = w.resyncs

            assert first.proc is not None
            first.proc.kill()  # no goodbye: the connection just breaks
            first.stop()
            await asyncio.sleep(0.3)
            assert first.url.endswith(f":{port}/sdk")
            second = Simulator(args=[*listen, "-pg", "3"], binary=vcsim_binary).start()

            await wait_until(lambda: w.resyncs > resyncs and w.healthy, "a resync")
            assert w.resyncs == resyncs + 1 and w.healthy
            # The resync queued its events before counting itself; let the collector
            # move them all over.
            while not w._queue.empty():  # noqa: ASYNC110 (the queue has no "drained" event)
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            events = col.drain()

        after = {vm.identity: vm for vm in w.tree.vms()}
        assert set(after) == set(before)  # nobody lost, nobody duplicated
        assert all(after[i].moref != before[i].moref for i in after)  # MoRefs did change

        kinds = [type(e).__name__ for e in events]
        assert kinds.count("VmRemoved") == 0
        assert [e.vm.identity for e in events if isinstance(e, VmAdded)] == [destroyed.identity]
        back = [e for e in events if isinstance(e, VmRenamed)]
        assert [(e.vm.identity, e.old_name, e.new_name) for e in back] == [
            (renamed.identity, "renamed-before-crash", renamed.name)
        ]
        changed = [e for e in events if isinstance(e, VmChanged)]
        # One VmChanged per surviving VM, carrying only what really differs.
        assert sorted(e.vm.identity for e in changed) == sorted(
            i for i in before if i != destroyed.identity
        )
        for e in changed:
            assert set(e.changes) <= {"moref", "host", "datastores"}, e.changes
            assert "moref" in e.changes
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_expired_session_heals_without_events(vcsim_fresh):
    sim = vcsim_fresh
    async with watching(sim, max_wait_seconds=1) as (w, col):
        session = w._session
        assert session is not None
        mgr = session.content.sessionManager
        key = (await session.properties(mgr, ["currentSession"]))["currentSession"].key
        logins, resyncs = session.logins, w.resyncs
        async with Session(Endpoint(sim.url), Credentials(sim.user, sim.password)) as admin:
            await admin.call(admin.content.sessionManager, "TerminateSession", sessionId=[key])
            await wait_until(lambda: w.resyncs > resyncs and w.healthy, "a resync")
            assert session.logins == logins + 1  # healed in place, same session object
            assert w._session is session
            # and the watcher still sees changes
            vm = w.tree.vms()[0]
            await run_task(
                admin, admin.moref("VirtualMachine", vm.moref), "Rename_Task", newName="x"
            )
            ev = await col.expect(lambda e: isinstance(e, VmRenamed), "VmRenamed")
            assert ev.vm.moref == vm.moref
        assert col.events[: len(col.initial)] == col.initial
        # nothing but the rename came out of the whole episode
        assert [type(e) for e in col.events[len(col.initial) :]] == [VmRenamed]
