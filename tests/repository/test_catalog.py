"""The catalog records points and can be rebuilt from the manifests alone."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from repo_helpers import CHUNK, PASSPHRASE, make_disk, vm, write_point

from repository import Catalog, KeepLast, Repository, SkippedDisk, VmIdentity, prune
from repository.catalog import HEAD_REVISION, _alembic_config, metadata
from repository.cli import catalog_rebuild_cmd
from repository.errors import RepositoryError


async def test_rebuild_recreates_points_disks_and_name_history(repo: Repository) -> None:
    write_point(repo, vm(1), {"d": make_disk(CHUNK, 1)})
    renamed = VmIdentity(vm(1).vcenter_uuid, vm(1).instance_uuid, "web-renamed", "/dc/vm/x", "vm-9")
    p2 = write_point(
        repo,
        renamed,
        {"d": make_disk(CHUNK, 2)},
        skipped_disks=[SkippedDisk("indep0", "independent disk")],
        policy="gold",
    )
    write_point(repo, vm(2), {"d": make_disk(CHUNK, 3)})
    prune(
        repo, lambda v, _p: KeepLast(1) if v.key == renamed.key else KeepLast(9), grace=timedelta(0)
    )

    outcome = await catalog_rebuild_cmd(repo.root, "correct horse battery staple")
    assert outcome.exit_code == 0 and outcome.data == (2, 1)
    catalog = await Catalog.for_repository(repo)
    try:
        live = await catalog.points(vm(1).key)
        assert [p["point_id"] for p in live] == [p2] and live[0]["policy"] == "gold"
        assert len(await catalog.points(vm(1).key, status="pruned")) == 1
        disks = {d["disk_key"]: d for d in await catalog.disks(p2)}
        assert disks["indep0"]["skipped_reason"] == "independent disk"
        assert disks["d"]["capacity"] == CHUNK
        names = [h["name"] for h in await catalog.vm_history(vm(1).key)]
        assert names == ["vm1", "web-renamed"]
        assert await catalog.known_heads() == {vm(1).key: 2, vm(2).key: 1}

        now = datetime.now(UTC)
        await catalog.record_job("j1", "backup", now, vm_key=vm(1).key)
        await catalog.record_job("j1", "backup", now, outcome="success", point_id=p2)
    finally:
        await catalog.close()


async def test_schema_is_managed_by_alembic_and_reopens(repo: Repository) -> None:
    for _ in range(2):
        catalog = await Catalog.for_repository(repo)
        async with catalog.engine.connect() as conn:
            rev = (await conn.exec_driver_sql("select version_num from alembic_version")).scalar()
            drift = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), metadata)
            )
        await catalog.close()
        assert rev == HEAD_REVISION
        # The migrations build exactly the tables the code queries.
        assert drift == []
    script = ScriptDirectory.from_config(_alembic_config(None))  # type: ignore[arg-type]
    assert script.get_current_head() == HEAD_REVISION


async def test_a_catalog_from_before_alembic_is_adopted_without_losing_rows(
    repo: Repository,
) -> None:
    p = write_point(repo, vm(1), {"d": make_disk(CHUNK, 1)})
    catalog = await Catalog.for_repository(repo)
    await catalog.record_point(repo.load_manifest(p))
    async with catalog.engine.begin() as conn:  # what the pre-Alembic code left behind
        await conn.exec_driver_sql("drop table alembic_version")
        await conn.exec_driver_sql("create table schema_version (version integer not null)")
        await conn.exec_driver_sql("insert into schema_version values (1)")
    await catalog.close()

    catalog = await Catalog.for_repository(repo)
    try:
        assert [r["point_id"] for r in await catalog.points()] == [p]
        async with catalog.engine.connect() as conn:
            rev = (await conn.exec_driver_sql("select version_num from alembic_version")).scalar()
        assert rev == HEAD_REVISION
    finally:
        await catalog.close()


async def test_a_catalog_from_a_newer_vigil_is_refused_clearly(repo: Repository) -> None:
    catalog = await Catalog.for_repository(repo)
    async with catalog.engine.begin() as conn:
        await conn.exec_driver_sql("update alembic_version set version_num = 'fffffffff999'")
    await catalog.close()
    with pytest.raises(RepositoryError, match=r"catalog.db.*newer vigil.*fffffffff999"):
        await Catalog.for_repository(repo)


async def test_catalog_files_are_private_from_creation(repo: Repository) -> None:
    old = os.umask(0o022)
    try:
        catalog = await Catalog.for_repository(repo)
        await catalog.record_job("j1", "backup", datetime.now(UTC))
        await catalog.close()
    finally:
        os.umask(old)
    files = [p for p in repo.root.iterdir() if p.name.startswith("catalog.db")]
    assert files
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600, f


async def test_rebuild_after_a_delete_interrupted_between_tombstone_and_manifest(
    repo: Repository,
) -> None:
    p1 = write_point(repo, vm(1), {"d": make_disk(CHUNK, 1)})
    p2 = write_point(repo, vm(1), {"d": make_disk(CHUNK, 2)})
    m1 = repo.load_manifest(p1)
    # kill -9 after the tombstone landed, before the manifest was removed: both exist.
    manifest_bytes = (repo.root / "manifests" / p1).read_bytes()
    repo.delete_point(m1, "keep-last 1")
    (repo.root / "manifests" / p1).write_bytes(manifest_bytes)
    os.chmod(repo.root / "manifests" / p1, 0o600)

    outcome = await catalog_rebuild_cmd(repo.root, PASSPHRASE)
    assert outcome.exit_code == 0
    catalog = await Catalog.for_repository(repo)
    try:
        assert [r["point_id"] for r in await catalog.points(vm(1).key)] == [p2]
        assert [r["point_id"] for r in await catalog.points(vm(1).key, status="pruned")] == [p1]
    finally:
        await catalog.close()


def _open_catalog_at(path: str, barrier: object) -> None:
    import asyncio as _asyncio

    from repository.catalog import Catalog as _Catalog

    async def go() -> None:
        barrier.wait()  # type: ignore[attr-defined]
        cat = await _Catalog.open(path)
        await cat.close()

    _asyncio.run(go())


def test_processes_creating_the_catalog_at_once_all_succeed(tmp_path) -> None:
    """Two `vigil backup` runs started together on a new repository both create the
    catalog: its schema migration must not run twice ("table vms already exists")."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(6):
        path = str(tmp_path / f"catalog-{round_}.db")
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_catalog_at, args=(path, barrier)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0], f"round {round_}"
