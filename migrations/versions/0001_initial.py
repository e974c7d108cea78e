"""transactions and api keys

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the queue table and the keys table."""
    op.create_table(
        "transactions",
        sa.Column("txid", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("framework", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("input_names", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("filename", sa.String(64), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("heartbeat_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_transactions_owner", "transactions", ["owner"])
    op.create_index("ix_transactions_state", "transactions", ["state"])
    op.create_index("ix_transactions_created_at", "transactions", ["created_at"])
    op.create_table(
        "api_keys",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("secret_hash", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("api_keys")
    op.drop_index("ix_transactions_created_at", "transactions")
    op.drop_index("ix_transactions_state", "transactions")
    op.drop_index("ix_transactions_owner", "transactions")
    op.drop_table("transactions")
