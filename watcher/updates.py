"""The watcher: a live InventoryTree fed by WaitForUpdatesEx, with typed events.

Lifecycle: `run()` connects (via the `connect` callable), creates its own
PropertyCollector (a private one, so other callers' filters never mix in), a
recursive ContainerView of the inventory and the filter over it (traversal.py), reads
the whole inventory (WaitForUpdatesEx from version "", all `truncated` pages), then
waits for changes with `maxWaitSeconds`, applying each update set (truncated pages
are gathered and applied as one batch).

Failures:
- connection lost / vCenter restarted: exponential backoff (0.5 s doubling, cap 30 s,
  jitter 50-100 %), a new session from `connect`, new collector and filter, and a full
  resync whose events are exactly the old-vs-new difference matched by VM identity;
- a vSphere fault from the collector (e.g. it vanished after a re-login): new
  collector and filter on the same session, full resync;
- a malformed or non-SOAP response (also a value that contradicts its xsi:type):
  logged, retried with the same version (vCenter re-delivers everything after it);
- an update the tree cannot apply, or any other unexpected exception: logged with the
  object and the update version, then a new collector and filter and a full resync
  (with backoff), so one odd object never ends the watch;
- before every new collector the old one, its filter and the view are destroyed (best
  effort), so repeated faults never pile up filters or views on vCenter; close()
  destroys them too;
- session expiry: healed inside the call (single-flight re-login).

Every `reconcile_interval` a RetrievePropertiesEx snapshot is diffed against the
tree; differences are logged as `watcher.missed_updates` and emitted. Tags are polled
from the vAPI tagging service every `tag_interval` (see tags.py).

The watcher owns the sessions `connect` returns and closes them.

Why one module of ~450 lines: `Watcher` is a single state machine (session, collector,
filter, view, version, backoff) whose methods all read and reset that state; the pure
parts already live elsewhere (tree, diff, fastparse, traversal, tags), and splitting the
loop itself would only pass its state around.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from pyVmomi import vmodl

from .events import VmEvent, event_to_json
from .fastparse import UpdateSet
from .inventory import read_field_names, read_snapshot
from .rawcall import call_parsed
from .session import Credentials, Session
from .soap import VsphereConnectionError, VsphereError, VsphereFault, VsphereProtocolError
from .tags import TagClient
from .traversal import create_inventory_view, inventory_filter_spec
from .tree import InventoryTree, ObjectUpdate, TreeUpdateError, coalesce

log = structlog.get_logger(__name__)

_STOP = object()
WaitOptions = vmodl.query.PropertyCollector.WaitOptions


class _ResyncNeeded(Exception):
    """The tree may no longer match vCenter: rebuild it from a full read."""


def _tree_failure(event: str, exc: Exception, **context: Any) -> _ResyncNeeded:
    """Log why the tree could not be brought up to date (with the object at fault when
    known); the answer is always a full resync."""
    log.exception(
        event,
        error=f"{type(exc).__name__}: {exc}",
        moref=exc.moref if isinstance(exc, TreeUpdateError) else None,
        **context,
    )
    return _ResyncNeeded(str(exc))


class Watcher:
    def __init__(
        self,
        connect: Callable[[], Awaitable[Session]],
        *,
        tag_interval: float = 60.0,
        reconcile_interval: float = 600.0,
        max_wait_seconds: int = 20,
        max_object_updates: int = 5000,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        tag_credentials: Credentials | None = None,
    ) -> None:
        self._connect = connect
        self.tag_interval = tag_interval
        self.reconcile_interval = reconcile_interval
        self.max_wait_seconds = max_wait_seconds
        self.max_object_updates = max_object_updates
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._tag_credentials = tag_credentials
        self.tree = InventoryTree()
        self.healthy = False
        self.last_update: float | None = None  # time.time() of the last good answer
        self.ready = asyncio.Event()  # set once the first complete tree is built
        self.resyncs = 0
        self.reconnects = 0
        self.bad_responses = 0
        self.missed_updates = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closing = asyncio.Event()
        self._session: Session | None = None
        self._collector: Any = None
        self._filter: Any = None
        self._view: Any = None
        self._resync_requested = False  # set by the tag poller when the tree failed
        self._tags: TagClient | None = None
        self._version = ""
        self._next_reconcile = 0.0
        self._run_task: asyncio.Task[None] | None = None
        self.stopped_by_cancel = False  # close() had to cancel run() (its wait outlived it)
        self._tag_task: asyncio.Task[None] | None = None

    # -- public ------------------------------------------------------------------

    async def events(self) -> AsyncIterator[VmEvent]:
        """The event stream (single consumer); ends after close()."""
        while True:
            item = await self._queue.get()
            if item is _STOP:
                return
            yield item

    async def run(self) -> None:
        """Watch until close(). Never raises on vCenter trouble; it retries."""
        self._run_task = asyncio.current_task()
        self._tag_task = asyncio.create_task(self._poll_tags(), name="watcher-tags")
        attempt = 0
        try:
            while not self._closing.is_set():
                session = None
                try:
                    session = await self._ensure_session()
                    if self._collector is None or self._resync_requested:
                        await self._resync(session)
                    attempt = 0
                    await self._follow(session)
                except VsphereConnectionError as exc:
                    if self._closing.is_set():
                        break
                    self.healthy = False
                    log.warning("watcher.connection_lost", error=str(exc), attempt=attempt)
                    await self._drop_session()
                except VsphereFault as exc:
                    if self._closing.is_set():
                        break
                    self.healthy = False
                    log.warning("watcher.collector_fault", error=str(exc), attempt=attempt)
                    await self._discard_collector(session)  # new ones + full resync
                except VsphereError as exc:
                    if self._closing.is_set():
                        break
                    self.healthy = False
                    log.warning("watcher.error", error=str(exc), attempt=attempt)
                    await self._drop_session()
                except _ResyncNeeded:  # already logged with its context
                    self.healthy = False
                    await self._discard_collector(session)
                except Exception as exc:
                    # A bug or an answer of a shape nobody expected: the watch must go
                    # on, from a clean full read.
                    if self._closing.is_set():
                        break
                    self.healthy = False
                    log.exception(
                        "watcher.unexpected_error",
                        error=f"{type(exc).__name__}: {exc}",
                        moref=getattr(exc, "moref", None),
                        attempt=attempt,
                    )
                    await self._discard_collector(session)
                await self._backoff(attempt)
                attempt += 1
        except asyncio.CancelledError:
            if not self._closing.is_set():
                raise
            # close() cut short a wait that started just as it sent CancelWaitForUpdates:
            # the stop it asked for, not an error for whoever awaits run().
            self.stopped_by_cancel = True
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            self.healthy = False
            self._queue.put_nowait(_STOP)

    async def close(self) -> None:
        """Stop watching: cancels the pending WaitForUpdatesEx so run() ends within a few
        seconds. 2 s for each step, not less: on a loaded host vCenter's answer to
        CancelWaitForUpdates can take longer than a fraction of a second, and cancelling the
        task instead ends the wait uncleanly."""
        if self._closing.is_set():
            return
        self._closing.set()
        session, collector = self._session, self._collector
        if session is not None and collector is not None:
            with contextlib.suppress(VsphereError, TimeoutError):
                await session.call(collector, "CancelWaitForUpdates", timeout=2.0)
        task = self._run_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            done, _ = await asyncio.wait({task}, timeout=2.0)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._tag_task is not None:
            self._tag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tag_task
        await self._drop_session()
        if task is None:
            self._queue.put_nowait(_STOP)

    @property
    def lag_seconds(self) -> float | None:
        """Seconds since vCenter last answered the update loop (None before the first)."""
        return None if self.last_update is None else time.time() - self.last_update

    # -- sessions ----------------------------------------------------------------

    async def _ensure_session(self) -> Session:
        if self._session is None:
            self._session = await self._connect()
            self._collector = None
            self.reconnects += 1
            if self.tag_interval > 0:
                creds = self._tag_credentials or self._session.credentials
                if creds is not None:
                    self._tags = TagClient(self._session.endpoint, creds.user, creds.password)
        return self._session

    async def _drop_session(self) -> None:
        session, self._session = self._session, None
        collector, self._collector = self._collector, None
        tags, self._tags = self._tags, None
        if tags is not None:
            with contextlib.suppress(VsphereError):
                async with asyncio.timeout(2):
                    await tags.close()
        if session is None:
            return
        self._collector = collector
        await self._discard_collector(session)
        with contextlib.suppress(VsphereError, TimeoutError):
            async with asyncio.timeout(5):
                await session.close()

    async def _discard_collector(self, session: Session | None) -> None:
        """Destroy our filter, view and collector (best effort: they may be gone already)."""
        collector, self._collector = self._collector, None
        flt, self._filter = self._filter, None
        view, self._view = self._view, None
        if session is None:
            return
        for mo, method in (
            (flt, "DestroyPropertyFilter"),
            (view, "DestroyView"),
            (collector, "DestroyPropertyCollector"),
        ):
            if mo is None:
                continue
            try:
                await session.call(mo, method, timeout=2)
            except (VsphereConnectionError, TimeoutError):
                return  # vCenter is away; its restart or the session's end cleans up
            except VsphereError as exc:
                # NotFound (e.g. after a re-login) is the normal case, not worth a warning.
                if not (isinstance(exc, VsphereFault) and exc.fault_type.endswith("NotFound")):
                    log.info("watcher.destroy_failed", method=method, error=str(exc))

    async def _backoff(self, attempt: int) -> None:
        delay = min(self.backoff_cap, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()

    # -- the update loop -----------------------------------------------------------

    async def _resync(self, session: Session) -> None:
        """New collector + filter, a complete read, and the diff against the old tree."""
        self.healthy = False
        self._resync_requested = False
        await self._discard_collector(session)
        # Three independent calls at once (one round trip, not three); whatever was
        # made is kept for _discard_collector even when another of them failed.
        collector, view, names = await asyncio.gather(
            session.call(session.content.propertyCollector, "CreatePropertyCollector"),
            create_inventory_view(session),
            read_field_names(session),
            return_exceptions=True,
        )
        if not isinstance(collector, BaseException):
            self._collector = session.client.bind(collector)
        if not isinstance(view, BaseException):
            self._view = view
        for outcome in (collector, view, names):
            if isinstance(outcome, BaseException):
                raise outcome
        self._filter = session.client.bind(
            await session.call(
                self._collector,
                "CreateFilter",
                spec=inventory_filter_spec(session.content.rootFolder, self._view),
                partialUpdates=False,
            )
        )
        fresh = InventoryTree(session.vcenter_uuid, names)  # type: ignore[arg-type]
        updates, version = await self._wait(session, "", 0)
        fresh.apply(updates)
        # After the tree: tags are read for its VMs (list-attached-tags-on-objects).
        tags = await self._read_tags(fresh)
        if tags is not None:
            fresh.set_tags(tags)
        events = self.tree.sync_to(fresh, take_tags=tags is not None)
        self._version = version
        self.resyncs += 1
        self._next_reconcile = time.monotonic() + self.reconcile_interval
        self._mark_alive()
        log.info(
            "watcher.synced",
            vms=len(self.tree),
            objects=self.tree.object_count,
            events=len(events),
            resync=self.resyncs,
        )
        self._emit(events)
        self.ready.set()

    async def _follow(self, session: Session) -> None:
        errors = 0
        while not self._closing.is_set():
            if self._resync_requested:
                raise _ResyncNeeded("requested")
            if self.reconcile_interval > 0 and time.monotonic() >= self._next_reconcile:
                await self._reconcile(session)
                if self._closing.is_set():
                    return  # close() cancelled no wait while we reconciled: do not start one
            try:
                updates, version = await self._wait(session, self._version, self.max_wait_seconds)
            except VsphereProtocolError as exc:
                # The update set is lost, the version did not advance: ask again.
                self.bad_responses += 1
                errors += 1
                log.warning("watcher.bad_response", error=str(exc), retry=errors)
                await self._backoff(min(errors - 1, 6))
                continue
            errors = 0
            self._mark_alive()
            if updates:
                self._apply(updates, version)
            self._version = version

    def _apply(self, updates: list[ObjectUpdate], version: str) -> None:
        """Apply one update set; one that fails is logged with its context and answered
        by a full resync (the tree's VMs are unchanged, its objects may not be)."""
        try:
            events = self.tree.apply(updates)
        except Exception as exc:
            raise _tree_failure(
                "watcher.apply_failed", exc, version=version, objects=len(updates)
            ) from exc
        self._emit(events)

    async def _wait(
        self, session: Session, version: str, max_wait: int
    ) -> tuple[list[ObjectUpdate], str]:
        """One WaitForUpdatesEx, plus every `truncated` continuation page."""
        opts = WaitOptions(maxWaitSeconds=max_wait, maxObjectUpdates=self.max_object_updates)
        updates: list[ObjectUpdate] = []
        while True:
            result = await call_parsed(
                session,
                self._collector,
                "WaitForUpdatesEx",
                version=version,
                options=opts,
                timeout=max_wait + session.endpoint.request_timeout,
            )
            if not isinstance(result, UpdateSet):
                return updates, version
            updates.extend(coalesce(result.updates))
            version = result.version
            if not result.truncated:
                return updates, version
            opts = WaitOptions(maxWaitSeconds=0, maxObjectUpdates=self.max_object_updates)

    async def _reconcile(self, session: Session) -> None:
        self._next_reconcile = time.monotonic() + self.reconcile_interval
        # Drain what is already queued so only truly missed changes show up.
        updates, version = await self._wait(session, self._version, 0)
        if updates:
            self._apply(updates, version)
        self._version = version
        snapshot = await read_snapshot(session, view=self._view)
        try:
            events = self.tree.sync_to(snapshot)
        except Exception as exc:
            raise _tree_failure("watcher.reconcile_failed", exc) from exc
        if events:
            self.missed_updates += len(events)
            log.warning(
                "watcher.missed_updates",
                count=len(events),
                events=[event_to_json(e) for e in events[:20]],
            )
            self._emit(events)
        else:
            log.info("watcher.reconciled", vms=len(self.tree))

    # -- tags ----------------------------------------------------------------------

    async def _read_tags(self, tree: InventoryTree) -> dict[str, frozenset[str]] | None:
        if self._tags is None:
            return None
        try:
            return await self._tags.vm_tags(vm.moref for vm in tree.vms())
        except VsphereError as exc:
            log.warning("watcher.tags_unreadable", error=str(exc))
            return None
        except Exception as exc:  # tags are optional: never let them stop a resync
            log.exception("watcher.tags_unreadable", error=f"{type(exc).__name__}: {exc}")
            return None

    async def _poll_tags(self) -> None:
        if self.tag_interval <= 0:
            return
        await self.ready.wait()
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tag_interval):
                    await self._closing.wait()
            session = self._session
            if self._closing.is_set() or session is None or not self.healthy:
                continue
            try:
                tags = await self._read_tags(self.tree)
                if tags is not None and self._session is session:
                    self._emit(self.tree.set_tags(tags))
                names = await read_field_names(session)
                if names and self._session is session:
                    self._emit(self.tree.set_field_names(names))
            except Exception as exc:  # a poller bug must not end tag tracking for good
                log.exception(
                    "watcher.tag_poll_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    moref=exc.moref if isinstance(exc, TreeUpdateError) else None,
                )
                # The tree may be half-updated: the update loop rebuilds it.
                self._resync_requested = True

    # -- helpers -------------------------------------------------------------------

    def _mark_alive(self) -> None:
        self.healthy = True
        self.last_update = time.time()

    def _emit(self, events: list[VmEvent]) -> None:
        for event in events:
            self._queue.put_nowait(event)


__all__ = ["Watcher"]
