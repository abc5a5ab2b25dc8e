"""PropertyCollector calls whose responses go through `fastparse` instead of pyvmomi.

The request is serialized by pyvmomi (cheap); the response is fed to the streaming
parser chunk by chunk as it downloads. NotAuthenticated heals like `Session.call`:
one single-flight re-login, then one retry.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from .fastparse import ResponseParser, RetrieveResult, UpdateSet
from .session import Session
from .soap import (
    COOKIE_NAME,
    VsphereConnectionError,
    VsphereFault,
    VsphereProtocolError,
    VsphereTimeout,
    method_info,
)

CHUNK = 1 << 16


async def call_parsed(
    session: Session, mo: Any, method: str, *, timeout: float | None = None, **kwargs: Any
) -> UpdateSet | RetrieveResult | None:
    """Invoke a PropertyCollector method and parse its response with fastparse."""
    client = session.client
    info = method_info(type(mo), method)
    args = [kwargs.get(p.name) for p in info.params]
    body = client.stub.SerializeRequest(mo, info, args)
    generation = session._generation
    try:
        return await _post_parse(session, body, method, timeout)
    except VsphereFault as exc:
        if exc.fault_type != "NotAuthenticated":
            raise
    await session._relogin(generation)
    return await _post_parse(session, body, method, timeout)


async def _post_parse(
    session: Session, body: bytes, method: str, timeout: float | None
) -> UpdateSet | RetrieveResult | None:
    client = session.client
    t = timeout if timeout is not None else client.endpoint.request_timeout
    parser = ResponseParser(method)
    try:
        async with asyncio.timeout(t):
            async with client.http.post(
                client.endpoint.sdk_url, data=body, headers=client._headers()
            ) as resp:
                for morsel in resp.cookies.values():
                    if morsel.key == COOKIE_NAME:
                        client.cookie = morsel.value
                if resp.status not in (200, 500):
                    text = (await resp.read())[:200]
                    raise VsphereProtocolError(
                        f"{method}: HTTP {resp.status} {resp.reason} from "
                        f"{client.endpoint.sdk_url}: {text!r}"
                    )
                async for chunk in resp.content.iter_chunked(CHUNK):
                    parser.feed(chunk)
    except TimeoutError as exc:
        raise VsphereTimeout(
            f"{method}: vCenter at {client.endpoint.sdk_url} did not answer within {t:g} s"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise VsphereConnectionError(f"{method}: {client._describe(exc)}") from exc
    result = parser.close()
    if isinstance(result, RetrieveResult):
        for _moref, _path, fault in result.missing:
            if fault == "NotAuthenticated":
                raise VsphereFault("NotAuthenticated", "session is not authenticated", None, method)
    return result


async def retrieve_parsed(
    session: Session, collector: Any, specs: list[Any], *, page_size: int = 1000
) -> RetrieveResult:
    """RetrievePropertiesEx + ContinueRetrievePropertiesEx, all pages, fast-parsed."""
    from pyVmomi import vmodl

    opts = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=page_size)
    out = RetrieveResult()
    result = await call_parsed(
        session, collector, "RetrievePropertiesEx", specSet=specs, options=opts
    )
    while isinstance(result, RetrieveResult):
        out.objects.extend(result.objects)
        out.missing.extend(result.missing)
        if not result.token:
            break
        result = await call_parsed(
            session, collector, "ContinueRetrievePropertiesEx", token=result.token
        )
    return out
