"""The epoch: a fencing token per vCenter.

Leadership is an advisory lock, and a lock alone cannot stop a leader that has lost it
without knowing (a long GC pause, a partition) from acting on an old decision. So every
takeover increments a counter in `vigil_cluster_epochs` in the same statement that records
the new leader, every job carries the epoch of the scheduler that deferred it, and a job
checks that epoch before it commits a restore point: a job from a deposed leader is refused
(Kleppmann's fencing tokens; the same idea as ZooKeeper's zxid or etcd's lease revision).
"""

from __future__ import annotations

import psycopg

# FOR SHARE: when the check runs inside the transaction that commits the point (catalog on
# PostgreSQL), a takeover's UPDATE of the row waits for that transaction, so "checked, then
# committed" cannot interleave with "deposed".
EPOCH_QUERY = "SELECT epoch FROM vigil_cluster_epochs WHERE vcenter = %s FOR SHARE"

TAKEOVER_QUERY = """
INSERT INTO vigil_cluster_epochs AS e (vcenter, epoch, leader_node, elected_at)
VALUES (%s, 1, %s, now())
ON CONFLICT (vcenter) DO UPDATE
   SET epoch = e.epoch + 1, leader_node = EXCLUDED.leader_node, elected_at = now()
RETURNING epoch
"""


class StaleEpochError(Exception):
    """A job or a leader acts on an epoch that is no longer the current one. Never retried:
    the current leader plans the work again."""

    def __init__(self, vcenter: str, epoch: int, current: int | None) -> None:
        self.vcenter = vcenter
        self.epoch = epoch
        self.current = current
        now = "no leader was ever elected" if current is None else f"the current epoch is {current}"
        super().__init__(
            f"vCenter {vcenter}: epoch {epoch} is stale ({now}); the work was planned by a "
            "scheduler that is no longer the leader and is dropped"
        )


def verify_epoch(vcenter: str, expected: int, current: int | None) -> None:
    """Pure: raise StaleEpochError unless `current` is `expected`."""
    if current != expected:
        raise StaleEpochError(vcenter, expected, current)


async def check_epoch(conn: psycopg.AsyncConnection, vcenter: str, epoch: int) -> None:
    """Raise StaleEpochError unless `epoch` is still the current epoch of `vcenter`. Call it
    inside the transaction that commits the restore point when that transaction is on the
    same database; otherwise right before the commit (the window is then the commit's)."""
    cur = await conn.execute(EPOCH_QUERY, (vcenter,))
    row = await cur.fetchone()
    verify_epoch(vcenter, epoch, row[0] if row else None)


async def take_over(conn: psycopg.AsyncConnection, vcenter: str, node: str) -> int:
    """Record `node` as leader of `vcenter` and return the new epoch (one statement, so the
    increment is atomic). The caller must already hold the vCenter's leader lock."""
    cur = await conn.execute(TAKEOVER_QUERY, (vcenter, node))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def current_epochs(conn: psycopg.AsyncConnection) -> dict[str, tuple[int, str]]:
    """vcenter -> (epoch, leader node) as last recorded (for status output; a recorded
    leader may have died since: the nodes table says whether it is still seen)."""
    cur = await conn.execute("SELECT vcenter, epoch, leader_node FROM vigil_cluster_epochs")
    return {r[0]: (int(r[1]), r[2]) for r in await cur.fetchall()}
