"""Helpers for the policy tests: VM facts and minimal policy files."""

from __future__ import annotations

import textwrap
from typing import Any

from policies.model import VmFacts


def make_vm(path: str, **kw: Any) -> VmFacts:
    """A VM at an inventory path like "/DC0/vm/prod/web-1"; other facts by keyword."""
    folder, _, name = path.rpartition("/")
    defaults: dict[str, Any] = {
        "key": f"vc:{path}",
        "path": path,
        "name": name,
        "datacenter": path.split("/")[1],
        "folder": folder,
        "resource_pool": f"/{path.split('/')[1]}/host/C0/Resources",
        "power_state": "poweredOn",
    }
    defaults.update(kw)
    return VmFacts(**defaults)


def policy_toml(
    name: str = "p",
    priority: int = 10,
    select: str = 'folders = ["/**"]',
    extra: str = "",
) -> str:
    """One [[policy]] with a minimal valid body; `select` is the body of [policy.select]."""
    return textwrap.dedent(
        f"""\
        [[policy]]
        name = "{name}"
        priority = {priority}

        [policy.select]
        {{select}}

        [policy.schedule]
        rpo = "24h"

        [policy.retention]
        keep_last = 3
        """
    ).replace("{select}", select) + (textwrap.dedent(extra) if extra else "")
