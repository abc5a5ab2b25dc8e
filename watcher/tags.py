"""vSphere tags through the vAPI REST tagging service (`/rest/com/vmware/cis/...`).

Tag assignments produce no PropertyCollector updates, so the watcher polls
`vm_tags()` on an interval. One poll costs: list categories + tags, one GET per
category and per tag (details are cached by id and names re-read every poll so a
renamed tag is noticed), and one `list-attached-objects-on-tags` for all tags.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import structlog

from .soap import (
    Endpoint,
    TlsPinError,
    VsphereConnectionError,
    VsphereError,
    VsphereProtocolError,
    redirect_error,
)

log = structlog.get_logger(__name__)

SESSION_HEADER = "vmware-api-session-id"
BASE = "/rest/com/vmware/cis"


class TagServiceError(VsphereError):
    """The tagging service answered with an error."""


class TagClient:
    """A small async client for the vAPI tagging service of one vCenter."""

    def __init__(self, endpoint: Endpoint, user: str, password: str) -> None:
        self.endpoint = endpoint
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = {"Authorization": f"Basic {basic}"}
        self._token = ""
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            timeout = aiohttp.ClientTimeout(total=60, connect=self.endpoint.connect_timeout)
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=8, ssl=self.endpoint.ssl_option()),
                timeout=timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._http

    async def login(self) -> None:
        self._token = ""
        data = await self._request("POST", "/session", auth=self._auth, login=True)
        self._token = str(data)

    async def close(self) -> None:
        if self._http is not None:
            if self._token:
                try:
                    await self._request("DELETE", "/session", login=True)
                except VsphereError:
                    pass
            await self._http.close()
            self._http = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        auth: dict[str, str] | None = None,
        login: bool = False,
        missing_ok: bool = False,
    ) -> Any:
        """The answer's `value`. `missing_ok`: a 404 gives None (an object deleted since
        it was listed) instead of an error."""
        if not self._token and not login:
            await self.login()
        for attempt in (0, 1):
            headers = {SESSION_HEADER: self._token} if self._token else {}
            if auth:
                headers.update(auth)
            url = self.endpoint.base_url + BASE + path
            try:
                async with self.http.request(
                    method, url, json=json, headers=headers, allow_redirects=False
                ) as resp:
                    if 300 <= resp.status < 400:
                        raise redirect_error(f"tagging service {method} {url}", resp)
                    if resp.status == 401 and not login and attempt == 0:
                        await self.login()  # the vAPI session expired
                        continue
                    body = await resp.read()
                    if resp.status == 404 and missing_ok:
                        return None
                    if resp.status >= 400:
                        raise TagServiceError(
                            f"{method} {BASE}{path}: HTTP {resp.status}: {body[:200]!r}"
                        )
                    if not body:
                        return None
                    try:
                        return (await resp.json(content_type=None)).get("value")
                    except (ValueError, AttributeError) as exc:
                        raise VsphereProtocolError(
                            f"{method} {BASE}{path}: not JSON: {body[:200]!r}"
                        ) from exc
            except aiohttp.ServerFingerprintMismatch as exc:
                raise TlsPinError.mismatch(
                    self.endpoint.host, self.endpoint.thumbprint, exc
                ) from None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise VsphereConnectionError(f"tagging service at {url}: {exc}") from exc
        raise TagServiceError(f"{method} {BASE}{path}: not authorized after re-login")

    # -- reading -----------------------------------------------------------------

    async def vm_tags(self) -> dict[str, frozenset[str]]:
        """VM MoRef value -> {"Category:Tag", ...} for every tagged VM."""
        try:
            return await self._vm_tags()
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise VsphereProtocolError(
                f"tagging service at {self.endpoint.base_url}{BASE}: answer of an unexpected "
                f"shape ({type(exc).__name__}: {exc}); tags stay as they were"
            ) from exc

    async def _vm_tags(self) -> dict[str, frozenset[str]]:
        cat_ids = await self._request("GET", "/tagging/category") or []
        tag_ids = await self._request("GET", "/tagging/tag") or []
        if not tag_ids:
            return {}
        # A tag or category deleted between the listing and its GET is skipped: one
        # admin's cleanup must not fail the whole poll (and stall every tag change).
        cats = await asyncio.gather(
            *(self._request("GET", f"/tagging/category/id:{c}", missing_ok=True) for c in cat_ids)
        )
        tags = await asyncio.gather(
            *(self._request("GET", f"/tagging/tag/id:{t}", missing_ok=True) for t in tag_ids)
        )
        cat_names = {c["id"]: c.get("name", c["id"]) for c in cats if c}
        labels = {
            t["id"]: f"{cat_names.get(t.get('category_id'), t.get('category_id'))}:{t.get('name')}"
            for t in tags
            if t
        }
        attached = await self._request(
            "POST",
            "/tagging/tag-association?~action=list-attached-objects-on-tags",
            json={"tag_ids": list(labels)},
        )
        out: dict[str, set[str]] = {}
        for entry in attached or []:
            label = labels.get(entry.get("tag_id"))
            for obj in entry.get("object_ids") or []:
                if label and obj.get("type") == "VirtualMachine":
                    out.setdefault(obj["id"], set()).add(label)
        return {k: frozenset(v) for k, v in out.items()}

    # -- writing (admin tooling and tests) ----------------------------------------

    async def create_category(self, name: str, cardinality: str = "MULTIPLE") -> str:
        spec = {
            "create_spec": {
                "name": name,
                "description": "",
                "cardinality": cardinality,
                "associable_types": [],
            }
        }
        return str(await self._request("POST", "/tagging/category", json=spec))

    async def create_tag(self, category_id: str, name: str) -> str:
        spec = {"create_spec": {"name": name, "description": "", "category_id": category_id}}
        return str(await self._request("POST", "/tagging/tag", json=spec))

    async def attach(self, tag_id: str, vm_moref: str) -> None:
        body = {"object_id": {"type": "VirtualMachine", "id": vm_moref}}
        await self._request(
            "POST", f"/tagging/tag-association/id:{tag_id}?~action=attach", json=body
        )

    async def detach(self, tag_id: str, vm_moref: str) -> None:
        body = {"object_id": {"type": "VirtualMachine", "id": vm_moref}}
        await self._request(
            "POST", f"/tagging/tag-association/id:{tag_id}?~action=detach", json=body
        )


__all__ = ["TagClient", "TagServiceError"]
