"""Hot reload: a valid edit replaces the set in force, an invalid one is rejected."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from policy_helpers import make_vm, policy_toml

from policies import PolicyLoadError, PolicyStore

VMS = [make_vm("/DC0/vm/prod/web-1"), make_vm("/DC0/vm/dev/dev-1")]


def edit(path: Path, text: str) -> None:
    # Like an editor: write a temporary file, then rename it over the original.
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def next_outcome(agen, timeout: float = 10.0):
    return await asyncio.wait_for(agen.__anext__(), timeout)


async def test_watch_applies_a_valid_edit_and_rejects_an_invalid_one(tmp_path: Path) -> None:
    d = tmp_path / "policies.d"
    d.mkdir()
    prod = d / "prod.toml"
    prod.write_text(policy_toml("prod", 10, 'folders = ["/DC0/vm/prod/**"]'))
    store = PolicyStore(d, inventory=lambda: VMS, debounce_ms=200, step_ms=20)
    seen = []
    store.subscribe(seen.append)
    assert store.current.names == ("prod",) and store.generation == 1

    stop = asyncio.Event()
    agen = store.watch(stop_event=stop)
    first = asyncio.ensure_future(next_outcome(agen))
    await asyncio.sleep(0.3)  # let the watcher start before editing

    # a valid edit: prod now covers every VM
    edit(prod, policy_toml("prod", 10, 'folders = ["/**"]'))
    ok = await first
    assert ok.accepted and ok.changed and store.generation == 2
    assert ok.policies is store.current and ok.policies.get("prod").select.folders == ("/**",)
    assert [(e.path, e.old, e.new) for e in ok.diff.protected] == [
        ("/DC0/vm/dev/dev-1", None, "prod")
    ]
    assert store.errors == ()

    # an invalid edit: the old set stays in force, the errors are kept
    in_force = store.current
    edit(prod, policy_toml("prod", 10, 'folders = ["/**"]', extra="[policy.retenton]\n"))
    bad = await next_outcome(agen)
    assert not bad.accepted and not bad.changed
    assert store.current is in_force and store.generation == 2
    assert [str(e) for e in store.errors] == [
        f'{prod}:13: policy "prod": retenton: unknown key (allowed: name, priority, enabled, '
        "select, exclude, schedule, trigger, retention, backup, vcenters, "
        "copy_to, copy_retention)"
    ]
    assert store.rejections == 1

    # fixing it back to the set in force clears the errors
    edit(prod, policy_toml("prod", 10, 'folders = ["/**"]'))
    fixed = await next_outcome(agen)
    assert fixed.accepted and not fixed.changed and store.errors == ()
    assert seen == [ok, bad, fixed]

    # files other than *.toml are not watched; adding a policy file is
    (d / "README").write_text("notes")
    (d / "dev.toml").write_text(policy_toml("dev", 5, 'folders = ["/DC0/vm/dev/**"]'))
    added = await next_outcome(agen)
    assert added.policies.names == ("dev", "prod") and added.diff.empty  # prod still wins
    stop.set()
    await agen.aclose()


async def test_a_single_file_is_watched_through_renames(tmp_path: Path) -> None:
    f = tmp_path / "policies.toml"
    f.write_text(policy_toml("a", 1))
    (tmp_path / "other.toml").write_text("garbage")  # not ours: must not trigger a reload
    store = PolicyStore(f, debounce_ms=200, step_ms=20)
    stop = asyncio.Event()
    agen = store.watch(stop_event=stop)
    nxt = asyncio.ensure_future(next_outcome(agen))
    await asyncio.sleep(0.3)
    (tmp_path / "other.toml").write_text("more garbage")
    await asyncio.sleep(0.4)
    assert not nxt.done()
    edit(f, policy_toml("b", 1))
    out = await nxt
    assert out.accepted and store.current.names == ("b",) and out.diff is None
    stop.set()
    await agen.aclose()


def test_reload_now_for_sighup(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(policy_toml("a", 1))
    store = PolicyStore(f, inventory=lambda: VMS)
    f.write_text(policy_toml("a", 1, 'names = ["re:("]'))
    out = store.reload_now()
    assert not out.accepted and store.current.names == ("a",) and len(store.errors) == 1
    f.write_text(policy_toml("b", 1))
    out = store.reload_now()
    assert out.accepted and out.changed and store.current.names == ("b",)
    assert out.diff.changed and store.errors == ()


def test_the_first_load_must_be_valid(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("[[policy]]\nname = 'x'\n")
    with pytest.raises(PolicyLoadError):
        PolicyStore(f)
