"""The pure inventory tree: paths, out-of-order arrival, events, identity matching."""

from __future__ import annotations

import pytest

from watcher.events import VmAdded, VmChanged, VmMoved, VmRemoved, VmRenamed
from watcher.tree import Change, InventoryTree, MoRef, ObjectUpdate, TreeUpdateError, coalesce

VC = "vc-uuid"


def enter(type_: str, value: str, **props: object) -> ObjectUpdate:
    return ObjectUpdate(
        "enter", MoRef(type_, value), [Change(k, "assign", v) for k, v in props.items()]
    )


def modify(type_: str, value: str, **props: object) -> ObjectUpdate:
    return ObjectUpdate(
        "modify", MoRef(type_, value), [Change(k, "assign", v) for k, v in props.items()]
    )


def leave(type_: str, value: str) -> ObjectUpdate:
    return ObjectUpdate("leave", MoRef(type_, value))


ROOT = MoRef("Folder", "group-d1")
DC = MoRef("Datacenter", "datacenter-2")
VMF = MoRef("Folder", "group-v3")
HOSTF = MoRef("Folder", "group-h4")
CLUSTER = MoRef("ClusterComputeResource", "domain-c7")
RP = MoRef("ResourcePool", "resgroup-8")


def skeleton() -> list[ObjectUpdate]:
    return [
        enter("Folder", ROOT.value, name="Datacenters"),
        enter("Datacenter", DC.value, name="DC0", parent=ROOT),
        enter("Folder", VMF.value, name="vm", parent=DC),
        enter("Folder", HOSTF.value, name="host", parent=DC),
        enter("ClusterComputeResource", CLUSTER.value, name="C0", parent=HOSTF),
        enter("ResourcePool", RP.value, name="Resources", parent=CLUSTER),
    ]


def vm(value: str, name: str, parent: MoRef | None = VMF, **extra: object) -> ObjectUpdate:
    props: dict[str, object] = {
        "name": name,
        "resourcePool": RP,
        "runtime.powerState": "poweredOn",
        "runtime.host": MoRef("HostSystem", "host-9"),
        "config.instanceUuid": f"iu-{value}",
        "config.uuid": f"bu-{value}",
        "config.template": False,
        "datastore": (MoRef("Datastore", "datastore-1"),),
    }
    if parent is not None:
        props["parent"] = parent
    props.update(extra)
    return enter("VirtualMachine", value, **props)


def test_child_before_parent_waits_for_its_ancestors():
    t = InventoryTree(VC)
    prod = MoRef("Folder", "group-v10")
    # The VM and its folder arrive before the datacenter and the root folder.
    assert (
        t.apply([vm("vm-1", "web-1", prod), enter("Folder", prod.value, name="prod", parent=VMF)])
        == []
    )
    assert t.vms() == []
    assert t.path_of(prod) is None
    events = t.apply(list(reversed(skeleton())))
    assert [type(e) for e in events] == [VmAdded]
    node = events[0].vm
    assert node.path == "/DC0/vm/prod/web-1"
    assert node.folder == "/DC0/vm/prod"
    assert node.datacenter == "DC0"
    assert node.resource_pool == "/DC0/host/C0/Resources"
    assert node.identity == f"{VC}/iu-vm-1"
    assert node.host == "host-9" and node.datastores == ("datastore-1",)
    assert t.path_of(prod) == "/DC0/vm/prod"
    assert t.path_of(CLUSTER) == "/DC0/host/C0"
    assert t.get_vm("vm-1") == node and t.find_vm_by_identity(f"{VC}/iu-vm-1") == node


