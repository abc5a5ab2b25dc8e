"""Patterns and compiled selectors.

A pattern is a glob or, after the prefix `re:`, a Python regular expression. Globs match the
whole value and are case-sensitive (vSphere names are). In *path* globs (`folders`,
`resource_pools`) `*` and `?` stay within one path level and `**` spans any number of levels,
including none, so `/DC0/vm/prod/**` covers the folder `prod` itself and everything below.
A regular expression matches anywhere in the value (`re.search`); anchor it with `^...$`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from .model import POWER_STATES, Policy, Selector, VmFacts

Matcher = Callable[[str], object]

PATH_KEYS = frozenset({"folders", "resource_pools"})
REGEX_PREFIX = "re:"


class PatternError(ValueError):
    """A pattern that cannot be compiled; the message says why, without the key path."""


def _translate_segment(seg: str, any_char: str, star: str) -> str:
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        if c == "*":
            while i + 1 < n and seg[i + 1] == "*":
                i += 1
            out.append(star)
        elif c == "?":
            out.append(any_char)
        elif c == "[":
            j = i + 1
            if j < n and seg[j] in "!^":
                j += 1
            if j < n and seg[j] == "]":
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:
                raise PatternError(f'invalid glob "{seg}": unterminated [ at position {i}')
            body = seg[i + 1 : j]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_to_regex(pattern: str, *, path: bool) -> str:
    """The regular expression (for fullmatch) a glob stands for."""
    if not path:
        return _translate_segment(pattern, ".", ".*")
    if not pattern.startswith("/"):
        raise PatternError(f'invalid path glob "{pattern}": must start with "/"')
    parts: list[str] = []
    for seg in pattern[1:].split("/"):
        if seg == "":
            raise PatternError(f'invalid path glob "{pattern}": empty path level')
        if seg == "**":
            parts.append("(?:/[^/]+)*")
        elif "**" in seg:
            raise PatternError(f'invalid path glob "{pattern}": ** must be a whole path level')
        else:
            parts.append("/" + _translate_segment(seg, "[^/]", "[^/]*"))
    return "".join(parts)


@lru_cache(maxsize=16384)
def compile_pattern(pattern: str, *, path: bool = False) -> Matcher:
    """A predicate for one pattern; raises PatternError with a readable reason."""
    if pattern.startswith(REGEX_PREFIX):
        expr = pattern[len(REGEX_PREFIX) :]
        if not expr:
            raise PatternError("empty regular expression")
        try:
            return re.compile(expr).search
        except re.error as exc:
            raise PatternError(f'invalid regular expression "{expr}": {exc}') from None
    if not pattern:
        raise PatternError("empty pattern")
    return re.compile(glob_to_regex(pattern, path=path), re.DOTALL).fullmatch


def check_pattern(key: str, pattern: str) -> None:
    """Validate a pattern for a selector key (raises PatternError)."""
    if key == "power_states":
        if pattern not in POWER_STATES:
            raise PatternError(
                f'unknown power state "{pattern}" (expected one of {", ".join(POWER_STATES)})'
            )
        return
    compile_pattern(pattern, path=key in PATH_KEYS)
    if key == "tags" and not pattern.startswith(REGEX_PREFIX) and ":" not in pattern:
        raise PatternError(f'tag "{pattern}" must be written "Category:Tag"')


# --- compiled selectors -------------------------------------------------------------------


def _single(getter: Callable[[VmFacts], str | None]) -> Callable[[VmFacts], tuple[str, ...]]:
    def values(vm: VmFacts) -> tuple[str, ...]:
        v = getter(vm)
        return () if v is None else (v,)

    return values


# How each key reads its value(s) from a VM; multi-valued keys (tags) give several.
VALUE_GETTERS: dict[str, Callable[[VmFacts], tuple[str, ...]]] = {
    "folders": _single(lambda vm: vm.folder),
    "names": _single(lambda vm: vm.name),
    "tags": lambda vm: tuple(vm.tags),
    "resource_pools": _single(lambda vm: vm.resource_pool),
    "datacenters": _single(lambda vm: vm.datacenter),
    "power_states": _single(lambda vm: vm.power_state),
    "guest_ids": _single(lambda vm: vm.guest_id),
    "annotation": _single(lambda vm: vm.annotation),
}


@dataclass(frozen=True)
class Criterion:
    """One selector key with its alternatives, compiled into a single predicate."""

    key: str
    attribute: str | None
    patterns: tuple[str, ...]
    match: Matcher  # value -> truthy when any alternative matches

    def values_of(self, vm: VmFacts) -> tuple[str, ...]:
        if self.attribute is not None:
            v = vm.attributes.get(self.attribute)
            return () if v is None else (v,)
        return VALUE_GETTERS[self.key](vm)

    def test(self, vm: VmFacts) -> bool:
        m = self.match
        return any(m(v) for v in self.values_of(vm))


_BACKREF = re.compile(r"\\[1-9]|\(\?P=")


def _any_of(matchers: tuple[Matcher, ...]) -> Matcher:
    return lambda v: any(m(v) for m in matchers)


@lru_cache(maxsize=4096)
def compile_alternatives(patterns: tuple[str, ...], *, path: bool) -> Matcher:
    """One predicate for a list of alternatives: a single regular expression when they
    combine safely (one C-level call per value), else a loop over the compiled patterns."""
    matchers = tuple(compile_pattern(p, path=path) for p in patterns)
    if len(patterns) == 1:
        return matchers[0]
    parts: list[str] = []
    for p in patterns:
        if p.startswith(REGEX_PREFIX):
            expr = p[len(REGEX_PREFIX) :]
            if _BACKREF.search(expr):  # group numbers would shift in an alternation
                return _any_of(matchers)
            parts.append(f"(?:{expr})")
        else:
            parts.append(f"\\A(?s:{glob_to_regex(p, path=path)})\\Z")
    try:
        return re.compile("|".join(parts)).search
    except re.error:  # e.g. inline global flags not at the start
        return _any_of(matchers)


def compile_criterion(key: str, attribute: str | None, patterns: tuple[str, ...]) -> Criterion:
    if key == "power_states":
        return Criterion(key, attribute, patterns, frozenset(patterns).__contains__)
    return Criterion(
        key, attribute, patterns, compile_alternatives(patterns, path=key in PATH_KEYS)
    )


@dataclass(frozen=True)
class CompiledSelector:
    criteria: tuple[Criterion, ...]
    templates: bool | None

    @classmethod
    def of(cls, sel: Selector) -> CompiledSelector:
        crit = tuple(compile_criterion(k, a, p) for k, a, p in sel.criteria())
        return cls(crit, sel.templates)


@dataclass(frozen=True)
class CompiledPolicy:
    policy: Policy
    select: CompiledSelector
    exclude: CompiledSelector

    @classmethod
    def of(cls, policy: Policy) -> CompiledPolicy:
        return cls(policy, CompiledSelector.of(policy.select), CompiledSelector.of(policy.exclude))

    def matches(self, vm: VmFacts) -> bool:
        """Every select criterion holds, no exclude criterion does, templates only if asked."""
        if vm.template and not self.select.templates:
            return False
        for c in self.select.criteria:
            if not c.test(vm):
                return False
        if vm.template and self.exclude.templates:
            return False
        return not any(c.test(vm) for c in self.exclude.criteria)
