"""From vSphere objects to disk_io: where a disk lives, how to reach it, what changed."""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import anyio
from pyVmomi import vim

from disk_io.extents import collect_changed_areas
from disk_io.httpdisk import server_thumbprint
from disk_io.model import DiskLocation, Extent, VcenterAccess
from disk_io.transport import DiskTransport, TransportSettings, open_disk, vm_access
from protector.config import Config
from protector.context import Context
from protector.parallel import in_thread_shielded
from protector.vsphere.dspath import split_datastore_path
from protector.vsphere.vmconfig import DiskInfo
from watcher.session import Session
from watcher.soap import COOKIE_NAME, VsphereProtocolError, redirect_error


def transport_settings(cfg: Config) -> TransportSettings:
    return TransportSettings(
        modes=cfg.transport.modes,
        vddk_libdir=cfg.transport.vddk_libdir,
        file_datastores=dict(cfg.transport.file_datastores),
        vddk_transport_modes=cfg.transport.vddk_modes,
        vddk_thumbprint=cfg.transport.vddk_thumbprint,
    )


def vcenter_access(session: Session) -> VcenterAccess:
    ep = session.endpoint
    return VcenterAccess(
        url=ep.sdk_url,
        session_cookie=session.session_cookie,
        user=session.user,
        thumbprint=ep.thumbprint,
        verify=ep.verify_tls,
        ssl_context=ep.ssl_context() if ep.ca_file else None,
    )


async def datacenter_path(ctx: Context, vm: Any) -> str:
    """Inventory path of the VM's datacenter ("DC0", or "folder/DC0"), cached per VM."""
    cached = ctx.datacenter_of.get(vm._moId)
    if cached is not None:
        return cached
    names: list[str] = []
    obj = vm
    found = False
    while obj is not None:
        props = await ctx.session.properties(obj, ["name", "parent"])
        if found and props.get("parent") is not None:
            names.append(props["name"])
        if isinstance(obj, vim.Datacenter):
            names.append(props["name"])
            found = True
        obj = props.get("parent")
        if obj is not None:
            obj = ctx.session.client.bind(obj)
    if not found:
        raise ValueError(f"VM {vm._moId} is not inside a datacenter")
    path = "/".join(reversed(names))
    ctx.datacenter_of[vm._moId] = path
    return path


async def location(ctx: Context, vm: Any, snap: Any | None, disk: DiskInfo) -> DiskLocation:
    ds, path = split_datastore_path(disk.file_name)
    return DiskLocation(
        datacenter_path=await datacenter_path(ctx, vm),
        datastore=ds,
        path=path,
        capacity_bytes=disk.capacity_bytes,
        vm_moref=vm._moId,
        snapshot_moref=snap._moId if snap is not None else None,
        disk_key=disk.key,
        provisioning=disk.provisioning or "",
    )


def pinned_for_vddk(
    access: VcenterAccess, settings: TransportSettings, modes: tuple[str, ...] | None
) -> VcenterAccess:
    """VDDK trusts vCenter's certificate by thumbprint only: without a pin it would get
    none (and connect unverified, or not at all). When VDDK may serve the disk and TLS
    is verified, pin the certificate that just passed CA verification. Blocking."""
    order = modes if modes is not None else settings.modes
    if "vddk" not in order or not settings.vddk_libdir:
        return access
    if access.thumbprint or not access.verify or access.scheme != "https":
        return access
    return dataclasses.replace(access, thumbprint=server_thumbprint(access))


async def _open(
    ctx: Context, loc: DiskLocation, writable: bool, modes: tuple[str, ...] | None
) -> DiskTransport:
    settings = transport_settings(ctx.cfg)
    access = vcenter_access(ctx.session)

    def open_it() -> DiskTransport:
        pinned = pinned_for_vddk(access, settings, modes)
        return open_disk(loc, pinned, settings, writable=writable, modes=modes).disk

    return await anyio.to_thread.run_sync(open_it, limiter=ctx.io_limiter)


