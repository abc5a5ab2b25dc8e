"""The backup snapshot's lifecycle: clean leftovers, create (quiesced if possible), always remove.

Our snapshots carry one fixed name so that a run after a crash recognises and
removes what a killed run left behind (the seed: delete leftover snapshots first).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pyVmomi import vim

from protector.parallel import shielded, to_the_end
from protector.phases import REMOVING_AFTER_INTERRUPT, announce
from watcher.inventory import retrieve_objects
from watcher.session import Session
from watcher.soap import VsphereConnectionError, VsphereError, VsphereFault
from watcher.tasks import wait_for_task

log = structlog.get_logger(__name__)

SNAPSHOT_NAME = "vigil-backup"
# Faults that mean "quiescing did not work here", as opposed to "no snapshot at all".
QUIESCE_FAULTS = {
    "ApplicationQuiesceFault",
    "QuiesceDatastoreIOForHAFailed",
    "ToolsUnavailable",
    "ToolsInstallationInProgress",
    "SnapshotFault",
    "SystemError",
}


@dataclass
class Snapshot:
    ref: Any
    consistency: str  # "quiesced" or "crash"
    quiesce_error: str = ""
    # Why the snapshot is still on the VM after the backup ("" once removed): the admin is
    # told, and the next backup (or the retry once vCenter answers) removes it.
    left_behind: str = ""


def walk_snapshots(tree: list[Any] | None) -> Iterator[Any]:
    for node in tree or []:
        yield node
        yield from walk_snapshots(node.childSnapshotList)


OWNER = re.compile(r"owner=(?P<host>[^\s;:]+):(?P<pid>\d+)")
# Another backup host's snapshot is only taken for a leftover when no backup could still
# be reading it.
FOREIGN_STALE_AFTER = timedelta(hours=24)


def snapshot_description(job_id: str) -> str:
    """Names the process that owns the snapshot, so no other vigil removes it mid-backup."""
    return (
        f"vigil backup job {job_id}; owner={socket.gethostname()}:{os.getpid()}; "
        "temporary, removed automatically"
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_leftover(tree_node: Any, now: datetime) -> bool:
    """Whether one of our snapshots is left over from a run that is gone.

    Ours on this host: leftover when its process is dead — or is this process, which runs
    one backup per VM at a time. Another host's: only once it is a day old. Without an owner
    (made by hand or by an older vigil): leftover."""
    m = OWNER.search(tree_node.description or "")
    if m is None:
        return True
    if m["host"] == socket.gethostname():
        pid = int(m["pid"])
        return pid == os.getpid() or not pid_alive(pid)
    created = tree_node.createTime
    return created is None or now - created > FOREIGN_STALE_AFTER


def leftovers_in(info: Any, now: datetime) -> list[Any]:
    """The leftovers in one VM's `snapshot` property (a VirtualMachineSnapshotInfo or None):
    the one rule both the per-VM cleanup (before a backup) and the inventory-wide scan (at
    daemon start) apply."""
    if info is None:
        return []
    return [
        n.snapshot
        for n in walk_snapshots(info.rootSnapshotList)
        if n.name == SNAPSHOT_NAME and is_leftover(n, now)
    ]


_UNREAD: Any = object()


async def leftover_snapshots(session: Session, vm: Any, snapshot_info: Any = _UNREAD) -> list[Any]:
    """`snapshot_info`: the VM's `snapshot` property when the caller has just read it."""
    if snapshot_info is _UNREAD:
        snapshot_info = (await session.properties(vm, ["snapshot"])).get("snapshot")
    return leftovers_in(snapshot_info, datetime.now(UTC))


