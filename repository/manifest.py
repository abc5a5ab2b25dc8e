"""Restore-point manifests and prune tombstones: canonical JSON authenticated with HMAC.

Each manifest carries the hash of the previous manifest of the same VM (`prev_hash`) and a
per-VM sequence number, so a swapped, replayed or silently removed point is detected.
Pruning a point leaves an authenticated tombstone holding that point's hash, so the chain
stays checkable after retention removes points.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import blake3

from repository.errors import ManifestError
from repository.index import DiskIndex

MANIFEST_FORMAT = 1


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class VmIdentity:
    """A VM is its vCenter instanceUuid + its own instanceUuid; name, path, MoRef are history."""

    vcenter_uuid: str
    instance_uuid: str
    name: str = ""
    path: str = ""
    moref: str = ""

    @property
    def key(self) -> str:
        raw = f"{self.vcenter_uuid.lower()}/{self.instance_uuid.lower()}".encode()
        return blake3.blake3(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class DiskRecord:
    key: str  # stable disk key within the VM, e.g. the base disk name
    capacity: int
    index_id: str
    change_id: str | None = None
    transport: str = ""
    base_name: str = ""
    backing: str = ""
    provisioning: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_index(cls, key: str, index: DiskIndex, **fields: Any) -> DiskRecord:
        if not index.index_id:
            raise ValueError(f"disk {key!r}: index was not stored (call DiskWriter.finish)")
        return cls(key=key, capacity=index.capacity, index_id=index.index_id.hex(), **fields)


@dataclass(frozen=True, slots=True)
class SkippedDisk:
    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class Manifest:
    point_id: str
    vm: VmIdentity
    seq: int
    prev_point_id: str | None
    prev_hash: str | None
    chunk_size: int
    started_at: datetime
    finished_at: datetime
    committed_at: datetime
    disks: tuple[DiskRecord, ...]
    skipped_disks: tuple[SkippedDisk, ...] = ()
    policy: str | None = None
    job_id: str | None = None
    config_info: dict[str, Any] | None = None
    vss_manifest: bytes | None = None

    def body(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "point_id": self.point_id,
            "vm": asdict(self.vm) | {"key": self.vm.key},
            "seq": self.seq,
            "prev_point_id": self.prev_point_id,
            "prev_hash": self.prev_hash,
            "chunk_size": self.chunk_size,
            "started_at": _ts(self.started_at),
            "finished_at": _ts(self.finished_at),
            "committed_at": _ts(self.committed_at),
            "policy": self.policy,
            "job_id": self.job_id,
            "disks": [asdict(d) for d in self.disks],
            "skipped_disks": [asdict(s) for s in self.skipped_disks],
            "config_info": self.config_info,
            "vss_manifest": (
                base64.b64encode(self.vss_manifest).decode() if self.vss_manifest else None
            ),
        }

    @property
    def hash(self) -> str:
        return body_hash(self.body())

    def disk(self, key: str) -> DiskRecord | None:
        return next((d for d in self.disks if d.key == key), None)

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Manifest:
        vm = dict(b["vm"])
        vm.pop("key", None)
        vss = b.get("vss_manifest")
        return cls(
            point_id=b["point_id"],
            vm=VmIdentity(**vm),
            seq=int(b["seq"]),
            prev_point_id=b["prev_point_id"],
            prev_hash=b["prev_hash"],
            chunk_size=int(b["chunk_size"]),
            started_at=parse_ts(b["started_at"]),
            finished_at=parse_ts(b["finished_at"]),
            committed_at=parse_ts(b["committed_at"]),
            policy=b.get("policy"),
            job_id=b.get("job_id"),
            disks=tuple(DiskRecord(**d) for d in b["disks"]),
            skipped_disks=tuple(SkippedDisk(**s) for s in b["skipped_disks"]),
            config_info=b.get("config_info"),
            vss_manifest=base64.b64decode(vss) if vss else None,
        )


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What remains of a pruned point: enough to check the chain and keep VM history."""

    point_id: str
    vm: VmIdentity
    seq: int
    manifest_hash: str
    committed_at: datetime
    reason: str
    deleted_at: datetime

    @property
    def vm_key(self) -> str:
        return self.vm.key

    def body(self) -> dict[str, Any]:
        return asdict(self) | {
            "committed_at": _ts(self.committed_at),
            "deleted_at": _ts(self.deleted_at),
        }

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Tombstone:
        return cls(
            **b
            | {
                "vm": VmIdentity(**b["vm"]),
                "committed_at": parse_ts(b["committed_at"]),
                "deleted_at": parse_ts(b["deleted_at"]),
            }
        )


def body_hash(body: dict[str, Any]) -> str:
    return blake3.blake3(canonical(body)).hexdigest()


def seal(mac_key: bytes, kind: str, body: dict[str, Any]) -> bytes:
    """The plaintext stored for a manifest or tombstone: body + HMAC-SHA256 over kind+body."""
    mac = hmac.new(mac_key, kind.encode() + b"\0" + canonical(body), hashlib.sha256).hexdigest()
    return canonical({"kind": kind, "body": body, "hmac": mac})


def unseal(mac_key: bytes, kind: str, data: bytes, name: str) -> dict[str, Any]:
    try:
        outer = json.loads(data)
        body, mac = outer["body"], outer["hmac"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{name}: not a {kind} ({exc})") from exc
    want = hmac.new(mac_key, kind.encode() + b"\0" + canonical(body), hashlib.sha256).hexdigest()
    if outer.get("kind") != kind or not hmac.compare_digest(want, str(mac)):
        raise ManifestError(f"{name}: HMAC check failed (tampered, or from another repository)")
    return body