def test_rename_vm_is_renamed_only_and_folder_rename_moves_every_vm_below():
    t = InventoryTree(VC)
    prod = MoRef("Folder", "group-v10")
    t.apply([*skeleton(), enter("Folder", prod.value, name="prod", parent=VMF)])
    t.apply([vm("vm-1", "web-1", prod), vm("vm-2", "web-2", prod), vm("vm-3", "db", VMF)])

    events = t.apply(modify("VirtualMachine", "vm-1", name="web-01"))
    assert events == [VmRenamed(t.get_vm("vm-1"), "web-1", "web-01")]
    assert t.get_vm("vm-1").path == "/DC0/vm/prod/web-01"

    events = t.apply(modify("Folder", prod.value, name="production"))
    moved = sorted((e.old_path, e.new_path) for e in events if isinstance(e, VmMoved))
    assert moved == [
        ("/DC0/vm/prod/web-01", "/DC0/vm/production/web-01"),
        ("/DC0/vm/prod/web-2", "/DC0/vm/production/web-2"),
    ]
    assert len(events) == 2  # the VM outside the folder is untouched

    # Moving the folder under another folder moves its VMs too.
    t.apply(enter("Folder", "group-v11", name="apps", parent=VMF))
    events = t.apply(modify("Folder", prod.value, parent=MoRef("Folder", "group-v11")))
    assert {e.new_path for e in events} == {
        "/DC0/vm/apps/production/web-01",
        "/DC0/vm/apps/production/web-2",
    }
    assert all(isinstance(e, VmMoved) for e in events)


def test_field_changes_are_reported_with_old_and_new_values():
    t = InventoryTree(VC, {101: "owner"})
    t.apply([*skeleton(), vm("vm-1", "web-1")])
    events = t.apply(
        modify(
            "VirtualMachine",
            "vm-1",
            **{
                "runtime.powerState": "poweredOff",
                "config.template": True,
                "customValue": ({"key": 101, "value": "alice"},),
            },
        )
    )
    assert len(events) == 1 and isinstance(events[0], VmChanged)
    assert events[0].changes == {
        "power_state": ("poweredOn", "poweredOff"),
        "template": (False, True),
        "attributes": ({}, {"owner": "alice"}),
    }
    assert t.get_vm("vm-1").template is True
    # A renamed custom field is a change of every VM carrying it.
    events = t.set_field_names({101: "Owner"})
    assert events[0].changes == {"attributes": ({"owner": "alice"}, {"Owner": "alice"})}
    events = t.set_tags({"vm-1": frozenset({"env:prod"})})
    assert events == [VmChanged(t.get_vm("vm-1"), {"tags": (frozenset(), frozenset({"env:prod"}))})]
    assert t.set_tags({"vm-1": frozenset({"env:prod"})}) == []


def test_unset_property_and_removal():
    t = InventoryTree(VC)
    t.apply([*skeleton(), vm("vm-1", "web-1", **{"config.annotation": "hello"})])
    events = t.apply(
        ObjectUpdate(
            "modify", MoRef("VirtualMachine", "vm-1"), [Change("config.annotation", "assign")]
        )
    )
    assert events[0].changes == {"annotation": ("hello", "")}
    before = t.get_vm("vm-1")
    assert t.apply(leave("VirtualMachine", "vm-1")) == [VmRemoved(before)]
    assert t.vms() == [] and t.find_vm_by_identity(before.identity) is None


def test_leaving_folder_removes_its_vms_and_identity_falls_back():
    t = InventoryTree(VC)
    prod = MoRef("Folder", "group-v10")
    t.apply([*skeleton(), enter("Folder", prod.value, name="prod", parent=VMF)])
    t.apply(vm("vm-1", "new", prod, **{"config.instanceUuid": None, "config.uuid": None}))
    assert t.get_vm("vm-1").identity == f"{VC}/moref:vm-1"
    events = t.apply(leave("Folder", prod.value))
    assert [type(e) for e in events] == [VmRemoved]


