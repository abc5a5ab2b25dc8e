"""Selection and exclusion: every key, globs against `re:`, path levels, templates."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from policy_helpers import make_vm

from policies import evaluate, evaluate_one
from policies.matching import PatternError, compile_pattern
from policies.model import Policy, Retention, Schedule, Selector, VmFacts

WEB = make_vm(
    "/DC0/vm/prod/web/web-1",
    resource_pool="/DC0/host/C0/Resources/pool-a",
    guest_id="rhel9_64Guest",
    tags=frozenset({"Backup:Gold", "Env:prod"}),
    attributes={"Owner": "team-web", "Cost": "42"},
    annotation="Web front end\nbackup=yes",
)


def policy(select: dict[str, Any], exclude: dict[str, Any] | None = None, **kw: Any) -> Policy:
    return Policy(
        name=kw.pop("name", "p"),
        priority=kw.pop("priority", 10),
        select=Selector(**select),
        exclude=Selector(**(exclude or {})),
        schedule=Schedule(timedelta(hours=24)),
        retention=Retention(keep_last=1),
        **kw,
    )


def matches(p: Policy, vm: VmFacts) -> bool:
    one = evaluate_one([p], vm).winner == p.name
    full = evaluate([p], [vm]).results[vm.key].winner == p.name
    assert one == full  # the indexed full evaluation and the direct one agree
    return one


SELECTORS = [
    ("folders", ("/DC0/vm/prod/**",), ("/DC0/vm/test/**",)),
    ("names", ("web-*",), ("db-*",)),
    ("tags", ("Backup:Gold",), ("Backup:Silver",)),
    ("resource_pools", ("/DC0/host/*/Resources/pool-a",), ("/DC0/host/*/Resources/pool-b",)),
    ("datacenters", ("DC0",), ("DC1",)),
    ("power_states", ("poweredOn",), ("poweredOff", "suspended")),
    ("guest_ids", ("rhel*",), ("windows*",)),
    ("attributes", (("Owner", ("team-*",)),), (("Owner", ("ops",)),)),
    ("annotation", ("re:backup=yes",), ("re:backup=no",)),
]


@pytest.mark.parametrize(("key", "hit", "miss"), SELECTORS, ids=[s[0] for s in SELECTORS])
def test_every_selector_key(key: str, hit: tuple, miss: tuple) -> None:
    assert matches(policy({key: hit}), WEB)
    assert not matches(policy({key: miss}), WEB)
    # AND across keys: a hit combined with a miss on another key does not match
    other = "names" if key != "names" else "datacenters"
    other_miss = ("nope-*",) if other == "names" else ("DC9",)
    assert not matches(policy({key: hit, other: other_miss}), WEB)


@pytest.mark.parametrize(("key", "hit", "miss"), SELECTORS, ids=[s[0] for s in SELECTORS])
def test_every_exclude_key(key: str, hit: tuple, miss: tuple) -> None:
    everything = {"folders": ("/**",)}
    assert not matches(policy(everything, {key: hit}), WEB)
    assert matches(policy(everything, {key: miss}), WEB)


def test_alternatives_in_a_list_are_or() -> None:
    assert matches(policy({"names": ("db-*", "web-*")}), WEB)
    assert matches(policy({"tags": ("Nope:x", "Env:prod")}), WEB)


def test_exclude_any_key_excludes() -> None:
    p = policy({"folders": ("/**",)}, {"names": ("nope",), "tags": ("Env:prod",)})
    assert not matches(p, WEB)


def test_glob_matches_whole_value_regex_searches() -> None:
    assert not matches(policy({"names": ("web",)}), WEB)
    assert matches(policy({"names": ("re:web",)}), WEB)
    assert not matches(policy({"names": ("re:^web$",)}), WEB)
    assert matches(policy({"names": ("re:^web-[0-9]+$",)}), WEB)
    assert matches(policy({"names": ("w?b-[0-9]",)}), WEB)
    assert not matches(policy({"names": ("w?b-[!0-9]",)}), WEB)
    assert not matches(policy({"names": ("WEB-*",)}), WEB)  # case-sensitive, like vSphere


def test_glob_special_characters_are_literal() -> None:
    vm = make_vm("/DC0/vm/x/app (old)+v2.1")
    assert matches(policy({"names": ("app (old)+v2.1",)}), vm)
    assert not matches(policy({"names": ("app (old)+v2x1",)}), vm)


def test_path_globs_star_stays_in_one_level_double_star_spans() -> None:
    m = compile_pattern("/DC0/vm/*/web", path=True)
    assert m("/DC0/vm/prod/web") and not m("/DC0/vm/prod/eu/web")
    deep = compile_pattern("/DC0/vm/prod/**", path=True)
    assert deep("/DC0/vm/prod") and deep("/DC0/vm/prod/web") and deep("/DC0/vm/prod/a/b/c")
    assert not deep("/DC0/vm/production") and not deep("/DC0/vm")
    mid = compile_pattern("/**/web", path=True)
    assert mid("/web") and mid("/DC0/vm/prod/web") and not mid("/DC0/vm/prod/webx")
    assert compile_pattern("/DC?/vm", path=True)("/DC1/vm")
    assert not compile_pattern("/DC?/vm", path=True)("/DC/1/vm")


def test_folders_match_the_parent_folder_at_any_depth() -> None:
    assert matches(policy({"folders": ("/DC0/vm/prod/**",)}), WEB)  # in prod/web
    assert matches(policy({"folders": ("/DC0/vm/prod/web",)}), WEB)
    assert not matches(policy({"folders": ("/DC0/vm/prod",)}), WEB)  # not directly in prod
    assert not matches(policy({"folders": ("/DC0/vm/prod/*",)}), make_vm("/DC0/vm/prod/x"))


def test_annotation_globs_span_lines() -> None:
    assert matches(policy({"annotation": ("Web*yes",)}), WEB)


def test_missing_values_never_match() -> None:
    bare = make_vm("/DC0/vm/x/t", resource_pool=None, guest_id=None)
    for key, pats in [
        ("resource_pools", ("/**",)),
        ("guest_ids", ("*",)),
        ("attributes", (("Owner", ("*",)),)),
        ("tags", ("*:*",)),
    ]:
        assert not matches(policy({key: pats}), bare), key


def test_templates_are_excluded_unless_selected() -> None:
    tpl = make_vm("/DC0/vm/templates/rhel9", template=True, resource_pool=None)
    assert not matches(policy({"folders": ("/**",)}), tpl)
    assert matches(policy({"folders": ("/**",), "templates": True}), tpl)
    assert matches(policy({"folders": ("/**",), "templates": True}), WEB)  # and VMs too
    assert not matches(policy({"folders": ("/**",), "templates": True}, {"templates": True}), tpl)
    assert matches(policy({"folders": ("/**",)}, {"templates": True}), WEB)


def test_several_attributes_must_all_hold() -> None:
    both = (("Cost", ("4*",)), ("Owner", ("team-web",)))
    assert matches(policy({"attributes": both}), WEB)
    one_wrong = (("Cost", ("5*",)), ("Owner", ("team-web",)))
    assert not matches(policy({"attributes": one_wrong}), WEB)


def test_combined_alternatives_keep_regex_semantics() -> None:
    # Alternatives are compiled into one RE2 program; an inline flag stays with its own
    # alternative, and Python's \Z (end of text) means what it meant.
    assert matches(policy({"names": ("nope", r"re:^(w)e\w-\d$", "re:(?i)WEB")}), WEB)
    assert not matches(policy({"names": ("re:(?i)NOPE", "WEB-*")}), WEB)
    assert matches(policy({"names": ("re:(?i)NOPE", "web-*")}), WEB)
    assert matches(policy({"names": ("nope", r"re:^web-1\Z")}), WEB)
    assert not matches(policy({"names": ("nope", r"re:^web\Z")}), WEB)


@pytest.mark.parametrize(
    ("pattern", "path", "message"),
    [
        (
            "re:^db-(",
            False,
            'invalid regular expression "^db-(": missing ), unterminated subpattern at position 4',
        ),
        ("", False, "empty pattern"),
        ("re:", False, "empty regular expression"),
        ("a[b", False, 'invalid glob "a[b": unterminated [ at position 1'),
        ("vm/x", True, 'invalid path glob "vm/x": must start with "/"'),
    ],
)
def test_pattern_errors(pattern: str, path: bool, message: str) -> None:
    with pytest.raises(PatternError) as info:
        compile_pattern(pattern, path=path)
    assert str(info.value) == message
