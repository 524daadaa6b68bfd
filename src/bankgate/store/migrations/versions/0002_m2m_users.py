"""Certificate-bound M2M users: users, CAs, certificates, IP allow lists, throttling and rate counters.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("user_type", sa.String(8), nullable=False),
        sa.Column("environment", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("passphrase_hash", sa.Text),
        sa.Column("passphrase_expires_at", sa.Float),
        sa.Column("password_hash", sa.Text),
        sa.Column("password_changed_at", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "certificate_authorities",
        sa.Column("environment", sa.String(16), primary_key=True),
        sa.Column("certificate_pem", sa.Text, nullable=False),
        sa.Column("private_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("environment", sa.String(16), nullable=False),
        sa.Column("thumbprint", sa.String(40), nullable=False, unique=True),
        sa.Column("x5t_s256", sa.String(43), nullable=False, unique=True),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("not_before", sa.Float, nullable=False),
        sa.Column("not_after", sa.Float, nullable=False),
        sa.Column("certificate_pem", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("revoked_at", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_certificates_user_id", "certificates", ["user_id"])
    op.create_table(
        "ip_allow_entries",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("subject_kind", sa.String(8), nullable=False),
        sa.Column("subject_id", sa.String(36), nullable=False),
        sa.Column("environment", sa.String(16), nullable=False),
        sa.Column("cidr", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("subject_kind", "subject_id", "environment", "cidr", name="uq_ip_allow_entry"),
    )
    op.create_index("ix_ip_allow_entries_subject", "ip_allow_entries", ["subject_kind", "subject_id"])
    op.create_table(
        "auth_throttle",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_started", sa.Float, nullable=False),
        sa.Column("blocked_until", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_auth_throttle_blocked_until", "auth_throttle", ["blocked_until"])
    op.create_table(
        "rate_counters",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("window_started", sa.Float, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in ("rate_counters", "auth_throttle", "ip_allow_entries", "certificates", "certificate_authorities",
                  "users"):
        op.drop_table(table)
