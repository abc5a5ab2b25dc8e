"""Patterns cannot freeze the daemon: linear-time matching, and refusal at load of what RE2
cannot run in linear time. Also: globs keep fnmatch's meaning through the RE2 translation."""

from __future__ import annotations

import fnmatch
import re
import time
from datetime import timedelta

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import make_vm, policy_toml

from policies import PolicyLoadError, evaluate, load_policies
from policies.matching import CompiledPolicy
from policies.model import Policy, Retention, Schedule, Selector
from policies.patterns import (
    PatternError,
    compile_alternatives,
    compile_pattern,
    glob_to_regex,
)

EXPONENTIAL = "re:^([a-z0-9]+-?)*$"  # 2.9 s at 27 characters with a backtracking engine
CUBIC = "*owner=*team=*env=*"  # 6.9 s on a 16 kB note with a backtracking engine


def policy(select: dict) -> Policy:
    return Policy("p", 10, Selector(**select), Schedule(timedelta(hours=24)), Retention(1))


def elapsed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


# A backtracking engine needs about 2**270 steps for the name and 1,000× its 16 kB time for
# the note; RE2 needs microseconds. The bound is loose enough for any loaded machine, and the
# timeout turns a regression into a failure instead of a hang.
@pytest.mark.timeout(60)
def test_pathological_patterns_take_linear_time() -> None:
    name = "a" * 269 + "!"  # ten times the 27 characters that took 2.9 s
    note = ("owner=x team=y " * 11_000)[:160_000]  # ten times the 16 kB note that took 6.9 s
    regex, glob = compile_pattern(EXPONENTIAL), compile_pattern(CUBIC)
    assert elapsed(regex, name) < 2.0 and not regex(name)
    assert elapsed(glob, note) < 2.0 and not glob(note)
    assert regex("web-01-prod") and glob("owner=a team=b env=c")
    # ... also through a combined alternation, a path glob and a glob with a character set
    both = compile_alternatives((EXPONENTIAL, "x?" + CUBIC), path=False)
    assert elapsed(both, name) < 2.0 and elapsed(both, note) < 2.0 and not both(note)
    deep = compile_pattern("/**/*a*a*a*a*a*b/**", path=True)
    assert elapsed(deep, "/" + "/".join(["a" * 200] * 200)) < 2.0
    sets = compile_pattern("*[o]wner=*[t]eam=*[e]nv=*")
    assert elapsed(sets, note) < 2.0 and not sets(note)


@pytest.mark.timeout(60)
def test_a_hostile_vm_does_not_stall_a_full_evaluation() -> None:
    p = policy({"names": (EXPONENTIAL,), "annotation": (CUBIC,)})
    vms = [
        make_vm("/DC0/vm/x/" + "a" * 269 + "!", annotation="env=1"),
        make_vm("/DC0/vm/x/ok", annotation=("owner=x team=y " * 11_000)[:160_000]),
        make_vm("/DC0/vm/x/web-1", annotation="owner=a team=b env=c"),
    ]
    t = time.perf_counter()
    results = evaluate([p], vms).results
    assert time.perf_counter() - t < 2.0
    assert [r.winner for r in results.values()] == [None, None, "p"]
    assert CompiledPolicy.of(p).matches(vms[2])


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        (r"^(a)\1$", r"backreferences are not supported (invalid escape sequence: \1)"),
        ("^(?P<x>a)(?P=x)$", "named backreferences are not supported (invalid perl operator: (?P)"),
        ("^web(?!-tmp)", "lookahead is not supported (invalid perl operator: (?!)"),
        ("(?<=prod-)web", "lookbehind is not supported (invalid perl operator: (?<=)"),
        ("(?>a+)b", "atomic groups are not supported (invalid perl operator: (?>)"),
        ("a++b", "possessive repeats are not supported (bad repetition operator: ++)"),
        (
            "(?x) web",
            "only the inline flags i, m, s and U are supported (invalid perl operator: (?x)",
        ),
        ("a{1001}", "invalid repetition size: {1001}"),
    ],
)
def test_what_re2_cannot_run_is_refused_with_the_reason(expr: str, why: str) -> None:
    re.compile(expr)  # Python's backtracking engine would have taken it
    with pytest.raises(PatternError) as info:
        compile_pattern("re:" + expr)
    assert str(info.value) == (
        f'unsupported regular expression "{expr}": {why}; patterns run on RE2, '
        "which guarantees linear-time matching (see docs/policies.md)"
    )