async def remove_leftovers_everywhere(session: Session) -> list[str]:
    """After a crash, our snapshots may still exist on VMs whose points are fresh (and so
    get no job soon): find them all in one PropertyCollector read and remove them. Returns
    one line per snapshot that could not be removed (one stuck snapshot does not keep the
    others; the VM's next backup tries again, as it removes leftovers first)."""
    objs = await retrieve_objects(session, {vim.VirtualMachine: ["snapshot"]})
    now = datetime.now(UTC)
    failed: list[str] = []
    for oc in objs:
        for prop in oc.propSet or []:
            if prop.name != "snapshot":
                continue
            for snap in leftovers_in(prop.val, now):
                log.warning("daemon.leftover_snapshot", vm=oc.obj._moId)
                try:
                    await remove_snapshot(session, session.client.bind(snap))
                except VsphereError as exc:
                    log.error(
                        "daemon.leftover_snapshot_not_removed",
                        vm=oc.obj._moId,
                        error=str(exc),
                        next_step="the VM's next backup retries; else remove it "
                        "in the vSphere client",
                    )
                    failed.append(f"leftover snapshot on {oc.obj._moId} not removed: {exc}")
    return failed


async def remove_snapshot(session: Session, snapshot: Any) -> None:
    task = await session.call(
        snapshot, "RemoveSnapshot_Task", removeChildren=False, consolidate=True
    )
    await wait_for_task(session, task, timeout=3600, description=f"remove {snapshot._moId}")


async def remove_leftovers(session: Session, vm: Any, snapshot_info: Any = _UNREAD) -> int:
    """Remove snapshots a crashed run left; returns how many. `snapshot_info`: the VM's
    `snapshot` property when the caller has just read it (one round trip fewer)."""
    removed = 0
    for snap in await leftover_snapshots(session, vm, snapshot_info):
        log.warning("backup.leftover_snapshot_removed", vm=vm._moId, snapshot=snap._moId)
        try:
            await remove_snapshot(session, snap)
        except VsphereFault as exc:
            # Gone meanwhile (a background retry of its own run removed it): that is the goal.
            if exc.fault_type != "ManagedObjectNotFound":
                raise
        removed += 1
    return removed


# Removals that failed because vCenter could not be reached, retried in the background
# (strong references: the event loop keeps only weak ones to tasks).
_retries: set[asyncio.Task[None]] = set()
RETRY_FIRST_DELAY = 1.0
RETRY_MAX_DELAY = 30.0
RETRY_GIVE_UP = 24 * 3600.0  # then the VM's next backup (or a daemon restart) removes it


def remove_when_reachable(session: Session, vm: Any, snapshot: Any) -> None:
    """Keep trying to remove `snapshot` until vCenter answers: a snapshot whose removal met
    an outage must not wait for the VM's next backup, a whole RPO away, while its delta
    grows on the datastore. Lives as long as the event loop (the daemon); a process that
    ends first (the CLI) leaves it to the next run, which removes leftovers first."""
    task = asyncio.get_running_loop().create_task(_remove_with_retries(session, vm, snapshot))
    _retries.add(task)
    task.add_done_callback(_retries.discard)


async def _remove_with_retries(session: Session, vm: Any, snapshot: Any) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + RETRY_GIVE_UP
    delay = RETRY_FIRST_DELAY
    attempt = 0
    while True:
        await asyncio.sleep(delay)
        attempt += 1
        try:
            await remove_snapshot(session, snapshot)
        except VsphereConnectionError as exc:
            if loop.time() < give_up:
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            _left_for_next_backup(log.error, "failed", vm, snapshot, str(exc), attempts=attempt)
        except VsphereFault as exc:
            # ManagedObjectNotFound: removed meanwhile, by vCenter finishing our first try
            # or by a backup.
            if exc.fault_type != "ManagedObjectNotFound":
                _left_for_next_backup(log.error, "failed", vm, snapshot, str(exc))
        except Exception as exc:  # e.g. the session was closed: the next run takes over
            _left_for_next_backup(log.warning, "retry_stopped", vm, snapshot, repr(exc))
        else:
            log.warning(
                "backup.snapshot_removed_late",
                vm=vm._moId,
                snapshot=snapshot._moId,
                attempts=attempt,
                reason="vCenter was unreachable when the backup ended",
            )
        return


def _left_for_next_backup(
    emit: Any, what: str, vm: Any, snapshot: Any, error: str, **extra: Any
) -> None:
    emit(
        f"backup.snapshot_remove_{what}",
        vm=vm._moId,
        snapshot=snapshot._moId,
        error=error,
        **extra,
        next_step="the next backup of this VM removes it",
    )


