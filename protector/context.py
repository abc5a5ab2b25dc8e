"""What a backup or restore needs, opened once: the session, the repository, the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import structlog

from protector.config import Config
from repository import LocalState, Repository
from watcher.session import Session

log = structlog.get_logger(__name__)


@dataclass
class Context:
    cfg: Config
    session: Session
    repo: Repository
    catalog: LocalState | None = None
    io_threads: int = 8
    io_limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(8))
    datacenter_of: dict[str, str] = field(default_factory=dict)  # datastore moref → dc path

    @classmethod
    def create(
        cls,
        cfg: Config,
        session: Session,
        repo: Repository,
        catalog: LocalState | None,
        *,
        io_limiter: anyio.CapacityLimiter | None = None,
    ) -> Context:
        """`io_limiter`: share one across concurrent jobs (the daemon) so the process as a
        whole runs at most `limits.io_threads` disk I/O threads; default, one of its own."""
        n = cfg.limits.io_threads
        return cls(cfg, session, repo, catalog, n, io_limiter or anyio.CapacityLimiter(n))

    async def record_point(self, point_id: str) -> None:
        """Mirror a committed point into the catalog (the manifest is the truth)."""
        if self.catalog is None:
            return
        manifest = await anyio.to_thread.run_sync(self.repo.load_manifest, point_id)
        try:
            await self.catalog.record_point(manifest)
        except Exception as exc:  # the point is committed; the catalog can be rebuilt
            log.error(
                "catalog.record_failed",
                point=point_id,
                error=str(exc),
                next_step="run `vigil catalog rebuild`",
            )
