"""Scale-out: several vigil nodes sharing one PostgreSQL database (issue 16).

PostgreSQL is the shared state and procrastinate the job queue; this package adds only
what they lack: leader election per vCenter with an epoch (fencing token), cluster-wide
slots per host and datastore, the requeue of jobs whose worker stopped heart-beating, and
node heartbeats for status. It imports nothing from `protector`: the backup itself is an
async callable handed in by the daemon. See docs/cluster.md.
"""
