"""A streaming parser for PropertyCollector responses (stdlib ElementTree, C parser).

pyvmomi's generic deserializer builds a full typed object for every value and is
about 90 % of the cost of reading a large inventory. This parser understands just
the shapes the inventory needs -- WaitForUpdatesEx's UpdateSet and
RetrievePropertiesEx's RetrieveResult -- and turns property values into plain data:

- leaf values by xsi:type: boolean -> bool, int/long/short/byte -> int,
  float/double -> float, anything else (string, enums, dateTime) -> str;
- an element with a `type` attribute (a ManagedObjectReference) -> `MoRef`;
- `ArrayOf...` -> tuple of its items; other structures -> dict (repeated -> list).

It is fed bytes as they arrive, so parsing overlaps the download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from .model import Change, MoRef, ObjectUpdate
from .soap import VsphereFault, VsphereProtocolError

_INT_TYPES = frozenset({"int", "long", "short", "byte"})
_FLOAT_TYPES = frozenset({"float", "double"})


@dataclass
class UpdateSet:
    """WaitForUpdatesEx's result (only what the watcher uses)."""

    version: str
    truncated: bool = False
    updates: list[ObjectUpdate] = field(default_factory=list)


@dataclass
class RetrieveResult:
    """RetrievePropertiesEx / ContinueRetrievePropertiesEx's result."""

    token: str | None = None
    objects: list[ObjectUpdate] = field(default_factory=list)
    # (MoRef value, property path, fault type) for every missingSet entry
    missing: list[tuple[str, str, str]] = field(default_factory=list)


_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_VIM = "{urn:vim25}"
_OBJECT_TAGS = frozenset({_VIM + "objectSet", _VIM + "objects"})
_CHANGE_TAGS = frozenset({_VIM + "changeSet", _VIM + "propSet"})
_ENVELOPE = "{http://schemas.xmlsoap.org/soap/envelope/}Envelope"
_BODY = "{http://schemas.xmlsoap.org/soap/envelope/}Body"
_FAULT = "{http://schemas.xmlsoap.org/soap/envelope/}Fault"


def _local(name: str) -> str:
    """`{ns}tag` or `prefix:type` -> the bare name."""
    return name.rpartition("}")[2].rpartition(":")[2]


def _value(e: ElementTree.Element) -> Any:
    xt = e.get(_XSI_TYPE)
    if len(e):
        if xt is not None and _local(xt).startswith("ArrayOf"):
            return tuple(_value(c) for c in e)
        out: dict[str, Any] = {}
        for c in e:
            k = _local(c.tag)
            v = _value(c)
            if k in out:
                prev = out[k]
                out[k] = [*prev, v] if isinstance(prev, list) else [prev, v]
            else:
                out[k] = v
        return out
    text = e.text or ""
    motype = e.get("type")
    if motype is not None:
        return MoRef(motype, text)
    if xt is None:
        return text
    xt = _local(xt)
    if xt == "boolean":
        return text == "true" or text == "1"
    if xt in _INT_TYPES:
        return int(text)
    if xt in _FLOAT_TYPES:
        return float(text)
    if xt.startswith("ArrayOf"):
        return ()
    return text


