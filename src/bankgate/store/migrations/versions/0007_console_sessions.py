"""Web console sessions: one row per signed-in session, keyed by the SHA-256 of its id.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("principal_kind", sa.String(16), nullable=False),
        sa.Column("principal_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("source_ip", sa.String(64)),
    )
    op.create_index("ix_console_sessions_principal", "console_sessions", ["principal_kind", "principal_id"])
    op.create_index("ix_console_sessions_last_seen", "console_sessions", ["last_seen"])


def downgrade() -> None:
    op.drop_table("console_sessions")
