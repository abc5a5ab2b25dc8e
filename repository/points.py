"""Restore points as stored: listing and reading manifests and tombstones (skipping and
naming damaged ones), each VM's sequence high-water mark, pins, and deleting a point."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from repository.codec import ObjectType
from repository.errors import (
    BackendError,
    ManifestError,
    ObjectNotFoundError,
    PointNotFoundError,
    PointPinnedError,
)
from repository.locks import locked
from repository.manifest import Manifest, Tombstone
from repository.objects import ObjectStore, manifest_key, pin_key, tombstone_key
from repository.s3.errors import ObjectLockedError
from repository.state import LocalState

log = structlog.get_logger(__name__)


def vm_key_of(point_id: str) -> str:
    return point_id.split("-", 1)[0]


def _now_text() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def seq_of(key: str) -> int:
    """The seq in a manifest or tombstone name (`<vm key>-<time>Z-<seq>`); 0 if none."""
    tail = key.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@dataclass(frozen=True, slots=True)
class DamagedObject:
    """A manifest or tombstone that could not be read."""

    key: str
    point_id: str
    reason: str


def warn_damaged(bad: Iterable[DamagedObject]) -> None:
    for d in bad:
        log.warning(
            "repository.manifest_unreadable",
            object=d.key,
            point=d.point_id,
            reason=d.reason,
            fix="skipped; run `vigil verify` and restore the object from a copy if you have one",
        )


class PointStore:
    def __init__(self, objects: ObjectStore, where: Path, state: LocalState) -> None:
        self.objects = objects
        self.where = where  # for messages
        self.state = state

    def list_points(self, vm_key: str | None = None) -> list[str]:
        prefix = "manifests/" + (f"{vm_key}-" if vm_key else "")
        backend = self.objects.backend
        return sorted(i.key.removeprefix("manifests/") for i in backend.list(prefix))

    def load_manifest(self, point_id: str) -> Manifest:
        key = manifest_key(point_id)
        try:
            body = self.objects.get_sealed(key, point_id, "manifest", ObjectType.MANIFEST)
        except ObjectNotFoundError:
            raise PointNotFoundError(f"no restore point {point_id!r} in {self.where}") from None
        try:
            return Manifest.from_body(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{key}: malformed: {exc}") from exc

    def scan_manifests(
        self, vm_key: str | None = None
    ) -> tuple[list[Manifest], list[DamagedObject]]:
        """Every readable manifest, and the ones that fail to read (named, with why).
        A manifest deleted while we list is simply gone."""
        good: list[Manifest] = []
        bad: list[DamagedObject] = []
        for pid in self.list_points(vm_key):
            try:
                good.append(self.load_manifest(pid))
            except PointNotFoundError:
                continue
            except (ManifestError, BackendError) as exc:
                # Unreadable (EACCES, EIO, a planted link) is damage of this one object: it
                # must not stop backups or prune of every other VM.
                bad.append(DamagedObject(manifest_key(pid), pid, str(exc)))
        return good, bad

    def scan_tombstones(
        self, vm_key: str | None = None
    ) -> tuple[list[Tombstone], list[DamagedObject]]:
        prefix = "tombstones/" + (f"{vm_key}-" if vm_key else "")
        good: list[Tombstone] = []
        bad: list[DamagedObject] = []
        for info in self.objects.backend.list(prefix):
            pid = info.key.removeprefix("tombstones/")
            try:
                body = self.objects.get_sealed(info.key, pid, "tombstone", ObjectType.TOMBSTONE)
                good.append(Tombstone.from_body(body))
            except ObjectNotFoundError:
                continue
            except (ManifestError, BackendError) as exc:
                bad.append(DamagedObject(info.key, pid, str(exc)))
            except (KeyError, TypeError, ValueError) as exc:
                bad.append(DamagedObject(info.key, pid, f"{info.key}: malformed: {exc}"))
        return sorted(good, key=lambda t: t.seq), bad

    def high_waters(self, vm_key: str | None = None) -> dict[str, tuple[int, str]]:
        """vm key -> (seq, point id) of the highest seq the VM ever used, from the object
        names of its manifests, tombstones and head objects (heads/<point id>, written at
        each commit and never removed with the manifest): unreadable ones count too, and
        deleting a manifest does not lower it, so no seq is reused."""
        best: dict[str, tuple[int, str]] = {}
        for kind in ("manifests/", "tombstones/", "heads/"):
            for info in self.objects.backend.list(kind + (f"{vm_key}-" if vm_key else "")):
                pid = info.key.removeprefix(kind)
                vm, seq = vm_key_of(pid), seq_of(pid)
                if seq > best.get(vm, (0, ""))[0]:
                    best[vm] = (seq, pid)
        return best

    def high_water(self, vm_key: str) -> tuple[int, str | None]:
        seq, pid = self.high_waters(vm_key).get(vm_key, (0, None))
        return seq, pid

    def record_head(self, m: Manifest) -> None:
        """The commit's head object: its name is the record; its sealed body repeats the
        point's seq and hash for a human or a future reader."""
        body = {"point_id": m.point_id, "seq": m.seq, "manifest_hash": m.hash}
        self.objects.put_sealed(
            f"heads/{m.point_id}", m.point_id, "head", ObjectType.HEAD, body, exist_ok=True
        )

    def drop_old_heads(self) -> int:
        """Keep only each VM's newest head object (prune); returns how many went."""
        newest = self.high_waters()
        gone = 0
        for info in self.objects.backend.list("heads/"):
            pid = info.key.removeprefix("heads/")
            if newest.get(vm_key_of(pid), (0, ""))[1] != pid:
                try:
                    self.objects.backend.delete(info.key)
                except ObjectLockedError:
                    continue  # object lock (S3): a later prune removes it after expiry
                gone += 1
        return gone

    def vm_lock_path(self, vm_key: str) -> Path:
        return self.state.ensure() / "locks" / f"vm-{vm_key}.lock"

    # -- pins ---------------------------------------------------------------------------
    # A pin is one small authenticated object, pins/<point id>, beside the manifest it keeps
    # (a manifest is write-once and hashed into the VM's chain, so it cannot be annotated).
    # Prune keeps a point while its pin object exists, whatever is in it: a damaged pin
    # still keeps the point, the safe side. Pin and delete take the VM's lock, so a pin
    # placed while a prune runs either stops that deletion or comes too late with an error.

    def pin(self, point_id: str, note: str = "") -> bool:
        """Pin an existing point; False when it already was."""
        with locked(self.vm_lock_path(vm_key_of(point_id)), exclusive=True):
            if not self.objects.backend.exists(manifest_key(point_id)):
                raise PointNotFoundError(f"no restore point {point_id!r} in {self.where}")
            if self.objects.backend.exists(pin_key(point_id)):
                return False
            body = {"point_id": point_id, "note": note, "pinned_at": _now_text()}
            self.objects.put_sealed(
                pin_key(point_id), point_id, "pin", ObjectType.PIN, body, exist_ok=True
            )
        log.info("repository.point_pinned", point=point_id)
        return True

    def unpin(self, point_id: str) -> bool:
        """Remove a point's pin; False when it had none."""
        with locked(self.vm_lock_path(vm_key_of(point_id)), exclusive=True):
            if not self.objects.backend.exists(pin_key(point_id)):
                return False
            self.objects.backend.delete(pin_key(point_id))
        log.info("repository.point_unpinned", point=point_id)
        return True

    def pinned_points(self) -> set[str]:
        return {i.key.removeprefix("pins/") for i in self.objects.backend.list("pins/")}

    def pin_note(self, point_id: str) -> str | None:
        """The pin's note ("" without one), None when the point is not pinned."""
        try:
            body = self.objects.get_sealed(pin_key(point_id), point_id, "pin", ObjectType.PIN)
        except ObjectNotFoundError:
            return None
        except (ManifestError, BackendError) as exc:
            return f"(unreadable pin: {exc})"
        return str(body.get("note", ""))

    def delete_point(self, manifest: Manifest, reason: str) -> None:
        """Tombstone first (keeps the hash chain checkable), then drop the manifest. Holds
        the VM's lock so a commit never sees the point half deleted. A pinned point is
        refused (PointPinnedError), under the same lock a pin takes."""
        m = manifest
        t = Tombstone(m.point_id, m.vm, m.seq, m.hash, m.committed_at, reason, datetime.now(UTC))
        with locked(self.vm_lock_path(m.vm.key), exclusive=True):
            if self.objects.backend.exists(pin_key(m.point_id)):
                raise PointPinnedError(f"restore point {m.point_id} is pinned; unpin it first")
            # Already tombstoned (a concurrent or interrupted delete): keep the first one.
            self.objects.put_sealed(
                tombstone_key(m.point_id),
                t.point_id,
                "tombstone",
                ObjectType.TOMBSTONE,
                t.body(),
                exist_ok=True,
            )
            self.objects.backend.delete(manifest_key(m.point_id))
        log.info("repository.point_deleted", point=m.point_id, reason=reason)
