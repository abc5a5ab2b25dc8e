"""vSphere tags through the vAPI tagging service, with a cache of tag and category names.

Tag assignments produce no PropertyCollector updates, so the watcher polls
`vm_tags()` on an interval. One poll in steady state costs (2,000 tags, N VMs):

- `list-attached-tags-on-objects` for the VMs, in batches of `OBJECTS_PER_CALL`
  (one request up to that many VMs); without a VM list, one `GET tag` listing and one
  `list-attached-objects-on-tags` instead;
- a GET for each tag or category id never seen before (none once warm);
- a rolling re-read of at most `refresh_budget` cached tags/categories, least recently
  read first, so a renamed tag or category is noticed within
  ceil(tags and categories in use / refresh_budget) polls (every poll while no more
  than `refresh_budget` are in use) without reading 2,000 tags a minute. A tag or
  category that answers 404 there is dropped from the cache.

Only tags attached to VMs are ever read (govmomi's `GetAttachedTagsOnObjects` does the
same: list the attachments, then read each distinct tag), so the cost does not grow
with tags on hosts or datastores. Before this cache a poll cost 3 + categories + tags
requests (2,000 tags: 2,000+ requests; bench/bench_tags.py measures both).

Two URL flavours (vSphere Automation API reference): `/api/...` (vSphere 7.0 U2 and
later: `POST /api/session`, `/api/cis/tagging/tag/{id}`, `?action=`, bodies and
answers not wrapped) is preferred; a server that answers 404 to `POST /api/session`
gets `/rest/com/vmware/cis/...` (`/id:{id}`, `?~action=`, answers wrapped in
`{"value": ...}`, create specs in `{"create_spec": ...}`), as govmomi's vapi/rest
client tells the two apart by path. The session token goes in `vmware-api-session-id`.
"""

from __future__ import annotations

import asyncio
import base64
from collections import OrderedDict
from collections.abc import Iterable
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
REST = "/rest/com/vmware/cis"
API = "/api"
OBJECTS_PER_CALL = 1000
_MISSING = object()


class TagServiceError(VsphereError):
    """The tagging service answered with an error."""


