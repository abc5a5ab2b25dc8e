"""Which restore point a POINT argument names: the one resolver every command that takes a
POINT uses (restore, export, verify, pin, unpin). Pure: it is given the ids (and, for the
`latest` forms, the manifests) and does no I/O.

Accepted forms, as restic and git users expect:
  - a full point id: `3f2a9c1d0b7e4a55-20261206T101500Z-000007`
  - a unique prefix of one: `3f2a9c1d0b7e4a55-20261206T1015`
  - `latest`: the newest point, when the repository holds one VM's points
  - `VM@latest`: the newest point of that VM (name, inventory path, MoRef or instance UUID)
Anything matching more than one point is refused with the candidates listed, never guessed.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from protector.errors import UserError
from repository import Manifest

LATEST = "latest"
SHOWN = 10  # candidates listed in an ambiguity error


class PointRefError(UserError):
    """The POINT argument names no point, or more than one (exit code 2: bad arguments)."""


def needs_manifests(spec: str) -> bool:
    """Whether resolving `spec` needs the manifests (VM names), not only the ids."""
    s = spec.strip()
    return s == LATEST or s.endswith("@" + LATEST)


def resolve_point(spec: str, ids: Sequence[str], manifests: Sequence[Manifest] = ()) -> str:
    """The point id `spec` names, or PointRefError saying why not (with the candidates)."""
    s = spec.strip()
    if s in ids:
        return s
    if s == LATEST:
        return _latest(list(manifests), "")
    if s.endswith("@" + LATEST):
        vm = s.removesuffix("@" + LATEST)
        return _latest([m for m in manifests if _matches(m, vm)], vm, manifests)
    found = sorted(i for i in ids if s and i.startswith(s))
    if len(found) == 1:
        return found[0]
    if found:
        raise PointRefError(
            f"restore point prefix {s!r} matches {len(found)} points: {_listing(found)}; give "
            "more of the id"
        )
    close = difflib.get_close_matches(s, ids, n=2, cutoff=0.9)
    hint = "; did you mean " + " or ".join(close) + "?" if close else ""
    raise PointRefError(f"no restore point {s!r}{hint} (`vigil list` shows the points)")


def _matches(m: Manifest, spec: str) -> bool:
    v = m.vm
    return spec in (v.name, v.path, v.moref) or spec.lower() == v.instance_uuid.lower()


def _latest(points: list[Manifest], vm: str, everything: Sequence[Manifest] = ()) -> str:
    if not points:
        if vm:
            names = sorted({m.vm.name for m in everything} - {""})
            close = difflib.get_close_matches(vm, names, n=3)
            hint = "; did you mean " + " or ".join(close) + "?" if close else ""
            raise PointRefError(f"no restore points of VM {vm!r}{hint} (`vigil list` shows them)")
        raise PointRefError("no restore points yet, so there is no `latest`")
    by_vm: dict[str, list[Manifest]] = {}
    for m in points:
        by_vm.setdefault(m.vm.key, []).append(m)
    if len(by_vm) > 1:
        newest = [max(ms, key=lambda m: m.seq) for ms in by_vm.values()]
        who = sorted(
            f"{m.vm.path or m.vm.name} (instance UUID {m.vm.instance_uuid})" for m in newest
        )
        what = f"{vm!r} names" if vm else "the repository holds points of"
        raise PointRefError(
            f"{what} {len(by_vm)} VMs: {_listing(who)}; say which with PATH@latest or UUID@latest"
        )
    return max(points, key=lambda m: m.seq).point_id


def _listing(items: Sequence[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more