async def create_snapshot(
    session: Session,
    vm: Any,
    *,
    quiesce: bool,
    fallback: bool,
    description: str,
    retries: int = 1,
) -> Snapshot:
    """Create our snapshot: quiesced (retried once), then crash-consistent when allowed."""
    attempts = [True] * (1 + retries) if quiesce else []
    last_error = ""
    for _ in attempts:
        try:
            ref = await _snapshot(session, vm, description, quiesce=True)
            return Snapshot(ref, "quiesced")
        except VsphereFault as exc:
            if exc.fault_type not in QUIESCE_FAULTS:
                raise
            last_error = str(exc)
            log.warning("backup.quiesce_failed", vm=vm._moId, error=last_error)
    if quiesce and not fallback:
        raise VsphereFault(
            "QuiesceFailed",
            f"VM {vm._moId}: a quiesced snapshot failed {len(attempts)} times (last: "
            f'{last_error}) and the policy\'s backup.on_quiesce_failure is "fail", so no '
            "crash-consistent snapshot was taken; fix quiescing in the guest (VMware Tools, "
            'VSS writers) or set on_quiesce_failure = "crash-consistent"',
        )
    ref = await _snapshot(session, vm, description, quiesce=False)
    return Snapshot(ref, "crash", last_error)


async def _snapshot(session: Session, vm: Any, description: str, *, quiesce: bool) -> Any:
    announce(f"creating the snapshot ({'quiesced' if quiesce else 'crash-consistent'})")
    task = await session.call(
        vm,
        "CreateSnapshot_Task",
        name=SNAPSHOT_NAME,
        description=description,
        memory=False,
        quiesce=quiesce,
    )
    # Cancelled while vCenter still creates it, the snapshot would outlive us: wait for the
    # task to end regardless, then remove what it made, then let the cancellation through.
    waiter, cancelled = await to_the_end(
        wait_for_task(session, task, timeout=3600, description=f"snapshot {vm._moId}")
    )
    if cancelled:
        # Cancelled while the task ran: whatever became of it, the cancellation goes on (a
        # fault here must not reach the quiesce retry / fallback, which would carry on).
        fault = waiter.exception()
        if fault is None:
            await _remove_surely(session, vm, session.client.bind(waiter.result()))
        else:
            log.info("backup.snapshot_failed_while_cancelled", vm=vm._moId, error=str(fault))
        raise asyncio.CancelledError()
    return session.client.bind(waiter.result())  # raises the task's fault, if any


@contextlib.asynccontextmanager
async def backup_snapshot(
    session: Session, vm: Any, *, quiesce: bool, fallback: bool, description: str
) -> AsyncIterator[Snapshot]:
    """Create the snapshot and remove it however the block ends (error, cancellation)."""
    snap = await create_snapshot(
        session, vm, quiesce=quiesce, fallback=fallback, description=description
    )
    try:
        yield snap
    finally:
        snap.left_behind = await _remove_surely(session, vm, snap.ref)


async def _remove_surely(session: Session, vm: Any, snapshot: Any) -> str:
    """Remove the snapshot even while the caller is being cancelled (parallel.shielded: an
    anyio cancel scope or a plain Task.cancel(), as the job runner sends, repeated or not);
    a cancellation seen meanwhile is raised again afterwards. A removal that fails is
    logged, not raised: when vCenter was unreachable it is retried in the background until
    vCenter is back; when vCenter refused it, the next backup of the VM removes it."""

    current = asyncio.current_task()
    interrupted = bool(current is not None and current.cancelling())
    announce(REMOVING_AFTER_INTERRUPT if interrupted else "removing the snapshot")

    async def remove() -> str:
        try:
            await remove_snapshot(session, snapshot)
            if interrupted:
                announce("interrupted: the snapshot was removed")
            return ""
        except VsphereError as exc:
            unreachable = isinstance(exc, VsphereConnectionError)
            log.error(
                "backup.snapshot_remove_failed",
                vm=vm._moId,
                snapshot=snapshot._moId,
                error=str(exc),
                next_step="retried until vCenter answers"
                if unreachable
                else "the next backup of this VM removes it",
            )
            if unreachable:
                remove_when_reachable(session, vm, snapshot)
            return str(exc)

    return await shielded(remove())
