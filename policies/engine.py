"""Policy evaluation: which policy protects each VM, which overlap, which VMs nothing covers.

Pure and deterministic. Resolution for one VM:

* disabled policies are ignored;
* of the policies that match, the one with the highest `priority` wins;
* two or more matching policies sharing the highest priority are a *conflict*: the VM gets no
  winner (it is reported unprotected and as a conflict, loudly) until an admin resolves it.
  Guessing a winner would silently apply a retention or schedule nobody chose;
* except when a live edit created the conflict: a VM an earlier set protected keeps that
  policy (a *hold*, see holds.py) and is reported as held and in conflict, not unprotected.

The full evaluation indexes the inventory once: each field's distinct values map to a bit
mask of the VMs holding them, so a pattern is tried once per distinct value rather than once
per VM, and a policy's members are ANDs/ORs of Python ints. Criteria on high-cardinality
fields (names, annotations) are tried VM by VM when the candidates left are fewer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .matching import MULTI_KEYS, VALUE_GETTERS, CompiledPolicy, Criterion
from .model import Policy, PolicySet, VmFacts


@dataclass(frozen=True)
class VmResult:
    key: str
    path: str
    winner: str | None
    matches: tuple[str, ...]  # every matching policy, highest priority first, then by name
    conflict: tuple[str, ...] = ()  # the policies sharing the top priority, when more than one
    held: bool = False  # in conflict, but the winner is kept from an earlier set (a hold)

    @property
    def protected(self) -> bool:
        return self.winner is not None

    @property
    def overlap(self) -> bool:
        return len(self.matches) > 1


@dataclass(frozen=True)
class Evaluation:
    results: Mapping[str, VmResult]  # by VM key
    policy_names: tuple[str, ...] = ()  # the enabled policies evaluated

    def _sorted(self, keep: object) -> tuple[VmResult, ...]:
        rs = (r for r in self.results.values() if keep(r))  # type: ignore[operator]
        return tuple(sorted(rs, key=lambda r: (r.path, r.key)))

    @property
    def unprotected(self) -> tuple[VmResult, ...]:
        return self._sorted(lambda r: r.winner is None)

    @property
    def overlaps(self) -> tuple[VmResult, ...]:
        return self._sorted(lambda r: r.overlap)

    @property
    def conflicts(self) -> tuple[VmResult, ...]:
        """Every VM in conflict, held ones included."""
        return self._sorted(lambda r: bool(r.conflict))

    @property
    def held(self) -> tuple[VmResult, ...]:
        """VMs in conflict that keep the policy an earlier set gave them."""
        return self._sorted(lambda r: r.held)

    def members(self, policy: str) -> tuple[VmResult, ...]:
        """VMs the policy wins."""
        return self._sorted(lambda r: r.winner == policy)

    def matched_by(self, policy: str) -> tuple[VmResult, ...]:
        """VMs the policy matches, whether or not it wins them."""
        return self._sorted(lambda r: policy in r.matches)


@dataclass(frozen=True)
class DiffEntry:
    key: str
    path: str
    old: str | None  # winning policy before
    new: str | None  # winning policy after
    conflict: tuple[str, ...] = ()  # for a held VM: the policies tied under the new set


@dataclass(frozen=True)
class PolicyDiff:
    protected: tuple[DiffEntry, ...] = ()  # + no winner before, one now
    unprotected: tuple[DiffEntry, ...] = ()  # − a winner before, none now
    changed: tuple[DiffEntry, ...] = ()  # ~ another policy wins now
    # = in conflict under the new set, kept on the policy that protected them (old == new);
    # not a change of winner, so left out of `empty` and len()
    held: tuple[DiffEntry, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.protected or self.unprotected or self.changed)

    def __len__(self) -> int:
        return len(self.protected) + len(self.unprotected) + len(self.changed)


class CompiledSet:
    """A policy set with its patterns compiled, in resolution order; build once per load.

    `holds` maps a VM key to the policy it keeps while this set leaves it in conflict (set by
    holds.keep_through_conflicts when a live edit replaces a set; empty otherwise)."""

    holds: Mapping[str, CompiledPolicy] = MappingProxyType({})

    def __init__(self, policies: PolicySet | Iterable[Policy]) -> None:
        enabled = [p for p in policies if p.enabled]
        enabled.sort(key=lambda p: (-p.priority, p.name))
        self.compiled: tuple[CompiledPolicy, ...] = tuple(CompiledPolicy.of(p) for p in enabled)
        self.names = tuple(sorted(p.name for p in enabled))

    def with_holds(self, holds: Mapping[str, CompiledPolicy]) -> CompiledSet:
        """The same set, with these holds (the patterns are not compiled again)."""
        cs = copy.copy(self)
        cs.holds = MappingProxyType(dict(holds))
        return cs

    def compiled_policy(self, name: str) -> CompiledPolicy | None:
        """An enabled policy of the set, or one a VM is held on, by name."""
        for cp in self.compiled:
            if cp.policy.name == name:
                return cp
        return next((cp for cp in self.holds.values() if cp.policy.name == name), None)


_compiled_cache: dict[int, tuple[object, CompiledSet]] = {}


def compile_set(policies: PolicySet | CompiledSet | Iterable[Policy]) -> CompiledSet:
    if isinstance(policies, CompiledSet):
        return policies
    if isinstance(policies, PolicySet):
        # A PolicySet is immutable: compile it once, however often it is evaluated.
        hit = _compiled_cache.get(id(policies))
        if hit is not None and hit[0] is policies:
            return hit[1]
        cs = CompiledSet(policies)
        if len(_compiled_cache) > 8:
            _compiled_cache.clear()
        _compiled_cache[id(policies)] = (policies, cs)
        return cs
    return CompiledSet(policies)


def _resolve(
    vm: VmFacts, matched: Sequence[Policy], holds: Mapping[str, CompiledPolicy]
) -> VmResult:
    """`matched` is in resolution order (priority descending, then name)."""
    if not matched:
        return VmResult(vm.key, vm.path, None, ())
    names = tuple(p.name for p in matched)
    top = matched[0].priority
    if len(matched) > 1 and matched[1].priority == top:
        tied = tuple(p.name for p in matched if p.priority == top)
        kept = holds.get(vm.key)
        # Held while the policy it keeps still covers it: a VM that moves out of that
        # policy's scope is not protected by a guess.
        if kept is not None and kept.matches(vm):
            return VmResult(vm.key, vm.path, kept.policy.name, names, tied, held=True)
        return VmResult(vm.key, vm.path, None, names, tied)
    return VmResult(vm.key, vm.path, names[0], names)


def evaluate_one(policies: PolicySet | CompiledSet | Iterable[Policy], vm: VmFacts) -> VmResult:
    """Evaluate one VM, e.g. after an event about it."""
    cs = compile_set(policies)
    return _resolve(vm, [cp.policy for cp in cs.compiled if cp.matches(vm)], cs.holds)


# --- full evaluation ------------------------------------------------------------------------


def _bit_indexes(mask: int) -> list[int]:
    bits = bin(mask)[:1:-1]  # least significant bit first
    out: list[int] = []
    i = bits.find("1")
    while i >= 0:
        out.append(i)
        i = bits.find("1", i + 1)
    return out


CriterionKey = tuple[str, str | None, tuple[str, ...]]


class _Index:
    """The inventory indexed for one evaluation."""

    def __init__(self, vms: Sequence[VmFacts], shared: set[CriterionKey]) -> None:
        self.vms = vms
        self.n = len(vms)
        self.all = (1 << self.n) - 1
        self.shared = shared  # criteria used by several policies: worth a full-table pass
        self.templates = 0
        # (key, attribute) -> value -> mask of the VMs holding that value
        self.tables: dict[tuple[str, str | None], dict[str, int]] = {}
        # (key, attribute) -> the value of each VM (single-valued keys only), by VM index
        self.columns: dict[tuple[str, str | None], list[str | None]] = {}
        self.cache: dict[CriterionKey, int] = {}
        for key, getter in VALUE_GETTERS.items():
            table: dict[str, int] = {}
            for i, vm in enumerate(vms):
                for v in getter(vm):
                    table[v] = table.get(v, 0) | (1 << i)
            self.tables[(key, None)] = table
        for i, vm in enumerate(vms):
            if vm.template:
                self.templates |= 1 << i
            for a, v in vm.attributes.items():
                t = self.tables.setdefault(("attributes", a), {})
                t[v] = t.get(v, 0) | (1 << i)

    def table(self, c: Criterion) -> dict[str, int]:
        return self.tables.get((c.key, c.attribute), {})

    def column(self, c: Criterion) -> list[str | None]:
        ck = (c.key, c.attribute)
        col = self.columns.get(ck)
        if col is None:
            if c.attribute is not None:
                col = [vm.attributes.get(c.attribute) for vm in self.vms]
            else:
                get = VALUE_GETTERS[c.key]
                col = [next(iter(get(vm)), None) for vm in self.vms]
            self.columns[ck] = col
        return col

    def full_mask(self, c: Criterion) -> int:
        ck = (c.key, c.attribute, c.patterns)
        m = self.cache.get(ck)
        if m is None:
            match = c.match
            m = 0
            for value, vm_mask in self.table(c).items():
                if match(value):
                    m |= vm_mask
            self.cache[ck] = m
        return m

    def _mask_of(self, indexes: Iterable[int]) -> int:
        bits = bytearray(b"0") * self.n
        n1 = self.n - 1
        for i in indexes:
            bits[n1 - i] = 49  # "1"
        return int(bits, 2) if bits else 0

    def narrow(self, cand: int, c: Criterion) -> int:
        """The candidates for which criterion `c` holds."""
        ck = (c.key, c.attribute, c.patterns)
        if ck in self.cache or ck in self.shared or c.key in MULTI_KEYS:
            return cand & self.full_mask(c)
        if cand.bit_count() >= len(self.table(c)):
            return cand & self.full_mask(c)
        # Few candidates left on a high-cardinality key: test them one by one.
        col, match = self.column(c), c.match
        return self._mask_of(
            i for i in _bit_indexes(cand) if (v := col[i]) is not None and match(v)
        )

    def members(self, cp: CompiledPolicy) -> int:
        cand = self.all if cp.select.templates else self.all & ~self.templates
        # Cheap (few distinct values) criteria first: they shrink the candidates the most
        # for the least work.
        for c in sorted(cp.select.criteria, key=lambda c: len(self.table(c))):
            if not cand:
                return 0
            cand = self.narrow(cand, c)
        if cp.exclude.templates:
            cand &= ~self.templates
        for c in cp.exclude.criteria:
            if not cand:
                return 0
            cand &= ~self.narrow(cand, c)
        return cand


def _shared_criteria(cs: CompiledSet) -> set[CriterionKey]:
    seen: set[CriterionKey] = set()
    shared: set[CriterionKey] = set()
    for cp in cs.compiled:
        for c in (*cp.select.criteria, *cp.exclude.criteria):
            ck = (c.key, c.attribute, c.patterns)
            (shared if ck in seen else seen).add(ck)
    return shared


def evaluate(
    policies: PolicySet | CompiledSet | Iterable[Policy], vms: Iterable[VmFacts]
) -> Evaluation:
    """Evaluate every VM of an inventory snapshot against a policy set."""
    cs = compile_set(policies)
    vm_list = list(vms)
    index = _Index(vm_list, _shared_criteria(cs))
    matched: list[list[Policy]] = [[] for _ in vm_list]
    for cp in cs.compiled:  # resolution order, so each list comes out sorted
        for i in _bit_indexes(index.members(cp)):
            matched[i].append(cp.policy)
    holds = cs.holds
    results = {vm.key: _resolve(vm, m, holds) for vm, m in zip(vm_list, matched, strict=True)}
    return Evaluation(results, cs.names)


def diff(old: Evaluation, new: Evaluation) -> PolicyDiff:
    """What changes for each VM when `new` replaces `old`.

    VMs only in `new` count as unprotected before; VMs gone from `new` are left out (they
    left the inventory, their policy did not change).
    """
    plus: list[DiffEntry] = []
    minus: list[DiffEntry] = []
    changed: list[DiffEntry] = []
    held: list[DiffEntry] = []
    for key, r in new.results.items():
        before = old.results.get(key)
        was = before.winner if before is not None else None
        if r.held and was == r.winner:
            held.append(DiffEntry(key, r.path, was, r.winner, r.conflict))
        if was == r.winner:
            continue
        e = DiffEntry(key, r.path, was, r.winner)
        if was is None:
            plus.append(e)
        elif r.winner is None:
            minus.append(e)
        else:
            changed.append(e)

    def order(es: list[DiffEntry]) -> tuple[DiffEntry, ...]:
        return tuple(sorted(es, key=lambda e: (e.path, e.key)))

    return PolicyDiff(order(plus), order(minus), order(changed), order(held))
