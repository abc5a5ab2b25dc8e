"""A live edit that creates an equal-priority conflict keeps the old policy for the VMs it
affects (and says so) instead of unprotecting them; reload logs carry real counts."""

from __future__ import annotations

from pathlib import Path

from policy_helpers import make_vm, policy_toml
from structlog.testing import capture_logs

from policies import PolicyStore, evaluate_one
from policies.engine import DiffEntry

WEB = make_vm("/DC0/vm/prod/web-1")
DEV = make_vm("/DC0/vm/dev/dev-1")
PROD = policy_toml("prod", 10, 'folders = ["/DC0/vm/prod/**"]')
ALL = 'folders = ["/**"]'


def store_with(tmp_path: Path, text: str) -> tuple[Path, PolicyStore]:
    f = tmp_path / "p.toml"
    f.write_text(text)
    return f, PolicyStore(f, inventory=lambda: [WEB, DEV])


def test_an_edit_creating_a_conflict_keeps_the_old_winner_and_says_so(tmp_path: Path) -> None:
    f, store = store_with(tmp_path, PROD)
    assert evaluate_one(store.compiled, WEB).winner == "prod"

    f.write_text(PROD + policy_toml("other", 10, ALL))  # ties with prod on web-1
    with capture_logs() as logs:
        out = store.reload_now()
    assert out.accepted and out.changed and store.current.names == ("other", "prod")
    assert out.diff.held == (DiffEntry(WEB.key, WEB.path, "prod", "prod", ("other", "prod")),)
    assert out.diff.unprotected == ()  # before: web-1 listed as no longer protected
    assert [(e.path, e.new) for e in out.diff.protected] == [(DEV.path, "other")]
    r = evaluate_one(store.compiled, WEB)  # what the daemon asks on the next event
    assert (r.winner, r.held, r.conflict) == ("prod", True, ("other", "prod"))
    assert out.evaluation.unprotected == () and out.evaluation.held == (r,)
    warned = [e for e in logs if e["event"] == "policies.conflict_kept_previous"]
    assert warned == [
        {
            "event": "policies.conflict_kept_previous",
            "log_level": "warning",
            "path": str(f),
            "vms": 1,
            "held": ["/DC0/vm/prod/web-1: keeps prod (tied: other, prod)"],
            "note": "the new set gives these VMs equal-priority policies; each keeps the "
            "policy that protected it until a priority resolves the conflict",
        }
    ]

    # A VM the old set did not protect gets no hold: no one chose a policy for it.
    new_vm = make_vm("/DC0/vm/prod/web-2")
    assert evaluate_one(store.compiled, new_vm).winner is None
    # A held VM that leaves the kept policy's scope is not held any more.
    moved = make_vm("/DC0/vm/dev/web-1", key=WEB.key)
    assert evaluate_one(store.compiled, moved).winner == "other"


def test_a_hold_carries_over_edits_even_when_the_kept_policy_is_removed(tmp_path: Path) -> None:
    f, store = store_with(tmp_path, PROD)
    f.write_text(PROD + policy_toml("other", 10, ALL))
    store.reload_now()

    # prod removed, a third policy tied with other: web-1 keeps prod, dev-1 keeps other.
    f.write_text(policy_toml("other", 10, ALL) + policy_toml("third", 10, ALL))
    out = store.reload_now()
    assert [(e.path, e.new) for e in out.diff.held] == [(DEV.path, "other"), (WEB.path, "prod")]
    assert out.diff.empty and out.evaluation.unprotected == ()
    assert store.current.get("prod") is None
    assert store.policy("prod").select.folders == ("/DC0/vm/prod/**",)  # its last definition
    assert store.policy("other") is store.current.get("other")

    # the admin resolves the tie: the holds end, the VMs move to the winner
    f.write_text(policy_toml("other", 10, ALL) + policy_toml("third", 20, ALL))
    out = store.reload_now()
    assert out.diff.held == () and store.compiled.holds == {}
    assert [(e.path, e.old, e.new) for e in out.diff.changed] == [
        (DEV.path, "other", "third"),
        (WEB.path, "prod", "third"),
    ]
    assert store.policy("prod") is None


def test_a_conflict_in_the_set_loaded_first_still_unprotects(tmp_path: Path) -> None:
    _f, store = store_with(tmp_path, PROD + policy_toml("other", 10, ALL))
    r = evaluate_one(store.compiled, WEB)
    assert (r.winner, r.held, r.conflict) == (None, False, ("other", "prod"))


def test_reload_logs_carry_real_counts(tmp_path: Path) -> None:
    f, store = store_with(tmp_path, PROD)
    # an edit that changes no VM's policy: the counts are 0, not missing
    f.write_text(PROD + policy_toml("unused", 1, 'names = ["nothing-*"]'))
    with capture_logs() as logs:
        store.reload_now()
        f.write_text(policy_toml("other", 10, ALL))
        store.reload_now()
    counts = [
        {k: v for k, v in e.items() if k not in ("event", "log_level", "path")}
        for e in logs
        if e["event"] == "policies.reloaded"
    ]
    assert counts == [
        {
            "generation": 2,
            "policies": 2,
            "enabled": 2,
            "vms": 2,
            "protected": 1,
            "unprotected": 1,
            "conflicts": 0,
            "held": 0,
            "newly_protected": 0,
            "no_longer_protected": 0,
            "changed_policy": 0,
        },
        {
            "generation": 3,
            "policies": 1,
            "enabled": 1,
            "vms": 2,
            "protected": 2,
            "unprotected": 0,
            "conflicts": 0,
            "held": 0,
            "newly_protected": 1,
            "no_longer_protected": 0,
            "changed_policy": 1,
        },
    ]
