"""Object lock on a real SeaweedFS: retention on every write, holding against a plain S3
client with vigil's own keys, extension in generations, reading past delete markers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from repository.errors import ObjectNotFoundError
from repository.s3 import (
    ObjectLockedError,
    ReadOnlyError,
    S3ConfigError,
    open_s3_backend,
)
from tests.s3_server import SeaweedServer

DAYS = 3


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("weed")) as server:
        server.make_bucket("locked", lock=True)
        server.make_bucket("unlocked")
        yield server


def _retention(weed: SeaweedServer, key: str, version: str | None = None) -> tuple[str, datetime]:
    extra = {"VersionId": version} if version else {}
    r = weed.client().get_object_retention(Bucket="locked", Key=key, **extra)["Retention"]
    return r["Mode"], r["RetainUntilDate"]


def test_every_object_written_carries_retention(weed: SeaweedServer) -> None:
    b = open_s3_backend(weed.options("locked", "ret", object_lock_days=DAYS))
    before = datetime.now(UTC)
    assert b.put_if_absent("chunks/aa/aa01", b"chunk")
    mode, until = _retention(weed, "ret/chunks/aa/aa01")
    assert mode == "COMPLIANCE"
    assert until >= before + timedelta(days=DAYS + 1)  # N days plus the commit margin
    assert until.timestamp() % (7 * 86400) == 0  # a generation boundary
    assert b.retention_of("chunks/aa/aa01") == (mode, until)
    # Lock objects (and the write-once probe) stay deletable by their owner.
    assert b.put_if_absent("locks/writer-1", b"lock")
    assert b.retention_of("locks/writer-1") is None
    b.delete("locks/writer-1")
    assert not b.exists("locks/writer-1")


def test_compliance_holds_against_a_plain_client_with_the_same_keys(weed: SeaweedServer) -> None:
    b = open_s3_backend(weed.options("locked", "atk", object_lock_days=DAYS))
    b.put_if_absent("manifests/vm-1", b"precious")
    plain = weed.client()
    key = "atk/manifests/vm-1"
    version = plain.head_object(Bucket="locked", Key=key)["VersionId"]
    with pytest.raises(ClientError, match="AccessDenied"):
        plain.delete_object(Bucket="locked", Key=key, VersionId=version)
    with pytest.raises(ClientError):  # COMPLIANCE: retention cannot be shortened
        plain.put_object_retention(
            Bucket="locked",
            Key=key,
            VersionId=version,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": datetime.now(UTC)},
        )
    with pytest.raises(ClientError):  # nor the mode weakened
        plain.put_object_retention(
            Bucket="locked",
            Key=key,
            VersionId=version,
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC)},
        )
    with pytest.raises(ObjectLockedError, match=r"manifests/vm-1.*locked") as err:
        b.delete("manifests/vm-1")
    assert err.value.until is not None and err.value.until > datetime.now(UTC)
    got = plain.get_object(Bucket="locked", Key=key, VersionId=version)["Body"].read()
    assert got == b"precious"


def test_governance_mode_is_written_and_refuses_plain_deletes(weed: SeaweedServer) -> None:
    opts = weed.options("locked", "gov", object_lock_days=DAYS, object_lock_mode="GOVERNANCE")
    b = open_s3_backend(opts)
    b.put_if_absent("chunks/g", b"g")
    assert _retention(weed, "gov/chunks/g")[0] == "GOVERNANCE"
    with pytest.raises(ObjectLockedError, match="GOVERNANCE"):
        b.delete("chunks/g")


def test_reused_objects_retention_is_extended_in_generations(weed: SeaweedServer) -> None:
    b = open_s3_backend(weed.options("locked", "ext", object_lock_days=DAYS))
    keys = [f"chunks/e/{i:04x}" for i in range(20)]
    for k in keys:
        b.put_if_absent(k, k.encode())
    written = _retention(weed, "ext/" + keys[0])[1]
    # Reused right away: what we wrote already covers it, no call at all.
    assert b.ensure_retained(keys, datetime.now(UTC) + timedelta(days=DAYS)) == 0
    # A point made after the generation boundary needs more: one call per object, once.
    later = written + timedelta(days=1)
    assert b.ensure_retained(keys, later) == len(keys)
    for k in keys:
        mode, until = _retention(weed, "ext/" + k)
        assert mode == "COMPLIANCE" and until >= later
        assert until.timestamp() % (7 * 86400) == 0
    assert b.ensure_retained(keys, later) == 0
    # Another process (no memory of what it set) extends again, and the service keeps
    # the later of the two dates: COMPLIANCE never shortens.
    fresh = open_s3_backend(weed.options("locked", "ext", object_lock_days=DAYS))
    assert fresh.ensure_retained(keys[:3], later) == 3
    assert fresh.calls["PutObjectRetention"] == 3


def test_ensure_retained_on_a_missing_object_names_it(weed: SeaweedServer) -> None:
    b = open_s3_backend(weed.options("locked", "miss", object_lock_days=DAYS))
    with pytest.raises(ObjectNotFoundError, match="chunks/gone"):
        b.ensure_retained(["chunks/gone"], datetime.now(UTC) + timedelta(days=30))


def test_lock_days_on_a_bucket_without_object_lock_is_refused(weed: SeaweedServer) -> None:
    with pytest.raises(S3ConfigError, match="bucket 'unlocked' has no object lock"):
        open_s3_backend(weed.options("unlocked", "x", object_lock_days=DAYS))


def test_reading_past_delete_markers(weed: SeaweedServer) -> None:
    b = open_s3_backend(weed.options("locked", "dm", object_lock_days=DAYS))
    objects = {f"chunks/d/{i}": b"data %d" % i for i in range(5)} | {"config": b"cfg"}
    for k, v in objects.items():
        b.put_if_absent(k, v)
    time.sleep(1.1)  # S3 times have one-second resolution: TIME must fall between
    when = datetime.now(UTC)
    time.sleep(1.1)
    b.put_if_absent("chunks/d/late", b"written after TIME")
    # The attacker, holding vigil's keys, deletes everything it can see.
    plain = weed.client()
    for o in plain.list_objects_v2(Bucket="locked", Prefix="dm/")["Contents"]:
        plain.delete_object(Bucket="locked", Key=o["Key"])
    assert list(b.list("")) == []
    with pytest.raises(ObjectNotFoundError):
        b.get("config")
    past = open_s3_backend(weed.options("locked", "dm", object_lock_days=DAYS), as_of_time=when)
    assert sorted(i.key for i in past.list("")) == sorted(objects)
    assert {k: past.get(k) for k in objects} == objects
    assert past.get_range("chunks/d/3", 5, 1) == b"3"
    assert past.exists("config") and not past.exists("chunks/d/late")
    with pytest.raises(ReadOnlyError, match="read-only as of"):
        past.put_if_absent("chunks/new", b"x")
    with pytest.raises(ReadOnlyError):
        past.delete("config")
