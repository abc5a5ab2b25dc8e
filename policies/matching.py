"""Selection and exclusion: selector keys, their values on a VM, and compiled selectors.

A pattern is a glob or, after the prefix `re:`, a regular expression in RE2 syntax, both
matched in linear time (see patterns.py). Globs match the whole value and are case-sensitive
(vSphere names are). In *path* globs (`folders`, `resource_pools`, `vapps`) `*` and `?` stay
within one path level and `**` spans any number of levels, including none, so
`/DC0/vm/prod/**` covers the folder `prod` itself and everything below. A regular expression
matches anywhere in the value (a search); anchor it with `^...$`. `vapps` holds every vApp
around a VM (nested ones too), so a vApp's path selects all of its VMs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .model import POWER_STATES, Policy, Selector, VmFacts
from .patterns import (
    REGEX_PREFIX,
    Matcher,
    PatternError,
    compile_alternatives,
    compile_pattern,
    glob_to_regex,
)

__all__ = [
    "MULTI_KEYS",
    "PATH_KEYS",
    "REGEX_PREFIX",
    "CompiledPolicy",
    "CompiledSelector",
    "Criterion",
    "Matcher",
    "PatternError",
    "check_pattern",
    "compile_alternatives",
    "compile_criterion",
    "compile_pattern",
    "glob_to_regex",
]

PATH_KEYS = frozenset({"folders", "resource_pools", "vapps"})
# Keys a VM may hold several values of (any one matching is enough).
MULTI_KEYS = frozenset({"tags", "vapps"})


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
    # A vApp, also one nested in another: a VM in /.../shop/db matches "/.../shop" too.
    "vapps": lambda vm: vm.vapps,
    # Not a selector key: a policy's top-level `vcenters` list, added to its selection.
    "vcenters": _single(lambda vm: vm.vcenter),
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
        select = CompiledSelector.of(policy.select)
        if policy.vcenters:
            # `vcenters` narrows the selection like any criterion, so the full evaluation's
            # index (engine.py) handles it with the rest.
            names = tuple(policy.vcenters)
            only = Criterion("vcenters", None, names, frozenset(names).__contains__)
            select = CompiledSelector((*select.criteria, only), select.templates)
        return cls(policy, select, CompiledSelector.of(policy.exclude))

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