def test_vapp_vm_without_folder_gets_the_vapp_path():
    t = InventoryTree(VC)
    app = MoRef("VirtualApp", "resgroup-v20")
    t.apply([*skeleton(), enter("VirtualApp", app.value, name="APP0", parent=RP)])
    events = t.apply(vm("vm-5", "app-db", None, parentVApp=app, resourcePool=app))
    node = events[0].vm
    assert node.path == "/DC0/host/C0/Resources/APP0/app-db"
    assert node.vapp == "/DC0/host/C0/Resources/APP0"
    assert node.folder is None
    assert node.resource_pool == "/DC0/host/C0/Resources/APP0"
    # A vApp VM that also has a folder parent is listed under the folder.
    events = t.apply(vm("vm-6", "app-web", VMF, resourcePool=app))
    assert events[0].vm.path == "/DC0/vm/app-web"
    assert events[0].vm.vapp == "/DC0/host/C0/Resources/APP0"
    # Renaming the vApp moves the folderless VM; the other one only sees new paths.
    events = t.apply(modify("VirtualApp", app.value, name="APP1"))
    got = {(type(e).__name__, e.vm.moref): e for e in events}
    assert set(got) == {("VmMoved", "vm-5"), ("VmChanged", "vm-5"), ("VmChanged", "vm-6")}
    assert got["VmMoved", "vm-5"].new_path == "/DC0/host/C0/Resources/APP1/app-db"
    # `vapps` (the chain of vApps the VM is in, which `vapps` policy selectors match) too
    assert set(got["VmChanged", "vm-5"].changes) == {"resource_pool", "vapps"}
    assert got["VmChanged", "vm-6"].changes["vapp"] == (
        "/DC0/host/C0/Resources/APP0",
        "/DC0/host/C0/Resources/APP1",
    )
    assert got["VmChanged", "vm-6"].changes["vapps"] == (
        ("/DC0/host/C0/Resources/APP0",),
        ("/DC0/host/C0/Resources/APP1",),
    )


def test_vm_in_a_nested_vapp_lists_every_enclosing_vapp():
    t = InventoryTree(VC)
    outer = MoRef("VirtualApp", "resgroup-v30")
    inner = MoRef("VirtualApp", "resgroup-v31")
    t.apply(
        [
            *skeleton(),
            enter("VirtualApp", outer.value, name="shop", parent=RP),
            enter("VirtualApp", inner.value, name="db", parent=outer),
        ]
    )
    [ev] = t.apply(vm("vm-7", "db-1", None, parentVApp=inner, resourcePool=inner))
    assert ev.vm.vapp == "/DC0/host/C0/Resources/shop/db"
    assert ev.vm.vapps == ("/DC0/host/C0/Resources/shop/db", "/DC0/host/C0/Resources/shop")
    # the same chain by MoRef (a cluster's vApp set job is keyed by it)
    assert t.vapp_morefs("vm-7") == (inner.value, outer.value)
    # a VM in a plain pool is in no vApp
    [ev] = t.apply(vm("vm-8", "plain", VMF, resourcePool=RP))
    assert ev.vm.vapps == () and t.vapp_morefs("vm-8") == ()
    assert t.vapp_morefs("vm-404") == ()


def test_sync_to_matches_by_identity_even_when_morefs_change():
    old = InventoryTree(VC)
    old.apply([*skeleton(), vm("vm-1", "web-1"), vm("vm-2", "web-2"), vm("vm-3", "gone")])
    new = InventoryTree(VC)
    # Same VMs under new MoRefs (a rebuilt vCenter), one renamed, one gone, one new.
    new.apply(
        [
            *skeleton(),
            vm("vm-11", "web-1", **{"config.instanceUuid": "iu-vm-1"}),
            vm("vm-12", "web-2-renamed", **{"config.instanceUuid": "iu-vm-2"}),
            vm("vm-14", "fresh"),
        ]
    )
    events = old.sync_to(new)
    summary = sorted((type(e).__name__, e.vm.name) for e in events)
    assert summary == [
        ("VmAdded", "fresh"),
        ("VmChanged", "web-1"),
        ("VmChanged", "web-2-renamed"),
        ("VmRemoved", "gone"),
        ("VmRenamed", "web-2-renamed"),
    ]
    changed = [e for e in events if isinstance(e, VmChanged)]
    assert {tuple(e.changes) for e in changed} == {("moref", "bios_uuid")}
    assert old.get_vm("vm-11").name == "web-1" and old.get_vm("vm-1") is None


