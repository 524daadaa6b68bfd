"""Listings an operator pages through: keyset indexes for clients, users, certificates and the audit trail; the audit
trail's `subject` column (filled from each event's detail, existing events included); `version` on clients and
users for optimistic concurrency (1 for existing rows).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: The detail keys naming what an event is about, most specific first (as `bankgate.audit.subject_of`).
_SUBJECT_KEYS = ("client_id", "api_key", "serial", "username", "user_id", "subject")


def _backfill_subject() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        parts = [f"json_extract(detail, '$.{key}')" for key in _SUBJECT_KEYS]
        # json_extract yields any JSON type; only text names a subject.
        parts = [f"CASE WHEN typeof({p}) = 'text' THEN {p} END" for p in parts]
    else:
        parts = [
            f"CASE WHEN json_typeof(detail::json -> '{key}') = 'string' THEN detail::json ->> '{key}' END"
            for key in _SUBJECT_KEYS
        ]
    op.execute(f"UPDATE audit_events SET subject = substr(COALESCE({', '.join(parts)}), 1, 200)")  # noqa: S608 - constants


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("version", sa.Integer, nullable=False, server_default="1"))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("version", sa.Integer, nullable=False, server_default="1"))
    op.create_index("ix_clients_created_at_id", "clients", ["created_at", "id"])
    op.create_index("ix_users_created_at_id", "users", ["created_at", "id"])
    op.create_index("ix_certificates_created_at_serial", "certificates", ["created_at", "serial"])
    op.create_index("ix_certificates_not_after_serial", "certificates", ["not_after", "serial"])
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("subject", sa.String(200)))
    _backfill_subject()
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.create_index("ix_audit_events_at_id", "audit_events", ["at", "id"])
    op.create_index("ix_audit_events_subject", "audit_events", ["subject", "at", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_subject", table_name="audit_events")
    op.drop_index("ix_audit_events_at_id", table_name="audit_events")
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("subject")
    op.drop_index("ix_certificates_not_after_serial", table_name="certificates")
    op.drop_index("ix_certificates_created_at_serial", table_name="certificates")
    op.drop_index("ix_users_created_at_id", table_name="users")
    op.drop_index("ix_clients_created_at_id", table_name="clients")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("version")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("version")