class ResponseParser:
    """Incremental parser for one PropertyCollector SOAP response.

    `feed(chunk)` as bytes arrive, then `close()` returns an UpdateSet (or None when a
    WaitForUpdatesEx timed out with no changes) or a RetrieveResult (or None when the
    result is empty), or raises VsphereFault / VsphereProtocolError.

    Built on ElementTree's C pull parser: each objectSet is turned into an
    ObjectUpdate as soon as it is complete and then cleared, so memory stays bounded
    by one object, not the response.
    """

    def __init__(self, method: str) -> None:
        self.method = method
        self._p = ElementTree.XMLPullParser(events=("end",))
        self._head = b""
        self._depth = 0
        self._root: ElementTree.Element | None = None
        self._container: ElementTree.Element | None = None
        self.objects: list[ObjectUpdate] = []
        self.missing: list[tuple[str, str, str]] = []

    def feed(self, data: bytes) -> None:
        if len(self._head) < 200:
            self._head += data[: 200 - len(self._head)]
        try:
            self._p.feed(data)
        except ElementTree.ParseError as exc:
            raise self._malformed(exc) from None
        self._drain()

    def _drain(self) -> None:
        objects = self.objects
        elem: Any = None
        for _event, elem in self._p.read_events():
            if elem.tag in _OBJECT_TAGS:
                try:
                    objects.append(self._object(elem))
                except (ValueError, TypeError, AttributeError) as exc:
                    # A value that contradicts its own xsi:type is as broken as bad XML:
                    # the update set is unusable, so report it as a protocol error.
                    raise self._malformed(f"{_describe(elem)}: {exc}") from exc
                elem.clear()
        if elem is not None:
            self._root = elem  # the envelope is the last element to end

    def _object(self, elem: ElementTree.Element) -> ObjectUpdate:
        up = ObjectUpdate("enter", MoRef("", ""), [])
        changes = up.changes
        for child in elem:
            tag = child.tag
            if tag in _CHANGE_TAGS:
                name = op = ""
                val = None
                for part in child:
                    ptag = part.tag
                    if ptag == _NAME:
                        name = part.text or ""
                    elif ptag == _OP:
                        op = part.text or ""
                    elif ptag == _VAL:
                        val = _value(part)
                changes.append(Change(name, op or "assign", val))
            elif tag == _KIND:
                up.kind = child.text or ""
            elif tag == _OBJ:
                up.obj = MoRef(child.get("type", ""), child.text or "")
            elif tag == _MISSING:
                path = child.findtext(_PATH) or ""
                fault = ""
                for f in child.iter(_FAULT_VIM):
                    fault = _local(f.get(_XSI_TYPE) or "") or fault
                self.missing.append((up.obj.value, path, fault))
        return up

    def close(self) -> UpdateSet | RetrieveResult | None:
        try:
            self._p.close()
        except ElementTree.ParseError as exc:
            raise self._malformed(exc) from None
        self._drain()
        root = self._root
        if root is None or root.tag != _ENVELOPE:
            raise self._malformed("not a SOAP envelope")
        body = root.find(_BODY)
        if body is None or not len(body):
            raise self._malformed("SOAP envelope without a body")
        fault = body.find(_FAULT)
        if fault is not None:
            raise self._fault(fault)
        response = body[0]
        returnval = response.find(_VIM + "returnval")
        if returnval is None:
            return None
        if self.method.startswith("WaitForUpdates"):
            version = returnval.findtext(_VIM + "version") or ""
            truncated = (returnval.findtext(_VIM + "truncated") or "") == "true"
            return UpdateSet(version, truncated, self.objects)
        token = returnval.findtext(_VIM + "token") or None
        return RetrieveResult(token, self.objects, self.missing)

    def _fault(self, fault: ElementTree.Element) -> VsphereFault:
        message = fault.findtext("faultstring") or ""
        ftype = _local(fault.findtext("faultcode") or "Fault")
        detail = fault.find("detail")
        if detail is not None and len(detail):
            first = detail[0]
            ftype = _local(first.get(_XSI_TYPE) or "") or _local(first.tag).removesuffix("Fault")
        return VsphereFault(ftype, message, None, self.method)

    def _malformed(self, why: object) -> VsphereProtocolError:
        snippet = self._head.decode("utf-8", "replace")
        return VsphereProtocolError(
            f"{self.method}: malformed SOAP response ({why}); starts with {snippet!r}"
        )


_NAME = _VIM + "name"
_OP = _VIM + "op"
_VAL = _VIM + "val"
_KIND = _VIM + "kind"
_OBJ = _VIM + "obj"
_MISSING = _VIM + "missingSet"
_PATH = _VIM + "path"
_FAULT_VIM = _VIM + "fault"


def _describe(elem: ElementTree.Element) -> str:
    """Which object (and property) a broken objectSet is about, for the error message."""
    obj = elem.find(_OBJ)
    what = f"{obj.get('type', '?')} {obj.text or '?'}" if obj is not None else "an object"
    for change in elem:
        if change.tag not in _CHANGE_TAGS:
            continue
        val = change.find(_VAL)
        if val is None:
            continue
        try:
            _value(val)
        except (ValueError, TypeError, AttributeError):
            return f"{what}, property {change.findtext(_NAME) or '?'!r}"
    return what


def parse_response(method: str, data: bytes) -> UpdateSet | RetrieveResult | None:
    """Parse a whole response body at once (tests, recorded responses)."""
    p = ResponseParser(method)
    p.feed(data)
    return p.close()


__all__ = ["ResponseParser", "RetrieveResult", "UpdateSet", "parse_response"]
