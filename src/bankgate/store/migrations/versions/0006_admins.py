"""Administrators of the admin API and console: a role, their own key pair, a console password and a TOTP secret.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admins",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("api_key", sa.String(80), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(64)),
        sa.Column("password_hash", sa.Text),
        sa.Column("totp_secret", sa.LargeBinary),
        sa.Column("totp_last_step", sa.BigInteger),
        sa.Column("environment", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("admins")