@contextlib.asynccontextmanager
async def vddk_access(ctx: Context, vm: Any, modes: tuple[str, ...] | None) -> AsyncIterator[None]:
    """VixDiskLib_PrepareForAccess before a backup's or restore's first disk open, EndAccess
    after its last close (even on cancellation): vCenter keeps Storage vMotion off the VM
    meanwhile (VDDK guide). Nothing when vddk is not among the modes."""
    settings = transport_settings(ctx.cfg)
    access = vcenter_access(ctx.session)

    def begin() -> Any:
        return vm_access(vm._moId, pinned_for_vddk(access, settings, modes), settings, modes)

    held = await anyio.to_thread.run_sync(begin, limiter=ctx.io_limiter)
    try:
        yield
    finally:
        await in_thread_shielded(held.end)


T = TypeVar("T")


async def with_vddk_access(
    ctx: Context, vm: Any, modes: tuple[str, ...] | None, work: Awaitable[T]
) -> T:
    """`await work` inside vddk_access (for call sites that are one statement)."""
    async with vddk_access(ctx, vm, modes):
        return await work


async def open_disk_for_read(
    ctx: Context, vm: Any, snap: Any | None, disk: DiskInfo, modes: tuple[str, ...] | None
) -> DiskTransport:
    return await _open(ctx, await location(ctx, vm, snap, disk), False, modes)


async def open_disk_for_write(
    ctx: Context, vm: Any, disk: DiskInfo, modes: tuple[str, ...] | None = None
) -> DiskTransport:
    return await _open(ctx, await location(ctx, vm, None, disk), True, modes)


async def changed_areas(
    session: Session, vm: Any, snap: Any | None, device_key: int, change_id: str, capacity: int
) -> list[Extent]:
    """Every changed (or, for "*", allocated) extent, paging QueryChangedDiskAreas as the
    seed says; an inconsistent answer raises InvalidChangedAreas (a ValueError). Without a
    snapshot vCenter compares against the VM's current disks (only for a powered-off VM)."""

    async def fetch(start: int) -> tuple[int, int, list[tuple[int, int]]]:
        info = await session.call(
            vm,
            "QueryChangedDiskAreas",
            snapshot=snap,
            deviceKey=device_key,
            startOffset=start,
            changeId=change_id,
        )
        areas = [(a.start, a.length) for a in (info.changedArea or [])]
        return info.startOffset, info.length, areas

    return await collect_changed_areas(fetch, capacity)


def snapshot_dir(files: Any) -> str:
    """The datastore directory a VM's snapshot files go to: `files.snapshotDirectory`, else
    the directory of its .vmx ("[ds] dir", no trailing slash)."""
    if getattr(files, "snapshotDirectory", None):
        ds, rel = split_datastore_path(files.snapshotDirectory)
        return f"[{ds}] {rel.strip('/')}"
    ds, rel = split_datastore_path(files.vmPathName or "")
    return f"[{ds}] {posixpath.dirname(rel)}"


async def fetch_datastore_file(
    ctx: Context, vm: Any, ds_path: str, *, timeout: float = 120.0
) -> bytes | None:
    """GET a file of the VM's datacenter over datastore HTTP (`/folder/...`) with the SOAP
    session's cookie; None when it does not exist (HTTP 404)."""
    ds, rel = split_datastore_path(ds_path)
    client = ctx.session.client
    url = f"{client.endpoint.base_url}/folder/{quote(rel)}"
    params = {"dcPath": await datacenter_path(ctx, vm), "dsName": ds}
    headers = {"Cookie": f"{COOKIE_NAME}={ctx.session.session_cookie}"}
    async with client.http.get(
        url,
        params=params,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout),
        allow_redirects=False,  # the session cookie must not follow to another host
    ) as resp:
        if 300 <= resp.status < 400:
            raise redirect_error(f"GET {ds_path} over datastore HTTP", resp)
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise VsphereProtocolError(f"GET {ds_path} over datastore HTTP: HTTP {resp.status}")
        return await resp.read()