def test_resync_without_fresh_tags_keeps_each_vms_tags_across_changed_morefs():
    """A rebuilt vCenter can hand a VM's old MoRef to another VM. When the tag service
    cannot be read during the resync, the tags carried over must follow the VMs (by
    identity), not the MoRefs: else one VM silently gains another's backup tag."""
    old = InventoryTree(VC)
    old.apply([*skeleton(), vm("vm-1", "db"), vm("vm-2", "web")])
    old.set_tags({"vm-1": frozenset({"Backup:Gold"})})
    new = InventoryTree(VC)
    new.apply(
        [
            *skeleton(),  # the two VMs swapped MoRefs
            vm("vm-2", "db", **{"config.instanceUuid": "iu-vm-1", "config.uuid": "bu-vm-1"}),
            vm("vm-1", "web", **{"config.instanceUuid": "iu-vm-2", "config.uuid": "bu-vm-2"}),
        ]
    )
    events = old.sync_to(new, take_tags=False)
    assert old.get_vm("vm-2").name == "db"
    assert old.get_vm("vm-2").tags == frozenset({"Backup:Gold"})
    assert old.get_vm("vm-1").tags == frozenset()
    assert all("tags" not in getattr(e, "changes", {}) for e in events), events
    assert sorted(old.tags) == ["vm-2"]
    # A VM whose config is unset in the fresh read keeps its identity, and its tags.
    again = InventoryTree(VC)
    web = {"config.instanceUuid": "iu-vm-2", "config.uuid": "bu-vm-2"}
    again.apply([*skeleton(), vm("vm-2", "db", **CONFIG_UNSET), vm("vm-1", "web", **web)])
    events = old.sync_to(again, take_tags=False)
    assert old.get_vm("vm-2").tags == frozenset({"Backup:Gold"})
    assert old.get_vm("vm-1").tags == frozenset()
    assert all("tags" not in getattr(e, "changes", {}) for e in events), events


def test_coalesce_keeps_an_object_that_enters_and_leaves_in_one_update_set():
    ups = [vm("vm-1", "a"), leave("VirtualMachine", "vm-1"), leave("VirtualMachine", "vm-2")]
    assert [(u.kind, u.obj.value) for u in coalesce(ups)] == [("enter", "vm-1"), ("leave", "vm-2")]


CONFIG_UNSET = {
    "config.instanceUuid": None,
    "config.uuid": None,
    "config.template": None,
    "config.guestId": None,
    "config.annotation": None,
    "config.changeTrackingEnabled": None,
}


def test_momentarily_unset_config_keeps_the_identity_and_config_facts():
    """vCenter leaves `config` unset during outages and while a VM is being created or
    reconfigured. That must not flip the identity to "moref:..." (a remove/add pair
    downstream) nor make a template look like a VM."""
    t = InventoryTree(VC)
    t.apply(
        [
            *skeleton(),
            vm(
                "vm-1",
                "tmpl",
                **{
                    "config.template": True,
                    "config.guestId": "otherGuest",
                    "config.annotation": "golden image",
                    "config.changeTrackingEnabled": True,
                },
            ),
        ]
    )
    before = t.get_vm("vm-1")
    assert t.apply(modify("VirtualMachine", "vm-1", **CONFIG_UNSET)) == []
    assert t.get_vm("vm-1") == before
    assert t.find_vm_by_identity(f"{VC}/iu-vm-1") == before
    # Other changes still come through, under the same identity.
    events = t.apply(modify("VirtualMachine", "vm-1", name="tmpl-2"))
    assert [type(e) for e in events] == [VmRenamed]
    assert events[0].vm.identity == before.identity and events[0].vm.template is True
    # The config coming back (unchanged) is no event either.
    back = {
        "config.instanceUuid": "iu-vm-1",
        "config.uuid": "bu-vm-1",
        "config.template": True,
        "config.guestId": "otherGuest",
        "config.annotation": "golden image",
        "config.changeTrackingEnabled": True,
    }
    assert t.apply(modify("VirtualMachine", "vm-1", **back)) == []
    # A config that comes back *changed* is reported as such.
    events = t.apply(modify("VirtualMachine", "vm-1", **{"config.annotation": "v2"}))
    assert events[0].changes == {"annotation": ("golden image", "v2")}


