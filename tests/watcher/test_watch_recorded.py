"""The update loop against vCenter-shaped WaitForUpdatesEx answers the simulator never
gives: `truncated` pages, advancing versions, and broken responses.

A small HTTP proxy stands in front of the simulator: login, collector and filter
creation go to the simulator; WaitForUpdatesEx is answered from the script below
(responses in the shape vCenter 7 sends them) and the requests are recorded.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs
from watchkit import watching

from watcher.events import VmChanged, VmRemoved, VmRenamed
from watcher.fastparse import RetrieveResult, UpdateSet, parse_response
from watcher.soap import VsphereFault, VsphereProtocolError

ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" '
    'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n<soapenv:Body>\n{}\n'
    "</soapenv:Body>\n</soapenv:Envelope>"
)
FILTER = '<filter type="PropertyFilter">session[52b8a1c3-aaaa]52f0e0b1-bbbb</filter>'


def val(v: object) -> str:
    if isinstance(v, bool):
        return f'<val xsi:type="xsd:boolean">{str(v).lower()}</val>'
    if isinstance(v, tuple):  # (type, value): a MoRef
        return f'<val xsi:type="ManagedObjectReference" type="{v[0]}">{v[1]}</val>'
    return f'<val xsi:type="xsd:string">{v}</val>'


def obj(kind: str, type_: str, value: str, **props: object) -> str:
    changes = "".join(
        f"<changeSet><name>{k.replace('__', '.')}</name><op>assign</op>{val(v)}</changeSet>"
        for k, v in props.items()
    )
    return f'<objectSet><kind>{kind}</kind><obj type="{type_}">{value}</obj>{changes}</objectSet>'


def update_set(version: str, *objects: str, truncated: bool = False) -> bytes:
    body = (
        '<WaitForUpdatesExResponse xmlns="urn:vim25"><returnval>'
        f"<version>{version}</version><filterSet>{FILTER}{''.join(objects)}</filterSet>"
        f"{'<truncated>true</truncated>' if truncated else ''}"
        "</returnval></WaitForUpdatesExResponse>"
    )
    return ENVELOPE.format(body).encode()


def vm(value: str, name: str, parent: str) -> str:
    return obj(
        "enter",
        "VirtualMachine",
        value,
        name=name,
        parent=("Folder", parent),
        resourcePool=("ResourcePool", "resgroup-8"),
        runtime__powerState="poweredOn",
        config__instanceUuid=f"5003{value}",
        config__uuid=f"4203{value}",
        config__template=False,
    )


PAGE1 = update_set(
    "1",
    # children before their parents, as vCenter may send them
    vm("vm-101", "web-1", "group-v10"),
    vm("vm-102", "db-1", "group-v3"),
    obj("enter", "Folder", "group-d1", name="Datacenters"),
    truncated=True,
)
PAGE2 = update_set(
    "2",
    obj("enter", "Folder", "group-v10", name="prod", parent=("Folder", "group-v3")),
    obj("enter", "Folder", "group-v3", name="vm", parent=("Datacenter", "datacenter-2")),
    obj("enter", "Datacenter", "datacenter-2", name="DC0", parent=("Folder", "group-d1")),
)
RENAME = update_set("3", obj("modify", "VirtualMachine", "vm-101", name="web-01"))
POWER = update_set(
    "4",
    obj("modify", "VirtualMachine", "vm-101", runtime__powerState="poweredOff"),
    truncated=True,
)
LEAVE = update_set("5", obj("leave", "VirtualMachine", "vm-102"))
EMPTY = ENVELOPE.format('<WaitForUpdatesExResponse xmlns="urn:vim25"/>').encode()


@dataclass
class Proxy:
    upstream: str
    script: list[tuple[int, bytes]]
    waits: list[tuple[str, str]] = field(default_factory=list)  # (version, maxObjectUpdates)
    url: str = ""


@pytest.fixture
async def proxy(vcsim) -> AsyncIterator[Proxy]:
    upstream = vcsim.url.rsplit("/sdk", 1)[0]
    p = Proxy(upstream, [])
    http = aiohttp.ClientSession()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if b"<WaitForUpdatesEx" in body:
            version = re.search(rb"<version[^>]*>([^<]*)</version>", body)
            max_updates = re.search(rb"<maxObjectUpdates>(\d+)</maxObjectUpdates>", body)
            p.waits.append(
                (
                    version.group(1).decode() if version else "",
                    max_updates.group(1).decode() if max_updates else "",
                )
            )
            if not p.script:
                await asyncio.sleep(0.2)
                return web.Response(body=EMPTY, content_type="text/xml")
            status, data = p.script.pop(0)
            return web.Response(status=status, body=data, content_type="text/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        async with http.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as resp:
            data = await resp.read()
            out = web.Response(status=resp.status, body=data)
            out.headers["Content-Type"] = resp.headers.get("Content-Type", "text/xml")
            for cookie in resp.headers.getall("Set-Cookie", []):
                out.headers.add("Set-Cookie", cookie)
            return out

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    p.url = f"http://127.0.0.1:{port}/sdk"
    yield p
    await runner.cleanup()
    await http.close()


_FORWARDED = {"cookie", "soapaction", "content-type"}


@dataclass
class _Target:
    url: str
    user: str = "user"
    password: str = "pass"


async def test_truncated_pages_versions_and_broken_answers(proxy):
    proxy.script = [
        (200, PAGE1),
        (200, PAGE2),
        (200, RENAME),
        (200, b"<html><body>502 upstream proxy hiccup</body></html>"),  # not SOAP
        (200, RENAME[: len(RENAME) // 2]),  # cut off mid-stream
        (502, b"Bad Gateway"),
        (200, POWER),
        (200, LEAVE),
    ]
    async with watching(_Target(proxy.url), max_object_updates=2, backoff_base=0.01) as (
        w,
        col,
    ):
        # Both pages were applied as one batch: the VMs appear with their full paths.
        # (the script runs on at once, so later events may already be in)
        assert sorted((type(e).__name__, e.vm.path) for e in col.events[:2]) == [
            ("VmAdded", "/DC0/vm/db-1"),
            ("VmAdded", "/DC0/vm/prod/web-1"),
        ]
        col._seen = 2
        ev = await col.expect(lambda e: isinstance(e, VmRenamed), "VmRenamed")
        assert ev.vm.path == "/DC0/vm/prod/web-01"
        # the truncated page and its continuation arrive as one batch
        await col.expect(lambda e: isinstance(e, VmRemoved | VmChanged), "the last batch")
        col._seen -= 1
        rest = await col.quiet(0.5)
        assert len(rest) == 2
        changed = next(e for e in rest if isinstance(e, VmChanged))
        assert changed.changes == {"power_state": ("poweredOn", "poweredOff")}
        removed = next(e for e in rest if isinstance(e, VmRemoved))
        assert removed.vm.moref == "vm-102"
        assert w.bad_responses == 3 and w.healthy
        assert [v for v, _ in proxy.waits[:8]] == ["", "1", "2", "3", "3", "3", "3", "4"]
        # after the truncated page at version 4 the rest came at once, then waits go on
        assert proxy.waits[8][0] == "5"
        assert {m for _, m in proxy.waits} == {"2"}
        assert [vm.path for vm in w.tree.vms()] == ["/DC0/vm/prod/web-01"]
        assert w.resyncs == 1


def test_parser_reads_retrieve_results_faults_and_refuses_junk():
    result = parse_response(
        "RetrievePropertiesEx",
        ENVELOPE.format(
            '<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><token>7</token>'
            '<objects><obj type="VirtualMachine">vm-1</obj>'
            '<propSet><name>datastore</name><val xsi:type="ArrayOfManagedObjectReference">'
            '<ManagedObjectReference type="Datastore">datastore-1</ManagedObjectReference>'
            '<ManagedObjectReference type="Datastore">datastore-2</ManagedObjectReference>'
            "</val></propSet>"
            '<propSet><name>customValue</name><val xsi:type="ArrayOfCustomFieldValue">'
            '<CustomFieldValue xsi:type="CustomFieldStringValue"><key>101</key>'
            "<value>alice</value></CustomFieldValue></val></propSet>"
            "<missingSet><path>config.uuid</path><fault>"
            '<fault xsi:type="NoPermission"><object type="VirtualMachine">vm-1</object>'
            "</fault><localizedMessage></localizedMessage></fault></missingSet>"
            "</objects></returnval></RetrievePropertiesExResponse>"
        ).encode(),
    )
    assert isinstance(result, RetrieveResult) and result.token == "7"
    (o,) = result.objects
    props = {c.name: c.val for c in o.changes}
    assert [d.value for d in props["datastore"]] == ["datastore-1", "datastore-2"]
    assert props["customValue"] == ({"key": "101", "value": "alice"},)
    assert result.missing == [("vm-1", "config.uuid", "NoPermission")]

    fault = ENVELOPE.format(
        "<soapenv:Fault><faultcode>ServerFaultCode</faultcode>"
        "<faultstring>The session is not authenticated.</faultstring><detail>"
        '<NotAuthenticatedFault xmlns="urn:vim25" xsi:type="NotAuthenticated">'
        '<object type="PropertyCollector">propertyCollector</object><privilegeId>System.View'
        "</privilegeId></NotAuthenticatedFault></detail></soapenv:Fault>"
    ).encode()
    with pytest.raises(VsphereFault) as exc:
        parse_response("WaitForUpdatesEx", fault)
    assert exc.value.fault_type == "NotAuthenticated"
    assert "not authenticated" in exc.value.message

    assert parse_response("WaitForUpdatesEx", EMPTY) is None
    assert isinstance(parse_response("WaitForUpdatesEx", PAGE1), UpdateSet)
    with pytest.raises(VsphereProtocolError, match="not a SOAP envelope"):
        parse_response("WaitForUpdatesEx", b"<html><body>login</body></html>")
    with pytest.raises(VsphereProtocolError, match="starts with '<\\?xml"):
        parse_response("WaitForUpdatesEx", PAGE1[:300])


def _retyped(update: bytes, old: str, new: str) -> bytes:
    assert old.encode() in update
    return update.replace(old.encode(), new.encode())


# vCenter-shaped but wrong inside: the name carries an int type its text cannot be.
BAD_VALUE = _retyped(RENAME, 'xsi:type="xsd:string">web-01', 'xsi:type="xsd:int">web-01')
# Well-formed XML, parses fine, but a VM's parent is a bare string instead of a MoRef:
# only applying it to the tree trips over it.
BAD_PARENT = update_set(
    "3", obj("modify", "VirtualMachine", "vm-101", name="web-01", parent="group-v3")
)
# The full read of the resync that follows: web-1 renamed meanwhile, db-1 unchanged.
RESYNCED = update_set(
    "7",
    vm("vm-101", "web-01", "group-v10"),
    vm("vm-102", "db-1", "group-v3"),
    obj("enter", "Folder", "group-d1", name="Datacenters"),
    obj("enter", "Folder", "group-v10", name="prod", parent=("Folder", "group-v3")),
    obj("enter", "Folder", "group-v3", name="vm", parent=("Datacenter", "datacenter-2")),
    obj("enter", "Datacenter", "datacenter-2", name="DC0", parent=("Folder", "group-d1")),
)


async def test_malformed_value_is_a_bad_response_and_the_loop_goes_on(proxy):
    """A value the parser cannot read is a protocol error: logged with the method and
    retried with the same version (vCenter re-delivers), not the end of the watch."""
    proxy.script = [(200, PAGE1), (200, PAGE2), (200, BAD_VALUE), (200, RENAME), (200, LEAVE)]
    with capture_logs() as logs:
        async with watching(_Target(proxy.url), backoff_base=0.01) as (w, col):
            # (the script runs on at once: events may already be in before `ready`)
            col._seen = 0
            await col.expect(lambda e: isinstance(e, VmRemoved), "VmRemoved after the retry")
            assert [type(e).__name__ for e in col.events] == [
                "VmAdded",
                "VmAdded",
                "VmRenamed",
                "VmRemoved",
            ]
            assert col.events[2].vm.path == "/DC0/vm/prod/web-01"
            assert w.bad_responses == 1 and w.healthy and w.resyncs == 1
            assert [v for v, _ in proxy.waits[:5]] == ["", "1", "2", "2", "3"]
    bad = [e for e in logs if e["event"] == "watcher.bad_response"]
    assert len(bad) == 1
    assert "WaitForUpdatesEx" in bad[0]["error"] and "vm-101" in bad[0]["error"]
    assert "name" in bad[0]["error"]


async def test_update_the_tree_cannot_apply_is_logged_and_resynced(proxy):
    """An exception while applying an update set is logged with the object and the
    version, the tree is rebuilt from a full read, and the events are exactly the
    difference: the rename, no remove/add storm."""
    proxy.script = [(200, PAGE1), (200, PAGE2), (200, BAD_PARENT), (200, RESYNCED), (200, LEAVE)]
    with capture_logs() as logs:
        async with watching(_Target(proxy.url), backoff_base=0.01) as (w, col):
            col._seen = 0
            removed = await col.expect(lambda e: isinstance(e, VmRemoved), "VmRemoved")
            assert removed.vm.moref == "vm-102"
            assert [type(e).__name__ for e in col.events] == [
                "VmAdded",
                "VmAdded",
                "VmRenamed",
                "VmRemoved",
            ]
            assert col.events[2].vm.path == "/DC0/vm/prod/web-01"
            assert w.resyncs == 2 and w.healthy
            assert [vm.path for vm in w.tree.vms()] == ["/DC0/vm/prod/web-01"]
            assert [v for v, _ in proxy.waits[:5]] == ["", "1", "2", "", "7"]
    failed = [e for e in logs if e["event"] == "watcher.apply_failed"]
    assert len(failed) == 1
    assert failed[0]["moref"] == "vm-101" and failed[0]["version"] == "3"
