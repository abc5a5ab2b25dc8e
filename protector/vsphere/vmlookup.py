"""Finding one VM from what an admin types: a name, an inventory path, a UUID or a MoRef."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from protector.errors import UserError

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
MOREF_RE = re.compile(r"^vm-\d+$")


class VmNotFound(UserError):
    """No VM matches what was typed (the CLI adds the closest names)."""


class VmAmbiguous(UserError):
    """More than one VM matches; the message lists them."""


def find_vm(vms: Sequence[Any], spec: str) -> Any:
    """The one VM `spec` names; a UserError listing candidates when it is ambiguous."""
    spec = spec.strip()
    if spec.startswith("/"):
        matches = [v for v in vms if v.path == spec.rstrip("/")]
        what = "inventory path"
    elif UUID_RE.match(spec):
        low = spec.lower()
        matches = [v for v in vms if (v.instance_uuid or "").lower() == low]
        if not matches:
            matches = [v for v in vms if (v.bios_uuid or "").lower() == low]
        what = "UUID"
    elif MOREF_RE.match(spec):
        matches = [v for v in vms if v.moref == spec]
        what = "MoRef"
    else:
        matches = [v for v in vms if v.name == spec]
        what = "name"
    if not matches:
        raise VmNotFound(
            f"no VM with {what} {spec!r}; `vigil inventory` lists the VMs vigil can see"
        )
    if len(matches) > 1:
        # sorted: the same listing whichever read found them (vmfind.py or the full read)
        listing = "\n".join(
            f"  {v.path}  ({v.moref}, {v.instance_uuid})"
            for v in sorted(matches, key=lambda v: (v.path, v.moref))
        )
        raise VmAmbiguous(
            f"{len(matches)} VMs have the {what} {spec!r}; name one by inventory path or "
            f"instance UUID:\n{listing}"
        )
    return matches[0]