def test_resync_while_config_is_unset_keeps_identity_by_moref_and_name():
    t = InventoryTree(VC)
    t.apply([*skeleton(), vm("vm-1", "web-1"), vm("vm-2", "web-2")])
    before = {v.moref: v for v in t.vms()}
    fresh = InventoryTree(VC)
    fresh.apply([*skeleton(), vm("vm-1", "web-1", **CONFIG_UNSET), vm("vm-2", "web-2")])
    assert t.sync_to(fresh) == []
    assert {v.moref: v for v in t.vms()} == before
    # A different VM under a reused MoRef (another name) is not given the old identity.
    other = InventoryTree(VC)
    other.apply([*skeleton(), vm("vm-1", "someone-else", **CONFIG_UNSET), vm("vm-2", "web-2")])
    events = t.sync_to(other)
    assert sorted(type(e).__name__ for e in events) == ["VmAdded", "VmRemoved"]
    assert t.get_vm("vm-1").identity == f"{VC}/moref:vm-1"


def test_a_value_the_tree_cannot_use_leaves_the_vms_untouched():
    t = InventoryTree(VC)
    t.apply([*skeleton(), vm("vm-1", "web-1"), vm("vm-2", "web-2")])
    before = sorted(t.vms(), key=lambda v: v.moref)
    bad = modify("VirtualMachine", "vm-2", parent="group-v3")  # a string, not a MoRef
    with pytest.raises(TreeUpdateError) as exc:
        t.apply([modify("VirtualMachine", "vm-1", name="web-01"), bad])
    assert exc.value.moref == "vm-2" and "VirtualMachine vm-2" in str(exc.value)
    assert sorted(t.vms(), key=lambda v: v.moref) == before  # nothing half-applied
    # A snapshot the tree cannot take is not taken at all.
    broken = InventoryTree(VC)
    broken.apply([*skeleton(), vm("vm-1", "web-1")])
    broken._objs["vm-1"].props["parent"] = "group-v3"
    with pytest.raises(TreeUpdateError):
        t.sync_to(broken)
    assert sorted(t.vms(), key=lambda v: v.moref) == before
    assert t.find_vm_by_identity(before[0].identity) == before[0]


def test_first_sync_into_an_empty_tree_equals_a_rebuild():
    """The first sync takes the fresh tree's nodes as they are; they must be exactly
    what the general path builds, and the two trees must not share VM state after."""
    updates = [*skeleton(), vm("vm-1", "web-1"), vm("vm-2", "web-2")]
    fresh = InventoryTree(VC, {1: "owner"})
    fresh.apply(updates)
    fresh.set_tags({"vm-1": frozenset({"backup:gold"})})
    first = InventoryTree()
    events = first.sync_to(fresh, take_tags=True)
    # the general path: a tree that is not empty (one unrelated object) takes the same
    general = InventoryTree()
    general.apply([enter("Folder", "group-x", name="stray")])
    fresh2 = InventoryTree(VC, {1: "owner"})
    fresh2.apply(updates)
    fresh2.set_tags({"vm-1": frozenset({"backup:gold"})})
    expected = general.sync_to(fresh2, take_tags=True)
    assert sorted(map(repr, events)) == sorted(map(repr, expected))
    assert {type(e) for e in events} == {VmAdded}
    assert sorted(first.vms(), key=lambda v: v.moref) == sorted(
        general.vms(), key=lambda v: v.moref
    )
    assert first.find_vm_by_identity(f"{VC}/iu-vm-1").tags == frozenset({"backup:gold"})
    first.apply(modify("VirtualMachine", "vm-1", name="web-01"))
    assert fresh.get_vm("vm-1").name == "web-1"
