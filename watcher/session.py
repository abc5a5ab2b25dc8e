"""One logged-in vSphere session per vCenter, shared by every caller.

Expired sessions heal transparently: the first call that sees NotAuthenticated
logs in again (single-flight: a hundred failing calls cause one login) and every
such call is retried once. The re-login is sent without a cookie and its cookie is
installed only once it succeeded; calls in flight meanwhile keep the old one, and
cookies in their answers are never taken (see SoapClient).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from pyVmomi import vmodl

from .soap import (
    COOKIE_NAME,
    Endpoint,
    SoapClient,
    VsphereError,
    VsphereFault,
    VsphereProtocolError,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")


class LoginError(VsphereError):
    """Credentials were refused."""


@dataclass(frozen=True, repr=False)
class Credentials:
    user: str
    password: str = field(repr=False)

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"Credentials(user={self.user!r}, password=<redacted>)"


class Session:
    """The shared session. Use `async with Session(...) as s:` or connect()/close()."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        *,
        keepalive_interval: float = 300.0,
    ) -> None:
        self.endpoint = endpoint
        self._credentials = credentials
        self.client = SoapClient(endpoint)
        self.content: Any = None
        self.about: Any = None
        self.keepalive_interval = keepalive_interval
        self._login_lock = asyncio.Lock()
        self._generation = 0  # bumped by every successful login
        self._keepalive_task: asyncio.Task[None] | None = None
        self.logins = 0

    # -- lifecycle ---------------------------------------------------------

    async def connect(self) -> Session:
        await self.client.negotiate_version()
        si = self.client.moref("ServiceInstance", "ServiceInstance")
        self.content = await self.client.call(si, "RetrieveServiceContent")
        self.about = self.content.about
        await self._login()
        if self.keepalive_interval > 0:
            self._keepalive_task = asyncio.create_task(self._keepalive(), name="vsphere-keepalive")
        return self

    async def close(self) -> None:
        if self._keepalive_task:
            self._keepalive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive_task
            self._keepalive_task = None
        if self.content is not None and self.client.cookie:
            with contextlib.suppress(VsphereError, asyncio.CancelledError):
                await self.client.call(self.content.sessionManager, "Logout", timeout=5)
        await self.client.close()

    async def __aenter__(self) -> Session:
        try:
            return await self.connect()
        except BaseException:
            await self.client.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def vcenter_uuid(self) -> str:
        """`about.instanceUuid`: the vCenter half of every VM identity."""
        return str(self.about.instanceUuid or "")

    @property
    def user(self) -> str:
        return self._credentials.user

    @property
    def credentials(self) -> Credentials:
        """For companion services that log in separately (the vAPI tagging endpoint)."""
        return self._credentials

    @property
    def session_cookie(self) -> str:
        return self.client.cookie

    # -- calls -------------------------------------------------------------

    async def _login(self) -> None:
        # The first login authenticates the session the connection got (vCenter sets
        # its cookie on RetrieveServiceContent); a re-login starts a new one.
        sent = self.client.cookie if self._generation == 0 else ""
        try:
            _result, cookie = await self.client.login(
                self.content.sessionManager,
                "Login",
                cookie=sent,
                userName=self._credentials.user,
                password=self._credentials.password,
            )
        except VsphereFault as exc:
            if exc.fault_type == "InvalidLogin":
                raise LoginError(
                    f"login failed for {self._credentials.user} at {self.endpoint.sdk_url}"
                ) from None
            raise
        cookie = cookie or sent
        if not cookie:
            raise VsphereProtocolError(
                f"Login at {self.endpoint.sdk_url} succeeded but set no "
                f"{COOKIE_NAME} cookie; is a proxy between vigil and vCenter dropping it?"
            )
        self.client.cookie = cookie
        self._generation += 1
        self.logins += 1
        log.info("vsphere.login", url=self.endpoint.sdk_url, user=self._credentials.user)

    async def _relogin(self, seen_generation: int) -> None:
        async with self._login_lock:
            if self._generation != seen_generation:
                return  # another caller already logged in again
            log.info("vsphere.session_expired", url=self.endpoint.sdk_url)
            await self._login()

    async def call(self, mo: Any, method: str, *, timeout: float | None = None, **kw: Any) -> Any:
        return await self.healing(lambda: self.client.call(mo, method, timeout=timeout, **kw))

    async def healing(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op` (one request); on NotAuthenticated log in again (once for all callers)
        and run it once more."""
        generation = self._generation
        try:
            return await op()
        except VsphereFault as exc:
            if exc.fault_type != "NotAuthenticated":
                raise
        await self._relogin(generation)
        return await op()

    async def _keepalive(self) -> None:
        si = self.client.moref("ServiceInstance", "ServiceInstance")
        while True:
            await asyncio.sleep(self.keepalive_interval)
            try:
                await self.call(si, "CurrentTime", timeout=30)
            except VsphereError as exc:
                log.warning("vsphere.keepalive_failed", error=str(exc))

    # -- PropertyCollector helpers ----------------------------------------

    def moref(self, type_name: str, value: str) -> Any:
        return self.client.moref(type_name, value)

    async def retrieve(
        self,
        specs: Sequence[vmodl.query.PropertyCollector.FilterSpec],
        *,
        page_size: int = 1000,
        collector: Any = None,
    ) -> list[vmodl.query.PropertyCollector.ObjectContent]:
        """RetrievePropertiesEx with ContinueRetrievePropertiesEx paging."""
        pc = collector or self.content.propertyCollector
        opts = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=page_size)
        result = await self.call(pc, "RetrievePropertiesEx", specSet=list(specs), options=opts)
        out: list[Any] = []
        while result is not None:
            out.extend(result.objects or [])
            if not result.token:
                break
            result = await self.call(pc, "ContinueRetrievePropertiesEx", token=result.token)
        return out

    async def properties(self, mo: Any, paths: Sequence[str]) -> dict[str, Any]:
        """Read some properties of one object. Unset properties are simply absent."""
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=mo, skip=False)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=type(mo), pathSet=list(paths), all=False
                )
            ],
        )
        objs = await self.retrieve([spec])
        props: dict[str, Any] = {}
        for oc in objs:
            for p in oc.propSet or []:
                props[p.name] = p.val
            for missing in oc.missingSet or []:
                fault = missing.fault
                if isinstance(fault, vmodl.fault.ManagedObjectNotFound):
                    raise VsphereFault("ManagedObjectNotFound", f"{mo._moId} no longer exists")
        if not objs:
            raise VsphereFault("ManagedObjectNotFound", f"{mo._moId} no longer exists")
        return props
