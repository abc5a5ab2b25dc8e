"""The daemon's control socket: `vigil backup VM` on the daemon's host hands its job to the
running daemon instead of doing the work itself (protocol: docs/control-socket.md).

Why: a backup the admin asks for then runs under the daemon's limits (concurrent, per
host, per datastore), shows in `vigil status` and the metrics, never races the daemon's own
job of the same VM for the snapshot, and costs no process start-up, vCenter login or key
derivation. Who may ask: the socket lives in the 0700 state directory, is made 0600, and
each connection's peer (SO_PEERCRED) must be root or the daemon's own user. What may be
asked: one backup of a VM a policy protects, nothing else; anything the daemon cannot do
here is *declined* and the command does the backup in its own process as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from protector.controlsock import MAX_PATH_BYTES, is_socket, peer_uid
from protector.daemon.jobs import JobRecord, JobRunner
from protector.vsphere.vmlookup import VmAmbiguous, VmNotFound, find_vm

log = structlog.get_logger(__name__)

PROTOCOL = 1
MAX_REQUEST = 4096  # bytes of the one request line
REQUEST_TIMEOUT = 10.0  # seconds to send it
PROGRESS_EVERY = 0.5  # seconds between progress events while the job runs
KEEPALIVE = 15.0  # an event at least this often, so the client can tell a dead daemon
SEND_TIMEOUT = 30.0  # a client that reads nothing this long is dropped (its job goes on)
_REQUEST_KEYS = {
    "v": int,
    "op": str,
    "vm": str,
    "repository": str,
    "vcenter": (str, type(None)),
    "full": bool,
}


class RequestError(ValueError):
    """A request line that is not a valid request (the reply names what is wrong)."""


@dataclass(frozen=True)
class BackupAsk:
    vm: str
    repository: str  # where the asking configuration keeps its points
    vcenter: str | None = None
    full: bool = False


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise RequestError("a request key appears twice")
    return d


def parse_request(line: bytes) -> BackupAsk:
    """One request line, checked strictly: a JSON object with exactly the known keys."""
    try:
        d = json.loads(line, object_pairs_hook=_no_duplicates)
    except RequestError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request is not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise RequestError("the request is not a JSON object")
    unknown = sorted(set(d) - set(_REQUEST_KEYS))
    if unknown:
        raise RequestError(f"unknown request keys: {', '.join(unknown)}")
    for key, kind in _REQUEST_KEYS.items():
        value = d.get(key)
        # bool is an int to isinstance: a `true` must not pass for the version number
        if key in d and not (
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        ):
            raise RequestError(f"request key {key!r} has the wrong type")
    if d.get("v") != PROTOCOL:
        raise RequestError(f"protocol version {d.get('v')!r}; this daemon speaks {PROTOCOL}")
    if d.get("op") != "backup":
        raise RequestError(f'unknown op {d.get("op")!r}; the one op is "backup"')
    vm = d.get("vm")
    if not isinstance(vm, str) or not vm.strip() or len(vm) > 1024:
        raise RequestError("request key 'vm' must name a VM (1 to 1024 characters)")
    repository = d.get("repository")
    if not isinstance(repository, str) or not repository:
        raise RequestError("request key 'repository' must name the client's repository")
    vcenter = d.get("vcenter")
    if vcenter == "":
        raise RequestError("request key 'vcenter' must name a vCenter, or be null")
    return BackupAsk(vm=vm, repository=repository, vcenter=vcenter, full=bool(d.get("full")))


class _Dropped(Exception):
    """The awaited job will not run: dropped from the queue before it started (the VM was
    deleted or left every policy, or the daemon is stopping)."""


class ControlServer:
    def __init__(self, daemon: Any, path: Path) -> None:
        self.daemon = daemon
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._lock_fd: int | None = None
        self._inode: tuple[int, int] | None = None  # of our socket: unlinked only if ours
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        # vm key -> [(job id, future of the first record of that VM with a larger id)]
        self._waiters: dict[str, list[tuple[int, asyncio.Future[JobRecord]]]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> bool:
        """Serve, unless the path cannot be a socket here (too long, a file that is not a
        socket, another daemon serving it): then `vigil backup` runs jobs itself, as it
        always could, and the reason is logged."""
        path = self.path
        if len(os.fsencode(path)) > MAX_PATH_BYTES:
            return self._not_served("its path is longer than a Unix socket path may be")
        # Who serves the socket is decided by a lock held for the daemon's life: a socket
        # found there without the lock was left by a daemon that died, and is replaced.
        lock = path.with_name(path.name + ".lock")
        try:
            # The state directory may not exist yet on a first start (nothing stored).
            os.makedirs(path.parent, mode=0o700, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            return self._not_served(f"{lock}: {exc.strerror or exc}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return self._not_served("another vigil daemon serves it")
        self._lock_fd = fd
        if os.path.lexists(path):  # noqa: ASYNC240 (one lstat at start-up)
            if not is_socket(path):
                self._unlock()
                return self._not_served("a file that is not a socket is in its place")
            path.unlink()
        try:
            self._server = await asyncio.start_unix_server(
                self._accept, str(path), limit=MAX_REQUEST
            )
            # Before chmod the socket is 0755 at worst (umask 022): connecting needs write
            # permission, so nobody but the owner could connect even in that moment.
            os.chmod(path, 0o600)
            st = os.lstat(path)
            self._inode = (st.st_dev, st.st_ino)
        except OSError as exc:
            self._unlock()
            return self._not_served(exc.strerror or str(exc))
        log.info("daemon.control_socket", path=str(path))
        return True

    def _not_served(self, why: str) -> bool:
        log.warning(
            "daemon.control_socket_unavailable",
            path=str(self.path),
            why=why,
            effect="`vigil backup VM` on this host runs the backup in its own process",
        )
        return False

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the lock goes with it
            self._lock_fd = None

    async def stop(self) -> None:
        """Stop listening; tell each client the daemon is stopping and let it go. A
        client that does not read cannot hold the daemon's shutdown up."""
        if self._server is None:
            return
        self._server.close()
        for writer in self._clients.values():
            with contextlib.suppress(Exception):
                writer.write(_line({"event": "error", "message": "the daemon is stopping"}))
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=1.0)
        for task, writer in list(self._clients.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        self._unlock()
        self._server = None

    def job_finished(self, rec: JobRecord) -> None:
        """Every finished attempt (Daemon._job_finished): resolves the requests it answers."""
        for after, fut in self._waiters.get(rec.vm_key, ()):
            if rec.id > after and not fut.done():
                fut.set_result(rec)

    # -- one connection --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the command went away or stopped reading; a job it started goes on
        except asyncio.CancelledError:
            return  # stop(): this connection ends with the daemon
        finally:
            self._clients.pop(task, None)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid not in (0, os.geteuid()):
            log.warning("daemon.control_refused", uid=uid)
            await _send(writer, {"event": "error", "message": "only root or the daemon's user "
                                 "may hand backups to the daemon"})  # fmt: skip
            return
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
            ask = parse_request(line)
        except (RequestError, TimeoutError, ValueError) as exc:
            # ValueError: a line over MAX_REQUEST (asyncio's LimitOverrunError is one)
            await _send(writer, {"event": "error", "message": f"bad request: {exc}"})
            return
        await self._backup(ask, uid, writer)

    def _lookup(self, ask: BackupAsk) -> tuple[Any, Any] | str:
        """(the VM's node, its policy), or why the daemon declines."""
        d = self.daemon
        vms = d.watcher.tree.vms()
        if ask.vcenter:
            vms = [v for v in vms if d.vcenters.name_of(v) == ask.vcenter]
        try:
            node = find_vm(vms, ask.vm)
        except VmNotFound:
            return f"the daemon's inventory has no VM {ask.vm!r}"
        policy = d.planner.policy_of(node.identity)
        if policy is None:
            return f"no policy protects {node.path}"
        return node, policy

    async def _backup(self, ask: BackupAsk, uid: int, writer: asyncio.StreamWriter) -> None:
        d = self.daemon
        runner = d.runner
        if not d.ready.is_set() or d.watcher is None or not isinstance(runner, JobRunner):
            return await _declined(writer, "the daemon has not read the inventory yet")
        if ask.repository != d.cfg.repository.location:
            # Another configuration sharing this state directory: its points belong elsewhere.
            return await _declined(writer, f"the daemon writes to {d.cfg.repository.location}")
        try:
            found = self._lookup(ask)
        except VmAmbiguous as exc:
            await _send(writer, {"event": "error", "message": str(exc)})
            return
        if isinstance(found, str):
            return await _declined(writer, found)
        key = found[0].identity
        # A job of this VM that started before the request would give a point older than
        # the request: wait for it, then ask for a new one.
        while key in runner.running:
            _req, running, _task = runner.running[key]
            with self._waiting(key, running.id - 1) as fut:
                await _send(
                    writer, {"event": "waiting", "job": running.id, "reason": running.reason}
                )
                with contextlib.suppress(_Dropped):
                    await self._follow(key, running.id - 1, fut, writer, report=False)
            found = self._lookup(ask)  # the VM may have gone, or left its policy, meanwhile
            if isinstance(found, str):
                return await _declined(writer, found)
        node, policy = found
        with self._waiting(key, runner.last_id) as fut:
            after = runner.last_id
            runner.cancel_retry(key)  # a person asks now: not after the back-off
            reason = f"requested by `vigil backup` (uid {uid})"
            try:
                queued = d.backup_now(key, reason, full=ask.full)
            except LookupError as exc:
                return await _declined(writer, str(exc))
            if not queued and not runner.busy(key):
                await _send(writer, {"event": "error", "message": "the daemon is stopping"})
                return
            log.info("daemon.control_backup", vm=node.path, uid=uid, full=ask.full)
            await _send(writer, {"event": "queued", "vm": node.path, "policy": policy.name})
            try:
                rec = await self._follow(key, after, fut, writer, report=True)
            except _Dropped:
                await _send(
                    writer,
                    {
                        "event": "finished",
                        "job": None,
                        "attempt": 0,
                        "outcome": "dropped",
                        "error": "the job was dropped before it started: the VM was deleted "
                        "or left every policy, or the daemon is stopping",
                        "point_id": "",
                        "point": None,
                        "retry_pending": False,
                    },
                )
                return
        await _send(
            writer,
            {
                "event": "finished",
                "job": rec.id,
                "attempt": rec.attempt,
                "outcome": rec.outcome,
                "error": rec.error,
                "point_id": rec.point_id,
                "point": rec.summary,
                "retry_pending": key in runner.retry_timers,
            },
        )

    @contextlib.contextmanager
    def _waiting(self, key: str, after: int) -> Any:
        """A future for the first record of `key` with an id above `after` (ids grow with
        every job started: no clock is compared), registered before anything is sent."""
        fut: asyncio.Future[JobRecord] = asyncio.get_running_loop().create_future()
        entry = (after, fut)
        self._waiters.setdefault(key, []).append(entry)
        try:
            yield fut
        finally:
            waiters = self._waiters.get(key, [])
            with contextlib.suppress(ValueError):
                waiters.remove(entry)
            if not waiters:
                self._waiters.pop(key, None)

    async def _follow(
        self,
        key: str,
        after: int,
        fut: asyncio.Future[JobRecord],
        writer: asyncio.StreamWriter,
        *,
        report: bool,
    ) -> JobRecord:
        """The finished record; meanwhile progress events (`report`), and an event at least
        every KEEPALIVE seconds. _Dropped when the job can no longer come."""
        runner = self.daemon.runner
        started: int | None = None
        last: tuple[str, int, int] | None = None
        sent = asyncio.get_running_loop().time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROGRESS_EVERY):
                    return await asyncio.shield(fut)
            if not runner.busy(key):
                raise _Dropped  # neither queued, running nor waiting to retry: never comes
            event: dict[str, Any] | None = None
            entry = runner.running.get(key)
            if report and entry is not None and entry[1].id > after:
                rec = entry[1]
                now = (rec.phase, rec.read_bytes, rec.total_bytes)
                if started != rec.id:
                    started = rec.id
                    event = {"event": "started", "job": rec.id, "reason": rec.reason}
                elif now != last:
                    last = now
                    event = {"event": "progress", "phase": now[0], "done": now[1],
                             "total": now[2]}  # fmt: skip
            clock = asyncio.get_running_loop().time()
            if event is None and clock - sent >= KEEPALIVE:
                event = {"event": "alive"}
            if event is not None:
                await _send(writer, event)
                sent = clock


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


async def _send(writer: asyncio.StreamWriter, event: dict[str, Any]) -> None:
    writer.write(_line(event))
    async with asyncio.timeout(SEND_TIMEOUT):  # TimeoutError ends the connection
        await writer.drain()


async def _declined(writer: asyncio.StreamWriter, why: str) -> None:
    await _send(writer, {"event": "declined", "why": why})


__all__ = ["BackupAsk", "ControlServer", "RequestError", "parse_request"]
