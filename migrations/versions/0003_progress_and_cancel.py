"""a job's phase and progress; a client's request to cancel it

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

``phase`` and ``progress`` are what the job last reported (status shows them);
``cancel_requested_at`` is set by ``POST /api/cancel`` on a running row, for the
worker holding its lease to notice. Rows already there get the phase their state
implies: "queued" while queued, "done" once done (or expired).
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the three columns and fill in the phase of rows queued or finished."""
    with op.batch_alter_table("transactions") as batch:
        batch.add_column(sa.Column("phase", sa.String(16), nullable=True))
        batch.add_column(sa.Column("progress", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cancel_requested_at", sa.Float(), nullable=True))
    op.execute("UPDATE transactions SET phase = 'queued' WHERE state = 'queued'")
    op.execute("UPDATE transactions SET phase = 'done', progress = 1.0 "
               "WHERE state IN ('done', 'expired')")


def downgrade() -> None:
    """Drop the three columns."""
    with op.batch_alter_table("transactions") as batch:
        batch.drop_column("cancel_requested_at")
        batch.drop_column("progress")
        batch.drop_column("phase")
