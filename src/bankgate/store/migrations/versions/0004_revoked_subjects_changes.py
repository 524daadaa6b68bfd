"""Revocations that reach tokens (per subject: a client, an M2M user, a certificate) and the change feed that lets
every server process drop what it cached about a record another process changed.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "revoked_subjects",
        sa.Column("subject", sa.String(200), primary_key=True),
        sa.Column("revoked_at", sa.Float, nullable=False),
        sa.Column("not_before", sa.Float),
    )
    op.create_index("ix_revoked_subjects_revoked_at", "revoked_subjects", ["revoked_at"])
    # Clients and certificates revoked before this revision: their tokens are refused from now on as well.
    op.execute(
        "INSERT INTO revoked_subjects (subject, revoked_at, not_before) "
        "SELECT 'client:' || id, COALESCE(revoked_at, created_at), NULL FROM clients WHERE status = 'revoked'"
    )
    op.execute(
        "INSERT INTO revoked_subjects (subject, revoked_at, not_before) "
        "SELECT 'cert:' || x5t_s256, COALESCE(revoked_at, created_at), NULL FROM certificates "
        "WHERE status = 'revoked'"
    )
    op.create_table(
        "changes",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_changes_at", "changes", ["at"])


def downgrade() -> None:
    op.drop_table("changes")
    op.drop_table("revoked_subjects")
