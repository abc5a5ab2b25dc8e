"""The `Notifier` the daemon composes: its one-line hooks turn what happened into events
(events.py groups and rate-limits them) and a background task delivers the due messages
through Apprise (https://github.com/caronc/apprise), one library for e-mail, Slack, Teams,
Matrix, webhooks and ~100 more. Delivery never blocks or fails the daemon: a receiver that
is down is logged and the message dropped (the status page still has it all)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from protector.notify.events import Batcher, Event, Kind, Message

if TYPE_CHECKING:
    from protector.config import NotifyConfig

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, cfg: NotifyConfig | None, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.enabled = bool(cfg and cfg.enabled)
        self.batcher = Batcher(
            window=cfg.group_window if cfg else 30.0,
            min_interval=cfg.min_interval if cfg else 300.0,
        )
        self.status_url = cfg.status_url if cfg else ""
        self._clock = clock
        self._wake = asyncio.Event()
        self._apprise: object | None = None
        self.sent: list[Message] = []  # what was delivered (status page, tests)

    # -- hooks (one line each in the daemon) ------------------------------------------

    def report(self, kind: Kind, subject: str, detail: str = "") -> None:
        if not self.enabled:
            return
        self.batcher.add(Event(kind, subject, detail), self._clock())
        self._wake.set()

    def failing(self, vm: str, error: str) -> None:
        self.report(Kind.FAILING, vm, error)

    def succeeded(self, vm: str) -> None:
        self.report(Kind.RECOVERED, vm, "backed up again")

    def breaches(self, breached: dict[str, str]) -> None:
        """The VMs now past their RPO (name → how long); ones that left the set and were
        not reported failing count as recovered."""
        for vm in [v for v, kinds in self.batcher.trouble.items() if Kind.RPO_BREACH in kinds]:
            if vm not in breached:
                if self.batcher.trouble[vm] == {Kind.RPO_BREACH}:
                    self.report(Kind.RECOVERED, vm, "back within its RPO")
                else:
                    self.batcher.clear(vm, Kind.RPO_BREACH)
        for vm, detail in breached.items():
            if Kind.RPO_BREACH not in self.batcher.trouble.get(vm, set()):
                self.report(Kind.RPO_BREACH, vm, detail)

    # -- delivery ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Read the URLs and load them into Apprise at start, so a missing secret or a URL
        Apprise does not know stops `vigil watch` with the key at fault, not at 3 a.m."""
        if self.enabled:
            self._client()

    def _client(self) -> object:
        if self._apprise is None:
            import apprise  # imported only when notifications are configured

            from protector.config import ConfigError

            assert self.cfg is not None
            ap, bad = apprise.Apprise(), []
            for i, url in enumerate(self.cfg.urls()):
                if not ap.add(url):
                    # Never the URL itself in the message: it usually holds a secret.
                    bad.append(
                        f"notify: URL #{i + 1} ({url.partition(':')[0]}://…) is not one "
                        "Apprise can use; see https://github.com/caronc/apprise/wiki"
                    )
            if bad:
                raise ConfigError(self.cfg.config_path, bad)
            self._apprise = ap
        return self._apprise

    async def send(self, msg: Message) -> bool:
        ap = self._client()
        ok = bool(
            await ap.async_notify(  # type: ignore[attr-defined]
                title=msg.title, body=msg.body, notify_type=msg.severity
            )
        )
        if ok:
            self.sent.append(msg)
            log.info("notify.sent", kind=str(msg.kind), title=msg.title)
        else:
            log.warning("notify.not_delivered", kind=str(msg.kind), title=msg.title)
        return ok

    async def flush(self) -> int:
        """Send what is due now; the number of messages."""
        due = self.batcher.due(self._clock(), self.status_url)
        for msg in due:
            try:
                await self.send(msg)
            except Exception as exc:  # a notification must never take the daemon down
                log.warning("notify.failed", kind=str(msg.kind), error=repr(exc))
        return len(due)

    async def run(self, stopping: asyncio.Event) -> None:
        """The background task: sleep until the next message is due or an event arrives."""
        if not self.enabled:
            return
        while not stopping.is_set():
            await self.flush()
            self._wake.clear()
            nxt = self.batcher.next_wakeup(self._clock())
            delay = 3600.0 if nxt is None else max(0.5, nxt - self._clock())
            try:
                async with asyncio.timeout(min(delay, 3600.0)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def watch_breaches(
        self,
        breached: Callable[[], dict[str, str]],
        ready: asyncio.Event,
        stopping: asyncio.Event,
        every: float = 60.0,
    ) -> None:
        """Poll the VMs past their RPO (a breach is the passing of time, not an event)."""
        if not self.enabled:
            return
        await ready.wait()
        while not stopping.is_set():
            self.breaches(breached())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await stopping.wait()
