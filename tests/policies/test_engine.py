"""Resolution: winners, overlaps, equal-priority conflicts, the unprotected, and diffs."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import make_vm

from policies import diff, evaluate, evaluate_one
from policies.model import Policy, PolicySet, Retention, Schedule, Selector, VmFacts


def pol(name: str, priority: int, enabled: bool = True, **select: tuple) -> Policy:
    return Policy(
        name=name,
        priority=priority,
        enabled=enabled,
        select=Selector(**select),
        schedule=Schedule(timedelta(hours=24)),
        retention=Retention(keep_last=1),
    )


WEB = make_vm("/DC0/vm/prod/web-1")
DB = make_vm("/DC0/vm/prod/db-1")
DEV = make_vm("/DC0/vm/dev/dev-1")
VMS = [WEB, DB, DEV]

GOLD = pol("gold", 30, names=("db-*",))
PROD = pol("prod", 20, folders=("/DC0/vm/prod/**",))
ALL = pol("all", 0, folders=("/**",))


def test_highest_priority_wins_and_overlaps_are_listed() -> None:
    ev = evaluate(PolicySet((GOLD, PROD, ALL)), VMS)
    db = ev.results[DB.key]
    assert db.winner == "gold" and db.matches == ("gold", "prod", "all") and db.overlap
    assert ev.results[WEB.key].winner == "prod"
    assert ev.results[DEV.key].winner == "all" and not ev.results[DEV.key].overlap
    assert [r.path for r in ev.overlaps] == ["/DC0/vm/prod/db-1", "/DC0/vm/prod/web-1"]
    assert ev.unprotected == () and ev.conflicts == ()
    assert [r.path for r in ev.members("prod")] == ["/DC0/vm/prod/web-1"]
    assert [r.path for r in ev.matched_by("prod")] == ["/DC0/vm/prod/db-1", "/DC0/vm/prod/web-1"]


def test_unprotected_vms_are_listed() -> None:
    ev = evaluate([PROD], VMS)
    assert [r.path for r in ev.unprotected] == ["/DC0/vm/dev/dev-1"]
    assert ev.results[DEV.key].matches == ()


def test_equal_priority_is_a_conflict_and_leaves_the_vm_unprotected() -> None:
    rival = pol("rival", 30, names=("db-*",))
    ev = evaluate([GOLD, rival, PROD], VMS)
    db = ev.results[DB.key]
    assert db.winner is None and not db.protected
    assert db.conflict == ("gold", "rival")
    assert db.matches == ("gold", "rival", "prod")
    assert [r.path for r in ev.conflicts] == ["/DC0/vm/prod/db-1"]
    assert "/DC0/vm/prod/db-1" in [r.path for r in ev.unprotected]
    # an equal priority *below* the winner is no conflict
    ev2 = evaluate([GOLD, PROD, pol("prod2", 20, folders=("/**",))], VMS)
    assert ev2.results[DB.key].winner == "gold" and ev2.results[DB.key].conflict == ()
    assert ev2.results[WEB.key].conflict == ("prod", "prod2")


def test_disabled_policies_are_ignored() -> None:
    ev = evaluate([pol("gold", 30, enabled=False, names=("db-*",)), PROD], VMS)
    assert ev.results[DB.key].winner == "prod" and ev.results[DB.key].matches == ("prod",)
    assert ev.policy_names == ("prod",)


def test_evaluate_one_after_an_event() -> None:
    ps = PolicySet((GOLD, PROD, ALL))
    moved = VmFacts(**{**WEB.__dict__, "folder": "/DC0/vm/dev", "path": "/DC0/vm/dev/web-1"})
    assert evaluate_one(ps, WEB).winner == "prod"
    assert evaluate_one(ps, moved).winner == "all"


def test_deterministic_whatever_the_input_order() -> None:
    a = evaluate(PolicySet((GOLD, PROD, ALL)), VMS)
    b = evaluate(PolicySet((ALL, PROD, GOLD)), list(reversed(VMS)))
    assert a == b


def test_diff_reports_protected_unprotected_and_changed() -> None:
    new_vm = make_vm("/DC0/vm/dev/new-1")
    old = evaluate([GOLD, PROD], VMS)
    new = evaluate(
        [pol("gold", 30, names=("db-*", "dev-*")), pol("web", 25, names=("web-*",))], [*VMS, new_vm]
    )
    d = diff(old, new)
    assert [(e.path, e.old, e.new) for e in d.protected] == [("/DC0/vm/dev/dev-1", None, "gold")]
    assert [(e.path, e.old, e.new) for e in d.changed] == [("/DC0/vm/prod/web-1", "prod", "web")]
    assert d.unprotected == ()
    d2 = diff(new, old)
    assert [(e.path, e.old, e.new) for e in d2.unprotected] == [("/DC0/vm/dev/dev-1", "gold", None)]
    assert diff(old, old).empty and len(d) == 2


def test_a_new_conflict_shows_as_unprotected_in_the_diff() -> None:
    old = evaluate([GOLD], VMS)
    new = evaluate([GOLD, pol("rival", 30, names=("db-*",))], VMS)
    assert [(e.path, e.old, e.new) for e in diff(old, new).unprotected] == [
        ("/DC0/vm/prod/db-1", "gold", None)
    ]


# -- the indexed full evaluation agrees with the direct one on random inventories ---------

names = st.sampled_from(["web-1", "web-2", "db-1", "db-22", "app", "x-tmp"])
folders = st.sampled_from(["/DC0/vm", "/DC0/vm/prod", "/DC0/vm/prod/eu", "/DC1/vm/dev"])
tags = st.frozensets(st.sampled_from(["Backup:Gold", "Backup:Never", "Env:prod"]), max_size=3)


@st.composite
def vms(draw: st.DrawFn) -> list[VmFacts]:
    out = []
    for i in range(draw(st.integers(0, 25))):
        folder, name = draw(folders), draw(names)
        out.append(
            VmFacts(
                key=f"k{i}",
                path=f"{folder}/{name}",
                name=name,
                datacenter=folder.split("/")[1],
                folder=folder,
                resource_pool=draw(st.sampled_from([None, "/DC0/host/C0/Resources/a"])),
                power_state=draw(st.sampled_from(["poweredOn", "poweredOff", "suspended"])),
                guest_id=draw(st.sampled_from([None, "rhel9_64Guest", "windows9Guest"])),
                tags=draw(tags),
                attributes=draw(
                    st.dictionaries(st.sampled_from(["Owner"]), st.sampled_from(["a", "b"]))
                ),
                annotation=draw(st.sampled_from(["", "backup=yes", "x\nbackup=no"])),
                template=draw(st.booleans()),
            )
        )
    return out


selectors = st.fixed_dictionaries(
    {},
    optional={
        "folders": st.sampled_from([("/DC0/**",), ("/DC0/vm/prod",), ("/*/vm/**",)]),
        "names": st.sampled_from([("web-*",), ("re:^db-[0-9]$", "app"), ("*",)]),
        "tags": st.sampled_from([("Backup:Gold",), ("Backup:*", "Env:prod")]),
        "power_states": st.sampled_from([("poweredOn",), ("poweredOff", "suspended")]),
        "guest_ids": st.sampled_from([("rhel*",)]),
        "attributes": st.sampled_from([(("Owner", ("a",)),)]),
        "annotation": st.sampled_from([("re:backup=yes",), ("*no",)]),
        "resource_pools": st.sampled_from([("/**",)]),
        "templates": st.booleans(),
    },
)


@st.composite
def policy_sets(draw: st.DrawFn) -> list[Policy]:
    out = []
    for i in range(draw(st.integers(0, 8))):
        out.append(
            Policy(
                name=f"p{i}",
                priority=draw(st.integers(0, 4)),
                enabled=draw(st.booleans()),
                select=Selector(**draw(selectors)),
                exclude=Selector(**draw(selectors)),
                schedule=Schedule(timedelta(hours=1)),
                retention=Retention(keep_last=1),
            )
        )
    return out


@settings(max_examples=100, deadline=None)
@given(policy_sets(), vms())
def test_full_evaluation_equals_one_by_one(ps: list[Policy], inventory: list[VmFacts]) -> None:
    ev = evaluate(ps, inventory)
    for vm in inventory:
        assert ev.results[vm.key] == evaluate_one(ps, vm)


def test_a_vapps_selector_matches_every_vm_of_the_vapp_nested_ones_too() -> None:
    shop = "/DC0/host/C0/Resources/shop"
    web = make_vm("/DC0/vm/web", vapps=(shop,))
    db = make_vm("/DC0/vm/db", vapps=(f"{shop}/db", shop))  # in a vApp nested in shop
    other = make_vm("/DC0/vm/other", vapps=("/DC0/host/C0/Resources/crm",))
    plain = make_vm("/DC0/vm/plain")
    inventory = [web, db, other, plain]
    by_path = pol("shop", 10, vapps=(shop,))
    inner_only = pol("inner", 20, vapps=("/DC0/host/C0/Resources/*/db",))
    for ps in ([by_path], [by_path, inner_only]):
        full = evaluate(ps, inventory)
        for vm in inventory:  # the indexed evaluation and the one-VM path agree
            assert full.results[vm.key].winner == evaluate_one(ps, vm).winner
    full = evaluate([by_path, inner_only], inventory)
    assert {vm.path: full.results[vm.key].winner for vm in inventory} == {
        "/DC0/vm/web": "shop",
        "/DC0/vm/db": "inner",
        "/DC0/vm/other": None,
        "/DC0/vm/plain": None,
    }
