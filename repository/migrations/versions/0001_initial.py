"""The first catalog schema: VMs with name/path history, restore points, disks, jobs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out, not taken from catalog.metadata: a migration must keep creating the
    # schema of its own time when the current tables change later.
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "vms",
        sa.Column("vm_key", sa.String(16), primary_key=True),
        sa.Column("vcenter_uuid", sa.String, nullable=False),
        sa.Column("instance_uuid", sa.String, nullable=False),
        sa.Column("first_seen", tz, nullable=False),
        sa.Column("last_seen", tz, nullable=False),
    )
    op.create_table(
        "vm_names",
        sa.Column("vm_key", sa.String(16), sa.ForeignKey("vms.vm_key"), nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("moref", sa.String, nullable=False),
        sa.Column("first_seen", tz, nullable=False),
        sa.Column("last_seen", tz, nullable=False),
        sa.UniqueConstraint("vm_key", "name", "path", "moref"),
    )
    op.create_table(
        "points",
        sa.Column("point_id", sa.String, primary_key=True),
        sa.Column("vm_key", sa.String(16), sa.ForeignKey("vms.vm_key"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("policy", sa.String),
        sa.Column("job_id", sa.String),
        sa.Column("started_at", tz),
        sa.Column("finished_at", tz),
        sa.Column("committed_at", tz),
        sa.Column("manifest_hash", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("pruned_at", tz),
        sa.Column("prune_reason", sa.String),
    )
    op.create_index("ix_points_vm_key", "points", ["vm_key"])
    op.create_table(
        "disks",
        sa.Column("point_id", sa.String, sa.ForeignKey("points.point_id"), primary_key=True),
        sa.Column("disk_key", sa.String, primary_key=True),
        sa.Column("capacity", sa.BigInteger),
        sa.Column("index_id", sa.String),
        sa.Column("change_id", sa.String),
        sa.Column("transport", sa.String),
        sa.Column("base_name", sa.String),
        sa.Column("backing", sa.String),
        sa.Column("provisioning", sa.String),
        sa.Column("skipped_reason", sa.String),
    )
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String, primary_key=True),
        sa.Column("vm_key", sa.String),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("started_at", tz, nullable=False),
        sa.Column("finished_at", tz),
        sa.Column("outcome", sa.String),
        sa.Column("message", sa.String),
        sa.Column("point_id", sa.String),
    )
    op.create_index("ix_jobs_vm_key", "jobs", ["vm_key"])


def downgrade() -> None:
    for table in ("jobs", "disks", "points", "vm_names", "vms"):
        op.drop_table(table)