class TagClient:
    """A small async client for the vAPI tagging service of one vCenter."""

    def __init__(
        self, endpoint: Endpoint, user: str, password: str, *, refresh_budget: int = 25
    ) -> None:
        self.endpoint = endpoint
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = {"Authorization": f"Basic {basic}"}
        self._token = ""
        self._api: bool | None = None  # None: not probed yet (then /rest paths)
        self._http: aiohttp.ClientSession | None = None
        self.refresh_budget = refresh_budget
        self.requests = 0  # HTTP requests sent (bench/, tests)
        self._tag_cache: dict[str, tuple[str, str]] = {}  # id -> (name, category id)
        self._cat_cache: dict[str, str] = {}  # id -> name
        # (kind, id) -> the poll that last read it; oldest read first
        self._age: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._poll = 0

    @property
    def flavor(self) -> str:
        return "api" if self._api else "rest"

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

    # -- URLs ------------------------------------------------------------------------

    def _url(self, kind: str, ident: str = "", action: str = "") -> str:
        """The path of a tagging resource (`kind`: category, tag, tag-association)."""
        if self._api:
            path = f"{API}/cis/tagging/{kind}" + (f"/{ident}" if ident else "")
            return path + (f"?action={action}" if action else "")
        path = f"{REST}/tagging/{kind}" + (f"/id:{ident}" if ident else "")
        return path + (f"?~action={action}" if action else "")

    async def login(self) -> None:
        self._token = ""
        if self._api is not False:
            data = await self._request("POST", f"{API}/session", auth=self._auth, login=True)
            if data is not _MISSING:
                self._api, self._token = True, str(data)
                return
            self._api = False  # no /api here: the older /rest flavour
        data = await self._request("POST", f"{REST}/session", auth=self._auth, login=True)
        if data is _MISSING:
            raise TagServiceError(
                f"no vAPI tagging service at {self.endpoint.base_url} "
                f"(POST {API}/session and {REST}/session: HTTP 404)"
            )
        self._token = str(data)

    async def close(self) -> None:
        if self._http is not None:
            if self._token:
                try:
                    path = f"{API}/session" if self._api else f"{REST}/session"
                    await self._request("DELETE", path, login=True)
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
        """The answer (unwrapped from /rest's `value`). A 404 gives `_MISSING` for a
        login probe, None with `missing_ok` (an object deleted since it was listed)."""
        if not self._token and not login:
            await self.login()
        for attempt in (0, 1):
            headers = {SESSION_HEADER: self._token} if self._token else {}
            if auth:
                headers.update(auth)
            url = self.endpoint.base_url + path
            self.requests += 1
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
                    if resp.status == 404 and login and method == "POST":
                        return _MISSING
                    if resp.status == 404 and missing_ok:
                        return None
                    if resp.status >= 400:
                        raise TagServiceError(
                            f"{method} {path}: HTTP {resp.status}: {body[:200]!r}"
                        )
                    if not body:
                        return None
                    try:
                        data = await resp.json(content_type=None)
                        return data if path.startswith(API + "/") else data.get("value")
                    except (ValueError, AttributeError) as exc:
                        raise VsphereProtocolError(
                            f"{method} {path}: not JSON: {body[:200]!r}"
                        ) from exc
            except aiohttp.ServerFingerprintMismatch as exc:
                raise TlsPinError.mismatch(
                    self.endpoint.host, self.endpoint.thumbprint, exc
                ) from None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise VsphereConnectionError(f"tagging service at {url}: {exc}") from exc
        raise TagServiceError(f"{method} {path}: not authorized after re-login")

    # -- reading -----------------------------------------------------------------

    async def vm_tags(self, vm_morefs: Iterable[str] | None = None) -> dict[str, frozenset[str]]:
        """VM MoRef value -> {"Category:Tag", ...} for every tagged VM (of `vm_morefs`;
        None: every VM any tag is attached to)."""
        try:
            return await self._vm_tags(None if vm_morefs is None else list(vm_morefs))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise VsphereProtocolError(
                f"tagging service at {self.endpoint.base_url}: answer of an unexpected "
                f"shape ({type(exc).__name__}: {exc}); tags stay as they were"
            ) from exc

    async def _vm_tags(self, vms: list[str] | None) -> dict[str, frozenset[str]]:
        if not self._token:
            await self.login()
        self._poll += 1
        attached = await (self._attached_to(vms) if vms is not None else self._attached_all())
        used = {t for ids in attached.values() for t in ids}
        await self._read_missing_tags(used)
        await self._refresh_some(used)
        labels = {
            t: f"{self._cat_cache.get(cat, cat)}:{name}"
            for t in used
            if (entry := self._tag_cache.get(t)) is not None
            for name, cat in [entry]
        }
        out = {vm: frozenset(labels[t] for t in ids if t in labels) for vm, ids in attached.items()}
        return {vm: labels_ for vm, labels_ in out.items() if labels_}

    async def _attached_to(self, vms: list[str]) -> dict[str, set[str]]:
        """VM -> attached tag ids, by list-attached-tags-on-objects in batches."""
        out: dict[str, set[str]] = {}
        for i in range(0, len(vms), OBJECTS_PER_CALL):
            body = {
                "object_ids": [
                    {"type": "VirtualMachine", "id": vm} for vm in vms[i : i + OBJECTS_PER_CALL]
                ]
            }
            url = self._url("tag-association", action="list-attached-tags-on-objects")
            for entry in await self._request("POST", url, json=body) or []:
                obj = entry.get("object_id") or {}
                if obj.get("type") == "VirtualMachine" and entry.get("tag_ids"):
                    out.setdefault(obj["id"], set()).update(entry["tag_ids"])
        return out

    async def _attached_all(self) -> dict[str, set[str]]:
        """VM -> attached tag ids over every tag (no VM list at hand)."""
        tag_ids = await self._request("GET", self._url("tag")) or []
        if not tag_ids:
            return {}
        url = self._url("tag-association", action="list-attached-objects-on-tags")
        attached = await self._request("POST", url, json={"tag_ids": list(tag_ids)})
        out: dict[str, set[str]] = {}
        for entry in attached or []:
            for obj in entry.get("object_ids") or []:
                if obj.get("type") == "VirtualMachine":
                    out.setdefault(obj["id"], set()).add(entry["tag_id"])
        return out

    async def _read_missing_tags(self, used: set[str]) -> None:
        # A tag or category deleted since it was listed answers 404 and is skipped: one
        # admin's cleanup must not fail the whole poll (and stall every tag change).
        await self._read("tag", sorted(used - self._tag_cache.keys()))
        cats = {self._tag_cache[t][1] for t in used if t in self._tag_cache}
        await self._read("category", sorted(cats - self._cat_cache.keys()))

    async def _refresh_some(self, used: set[str]) -> None:
        """Re-read the `refresh_budget` least recently read tags/categories in use."""
        cats = {self._tag_cache[t][1] for t in used if t in self._tag_cache}
        due: dict[str, list[str]] = {"tag": [], "category": []}
        count = 0
        for (kind, ident), poll in self._age.items():  # oldest first
            if count >= self.refresh_budget or poll == self._poll:
                break  # the rest were read in this poll already
            if ident in (used if kind == "tag" else cats):
                due[kind].append(ident)
                count += 1
        await asyncio.gather(
            *(self._read(kind, ids, drop_missing=True) for kind, ids in due.items())
        )

    async def _read(self, kind: str, ids: list[str], *, drop_missing: bool = False) -> None:
        """GET each tag or category of `ids` into the cache (404: skipped, or dropped)."""
        answers = await asyncio.gather(*(self._get(kind, i) for i in ids))
        for ident, obj in zip(ids, answers, strict=True):
            self._age.pop((kind, ident), None)
            if obj:
                self._age[(kind, ident)] = self._poll
                if kind == "tag":
                    self._tag_cache[ident] = (str(obj["name"]), str(obj["category_id"]))
                else:
                    self._cat_cache[ident] = str(obj["name"])
            elif drop_missing:
                (self._tag_cache if kind == "tag" else self._cat_cache).pop(ident, None)

    async def _get(self, kind: str, ident: str) -> Any:
        return await self._request("GET", self._url(kind, ident), missing_ok=True)

    # -- writing (admin tooling and tests) ----------------------------------------

    async def _write(
        self, method: str, kind: str, ident: str = "", action: str = "", json: Any = None
    ) -> Any:
        if not self._token:
            await self.login()  # first: the URL depends on the flavour it finds
        return await self._request(method, self._url(kind, ident, action), json=json)

    def _spec(self, spec: dict[str, Any], wrapper: str) -> dict[str, Any]:
        return spec if self._api else {wrapper: spec}

    async def create_category(self, name: str, cardinality: str = "MULTIPLE") -> str:
        spec: dict[str, Any] = {"name": name, "description": "", "cardinality": cardinality}
        spec["associable_types"] = []
        if not self._token:
            await self.login()
        return str(await self._write("POST", "category", json=self._spec(spec, "create_spec")))

    async def create_tag(self, category_id: str, name: str) -> str:
        spec = {"name": name, "description": "", "category_id": category_id}
        if not self._token:
            await self.login()
        return str(await self._write("POST", "tag", json=self._spec(spec, "create_spec")))

    async def rename_tag(self, tag_id: str, name: str) -> None:
        if not self._token:
            await self.login()
        await self._write("PATCH", "tag", tag_id, json=self._spec({"name": name}, "update_spec"))

    async def attach(self, tag_id: str, vm_moref: str) -> None:
        body = {"object_id": {"type": "VirtualMachine", "id": vm_moref}}
        await self._write("POST", "tag-association", tag_id, action="attach", json=body)

    async def detach(self, tag_id: str, vm_moref: str) -> None:
        body = {"object_id": {"type": "VirtualMachine", "id": vm_moref}}
        await self._write("POST", "tag-association", tag_id, action="detach", json=body)


__all__ = ["OBJECTS_PER_CALL", "TagClient", "TagServiceError"]
