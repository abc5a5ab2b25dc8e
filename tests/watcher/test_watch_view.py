"""The inventory ContainerView: moves as vCenter reports them through a view-based
filter, and no view left behind.

With a recursive view on the root folder, a VM moved between folders, or into
another datacenter, never leaves the view: vCenter reports one `modify` of its
`parent` (traversal.py cites the docs); only a new VM enters and a destroyed one
leaves. The bundled simulator does the same (vcsim/move.go, docs/vcsim.md), so these
tests check both what goes over the wire and what the watcher makes of it."""

from __future__ import annotations

import re

from pyVmomi import vim
from watchkit import SoapProxy, run_task, soap_fault, vm_spec, wait_until, watching

from watcher.events import VmAdded, VmEvent, VmMoved, VmRemoved
from watcher.inventory import read_inventory, read_snapshot
from watcher.session import Credentials, Session
from watcher.soap import Endpoint, VsphereFault


def update_kinds(proxy: SoapProxy, moref: str, since: int) -> list[str]:
    """The ObjectUpdate kinds the simulator sent for `moref` in answers[since:]."""
    pattern = re.compile(
        rb"<kind>(\w+)</kind>\s*<obj type=\"VirtualMachine\">" + moref.encode() + rb"</obj>"
    )
    return [
        m.group(1).decode()
        for method, data in proxy.answers[since:]
        if method == "WaitForUpdatesEx"
        for m in pattern.finditer(data)
    ]


def container(w, path: str) -> str:
    """The MoRef value of the container at `path` in the watcher's tree."""
    found = [key for key in w.tree._objs if w.tree.path_of(key) == path]
    assert len(found) == 1, f"{path}: {found}"
    return found[0]


def only_moves(events: list[VmEvent]) -> None:
    wrong = [e for e in events if isinstance(e, VmAdded | VmRemoved)]
    assert not wrong, f"a move must not look like a remove and an add: {wrong}"


async def test_moves_new_and_destroyed_vms_through_the_view(make_vcsim):
    sim = make_vcsim(args=["-dc", "2"])
    async with (
        SoapProxy(sim) as proxy,
        watching(proxy) as (w, col),
        Session(Endpoint(sim.url), Credentials(sim.user, sim.password)) as s,
    ):
        vm = next(v for v in w.tree.vms() if v.datacenter == "DC0")
        ref = s.moref("VirtualMachine", vm.moref)
        dc0_vm = s.moref("Folder", container(w, "/DC0/vm"))

        # between folders of one datacenter
        mark = len(proxy.answers)
        prod = s.client.bind(await s.call(dc0_vm, "CreateFolder", name="prod"))
        await run_task(s, prod, "MoveIntoFolder_Task", list=[ref])
        ev = await col.expect(lambda e: isinstance(e, VmMoved), "VmMoved between folders")
        assert (ev.old_path, ev.new_path) == (vm.path, f"/DC0/vm/prod/{vm.name}")
        assert ev.vm.identity == vm.identity and ev.vm.folder == "/DC0/vm/prod"
        assert update_kinds(proxy, vm.moref, mark) == ["modify"]
        only_moves(col.drain())

        # into another datacenter: vMotion with a folder (RelocateVM_Task spec.folder)
        mark = len(proxy.answers)
        other = next(v for v in w.tree.vms() if v.datacenter == "DC1")
        pool = w.tree._objs[other.moref].props["resourcePool"]
        spec = vim.vm.RelocateSpec(
            folder=s.moref("Folder", container(w, "/DC1/vm")),
            pool=s.moref(pool.type, pool.value),
            host=s.moref("HostSystem", other.host),
        )
        await run_task(s, ref, "RelocateVM_Task", spec=spec)
        ev = await col.expect(lambda e: isinstance(e, VmMoved), "VmMoved to DC1")
        assert ev.new_path == f"/DC1/vm/{vm.name}"
        await col.quiet(0.6)
        moved = w.tree.get_vm(vm.moref)
        assert moved is not None and moved.identity == vm.identity
        assert (moved.datacenter, moved.host) == ("DC1", other.host)
        assert moved.resource_pool == other.resource_pool
        kinds = update_kinds(proxy, vm.moref, mark)
        assert kinds and set(kinds) == {"modify"}, kinds
        only_moves(col.drain())

        # a new VM enters, a destroyed one leaves
        mark = len(proxy.answers)
        new = await run_task(s, prod, "CreateVM_Task", config=vm_spec("fresh"), pool=_pool_of(w, s))
        ev = await col.expect(lambda e: isinstance(e, VmAdded), "VmAdded")
        assert (ev.vm.moref, ev.vm.path) == (new._moId, "/DC0/vm/prod/fresh")
        await run_task(s, new, "Destroy_Task")
        ev = await col.expect(lambda e: isinstance(e, VmRemoved), "VmRemoved")
        assert ev.vm.moref == new._moId and w.tree.get_vm(new._moId) is None
        kinds = update_kinds(proxy, new._moId, mark)
        assert (kinds[0], kinds[-1], set(kinds[1:-1]) <= {"modify"}) == ("enter", "leave", True)
        assert await col.quiet(0.6) == []

        # and a one-shot read through a view of its own agrees with the live tree
        snapshot = await read_inventory(s)
        assert sorted(snapshot.vms(), key=lambda v: v.moref) == sorted(
            w.tree.vms(), key=lambda v: v.moref
        )


