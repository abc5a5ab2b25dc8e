"""Pure parts of the S3 backend: settings, retention generations, as-of version choice."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from repository.s3 import RetentionPolicy, S3ConfigError, options_from_config
from repository.s3.retention import RetentionMemo
from repository.s3.versions import VersionEntry, as_of

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def test_url_and_endpoint_rules() -> None:
    o = options_from_config("s3://bkt/some/prefix/", {"endpoint": "https://s3.example.com"})
    assert (o.bucket, o.prefix, o.url) == ("bkt", "some/prefix/", "s3://bkt/some/prefix/")
    assert options_from_config("s3://bkt", {}).prefix == ""
    for url in ("bkt/prefix", "s3:///x", "s3://b/../x", "s3://b/x?y=1"):
        with pytest.raises(S3ConfigError, match=r"repository\.url"):
            options_from_config(url, {})
    for ok in ("http://127.0.0.1:9000", "http://[::1]:9000", "http://localhost:1"):
        assert options_from_config("s3://b/p", {"endpoint": ok}).endpoint == ok
    with pytest.raises(S3ConfigError, match=r"http:// is allowed only for a loopback"):
        options_from_config("s3://b/p", {"endpoint": "http://10.0.0.5:9000"})
    with pytest.raises(S3ConfigError, match="unknown setting"):
        options_from_config("s3://b/p", {"endpont": "https://x"})
    with pytest.raises(S3ConfigError, match="object_lock_mode"):
        options_from_config("s3://b/p", {"object_lock_mode": "forever"})
    with pytest.raises(S3ConfigError, match="object_lock_days"):
        options_from_config("s3://b/p", {"object_lock_days": -1})


def test_credentials_from_env_or_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AK", "access-1")
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-value\n")
    os.chmod(secret, 0o600)
    o = options_from_config("s3://b/p", {"access_key_env": "AK", "secret_key_file": str(secret)})
    assert (o.access_key, o.secret_key) == ("access-1", "s3cr3t-value")
    assert "s3cr3t" not in repr(o) and "access-1" not in repr(o)
    os.chmod(secret, 0o644)
    with pytest.raises(S3ConfigError, match=r"secret_key_file .*readable by others.*chmod 600"):
        options_from_config("s3://b/p", {"access_key_env": "AK", "secret_key_file": str(secret)})
    with pytest.raises(S3ConfigError, match="environment variable NOPE is not set"):
        options_from_config("s3://b/p", {"access_key_env": "NOPE", "secret_key_env": "AK"})
    with pytest.raises(S3ConfigError, match="both access_key"):
        options_from_config("s3://b/p", {"access_key_env": "AK"})


def test_generations_cover_the_days_after_a_write() -> None:
    p = RetentionPolicy(days=30, generation_days=7)
    until = p.write_until(T0)
    assert until.timestamp() % (7 * 86400) == 0
    assert until >= p.required(T0) + timedelta(days=7)
    # Every point in the next 7 days is covered without a call.
    for h in range(0, 7 * 24, 6):
        assert until >= p.required(T0 + timedelta(hours=h))


def test_daily_backups_need_extensions_about_once_a_generation() -> None:
    """A writer following the rule (extend reused objects only when the base point's floor
    does not cover the new point) against a model of what the service holds."""
    p = RetentionPolicy(days=30, generation_days=7)
    retained = {"c": p.write_until(T0)}
    base_time, extensions = T0, []
    for day in range(1, 120):
        now = T0 + timedelta(days=day)
        if not p.base_covers(base_time, now):
            retained["c"] = max(retained["c"], p.write_until(now))
            extensions.append(day)
        assert retained["c"] >= p.required(now)  # the invariant: never under-protected
        assert retained["c"] >= p.floor(now)
        base_time = now
    assert 119 // 7 - 1 <= len(extensions) <= 119 // 7 + 1
    gaps = {b - a for a, b in itertools.pairwise(extensions)}
    assert gaps == {7}


def test_as_of_picks_the_newest_entry_before_the_time() -> None:
    t = T0

    def e(key: str, minute: int, marker: bool = False, vid: str = "") -> VersionEntry:
        return VersionEntry(key, vid or f"{key}{minute}", t + timedelta(minutes=minute), 1, marker)

    entries = [
        e("a", 0),
        e("a", 5, vid="a-new"),
        e("a", 20, marker=True),  # the attack, after TIME
        e("b", 0),
        e("b", 8, marker=True),  # deleted before TIME: really gone then
        e("c", 15),  # written after TIME
        e("d", 3),
        e("d", 3, marker=True),  # same second: keep the readable version
    ]
    got = as_of(entries, t + timedelta(minutes=10))
    assert {k: v.version_id for k, v in got.items()} == {"a": "a-new", "d": "d3"}


def test_retention_memo_forgets_after_its_horizon() -> None:
    now = [0.0]
    memo = RetentionMemo(horizon=100, clock=lambda: now[0])
    memo.set("a", T0)
    now[0] = 60
    memo.set("b", T0)
    now[0] = 70
    memo.set("a", T0 + timedelta(days=7))  # refreshed: young again
    now[0] = 130
    assert memo.get("a") == T0 + timedelta(days=7) and memo.get("b") == T0
    now[0] = 161
    assert memo.get("b") is None and len(memo) == 1
    now[0] = 500
    assert memo.get("a") is None and len(memo) == 0
    memo.set("c", T0)
    memo.forget("c")
    assert memo.get("c") is None
