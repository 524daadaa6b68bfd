"""The tables, in SQLAlchemy Core. Timestamps are UNIX seconds (float) so SQLite and PostgreSQL agree exactly."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "admins",
    "audit_events",
    "auth_throttle",
    "certificate_authorities",
    "certificates",
    "changes",
    "client_secrets",
    "clients",
    "console_sessions",
    "idempotency_keys",
    "ip_allow_entries",
    "meta",
    "metadata",
    "payments",
    "rate_counters",
    "revoked_subjects",
    "revoked_tokens",
    "signing_keys",
    "users",
]

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY.
_BigId = BigInteger().with_variant(Integer, "sqlite")

meta = Table(
    "bankgate_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

clients = Table(
    "clients",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("api_key", String(80), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("auth_mode", String(16), nullable=False),
    Column("scopes", Text, nullable=False),  # JSON list of application IDs
    Column("environment", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    # Incremented by every change of the record: an update may say which version it read (optimistic concurrency).
    Column("version", Integer, nullable=False, server_default="1"),
    Index("ix_clients_created_at_id", "created_at", "id"),
)

client_secrets = Table(
    "client_secrets",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("client_id", String(36), ForeignKey("clients.id", ondelete="CASCADE"), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),  # NULL: valid until rotated
    Index("ix_client_secrets_client_id", "client_id"),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("private_key", LargeBinary, nullable=False),  # PKCS#8 DER, AES-256-GCM under the master key
    Column("created_at", Float, nullable=False),
    Column("retired_at", Float),
    Column("publish_until", Float),  # stays in the JWKS until every token it signed has expired
)

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("client_id", String(36), nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=False),
    Index("ix_revoked_tokens_expires_at", "expires_at"),
)

# Whole subjects revoked: "client:<id>", "user:<id>", "cert:<x5t#S256>". Every token of the subject issued at or
# before `not_before` is refused; NULL: every token of it, whenever issued (the subject itself is gone).
revoked_subjects = Table(
    "revoked_subjects",
    metadata,
    Column("subject", String(200), primary_key=True),
    Column("revoked_at", Float, nullable=False),
    Column("not_before", Float),
    Index("ix_revoked_subjects_revoked_at", "revoked_at"),
)

# The change feed: (kind, key) of every record changed, written in the writer's transaction and polled by every
# server process so it drops what it cached about that record; rows are purged after an hour.
changes = Table(
    "changes",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("key", String(200), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_changes_at", "at"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("event", String(64), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("source_ip", String(64)),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False),  # JSON object; never a secret
    # What the event is about, from its detail when written: an API key, certificate serial, username, client or
    # user id (`bankgate.audit.subject_of`), so the trail of one subject is an index range, not a scan of JSON.
    Column("subject", String(200)),
    Index("ix_audit_events_at_id", "at", "id"),
    Index("ix_audit_events_subject", "subject", "at", "id"),
)

# -- certificate-bound M2M users ------------------------------------------------------------------------------

users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("user_type", String(8), nullable=False),
    Column("environment", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # active | disabled | revoked
    Column("passphrase_hash", Text),  # argon2id of the initial passphrase; NULL once used
    Column("passphrase_expires_at", Float),
    Column("password_hash", Text),  # argon2id; NULL until the passphrase has been reset
    Column("password_changed_at", Float),
    Column("created_at", Float, nullable=False),
    Column("scopes", Text),  # JSON list of application IDs the user's tokens carry; NULL: none
    Column("version", Integer, nullable=False, server_default="1"),  # see clients.version
    Index("ix_users_created_at_id", "created_at", "id"),
)

certificate_authorities = Table(
    "certificate_authorities",
    metadata,
    Column("environment", String(16), primary_key=True),
    Column("certificate_pem", Text, nullable=False),
    Column("private_key", LargeBinary, nullable=False),  # PKCS#8 DER, AES-256-GCM under the master key
    Column("created_at", Float, nullable=False),
)

certificates = Table(
    "certificates",
    metadata,
    Column("serial", String(40), primary_key=True),  # hex
    Column("user_id", String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("environment", String(16), nullable=False),
    Column("thumbprint", String(40), nullable=False, unique=True),  # SHA-1 of the DER, upper-case hex
    Column("x5t_s256", String(43), nullable=False, unique=True),  # base64url SHA-256 of the DER
    Column("subject", String(300), nullable=False),
    Column("not_before", Float, nullable=False),
    Column("not_after", Float, nullable=False),
    Column("certificate_pem", Text, nullable=False),
    Column("status", String(16), nullable=False),  # valid | revoked
    Column("revoked_at", Float),
    Column("created_at", Float, nullable=False),
    Index("ix_certificates_user_id", "user_id"),
    Index("ix_certificates_created_at_serial", "created_at", "serial"),
    Index("ix_certificates_not_after_serial", "not_after", "serial"),
)

ip_allow_entries = Table(
    "ip_allow_entries",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("subject_kind", String(8), nullable=False),  # user | client
    Column("subject_id", String(36), nullable=False),
    Column("environment", String(16), nullable=False),
    Column("cidr", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("subject_kind", "subject_id", "environment", "cidr", name="uq_ip_allow_entry"),
    Index("ix_ip_allow_entries_subject", "subject_kind", "subject_id"),
)

# Failed authentications per key ("ip:…", "account:…"), shared by every server process.
auth_throttle = Table(
    "auth_throttle",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("window_started", Float, nullable=False),
    Column("blocked_until", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_auth_throttle_blocked_until", "blocked_until"),
)

# Issuance counters per key and fixed window, summed over every server process.
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("window_started", Float, nullable=False),
    Column("count", Integer, nullable=False),
)

# Idempotency-Key records (draft-ietf-httpapi-idempotency-key-header): one row per principal and key, moving from
# `started` (claimed, lease running) to `completed` (the response kept until `expires_at`).
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("principal", String(200), primary_key=True),  # "client:<id>" / "user:<id>": keys are never global
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),  # sha256 hex of method, path and body digest
    Column("state", String(16), nullable=False),  # started | completed
    Column("owner", String(32), nullable=False),  # random per claim: only the claimant completes or releases
    Column("lease_until", Float, nullable=False),  # a started row whose lease has passed may be claimed again
    Column("expires_at", Float, nullable=False),  # the row may be purged (and the key reused) after this
    Column("created_at", Float, nullable=False),
    Column("status", Integer),
    Column("headers", Text),  # JSON list of [name, value] pairs
    Column("body", LargeBinary),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)

# The sandbox payments API: payments made by sandbox clients and users.
payments = Table(
    "payments",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("principal", String(200), nullable=False),
    Column("application_id", String(100), nullable=False),
    Column("amount", String(32), nullable=False),  # the decimal string as sent: no float rounding
    Column("currency", String(3), nullable=False),
    Column("reference", String(140), nullable=False),
    Column("status", String(16), nullable=False),
    Column("environment", String(16), nullable=False),
    Column("idempotency_key", String(255)),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("principal", "idempotency_key", name="uq_payments_idempotency_key"),
    Index("ix_payments_application_id", "application_id"),
)

# -- administrators (the admin API and console), apart from merchant clients and M2M users ----------------------

admins = Table(
    "admins",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(32), nullable=False),  # owner | integration-manager | auditor
    Column("api_key", String(80), nullable=False, unique=True),  # bka_live_… / bka_test_…
    Column("secret_hash", String(64)),  # HMAC-SHA-256 under the vault's pepper, as clients' secrets; NULL: deleted
    Column("password_hash", Text),  # argon2id of the console password; NULL until set
    Column("totp_secret", LargeBinary),  # RFC 6238 secret, AES-256-GCM under the master key; NULL until enrolled
    Column("totp_last_step", BigInteger),  # the last accepted TOTP time step: a code is never accepted twice
    Column("environment", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # active | disabled | deleted
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("version", Integer, nullable=False),  # +1 on every change: the admin API's ETag
)

# -- the web console ---------------------------------------------------------------------------------------------

# One row per signed-in console session. The session id lives only in the browser's cookie: the row holds its
# SHA-256, so a copy of the database signs no one in.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),  # SHA-256 hex of the session id
    Column("principal_kind", String(16), nullable=False),  # user | admin
    Column("principal_id", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("source_ip", String(64)),
    Index("ix_console_sessions_principal", "principal_kind", "principal_id"),
    Index("ix_console_sessions_last_seen", "last_seen"),
)
