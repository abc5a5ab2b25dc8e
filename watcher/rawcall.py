"""PropertyCollector calls whose responses go through `fastparse` instead of pyvmomi.

The request is serialized by pyvmomi (cheap); the response is fed to the streaming
parser chunk by chunk as it downloads. NotAuthenticated heals like `Session.call`:
one single-flight re-login, then one retry.
"""

from __future__ import annotations

from typing import Any

from .fastparse import ResponseParser, RetrieveResult, UpdateSet
from .session import Session
from .soap import VsphereFault


async def call_parsed(
    session: Session, mo: Any, method: str, *, timeout: float | None = None, **kwargs: Any
) -> UpdateSet | RetrieveResult | None:
    """Invoke a PropertyCollector method and parse its response with fastparse."""

    async def once() -> UpdateSet | RetrieveResult | None:
        parser = ResponseParser(method)  # fresh for the retry after a re-login
        await session.client.call_streamed(mo, method, parser.feed, timeout=timeout, **kwargs)
        result = parser.close()
        if isinstance(result, RetrieveResult):
            for _moref, _path, fault in result.missing:
                if fault == "NotAuthenticated":
                    raise VsphereFault(
                        "NotAuthenticated", "session is not authenticated", None, method
                    )
        return result

    return await session.healing(once)


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