def _pool_of(w, s):
    """A DC0 resource pool (the moved VM lives in DC1 now: take another DC0 VM's)."""
    still = next(v for v in w.tree.vms() if v.datacenter == "DC0")
    ref = w.tree._objs[still.moref].props["resourcePool"]
    return s.moref(ref.type, ref.value)


async def _live(session: Session, type_name: str, values: set[str], prop: str) -> int:
    live = 0
    for value in values:
        try:
            await session.properties(session.moref(type_name, value), [prop])
        except VsphereFault as exc:
            assert exc.fault_type == "ManagedObjectNotFound", exc
            continue
        live += 1
    return live


def _returned(proxy: SoapProxy, method: str) -> set[str]:
    return {
        m.group(1).decode()
        for name, data in proxy.answers
        if name == method
        for m in [re.search(rb"<returnval[^>]*>([^<]+)</returnval>", data)]
        if m
    }


async def test_views_are_destroyed_on_resync_close_and_after_one_shot_reads(vcsim_fresh):
    """A forced resync makes a new collector, filter and view; the old ones go first.
    close() destroys the last ones, and a one-shot read destroys the view it made."""
    faults = 0

    def intercept(method: str, body: bytes):
        nonlocal faults
        if method == "WaitForUpdatesEx" and faults > 0 and b">-</version>" in body:
            faults -= 1
            return soap_fault("InvalidCollectorVersion", "collector version is invalid")
        return None

    async with SoapProxy(vcsim_fresh, intercept=intercept) as proxy:
        async with watching(proxy, max_wait_seconds=1, backoff_base=0.01) as (w, _col):
            session = w._session
            for round_ in range(1, 4):
                faults, target = 1, 1 + round_
                await wait_until(lambda: w.resyncs == target and w.healthy, "a resync")  # noqa: B023
                assert w.resyncs == target
            views = _returned(proxy, "CreateContainerView")
            assert len(views) == 4
            assert await _live(session, "ContainerView", views, "view") == 1
            # the reconcile reads through the watcher's own view: no new one
            await read_snapshot(session, view=w._view)
            assert _returned(proxy, "CreateContainerView") == views
            destroyed_before_close = proxy.calls["DestroyView"]
        assert proxy.calls["DestroyView"] == destroyed_before_close + 1 == 4

        async with Session(Endpoint(proxy.url), Credentials(proxy.user, proxy.password)) as s:
            await read_inventory(s)
            made = _returned(proxy, "CreateContainerView") - views
            assert len(made) == 1
            assert await _live(s, "ContainerView", made, "view") == 0
