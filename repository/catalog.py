"""The catalog: an SQL index of VMs, restore points, disks and jobs (SQLAlchemy 2 Core,
aiosqlite by default at <repository>/catalog.db).

Manifests stay the source of truth; rebuild() recreates everything but the job history
from the repository. The schema is managed by Alembic (repository/migrations): opening a
catalog upgrades it to the newest revision.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from repository.backend import owner_to_match
from repository.errors import RepositoryError
from repository.locks import FileLock
from repository.manifest import Manifest, Tombstone, VmIdentity
from repository.repo import Repository

metadata = sa.MetaData()

vms = sa.Table(
    "vms",
    metadata,
    sa.Column("vm_key", sa.String(16), primary_key=True),
    sa.Column("vcenter_uuid", sa.String, nullable=False),
    sa.Column("instance_uuid", sa.String, nullable=False),
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
)
vm_names = sa.Table(
    "vm_names",
    metadata,
    sa.Column("vm_key", sa.ForeignKey("vms.vm_key"), nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("path", sa.String, nullable=False),
    sa.Column("moref", sa.String, nullable=False),
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("vm_key", "name", "path", "moref"),
)
points = sa.Table(
    "points",
    metadata,
    sa.Column("point_id", sa.String, primary_key=True),
    sa.Column("vm_key", sa.ForeignKey("vms.vm_key"), nullable=False, index=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("policy", sa.String),
    sa.Column("job_id", sa.String),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("committed_at", sa.DateTime(timezone=True)),
    sa.Column("manifest_hash", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),  # committed | pruned
    sa.Column("pruned_at", sa.DateTime(timezone=True)),
    sa.Column("prune_reason", sa.String),
)
disks = sa.Table(
    "disks",
    metadata,
    sa.Column("point_id", sa.ForeignKey("points.point_id"), primary_key=True),
    sa.Column("disk_key", sa.String, primary_key=True),
    sa.Column("capacity", sa.BigInteger),
    sa.Column("index_id", sa.String),
    sa.Column("change_id", sa.String),
    sa.Column("transport", sa.String),
    sa.Column("base_name", sa.String),
    sa.Column("backing", sa.String),
    sa.Column("provisioning", sa.String),
    sa.Column("skipped_reason", sa.String),  # set for disks the point could not include
)
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String, primary_key=True),
    sa.Column("vm_key", sa.String, index=True),
    sa.Column("kind", sa.String, nullable=False),  # backup | restore | verify | prune
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("outcome", sa.String),  # success | failed | cancelled | partial | busy
    sa.Column("message", sa.String),
    sa.Column("point_id", sa.String),
)


MIGRATIONS_DIR = Path(__file__).with_name("migrations")
HEAD_REVISION = "0001"  # the newest file in migrations/versions; a test keeps them in step


def _alembic_config(conn: sa.Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


def _migrate(conn: sa.Connection, where: str) -> None:
    """Bring the schema to the newest Alembic revision. A catalog from before Alembic
    (a `schema_version` table at 1, the same tables as revision 0001) is stamped, not
    recreated; one from a newer vigil is refused rather than guessed at."""
    cfg = _alembic_config(conn)
    tables = set(sa.inspect(conn).get_table_names())
    if "schema_version" in tables and "alembic_version" not in tables:
        legacy = conn.execute(sa.text("select version from schema_version")).scalar()
        if legacy != 1:
            raise RepositoryError(
                f"catalog {where} has unknown schema version {legacy}: move it aside and run "
                "`vigil catalog rebuild`"
            )
        alembic_command.stamp(cfg, "0001")
        conn.execute(sa.text("drop table schema_version"))
    current = MigrationContext.configure(conn).get_current_revision()
    known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
    if current is not None and current not in known:
        raise RepositoryError(
            f"catalog {where} was written by a newer vigil (schema revision {current}, this "
            f"vigil knows up to {HEAD_REVISION}): upgrade vigil, or move the catalog aside and "
            "run `vigil catalog rebuild`"
        )
    alembic_command.upgrade(cfg, "head")


def _create_private(path: str) -> None:
    """Create the SQLite file 0600 before SQLite opens it (SQLite would use the umask,
    and its journal files copy the database file's mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if owner := owner_to_match(Path(path)):  # root in the service user's repository;
        os.fchown(fd, *owner)  # SQLite gives its journals the database file's owner
    os.close(fd)
    os.chmod(path, 0o600)  # an existing file from an older vigil may be wider


class Catalog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, url_or_path: str | Path) -> Catalog:
        """A path means SQLite via aiosqlite; a string containing '://' is an SQLAlchemy URL."""
        s = str(url_or_path)
        url = s if "://" in s else f"sqlite+aiosqlite:///{s}"
        if "://" not in s:
            await anyio.to_thread.run_sync(_create_private, s)
        engine = create_async_engine(url)
        where = s if "://" not in s else engine.url.render_as_string(hide_password=True)
        # Several vigil processes may open a new catalog at once (two backups started
        # together): the schema migration must run in one of them only, or the others fail
        # with "table already exists". SQLite's own locking does not cover DDL checks.
        lock = FileLock(Path(s + ".migrate-lock"), exclusive=True) if "://" not in s else None
        try:
            if lock is not None:
                await anyio.to_thread.run_sync(lock.acquire, 120.0)
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(_migrate, where)
            finally:
                if lock is not None:
                    lock.release()
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    @classmethod
    async def for_repository(cls, repo: Repository) -> Catalog:
        return await cls.open(repo.root / "catalog.db")

    async def close(self) -> None:
        await self.engine.dispose()

    async def record_point(self, m: Manifest) -> None:
        async with self.engine.begin() as conn:
            await _insert_point(conn, m)

    async def mark_pruned(self, point_id: str, reason: str, when: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                points.update()
                .where(points.c.point_id == point_id)
                .values(status="pruned", pruned_at=when, prune_reason=reason)
            )

    async def record_job(self, job_id: str, kind: str, started_at: datetime, **fields: Any) -> None:
        """Insert or update a job row (vm_key, finished_at, outcome, message, point_id)."""
        async with self.engine.begin() as conn:
            exists = await conn.scalar(sa.select(jobs.c.job_id).where(jobs.c.job_id == job_id))
            if exists:
                await conn.execute(jobs.update().where(jobs.c.job_id == job_id).values(**fields))
            else:
                await conn.execute(
                    jobs.insert().values(job_id=job_id, kind=kind, started_at=started_at, **fields)
                )

    async def points(self, vm_key: str | None = None, status: str = "committed") -> list[dict]:
        q = sa.select(points).where(points.c.status == status).order_by(points.c.point_id)
        if vm_key:
            q = q.where(points.c.vm_key == vm_key)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]

    async def disks(self, point_id: str) -> list[dict]:
        q = sa.select(disks).where(disks.c.point_id == point_id).order_by(disks.c.disk_key)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]

    async def vm_history(self, vm_key: str) -> list[dict]:
        q = sa.select(vm_names).where(vm_names.c.vm_key == vm_key).order_by(vm_names.c.first_seen)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]

    async def known_heads(self) -> dict[str, int]:
        """vm key -> newest seq ever committed: verify() uses it to detect rollback."""
        q = sa.select(points.c.vm_key, sa.func.max(points.c.seq)).group_by(points.c.vm_key)
        async with self.engine.connect() as conn:
            return {k: int(v) for k, v in await conn.execute(q)}

    async def rebuild(self, repo: Repository) -> tuple[int, int]:
        """Recreate VMs, points and disks from the repository; returns (live, pruned)."""

        def load() -> tuple[list[Manifest], list[Tombstone]]:
            return repo.manifests(), repo.tombstones()

        manifests, tombs = await anyio.to_thread.run_sync(load)
        # A delete interrupted between its tombstone and the manifest's removal leaves both:
        # the tombstone records the decision (the next prune finishes it), so it wins.
        gone = {t.point_id for t in tombs}
        manifests = [m for m in manifests if m.point_id not in gone]
        async with self.engine.begin() as conn:
            for t in (disks, points, vm_names, vms):
                await conn.execute(t.delete())
            # Oldest first, so the name history's first/last seen come out right.
            events: list[Manifest | Tombstone] = [*manifests, *tombs]
            for e in sorted(events, key=lambda e: e.committed_at):
                if isinstance(e, Manifest):
                    await _insert_point(conn, e)
                    continue
                await _upsert_vm(conn, e.vm, e.committed_at)
                await conn.execute(
                    points.insert().values(
                        point_id=e.point_id,
                        vm_key=e.vm_key,
                        seq=e.seq,
                        manifest_hash=e.manifest_hash,
                        committed_at=e.committed_at,
                        status="pruned",
                        pruned_at=e.deleted_at,
                        prune_reason=e.reason,
                    )
                )
        return len(manifests), len(tombs)


