"""lease tokens on claimed rows; the workers table

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Each claim writes a fresh ``lease_token``; heartbeats and the final write name it,
so a worker whose lease expired cannot overwrite the outcome of the worker that
took the job over. ``workers`` lists the processes that claim jobs.
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the lease column and the workers table."""
    with op.batch_alter_table("transactions") as batch:
        batch.add_column(sa.Column("lease_token", sa.String(32), nullable=True))
        batch.create_index("ix_transactions_lease_token", ["lease_token"])
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_workers_heartbeat_at", "workers", ["heartbeat_at"])


def downgrade() -> None:
    """Drop the workers table and the lease column."""
    op.drop_index("ix_workers_heartbeat_at", "workers")
    op.drop_table("workers")
    with op.batch_alter_table("transactions") as batch:
        batch.drop_index("ix_transactions_lease_token")
        batch.drop_column("lease_token")
