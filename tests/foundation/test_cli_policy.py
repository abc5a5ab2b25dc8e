"""`vigil policy check|diff` against the simulator's live inventory."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli_inventory import config, vigil

PROD = """
[[policy]]
name = "hosts"
priority = 10
[policy.select]
names = ["DC0_H0_*"]
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 3

[[policy]]
name = "vm0s"
priority = 5
[policy.select]
names = ["re:_VM0$"]
[policy.schedule]
rpo = "12h"
[policy.retention]
daily = 7
"""


def setup(tmp_path: Path, url: str, text: str) -> Path:
    cfg = config(tmp_path, url)
    (tmp_path / "pol").mkdir(exist_ok=True)
    (tmp_path / "pol" / "prod.toml").write_text(text)
    return cfg


def test_policy_check_json(tmp_path, vcsim):
    r = vigil(setup(tmp_path, vcsim.url, PROD), "policy", "check", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report == {
        "policies": [
            {"name": "hosts", "vms": ["/DC0/vm/DC0_H0_VM0", "/DC0/vm/DC0_H0_VM1"]},
            {"name": "vm0s", "vms": ["/DC0/vm/DC0_C0_RP0_VM0"]},
        ],
        "overlaps": [
            {"vm": "/DC0/vm/DC0_H0_VM0", "policies": ["hosts", "vm0s"], "winner": "hosts"}
        ],
        "unprotected": ["/DC0/vm/DC0_C0_RP0_VM1"],
    }


def test_policy_check_invalid_exit_2_names_file_policy_key(tmp_path, vcsim):
    bad = PROD.replace('names = ["re:_VM0$"]', 'names = ["re:^db-("]')
    r = vigil(setup(tmp_path, vcsim.url, bad), "policy", "check")
    assert r.returncode == 2
    assert "prod.toml" in r.stderr
    assert 'policy "vm0s": select.names[0]: invalid regular expression "^db-("' in r.stderr


def test_policy_diff_previews_an_edit(tmp_path, vcsim):
    cfg = setup(tmp_path, vcsim.url, PROD)
    new = tmp_path / "new.toml"
    new.write_text(PROD.replace('names = ["DC0_H0_*"]', 'names = ["DC0_H0_VM1"]'))
    r = vigil(cfg, "policy", "diff", str(new), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["changed"] == [{"vm": "/DC0/vm/DC0_H0_VM0", "from": "hosts", "to": "vm0s"}]
    assert d["protected"] == [] and d["unprotected"] == []
    assert d["policies"]["modified"] == ["hosts"]


GOLD = """
[[policy]]
name = "gold"
priority = 10
[policy.select]
tags = ["Backup:Gold"]
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 3
"""


async def test_policy_check_sees_vms_a_tag_policy_covers(tmp_path, vcsim_fresh):
    """Policies select by tag, so `policy check` must read tags: without them a tagged VM
    shows as unprotected (and prune would treat it as an orphan)."""
    from watcher.soap import Endpoint
    from watcher.tags import TagClient

    sim = vcsim_fresh
    cfg = setup(tmp_path, sim.url, GOLD)
    listed = vigil(cfg, "inventory", "--json")
    assert listed.returncode == 0, listed.stderr
    moref = next(v["moref"] for v in json.loads(listed.stdout) if v["name"] == "DC0_H0_VM1")
    tags = TagClient(Endpoint(sim.url), sim.user, sim.password)
    try:
        cat = await tags.create_category("Backup")
        tag = await tags.create_tag(cat, "Gold")
        await tags.attach(tag, moref)
    finally:
        await tags.close()
    r = vigil(cfg, "policy", "check", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["policies"] == [{"name": "gold", "vms": ["/DC0/vm/DC0_H0_VM1"]}]
    assert "/DC0/vm/DC0_H0_VM1" not in report["unprotected"]
