"""Cluster-wide concurrency limits: N slots per ESXi host and per datastore, each slot a
session-level advisory lock, held on the job's own connection.

A job takes one slot of each kind it needs (its host, each datastore its disks live on) in
one round trip, all or none, so two jobs never hold half of each other's needs (no
deadlock). A slot goes back when the job ends, or when its connection ends: a worker
killed with kill -9 frees its slots as soon as the server sees the socket close.

The job's connection is also watched while the job runs (`run_holding`): if it dies, the
server may already have handed the slots to someone else, so the job is cancelled at once
and retried — a limit that holds only while the database is reachable would not hold.

Why not `SELECT ... WHERE pg_try_advisory_lock(k) LIMIT 1`: the PostgreSQL manual warns
that the planner may evaluate the locking function on rows LIMIT then discards, leaving
locks nobody knows about ("Advisory Locks"). A PL/pgSQL loop stops at the first success.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import psycopg

from cluster import db

T = TypeVar("T")

SLOT_FUNCTION = """
CREATE OR REPLACE FUNCTION vigil_take_slots(groups jsonb) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    grp jsonb;
    k bigint;
    got bigint;
    taken bigint[] := '{}';
BEGIN
    FOR grp IN SELECT * FROM jsonb_array_elements(groups) LOOP
        got := NULL;
        FOR k IN SELECT (jsonb_array_elements_text(grp))::bigint LOOP
            IF pg_try_advisory_lock(k) THEN
                got := k;
                EXIT;
            END IF;
        END LOOP;
        IF got IS NULL THEN
            FOREACH k IN ARRAY taken LOOP
                PERFORM pg_advisory_unlock(k);
            END LOOP;
            RETURN NULL;
        END IF;
        taken := taken || got;
    END LOOP;
    RETURN taken;
END
$$;
"""


class LeaseLost(Exception):
    """The connection holding a job's slots died: the slots may be someone else's now.
    Retried (the job starts over on whichever worker takes it)."""


@dataclass(frozen=True)
class SlotNeed:
    kind: str  # "host" or "datastore"
    name: str  # its identity (the vCenter's MoRef of the host/datastore, or a uuid)
    limit: int

    def keys(self) -> list[int]:
        return [db.lock_key("slot", self.kind, self.name, str(i)) for i in range(self.limit)]


def slot_needs(
    host: str | Sequence[str], datastores: Sequence[str], host_slots: int, ds_slots: int
) -> list[SlotNeed]:
    """Pure: what a backup of a VM on `host` with disks on `datastores` must hold — or of a
    vApp set, whose members may run on several hosts (one slot per distinct host). Sorted
    so every job asks in the same order."""
    hosts = [host] if isinstance(host, str) else list(host)
    needs = [SlotNeed("host", h, host_slots) for h in sorted(set(hosts)) if h]
    needs += [SlotNeed("datastore", d, ds_slots) for d in sorted(set(datastores)) if d]
    return needs


async def install(conn: psycopg.AsyncConnection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (db.SCHEMA_LOCK,))
        await conn.execute(SLOT_FUNCTION)


async def try_take(conn: psycopg.AsyncConnection, needs: Sequence[SlotNeed]) -> list[int] | None:
    """One round trip: the advisory-lock keys taken (one per need), or None (nothing held)."""
    if not needs:
        return []
    groups = json.dumps([[str(k) for k in n.keys()] for n in needs])
    cur = await conn.execute("SELECT vigil_take_slots(%s::jsonb)", (groups,))
    row = await cur.fetchone()
    return list(row[0]) if row and row[0] is not None else None


async def take(
    conn: psycopg.AsyncConnection,
    needs: Sequence[SlotNeed],
    *,
    first_wait: float = 0.2,
    max_wait: float = 2.0,
) -> list[int]:
    """Wait (jittered backoff) until every need has a slot. Cancel the caller to give up."""
    wait = first_wait
    while True:
        got = await try_take(conn, needs)
        if got is not None:
            return got
        await asyncio.sleep(wait * random.uniform(0.5, 1.0))
        wait = min(wait * 1.5, max_wait)


async def give_back(conn: psycopg.AsyncConnection, keys: Sequence[int]) -> None:
    for k in keys:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (k,))


async def run_holding(
    conn: psycopg.AsyncConnection,
    body: Awaitable[T],
    *,
    check_interval: float = 1.0,
    check_timeout: float = 3.0,
) -> T:
    """Run `body` while pinging `conn`; if the connection fails, cancel `body` and raise
    LeaseLost. Cancelling the caller cancels `body` too."""
    task = asyncio.ensure_future(body)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=check_interval)
            if done:
                return task.result()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the ping's
                # answer when the cancel lands as the answer arrives, and the job runs on.
                async with asyncio.timeout(check_timeout):
                    await conn.execute("SELECT 1")
            except (psycopg.Error, TimeoutError) as exc:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise LeaseLost(
                    f"the database connection holding this job's slots failed "
                    f"({str(exc).strip() or type(exc).__name__}); the job is cancelled and "
                    "will be retried"
                ) from exc
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
