"""Which configured vCenter a command talks to (`--vcenter NAME`). With one configured
there is nothing to choose. With several, a VM named on the command line is looked up on
all of them: found on one, that one is used; found on several (VM names are unique only
within a vCenter), the command stops and asks for `--vcenter`. A restore goes to the
vCenter its point was taken on unless `--vcenter` names another (`--new-name` only)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from protector.config import Config
from protector.errors import UserError


def vcenter_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--vcenter",
        metavar="NAME",
        help=f"the configured vCenter ([vcenters.NAME] in the configuration) {what}; "
        "needed only when several are configured and the choice is not clear",
    )


def chosen(cfg: Config, args: argparse.Namespace) -> Config:
    """The configuration aimed at `--vcenter NAME` (an unknown name: exit 2, naming the
    configured ones), else as it is (its first vCenter)."""
    name = getattr(args, "vcenter", None)
    return cfg.for_vcenter(name) if name else cfg


def one_vcenter(cfg: Config, args: argparse.Namespace, what: str) -> Config:
    """For commands that work on one vCenter at a time: `--vcenter NAME` is required when
    several are configured."""
    if cfg.several_vcenters and not getattr(args, "vcenter", None):
        raise UserError(
            f"{what} works on one vCenter at a time, and {len(cfg.vcenters)} are "
            f"configured ({', '.join(cfg.vcenters)}); pass --vcenter NAME"
        )
    return chosen(cfg, args)


async def vcenter_of_vm(cfg: Config, args: argparse.Namespace, spec: str) -> Config:
    """The configuration aimed at the vCenter that holds the VM `spec`."""
    if getattr(args, "vcenter", None) or not cfg.several_vcenters:
        return chosen(cfg, args)
    from protector.vsphere.connect import open_session
    from protector.vsphere.vmfind import lookup_vm
    from protector.vsphere.vmlookup import VmAmbiguous, VmNotFound

    async def holds(name: str) -> bool:
        # The targeted lookup on each vCenter (vmfind.py), not every inventory read whole.
        session = await open_session(cfg.for_vcenter(name))
        try:
            await lookup_vm(session, spec)
        except VmNotFound:
            return False
        except VmAmbiguous:
            return True  # ambiguous within that vCenter too: the lookup there says so
        finally:
            await session.close()
        return True

    found = await asyncio.gather(*(holds(n) for n in cfg.vcenters))
    holders = [n for n, h in zip(cfg.vcenters, found, strict=True) if h]
    if len(holders) > 1:
        raise UserError(
            f"VM {spec!r} is on several vCenters ({', '.join(holders)}); pass --vcenter NAME "
            "to say which"
        )
    return cfg.for_vcenter(holders[0]) if holders else cfg  # none: the lookup explains


async def vcenter_names_by_uuid(cfg: Config) -> dict[str, str]:
    """Log in to every configured vCenter once to learn its instance uuid."""
    from protector.vsphere.connect import open_session

    async def uuid_of(name: str) -> str:
        session = await open_session(cfg.for_vcenter(name))
        try:
            return session.vcenter_uuid
        finally:
            await session.close()

    uuids = await asyncio.gather(*(uuid_of(n) for n in cfg.vcenters))
    return dict(zip(uuids, cfg.vcenters, strict=True))


async def vcenter_of_point(
    cfg: Config, args: argparse.Namespace, manifest: Any, *, to_existing: bool
) -> Config:
    """The vCenter a restore talks to: `--vcenter NAME`, else the one the point was taken
    on. Onto an existing VM it can only be that one (the VM is identified there)."""
    source = manifest.vm.vcenter_uuid
    name = getattr(args, "vcenter", None)
    if not cfg.several_vcenters:
        return chosen(cfg, args)
    by_uuid = await vcenter_names_by_uuid(cfg)
    origin = by_uuid.get(source)
    if name:
        target = chosen(cfg, args)
        if to_existing and name != origin:
            raise UserError(
                f"restore point {manifest.point_id} was taken on "
                f"{('vCenter ' + origin) if origin else 'vCenter ' + source}, not {name}; "
                "--to-existing restores onto the VM it came from (use --new-name to restore "
                f"it as a new VM on {name})"
            )
        return target
    if origin is None:
        raise UserError(
            f"restore point {manifest.point_id} was taken on vCenter {source}, none of those "
            f"configured ({', '.join(cfg.vcenters)}); pass --vcenter NAME to restore it as a "
            "new VM on one of them"
        )
    return cfg.for_vcenter(origin)
