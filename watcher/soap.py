"""Async SOAP transport for the vSphere API.

pyvmomi supplies the types and the (de)serializer; aiohttp does the I/O. pyvmomi's
own HTTP stack is blocking and must never run on the event loop, so this module
only borrows `SoapStubAdapterBase.SerializeRequest` and `SoapResponseDeserializer`.
The errors live in `watcher.errors` and the endpoint/TLS trust in `watcher.endpoint`;
both are re-exported here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

import aiohttp
import anyio
from pyVmomi import SoapAdapter, VmomiSupport, vim, vmodl

from .endpoint import (
    Endpoint,
    cert_thumbprint,
    is_loopback,
    normalize_thumbprint,
)
from .errors import (
    TlsPinError,
    VsphereConnectionError,
    VsphereError,
    VsphereFault,
    VsphereProtocolError,
    VsphereTimeout,
)
from .pinning import PinnedFingerprint

COOKIE_NAME = "vmware_soap_session"
# Responses larger than this are deserialized in a worker thread so a big
# inventory page never stalls the event loop.
THREAD_DESERIALIZE_BYTES = 256 * 1024
STREAM_CHUNK = 1 << 16


class _Stub(SoapAdapter.SoapStubAdapterBase):
    """Just enough of a pyvmomi stub to serialize requests and bind MoRefs."""

    def __init__(self, version: str) -> None:
        SoapAdapter.SoapStubAdapterBase.__init__(self, version=version)
        self.requestContext = None
        self.cookie = ""

    def InvokeMethod(self, mo: Any, info: Any, args: Any) -> Any:
        raise RuntimeError(
            "blocking pyvmomi call attempted; use the async SoapClient.call() instead"
        )

    def InvokeAccessor(self, mo: Any, info: Any) -> Any:
        raise RuntimeError(
            f"blocking property read of {info.name!r} attempted; use PropertyCollector reads"
        )


def pick_version(versions_xml: bytes) -> str:
    """Newest vim25 version both the server and pyvmomi speak."""
    try:
        root = ElementTree.fromstring(versions_xml)
    except ElementTree.ParseError as exc:
        raise VsphereProtocolError(f"vimServiceVersions.xml is not XML: {exc}") from exc
    for ns in root.iter("namespace"):
        if (ns.findtext("name") or "").strip() != "urn:vim25":
            continue
        versions = [(ns.findtext("version") or "").strip()]
        versions += [(v.text or "").strip() for v in ns.iterfind("priorVersions/version")]
        for v in versions:
            name = VmomiSupport.versionMap.get(f"vim25/{v}")
            if name:
                return name
    raise VsphereProtocolError("server speaks no vim25 version this client knows")


class SoapClient:
    """One HTTP connection pool and one session cookie, for one vCenter.

    Thread-unsafe by design (one event loop); concurrent coroutines are fine.

    The cookie is taken from an answer only while the client has none (the initial
    connection) and from `login()`. vCenter hands a fresh, unauthenticated session
    cookie to any request whose cookie names no live session, so answers of calls that
    were in flight while the session expired carry such cookies; taking them would
    undo a concurrent re-login.
    """

    def __init__(self, endpoint: Endpoint, version: str | None = None) -> None:
        self.endpoint = endpoint
        self.version = version or VmomiSupport.newestVersions.GetName("vim")
        self.stub = _Stub(self.version)
        self.cookie = ""
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=self.endpoint.connect_timeout,
                sock_connect=self.endpoint.connect_timeout,
            )
            connector = aiohttp.TCPConnector(limit=32, ssl=self.endpoint.ssl_option())
            # We keep the session cookie ourselves: aiohttp's jar ignores IP hosts.
            self._http = aiohttp.ClientSession(
                connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._http

    async def negotiate_version(self) -> str:
        data = await self.get_bytes("/sdk/vimServiceVersions.xml")
        self.version = pick_version(data)
        self.stub = _Stub(self.version)
        return self.version

    async def get_bytes(self, path: str) -> bytes:
        url = self.endpoint.base_url + path
        try:
            async with self.http.get(url, headers=self._headers(), allow_redirects=False) as resp:
                if 300 <= resp.status < 400:
                    raise redirect_error(f"GET {url}", resp)
                if resp.status != 200:
                    raise VsphereProtocolError(f"GET {path}: HTTP {resp.status}")
                return await resp.read()
        except aiohttp.ServerFingerprintMismatch as exc:
            raise self._pin_error(exc) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise VsphereConnectionError(self._describe(exc)) from exc
        except TimeoutError as exc:
            raise VsphereTimeout(f"{self.endpoint.sdk_url}: no answer in time") from exc

    def moref(self, type_name: str, value: str) -> Any:
        """A managed object reference bound to this client's stub."""
        return VmomiSupport.GetWsdlType("urn:vim25", type_name)(value, self.stub)

    def bind(self, mo: Any) -> Any:
        """Rebind a MoRef deserialized elsewhere to this client."""
        return type(mo)(mo._moId, self.stub)

    def _headers(self, cookie: str | None = None) -> dict[str, str]:
        """Request headers; `cookie` overrides the session cookie ("" sends none)."""
        cookie = self.cookie if cookie is None else cookie
        h = {
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": f'"urn:{VmomiSupport.versionIdMap[self.version]}"'
            if VmomiSupport.versionIdMap.get(self.version)
            else '"urn:vim25"',
        }
        if cookie:
            h["Cookie"] = f"{COOKIE_NAME}={cookie}"
        return h

    def _describe(self, exc: BaseException) -> str:
        return f"cannot reach vCenter at {self.endpoint.sdk_url}: {exc or type(exc).__name__}"

    def _pin_error(self, exc: aiohttp.ServerFingerprintMismatch) -> TlsPinError:
        return TlsPinError.mismatch(self.endpoint.host, self.endpoint.thumbprint, exc)

    def _serialize(self, mo: Any, method: str, kwargs: dict[str, Any]) -> tuple[Any, bytes]:
        info = method_info(type(mo), method)
        unknown = set(kwargs) - {p.name for p in info.params}
        if unknown:
            raise TypeError(f"{method}: unknown argument(s) {sorted(unknown)}")
        args = [kwargs.get(p.name) for p in info.params]
        return info, self.stub.SerializeRequest(mo, info, args)

    async def call(
        self, mo: Any, method: str, *, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Invoke `method` on managed object `mo` with keyword arguments."""
        info, body = self._serialize(mo, method, kwargs)
        data, status, cookie = await self._post(body, method, timeout)
        self._take_initial_cookie(cookie)
        return await self._decode(data, status, info, method)

    async def login(
        self, mo: Any, method: str, *, cookie: str, timeout: float | None = None, **kwargs: Any
    ) -> tuple[Any, str]:
        """Invoke a login method sending `cookie` ("" for none) instead of the session
        cookie, and return its result and the session cookie it set ("" if none).
        The client's cookie is left alone: the caller installs the new one once the
        login succeeded, so calls in flight keep using the old one until then."""
        info, body = self._serialize(mo, method, kwargs)
        data, status, new_cookie = await self._post(body, method, timeout, cookie=cookie)
        return await self._decode(data, status, info, method), new_cookie

    def _take_initial_cookie(self, cookie: str) -> None:
        if cookie and not self.cookie:
            self.cookie = cookie

    async def call_streamed(
        self,
        mo: Any,
        method: str,
        feed: Callable[[bytes], None],
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> int:
        """Invoke `method` and hand the response body to `feed` chunk by chunk as it
        downloads (a streaming parser builds only what it needs); returns the HTTP status.
        SOAP faults in the body are the parser's to report."""
        _info, body = self._serialize(mo, method, kwargs)
        _data, status, cookie = await self._post(body, method, timeout, feed=feed)
        self._take_initial_cookie(cookie)
        return status

    async def _post(
        self,
        body: bytes,
        method: str,
        timeout: float | None,
        feed: Callable[[bytes], None] | None = None,
        cookie: str | None = None,
    ) -> tuple[bytes, int, str]:
        """POST one request; returns the body (b"" when fed), the HTTP status and the
        session cookie the answer set ("" if none) -- which the caller may ignore."""
        t = timeout if timeout is not None else self.endpoint.request_timeout
        try:
            async with asyncio.timeout(t):
                async with self.http.post(
                    self.endpoint.sdk_url,
                    data=body,
                    headers=self._headers(cookie),
                    allow_redirects=False,  # the cookie must not follow to another host
                ) as resp:
                    new_cookie = ""
                    for morsel in resp.cookies.values():
                        if morsel.key == COOKIE_NAME:
                            new_cookie = morsel.value
                    if 300 <= resp.status < 400:
                        raise redirect_error(f"{method} at {self.endpoint.sdk_url}", resp)
                    if resp.status not in (200, 500):
                        text = (await resp.read())[:200]
                        raise VsphereProtocolError(
                            f"{method}: HTTP {resp.status} {resp.reason} from "
                            f"{self.endpoint.sdk_url}: {text!r}"
                        )
                    if feed is None:
                        return await resp.read(), resp.status, new_cookie
                    async for chunk in resp.content.iter_chunked(STREAM_CHUNK):
                        feed(chunk)
                    return b"", resp.status, new_cookie
        except aiohttp.ServerFingerprintMismatch as exc:
            raise self._pin_error(exc) from None
        except TimeoutError as exc:
            raise VsphereTimeout(
                f"{method}: vCenter at {self.endpoint.sdk_url} did not answer within {t:g} s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise VsphereConnectionError(f"{method}: {self._describe(exc)}") from exc

    async def _decode(self, data: bytes, status: int, info: Any, method: str) -> Any:
        def parse() -> Any:
            return SoapAdapter.SoapResponseDeserializer(self.stub).Deserialize(data, info.result)

        try:
            if len(data) > THREAD_DESERIALIZE_BYTES:
                obj = await anyio.to_thread.run_sync(parse)
            else:
                obj = parse()
        except Exception as exc:
            snippet = data[:200].decode("utf-8", "replace")
            raise VsphereProtocolError(
                f"{method}: malformed SOAP response ({type(exc).__name__}: {exc}); "
                f"starts with {snippet!r}"
            ) from exc
        if status == 500 or isinstance(obj, BaseException):
            raise fault_from(obj, method)
        _raise_if_unauthenticated(obj, method)
        return obj

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def redirect_error(what: str, resp: aiohttp.ClientResponse) -> VsphereProtocolError:
    """vigil never follows a redirect with credentials attached: the session cookie (or
    vAPI token) would go to a host the admin did not configure."""
    target = resp.headers.get("Location", "(no Location header)")
    return VsphereProtocolError(
        f"{what}: HTTP {resp.status} redirect to {target}; vigil does not follow "
        "redirects (its session credentials would go along): set vcenter.url to the "
        "address vCenter itself answers on"
    )


def _raise_if_unauthenticated(result: Any, method: str) -> None:
    """Some servers (govmomi's simulator) answer an unauthenticated RetrieveProperties*
    with per-object NotAuthenticated faults instead of a SOAP fault; treat both alike
    so the session heals either way."""
    objects = getattr(result, "objects", None)
    if objects is None and isinstance(result, list):
        objects = result
    for oc in objects or ():
        for missing in getattr(oc, "missingSet", None) or ():
            if isinstance(missing.fault, vim.fault.NotAuthenticated):
                raise VsphereFault("NotAuthenticated", "session is not authenticated", None, method)


@functools.cache
def method_info(mo_type: type, method: str) -> Any:
    """Method info by pyvmomi name (`CreateSnapshot`) or WSDL name (`CreateSnapshot_Task`)."""
    for t in mo_type.__mro__:
        infos = getattr(t, "_methodInfo", None) or {}
        if method in infos:
            return infos[method]
        for info in infos.values():
            if info.wsdlName == method:
                return info
    raise AttributeError(f"{mo_type.__name__} has no method {method!r}")


def fault_from(obj: Any, method: str = "") -> VsphereFault:
    if isinstance(obj, vmodl.MethodFault):
        name = type(obj).__name__.split(".")[-1]
        msg = getattr(obj, "msg", "") or ""
        if not msg and getattr(obj, "faultMessage", None):
            msg = "; ".join(m.message or m.key for m in obj.faultMessage)
        return VsphereFault(name, msg, obj, method)
    return VsphereFault(type(obj).__name__, str(obj), obj, method)


# The errors (`errors`) and the endpoint (`endpoint`) are re-exported: callers import them
# from here.
__all__ = [
    "COOKIE_NAME",
    "Endpoint",
    "PinnedFingerprint",
    "SoapClient",
    "TlsPinError",
    "VsphereConnectionError",
    "VsphereError",
    "VsphereFault",
    "VsphereProtocolError",
    "VsphereTimeout",
    "cert_thumbprint",
    "fault_from",
    "is_loopback",
    "normalize_thumbprint",
    "redirect_error",
    "vim",
]
