"""`vigil doctor`'s checks: each says OK, or what is wrong and what to do about it.

vCenter login, the account's privileges against the role of docs/vcenter-role.md (read
through AuthorizationManager.HasPrivilegeOnEntities), the transports (VDDK found and its
version, datastore HTTP answering, file mounts present), the repository and the policies.
A check is `needed` when vigil cannot work without it; `vigil doctor` exits 1 when a needed
one fails. A transport is needed only when no other configured transport works.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from disk_io.vddk.library import candidate_paths, library_version
from policies import PolicyLoadError, load_policies
from protector.config import Config, ConfigError
from protector.errors import UserError
from protector.vsphere.privileges import ROLE, missing_privileges
from watcher.session import Session
from watcher.soap import COOKIE_NAME, VsphereError

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""
    needed: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL and c.needed for c in checks)


def vddk_check(libdir: str) -> Check:
    """The VDDK library under [transport] vddk_libdir and its version (from the soname and
    the file it resolves to: VDDK has no version call; disk_io.vddk.library)."""
    for path in candidate_paths(libdir):
        if path.exists():
            _major, version = library_version(path)
            return Check("transport vddk", OK, f"VDDK {version} at {path}")
    return Check(
        "transport vddk",
        FAIL,
        f"no libvixDiskLib.so under {libdir}",
        "install VMware's VDDK there, or set [transport] vddk_libdir",
    )


def file_checks(mounts: dict[str, str]) -> list[Check]:
    out = []
    for ds, mount in sorted(mounts.items()):
        p = Path(mount)
        if p.is_dir() and os.access(p, os.R_OK | os.X_OK):
            out.append(Check(f"transport file {ds}", OK, f"{mount} is mounted and readable"))
        else:
            out.append(
                Check(
                    f"transport file {ds}",
                    FAIL,
                    f"{mount} is not a readable directory",
                    f"mount datastore {ds} at {mount}, or fix [transport.file.datastores]",
                )
            )
    if not mounts:
        out.append(
            Check(
                "transport file",
                FAIL,
                "no datastore mounts configured",
                'add [transport.file.datastores] NAME = "/mount/point"',
            )
        )
    return out


async def http_check(session: Session) -> Check:
    """A GET on datastore HTTP (`/folder` of the first datacenter's first datastore) with the
    session's cookie: any answer but 401/403 or a server error means the service is there."""
    content = session.content
    dcs = (await session.properties(content.rootFolder, ["childEntity"])).get("childEntity")
    dc = next((session.client.bind(e) for e in dcs or [] if e._wsdlName == "Datacenter"), None)
    if dc is None:
        return Check("transport http", FAIL, "vCenter shows no datacenter", "check the account")
    props = await session.properties(dc, ["name", "datastore"])
    stores = props.get("datastore") or []
    params = {"dcPath": props["name"]}
    if stores:
        ds = session.client.bind(stores[0])
        params["dsName"] = (await session.properties(ds, ["name"]))["name"]
    url = f"{session.client.endpoint.base_url}/folder"
    try:
        async with session.client.http.get(
            url,
            params=params,
            headers={"Cookie": f"{COOKIE_NAME}={session.session_cookie}"},
            timeout=aiohttp.ClientTimeout(total=20),
            allow_redirects=False,
        ) as resp:
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Check(
            "transport http",
            FAIL,
            f"datastore HTTP at {url} does not answer: {exc or type(exc).__name__}",
            "allow HTTPS from vigil to vCenter and the hosts",
        )
    if status in (401, 403) or status >= 500:
        return Check(
            "transport http",
            FAIL,
            f"datastore HTTP at {url} answered HTTP {status}",
            "grant Datastore.Browse (docs/vcenter-role.md)" if status in (401, 403) else "",
        )
    return Check("transport http", OK, f"datastore HTTP at {url} answers (HTTP {status})")


async def privileges_check(session: Session) -> Check:
    try:
        missing = await missing_privileges(session)
    except VsphereError as exc:
        return Check(
            "privileges",
            FAIL,
            f"cannot read the account's privileges: {exc}",
            "vigil needs vCenter 6.5 or later (HasPrivilegeOnEntities)",
        )
    if not missing:
        return Check("privileges", OK, f"all {len(ROLE)} privileges of docs/vcenter-role.md")
    why = dict(ROLE)
    listed = ", ".join(f"{p} ({why[p]})" for p in missing)
    return Check(
        "privileges",
        FAIL,
        f"missing on the root folder: {listed}",
        "add them to vigil's role and grant it on the root folder, propagated "
        "(docs/vcenter-role.md)",
    )


def _absent_repository(path: Path) -> Check | None:
    """None when something is at the repository path; else a failure naming `vigil init`,
    the only way a repository is created."""
    if path.exists():
        return None
    return Check(
        "repository",
        FAIL,
        f"no repository at {path}",
        "create it with `vigil init` (or fix repository.path)",
    )


async def repository_check(cfg: Config) -> Check:
    from protector.repoaccess import open_repository

    absent = _absent_repository(Path(cfg.repository.path))
    if absent is not None:
        return absent
    try:
        repo = await open_repository(cfg)
        points = await anyio.to_thread.run_sync(repo.list_points)
    except (UserError, OSError, ValueError) as exc:
        return Check(
            "repository",
            FAIL,
            str(exc),
            "create it with `vigil init` (or fix repository.path)",
        )
    except Exception as exc:  # a damaged repository: repository's own error types
        return Check("repository", FAIL, f"{type(exc).__name__}: {exc}", "run `vigil verify`")
    where = f"{cfg.repository.path}: {len(points)} restore points"
    if repo.opened_by_host_key:
        stale = await _stale_passphrase(cfg)
        if stale:
            return Check(
                "repository",
                WARN,
                f"{where}; this host's key opens it, but {stale}",
                "the passphrase in your vault is the way in for a new host: set the right "
                "one, or add it with `vigil key add` (which needs a passphrase that opens)",
                needed=False,
            )
        return Check("repository", OK, f"{where} (opened by this host's key)")
    return Check("repository", OK, where)


async def _stale_passphrase(cfg: Config) -> str:
    """Why the configured passphrase would not open the repository ("" when it would, or
    when none is configured here: a host with a key need not hold it). One Argon2id."""
    from dataclasses import replace

    from protector.repoaccess import open_repository

    rc = cfg.repository
    try:
        if rc.passphrase() is None:
            return ""
    except ConfigError:
        return ""  # not available on this host: fine with a host key
    try:
        await open_repository(replace(cfg, repository=replace(rc, key_file="")))
    except UserError as exc:
        return f"the configured passphrase does not: {exc}"
    return ""


def policies_check(cfg: Config) -> Check:
    try:
        ps = load_policies(cfg.policies_path, vcenters=cfg.vcenters)
    except PolicyLoadError as exc:
        first = "; ".join(str(e) for e in exc.errors[:3])
        more = f" (and {len(exc.errors) - 3} more)" if len(exc.errors) > 3 else ""
        return Check("policies", FAIL, first + more, "`vigil policy check` lists every error")
    except OSError as exc:
        return Check("policies", FAIL, f"{cfg.policies_path}: {exc}", "fix [policies] path")
    return Check("policies", OK, f"{cfg.policies_path}: {len(ps)} policies")


def transport_checks(cfg: Config, http: Check | None) -> list[Check]:
    """Each configured transport's check; a failing one is needed only when none works."""
    out: list[Check] = []
    for mode in cfg.transport.modes:
        if mode == "vddk":
            out.append(vddk_check(cfg.transport.vddk_libdir))
        elif mode == "http" and http is not None:
            out.append(http)
        elif mode == "file":
            out.extend(file_checks(dict(cfg.transport.file_datastores)))
    works = any(c.status == OK for c in out)
    for c in out:
        if c.status == FAIL and works:
            c.status, c.needed = WARN, False
    return out


async def run_checks(cfg: Config, connect: Any) -> list[Check]:
    """Every check, in order. `connect(cfg)` opens the vCenter session (a UserError when it
    cannot). With several vCenters each is checked (login, privileges, transports), its
    checks named after it ("vcenter east", "privileges east", ...)."""
    checks: list[Check] = []
    for name in cfg.vcenters:
        one = await vcenter_checks(cfg.for_vcenter(name), connect)
        if cfg.several_vcenters:
            for c in one:
                c.name = f"{c.name} {name}"
        checks.extend(one)
    checks.append(await repository_check(cfg))
    checks.append(policies_check(cfg))
    return checks


async def vcenter_checks(cfg: Config, connect: Any) -> list[Check]:
    """Login, privileges and transports of one vCenter (`cfg.vcenter`)."""
    checks: list[Check] = []
    session: Session | None = None
    try:
        session = await connect(cfg)
        about = session.about
        checks.append(
            Check(
                "vcenter",
                OK,
                f"logged in to {cfg.vcenter.url} as {cfg.vcenter.user} "
                f"({getattr(about, 'fullName', '') or 'vCenter'})",
            )
        )
    except UserError as exc:
        fix = f"fix [{cfg.vcenter.table}] in the configuration"
        checks.append(Check("vcenter", FAIL, str(exc), fix))
    try:
        http = None
        if session is not None:
            checks.append(await privileges_check(session))
            if "http" in cfg.transport.modes:
                http = await http_check(session)
        checks.extend(transport_checks(cfg, http))
    finally:
        if session is not None:
            await session.close()
    return checks
