"""The vCenter session the jobs share. The watcher has its own and logs it out whenever its
update loop fails; the jobs share this second one, whose cookie the disk readers (datastore
HTTP, VDDK) carry for the whole read, so a watcher hiccup never cuts a backup off mid-disk."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from protector.config import Config
from protector.vcenters import VcenterNames
from protector.vsphere.connect import connect_session
from watcher.session import Session
from watcher.soap import VsphereConnectionError

log = structlog.get_logger(__name__)


class JobSessions:
    """The sessions of one vCenter (`cfg.vcenter`); each login tells `names` which
    vCenter instance uuid that configured name stands for."""

    def __init__(self, cfg: Config, names: VcenterNames | None = None) -> None:
        self.cfg = cfg
        self.names = names
        self.current: Session | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> Session:
        """A new session (the watcher's): connect_session closes the HTTP client of a failed
        attempt, as the watcher retries for as long as vCenter is away."""
        return self._learn(await connect_session(self.cfg))

    def _learn(self, session: Session) -> Session:
        if self.names is not None:
            self.names.learn(session.vcenter_uuid, self.cfg.vcenter.name)
        return session

    async def session_for(self, identity: str) -> Session:
        """The jobs' session for a VM: this one vCenter's (VcenterSet routes by VM)."""
        return await self.session()

    async def session(self) -> Session:
        """The jobs' session: logged in on first use, re-logged in by Session itself when
        it expires. While vCenter is unreachable this keeps trying with backoff (the job
        waits, it does not fail for an outage)."""
        async with self._lock:
            delay = 1.0
            while self.current is None:
                try:
                    session = await connect_session(self.cfg)
                except VsphereConnectionError as exc:
                    log.info("daemon.jobs_session_waiting", error=str(exc), retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                self.current = self._learn(session)
            return self.current

    async def close(self) -> None:
        if self.current is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.current.close()
