"""A policy's `vcenters = [...]`: only VMs of those configured vCenters; unknown names are
refused at load with file and key; a reload naming one keeps the last good set."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_helpers import make_vm, policy_toml

from policies import PolicyLoadError, PolicyStore, evaluate, evaluate_one, load_policies

CONFIGURED = ("east", "west")
# The same name and path on both vCenters: the identity (key) tells them apart.
EAST = make_vm("/DC0/vm/web-1", key="uuid-east/vm-1", vcenter="east")
WEST = make_vm("/DC0/vm/web-1", key="uuid-west/vm-1", vcenter="west")


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.toml"
    p.write_text(text)
    return p


def with_vcenters(name: str, names: str, priority: int = 10) -> str:
    # `vcenters` is a key of the [[policy]] table itself, so it goes before [policy.select].
    return policy_toml(name, priority).replace(
        f"priority = {priority}\n", f"priority = {priority}\nvcenters = {names}\n", 1
    )


def test_vcenters_limits_a_policy_to_those_vcenters(tmp_path):
    text = with_vcenters("east-only", '["east"]') + policy_toml("all", 5)
    ps = load_policies(write(tmp_path, text), vcenters=CONFIGURED)
    assert ps.get("east-only").vcenters == ("east",)
    assert ps.get("all").vcenters == ()
    ev = evaluate(ps, [EAST, WEST])  # the indexed full evaluation
    assert ev.results["uuid-east/vm-1"].winner == "east-only"
    assert ev.results["uuid-west/vm-1"].winner == "all"
    # ... and the one-VM path agrees
    assert evaluate_one(ps, EAST).winner == "east-only"
    assert evaluate_one(ps, WEST).winner == "all"


def test_unknown_vcenter_is_refused_with_file_and_key(tmp_path):
    p = write(tmp_path, with_vcenters("x", '["east", "nroth"]'))
    with pytest.raises(PolicyLoadError) as info:
        load_policies(p, vcenters=CONFIGURED)
    msg = str(info.value)
    assert f"{p}:4" in msg and "vcenters[1]" in msg
    assert 'no vCenter named "nroth" is configured (configured: east, west)' in msg


def test_the_lone_vcenter_is_named_default(tmp_path):
    p = write(tmp_path, with_vcenters("x", '["east"]'))
    with pytest.raises(PolicyLoadError) as info:
        load_policies(p, vcenters=("default",))
    assert 'a lone [vcenter] table is named "default"' in str(info.value)
    ok = write(tmp_path, with_vcenters("x", '["default"]'))
    assert load_policies(ok, vcenters=("default",)).get("x").vcenters == ("default",)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("[]", "empty list: it would match nothing"),
        ('"east"', "expected a list of vCenter names"),
        ("[1]", "expected a vCenter name, got int 1"),
    ],
)
def test_bad_vcenters_values(tmp_path, names, expected):
    with pytest.raises(PolicyLoadError) as info:
        load_policies(write(tmp_path, with_vcenters("x", names)), vcenters=CONFIGURED)
    assert expected in str(info.value)


def test_a_reload_naming_an_unknown_vcenter_keeps_the_last_good_set(tmp_path):
    p = write(tmp_path, with_vcenters("x", '["east"]'))
    store = PolicyStore(p, inventory=lambda: [EAST, WEST], vcenters=CONFIGURED)
    p.write_text(with_vcenters("x", '["south"]'))
    outcome = store.reload_now()
    assert not outcome.accepted
    assert store.current.get("x").vcenters == ("east",)
    assert any("south" in str(e) for e in store.errors)
