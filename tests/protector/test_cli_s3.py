"""End to end on object storage, through the `vigil` command: init an S3 repository on a
real SeaweedFS (object lock on), back up a simulator VM, restore it byte-exact, verify
clean; then an attacker with vigil's keys stacks delete markers over every object and
`vigil list/restore --as-of` still reads the locked versions."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from protector.config import load_config
from protector.context import Context
from protector.repoaccess import open_repository
from tests.protector.conftest import PASSWORD_ENV, VM_NAME, Rig, config_toml
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedServer
from watcher.session import Credentials, Session
from watcher.soap import Endpoint

MIB = 1024 * 1024
VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")
BUCKET = "vigil-e2e"


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("weed")) as server:
        server.make_bucket(BUCKET, lock=True)
        yield server


async def vigil(cfg: Path, *args: str) -> tuple[int, str, str]:
    proc = await anyio.run_process(
        [VIGIL, "--config", str(cfg), *args], check=False, env=dict(os.environ)
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


async def ok(cfg: Path, *args: str) -> Any:
    code, out, err = await vigil(cfg, *args)
    assert code == 0, (args, out, err[-3000:])
    return json.loads(out) if "--json" in args else out


def s3_config(sim: Any, weed: SeaweedServer, prefix: str, lock_days: int) -> str:
    table = (
        f'[repository]\nurl = "s3://{BUCKET}/{prefix}"\npassphrase_env = "VIGIL_TEST_PASS"\n'
        f'[repository.s3]\nendpoint = "{weed.endpoint}"\n'
        'access_key_env = "VIGIL_TEST_S3_ACCESS"\nsecret_key_env = "VIGIL_TEST_S3_SECRET"\n'
        f"object_lock_days = {lock_days}\n"
    )
    return config_toml(sim).replace('[repository]\npath = "repo"\n', table)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, vcsim_fresh: Any) -> None:
    monkeypatch.setenv(PASSWORD_ENV, vcsim_fresh.password)
    monkeypatch.setenv("VIGIL_TEST_PASS", "correct horse battery staple")
    monkeypatch.setenv("VIGIL_TEST_S3_ACCESS", ACCESS_KEY)
    monkeypatch.setenv("VIGIL_TEST_S3_SECRET", SECRET_KEY)


async def s3_rig(sim: Any, toml: Path) -> Rig:
    cfg = load_config(toml)
    repo = await open_repository(cfg)
    session = Session(Endpoint(sim.url), Credentials(sim.user, sim.password))
    await session.connect()
    return Rig(sim, cfg, session, repo, Context.create(cfg, session, repo, None), toml.parent)


@pytest.mark.usefixtures("s3_env")
async def test_s3_init_backup_restore_verify_and_as_of(
    vcsim_fresh: Any, weed: SeaweedServer, tmp_path: Path
) -> None:
    toml = tmp_path / "vigil.toml"
    toml.write_text(s3_config(vcsim_fresh, weed, "e2e", lock_days=1))
    (tmp_path / "policies").mkdir()
    out = await ok(toml, "init")
    assert f"created an encrypted repository at s3://{BUCKET}/e2e" in out
    code, _out, err = await vigil(toml, "init")
    assert code == 2 and "already holds a vigil repository" in err

    rig = await s3_rig(vcsim_fresh, toml)
    try:
        size = 6 * MIB
        data = random.Random(15).randbytes(size)
        await rig.prepare(size, data)
        b = await ok(toml, "backup", VM_NAME, "--json")
        assert b["status"] == "committed" and b["read_bytes"] == size
        point = b["id"]
        [listed] = await ok(toml, "list", "--json")
        assert listed["id"] == point
        r = await ok(toml, "restore", point, "--new-name", "s3-restored", "--verify", "--json")
        assert r["vm"]["name"] == "s3-restored"
        assert await rig.read_flat(await rig.vm("s3-restored"), size) == data
        await ok(toml, "verify", "--read-data")

        # Every object of the repository is locked (COMPLIANCE, object_lock_days = 1).
        plain = weed.client()
        keys = [
            o["Key"]
            for page in plain.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix="e2e/"
            )
            for o in page.get("Contents", ())
        ]
        assert any(k.startswith("e2e/manifests/") for k in keys)
        assert not any(k.startswith("e2e/locks/") for k in keys)  # released
        for key in keys:
            held = plain.get_object_retention(Bucket=BUCKET, Key=key)["Retention"]
            assert held["Mode"] == "COMPLIANCE" and held["RetainUntilDate"] > datetime.now(UTC)

        # The attack: vigil's own keys put a delete marker over every object.
        await anyio.sleep(1.1)  # S3 times have one-second resolution
        before = datetime.now(UTC).replace(microsecond=0)
        await anyio.sleep(1.1)
        for key in keys:
            plain.delete_object(Bucket=BUCKET, Key=key)
        code, _out, err = await vigil(toml, "list")
        assert code != 0 and f"no repository at s3://{BUCKET}/e2e" in err

        as_of = before.isoformat().replace("+00:00", "Z")
        [past] = await ok(toml, "list", "--as-of", as_of, "--json")
        assert past["id"] == point
        await ok(toml, "restore", point, "--as-of", as_of, "--new-name", "s3-asof", "--verify")
        assert await rig.read_flat(await rig.vm("s3-asof"), size) == data
    finally:
        await rig.session.close()


@pytest.mark.usefixtures("s3_env")
async def test_as_of_on_a_directory_repository_is_refused(vcsim_fresh: Any, tmp_path: Path) -> None:
    toml = tmp_path / "vigil.toml"
    toml.write_text(config_toml(vcsim_fresh))
    code, _out, err = await vigil(toml, "list", "--as-of", "2026-01-01T00:00:00Z")
    assert code != 0 and "--as-of reads the locked versions kept by an S3 bucket" in err
    code, _out, err = await vigil(toml, "list", "--as-of", "yesterday")
    assert code != 0 and "'yesterday' is not a time" in err


def copy_table(name: str, weed: SeaweedServer | None, where: str) -> str:
    """A [copies.NAME] table (or, with name "", a [repository] one) at `where`: an S3
    prefix of the test bucket when `weed` is given, else a directory."""
    head = f"[copies.{name}]" if name else "[repository]"
    if weed is None:
        return f'{head}\npath = "{where}"\npassphrase_env = "VIGIL_TEST_PASS_{where.upper()}"\n'
    return (
        f'{head}\nurl = "s3://{BUCKET}/{where}"\npassphrase_env = "VIGIL_TEST_PASS_CLOUD"\n'
        f'[{head.strip("[]")}.s3]\nendpoint = "{weed.endpoint}"\n'
        'access_key_env = "VIGIL_TEST_S3_ACCESS"\nsecret_key_env = "VIGIL_TEST_S3_SECRET"\n'
        "object_lock_days = 1\n"
    )


@pytest.mark.usefixtures("s3_env")
async def test_vigil_copy_local_to_s3_to_local_each_restores_byte_exact(
    vcsim_fresh: Any, weed: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_TEST_PASS_CLOUD", "cloud passphrase")
    monkeypatch.setenv("VIGIL_TEST_PASS_HOME", "home passphrase")
    (tmp_path / "policies").mkdir()
    base = config_toml(vcsim_fresh).replace('[repository]\npath = "repo"\n', "")
    # Site: a local repository with an S3 copy.
    site = tmp_path / "vigil.toml"
    site.write_text(
        base
        + '[repository]\npath = "repo"\npassphrase_env = "VIGIL_TEST_PASS"\n'
        + copy_table("cloud", weed, "copy-e2e")
    )
    await ok(site, "init")
    out = await ok(site, "init", "--copy", "cloud")
    assert f"created an encrypted repository at s3://{BUCKET}/copy-e2e" in out
    code, _out, err = await vigil(site, "copy", "--to", "clowd")
    assert code != 0 and "no [copies.clowd]" in err and "did you mean cloud?" in err

    rig = await s3_rig(vcsim_fresh, site)
    try:
        size = 5 * MIB
        data = random.Random(25).randbytes(size)
        await rig.prepare(size, data)
        point = (await ok(site, "backup", VM_NAME, "--json"))["id"]
        sent = await ok(site, "copy", "--to", "cloud", VM_NAME, "--json")
        assert sent["copied"] == [point] and sent["chunks_sent"] > 0 and not sent["problems"]
        again = await ok(site, "copy", "--to", "cloud", "--json")
        assert again["copied"] == [] and again["chunks_sent"] == 0 and again["present"] == 1

        # The S3 copy as a repository of its own, with a copy of its own on local disk.
        cloud = tmp_path / "cloud.toml"
        cloud.write_text(base + copy_table("", weed, "copy-e2e") + copy_table("home", None, "home"))
        [listed] = await ok(cloud, "list", "--json")
        assert listed["id"] == point
        await ok(cloud, "verify", "--read-data")
        await ok(cloud, "restore", point, "--new-name", "from-cloud", "--verify")
        assert await rig.read_flat(await rig.vm("from-cloud"), size) == data
        await ok(cloud, "init", "--copy", "home")
        assert (await ok(cloud, "copy", "--to", "home", "--json"))["copied"] == [point]

        home = tmp_path / "home.toml"
        home.write_text(base + copy_table("", None, "home"))
        await ok(home, "verify", "--read-data")
        await ok(home, "restore", point, "--new-name", "from-home", "--verify")
        assert await rig.read_flat(await rig.vm("from-home"), size) == data
    finally:
        await rig.session.close()
