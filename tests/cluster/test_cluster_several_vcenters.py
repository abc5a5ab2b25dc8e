"""Two vCenters (two simulators with their own instance uuids) protected by one cluster of
real `vigil watch` processes: one election per vCenter, every VM of both backed up once
under its own identity, the status naming each VM's vCenter."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos.helpers import wait_until
from multinode import DB_ENV, PASSWORD_ENV, Node, make_node

from repository import Repository

pytestmark = pytest.mark.slow

SMALL = ["-vm", "1", "-host", "1"]  # DC0_H0_VM0 and DC0_C0_RP0_VM0 on each
EAST_UUID = "11111111-1111-4111-8111-111111111111"
WEST_UUID = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def cluster_env(pg_url: str) -> Iterator[list[Node]]:
    os.environ[DB_ENV] = pg_url
    started: list[Node] = []
    yield started
    for n in started:
        n.stop(timeout=30)


def two_vcenters(node: Node, east: Any, west: Any) -> Node:
    """The node's configuration with [vcenters.east] and [vcenters.west] for [vcenter]."""
    text = node.cfg.read_text()
    head, _, rest = text.partition("[repository]")
    tables = "".join(
        f'[vcenters.{n}]\nurl = "{s.url}"\nuser = "{s.user}"\npassword_env = "{PASSWORD_ENV}"\n'
        for n, s in (("east", east), ("west", west))
    )
    assert "[vcenter]" in head
    node.cfg.write_text(tables + "[repository]" + rest)
    return node


def write_policy(root: Path) -> None:
    pol = root / "policies.d"
    pol.mkdir(parents=True, exist_ok=True)
    (pol / "all.toml").write_text(
        '[[policy]]\nname = "all"\npriority = 10\nvcenters = ["east", "west"]\n'
        '[policy.select]\nfolders = ["/**"]\n[policy.schedule]\nrpo = "1h"\n'
        "[policy.retention]\nkeep_last = 10\n"
    )


async def test_one_cluster_protects_two_vcenters(tmp_path, make_vcsim, cluster_env):
    east = make_vcsim(args=[*SMALL, "-instance-uuid", EAST_UUID])
    west = make_vcsim(args=[*SMALL, "-instance-uuid", WEST_UUID])
    write_policy(tmp_path)
    nodes = [
        two_vcenters(make_node(tmp_path, east, f"node-{i}", "all"), east, west) for i in (1, 2)
    ]
    for n in nodes:
        cluster_env.append(n.start())

    def manifests() -> list[Any]:
        return Repository.open(tmp_path / "repo").manifests()

    def diagnostics() -> str:
        return "\n".join(f"--- {n.name} ---\n{n.tail()}" for n in nodes)

    try:
        await wait_until(lambda: len(manifests()) >= 4, 120, "a point of every VM", every=0.5)
        leaders = await wait_until(
            lambda: (s := nodes[0].status()) and len(s["cluster"].get("leaders", [])) == 2 and s,
            30,
            "a leader per vCenter in the cluster view",
            every=0.5,
        )
    except AssertionError:
        raise AssertionError(diagnostics()) from None
    ms = manifests()
    # Four VMs, two names: each identity once, under its own vCenter; nothing twice.
    assert len(ms) == 4, diagnostics()
    assert sorted((m.vm.vcenter_uuid, m.vm.name) for m in ms) == [
        (EAST_UUID, "DC0_C0_RP0_VM0"),
        (EAST_UUID, "DC0_H0_VM0"),
        (WEST_UUID, "DC0_C0_RP0_VM0"),
        (WEST_UUID, "DC0_H0_VM0"),
    ]
    assert {ld["vcenter"] for ld in leaders["cluster"]["leaders"]} == {EAST_UUID, WEST_UUID}
    # Each leading node shows the VMs of the vCenters it leads, named by vCenter.
    shown = set()
    for n in nodes:
        s = n.status()
        assert s is not None
        shown |= {v["path"] for v in s["vms"]}
    assert {
        "east:/DC0/vm/DC0_H0_VM0",
        "east:/DC0/vm/DC0_C0_RP0_VM0",
        "west:/DC0/vm/DC0_H0_VM0",
        "west:/DC0/vm/DC0_C0_RP0_VM0",
    } <= shown, diagnostics()
