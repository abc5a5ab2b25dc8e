"""Connections, advisory-lock keys and the cluster's own tables.

A node learns that the database is gone from its own connection; the database learns
that a node is gone when the node's TCP connection closes (a killed process: at once) or,
for a host that vanished without a FIN, when TCP keepalives give up. Both sides are set
here: the server-side `tcp_keepalives_*` are per-session settings a client may set
(PostgreSQL docs, "Connections and Authentication"), so a dead leader's advisory lock is
released after idle + interval × count = 5 + 2 × 3 = 11 s, inside the 15 s failover goal.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct

import psycopg

from cluster.config import redact_url

KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
CONNECT_TIMEOUT_S = 5

# A lease connection (the leader's, a running job's) pings every second; the server ends
# it after this long without a statement. So a leader or worker that is alive for the
# kernel but frozen (SIGSTOP, a blocked event loop, a VM paused by its hypervisor) loses its
# locks too: keepalives alone would keep them for ever. PostgreSQL >= 14.
LEASE_IDLE_TIMEOUT_S = 10

# Session options sent with every connection (libpq `options`): server-side keepalives.
_SERVER_OPTIONS = (
    f"-c tcp_keepalives_idle={KEEPALIVE_IDLE_S} "
    f"-c tcp_keepalives_interval={KEEPALIVE_INTERVAL_S} "
    f"-c tcp_keepalives_count={KEEPALIVE_COUNT}"
)


def connect_kwargs(application_name: str, *, lease: bool = False) -> dict[str, object]:
    """libpq parameters for every cluster connection (merged with the URL's own); `lease`
    for a connection whose session-level locks must die with a frozen holder."""
    options = _SERVER_OPTIONS
    if lease:
        options += f" -c idle_session_timeout={LEASE_IDLE_TIMEOUT_S * 1000}"
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": application_name[:63],
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_S,
        "keepalives_interval": KEEPALIVE_INTERVAL_S,
        "keepalives_count": KEEPALIVE_COUNT,
        # Unacknowledged data (a query sent into a dead network) fails after this long.
        "tcp_user_timeout": 10_000,
        "options": options,
    }


async def connect(
    url: str, application_name: str, *, lease: bool = False
) -> psycopg.AsyncConnection:
    """A dedicated autocommit connection. Errors are re-raised without the URL's password
    (libpq messages quote host and port, never the password, but we say so explicitly)."""
    try:
        return await psycopg.AsyncConnection.connect(
            url, autocommit=True, **connect_kwargs(application_name, lease=lease)
        )
    except psycopg.OperationalError as exc:
        raise psycopg.OperationalError(
            f"cannot connect to {redact_url(url)}: {str(exc).strip()}"
        ) from None


async def close_quietly(conn: psycopg.AsyncConnection | None, timeout: float = 2.0) -> None:
    """Close a connection whose state is unknown (a failed or cancelled read), giving up
    after `timeout`: a dead server must not hold up the caller."""
    if conn is not None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await conn.close()


def lock_key(namespace: str, *parts: str) -> int:
    """A signed 64-bit advisory-lock key for (namespace, parts): BLAKE2b of the text, so
    every node derives the same key for the same vCenter/host/datastore without a registry.
    Collisions between 64-bit keys are negligible for the few thousand keys a cluster uses."""
    text = "\x1f".join(("vigil", namespace, *parts)).encode()
    return struct.unpack(">q", hashlib.blake2b(text, digest_size=8).digest())[0]


SCHEMA = """
CREATE TABLE IF NOT EXISTS vigil_cluster_epochs (
    vcenter     text PRIMARY KEY,
    epoch       bigint NOT NULL,
    leader_node text NOT NULL,
    elected_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS vigil_cluster_nodes (
    node       text NOT NULL,
    role       text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, role)
);
"""

# Serialises schema creation across nodes that start at once (CREATE ... IF NOT EXISTS is
# not safe against a concurrent identical CREATE).
SCHEMA_LOCK = lock_key("schema")


async def apply_schema(conn: psycopg.AsyncConnection) -> None:
    """Create the cluster's own tables if missing (idempotent, safe from many nodes)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        await conn.execute(SCHEMA)