def test_invalid_patterns_keep_their_precise_message() -> None:
    with pytest.raises(PatternError) as info:
        compile_pattern("re:^db-(")
    assert str(info.value) == (
        'invalid regular expression "^db-(": missing ), unterminated subpattern at position 4'
    )
    with pytest.raises(PatternError) as info:  # a reversed range used to crash the loader
        compile_pattern("web-[9-0]")
    assert str(info.value) == 'invalid glob "web-[9-0]": invalid character class range: 9-0'


def test_the_loader_refuses_a_backtracking_pattern_naming_file_and_key(tmp_path) -> None:
    path = tmp_path / "hostile.toml"
    path.write_text(policy_toml("prod", 10, 'folders = ["/**"]\nnames = ["web-*", "re:^(w)\\\\1"]'))
    with pytest.raises(PolicyLoadError) as info:
        load_policies(path)
    assert [str(e) for e in info.value.errors] == [
        f'{path}:7: policy "prod": select.names[1]: unsupported regular expression "^(w)\\1": '
        r"backreferences are not supported (invalid escape sequence: \1); patterns run on "
        "RE2, which guarantees linear-time matching (see docs/policies.md)"
    ]


def test_regex_semantics_kept_for_ordinary_patterns() -> None:
    cases = {
        r"^web-\d+$": ["web-1", "web-12", "!web-1", "web-", "web-1x"],
        r"(?i)^DB": ["db-1", "DB-2", "xdb"],
        "backup=yes": ["owner a\nbackup=yes", "backup=no"],
        r"^a.b$": ["a\nb", "axb"],  # "." stops at a newline, as in Python
        r"(?s)^a.b$": ["a\nb"],
        r"(?m)^b$": ["a\nb\nc", "abc"],
        r"\bprod\b": ["eu-prod-1", "production"],
        r"^(?P<role>web|db)-[0-9]{2,3}$": ["web-01", "db-123", "db-1234"],
        "é+": ["café", "cafe"],
    }
    for expr, values in cases.items():
        m = compile_pattern("re:" + expr)
        for v in values:
            assert bool(m(v)) == bool(re.search(expr, v)), (expr, v)


def test_a_lone_surrogate_in_a_value_does_not_raise() -> None:
    assert not compile_pattern("re:^web")("\ud800web")
    assert compile_pattern("*web?x")("\ud800web\udc00x")  # ? is one character, as in Python


GLOB_TOKENS = st.sampled_from(
    ["a", "b", "-", ".", "(", "+", "*", "**", "?", "[ab]", "[!a]", "[a-b]", "[.-]", "[]a]"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(GLOB_TOKENS, min_size=1, max_size=6), st.text("ab-.(+\n", max_size=10))
def test_globs_mean_what_fnmatch_means(tokens: list[str], value: str) -> None:
    pattern = "".join(tokens)
    assert bool(compile_pattern(pattern)(value)) == fnmatch.fnmatchcase(value, pattern)
    # the same through a combined RE2 program
    both = compile_alternatives(("re:^zz$", pattern), path=False)
    assert bool(both(value)) == fnmatch.fnmatchcase(value, pattern)


PATH_LEVELS = st.sampled_from(["a", "b", "ab", "**", "**", "*", "a*", "*b", "*a*", "?", "[ab]"])


@settings(max_examples=600, deadline=None)
@given(
    st.lists(PATH_LEVELS, min_size=1, max_size=5),
    st.sampled_from(["", "x"]),
    st.lists(st.sampled_from(["a", "b", "ab", "ba", "", "x\n"]), max_size=6),
    st.sampled_from(["", "/"]),
)
def test_path_globs_agree_with_their_re2_translation(
    levels: list[str], head: str, parts: list[str], tail: str
) -> None:
    pattern = "/" + "/".join(levels)
    value = head + "".join("/" + p for p in parts) + tail
    expected = bool(re2.fullmatch(glob_to_regex(pattern, path=True), value))
    assert bool(compile_pattern(pattern, path=True)(value)) == expected
    both = compile_alternatives(("/zz/?", pattern), path=True)
    assert bool(both(value)) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["", "^"]),
    st.text("ab=- ", min_size=1, max_size=4),
    st.sampled_from(["", "$"]),
    st.text("ab=- \n", max_size=8),
)
def test_plain_text_regexes_agree_with_re2(head: str, body: str, tail: str, value: str) -> None:
    expr = head + body + tail
    expected = bool(re2.search(expr, value))
    assert bool(compile_pattern("re:" + expr)(value)) == expected
    assert bool(compile_alternatives(("re:" + expr, "re:^z[z]"), path=False)(value)) == expected