async def _upsert_vm(conn: AsyncConnection, vm: VmIdentity, when: datetime) -> None:
    row = await conn.scalar(sa.select(vms.c.vm_key).where(vms.c.vm_key == vm.key))
    if row is None:
        await conn.execute(
            vms.insert().values(
                vm_key=vm.key,
                vcenter_uuid=vm.vcenter_uuid,
                instance_uuid=vm.instance_uuid,
                first_seen=when,
                last_seen=when,
            )
        )
    else:
        await conn.execute(
            vms.update()
            .where(vms.c.vm_key == vm.key)
            .values(last_seen=sa.func.max(vms.c.last_seen, when))
        )
    name_match = sa.and_(
        vm_names.c.vm_key == vm.key,
        vm_names.c.name == vm.name,
        vm_names.c.path == vm.path,
        vm_names.c.moref == vm.moref,
    )
    if await conn.scalar(sa.select(sa.func.count()).where(name_match)):
        await conn.execute(vm_names.update().where(name_match).values(last_seen=when))
    else:
        await conn.execute(
            vm_names.insert().values(
                vm_key=vm.key,
                name=vm.name,
                path=vm.path,
                moref=vm.moref,
                first_seen=when,
                last_seen=when,
            )
        )


async def _insert_point(conn: AsyncConnection, m: Manifest) -> None:
    vm = m.vm
    await _upsert_vm(conn, vm, m.committed_at)
    await conn.execute(
        points.insert().values(
            point_id=m.point_id,
            vm_key=vm.key,
            seq=m.seq,
            policy=m.policy,
            job_id=m.job_id,
            started_at=m.started_at,
            finished_at=m.finished_at,
            committed_at=m.committed_at,
            manifest_hash=m.hash,
            status="committed",
        )
    )
    rows: list[dict[str, Any]] = [
        {
            "point_id": m.point_id,
            "disk_key": d.key,
            "capacity": d.capacity,
            "index_id": d.index_id,
            "change_id": d.change_id,
            "transport": d.transport,
            "base_name": d.base_name,
            "backing": d.backing,
            "provisioning": d.provisioning,
            "skipped_reason": None,
        }
        for d in m.disks
    ]
    rows += [
        {"point_id": m.point_id, "disk_key": s.key, "skipped_reason": s.reason}
        for s in m.skipped_disks
    ]
    if rows:
        await conn.execute(disks.insert(), _fill(rows))


def _fill(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    cols = [c.name for c in disks.columns]
    return [{c: r.get(c) for c in cols} for r in rows]
