"""A one-off `vigil backup` takes the options of the policy that covers the VM."""

from __future__ import annotations

import json

from tests.cli.test_cli_prune import setup, vigil

GOLD = """
[[policy]]
name = "gold"
priority = 10
[policy.select]
tags = ["Backup:Gold"]
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 2
"""


async def test_one_off_backup_of_a_tag_protected_vm_records_its_policy(tmp_path, vcsim_fresh):
    from watcher.soap import Endpoint
    from watcher.tags import TagClient

    sim = vcsim_fresh
    cfg = setup(tmp_path, sim.url)
    (tmp_path / "pol" / "p.toml").write_text(GOLD)
    listed = vigil(cfg, "inventory", "--json")
    moref = next(v["moref"] for v in json.loads(listed.stdout) if v["name"] == "DC0_H0_VM0")
    tags = TagClient(Endpoint(sim.url), sim.user, sim.password)
    try:
        await tags.attach(
            await tags.create_tag(await tags.create_category("Backup"), "Gold"), moref
        )
    finally:
        await tags.close()
    b = vigil(cfg, "backup", "DC0_H0_VM0", "--json")
    assert b.returncode == 0, b.stderr
    point = json.loads(vigil(cfg, "list", "DC0_H0_VM0", "--json").stdout)[0]
    assert point["policy"] == "gold"
