"""Settings: one object, built once from flags, `BANKGATE_*` variables and an optional TOML file, passed down.

Precedence, highest first: explicit values (command-line flags), environment variables, the TOML file
(`BANKGATE_CONFIG`, else `<data_dir>/bankgate.toml` when it exists), defaults.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bankgate.logs import LogFormat

__all__ = ["Algorithm", "Environment", "Settings", "UnknownSettingError", "listen_url", "load_settings"]

Environment = Literal["sandbox", "production"]
Algorithm = Literal["RS256", "ES256", "EdDSA"]

if TYPE_CHECKING:
    from argon2 import PasswordHasher

DEFAULT_DATA_DIR = ".bankgate"
#: OWASP's floor for argon2id (19 MiB, 2 passes): below it `production` refuses to start.
PRODUCTION_HASH_MEMORY_KIB = 19456


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BANKGATE_", extra="ignore", frozen=True)

    data_dir: Path = Field(default=Path(DEFAULT_DATA_DIR), description="Where the SQLite file and keys live.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in the data directory."
    )
    environment: Environment = "sandbox"
    issuer: str | None = Field(
        default=None, description="`iss` of issued tokens; default: the URL the server listens on."
    )
    audience: str = "bankgate-api"
    token_ttl: int = Field(default=7200, ge=30, le=86400, description="Access-token lifetime in seconds.")
    signing_alg: Algorithm = "RS256"
    client_cache_ttl: float = Field(
        default=60.0,
        ge=0,
        le=300,
        description="Seconds a server process may keep a client, user, certificate or allow-list record it read; "
        "a safety net only: every change is seen at once by the process that made it and within "
        "`revocation_sync_interval` by the others (change feed).",
    )
    key_refresh_interval: float = Field(
        default=10.0, ge=0.5, description="Seconds between reloads of the signing keys from the database."
    )
    key_store: str = Field(
        default="database", description="Where signing keys live: `database` (the server's database, private keys "
        "encrypted under the master key)."
    )
    master_key: SecretStr | None = Field(
        default=None,
        description="Base64 32-byte key that encrypts signing keys and peppers secret hashes; "
        "default: <data_dir>/master.key, created on first use with mode 0600.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CIDRs (comma-separated in the environment) whose X-Forwarded-For counts."
    )
    audit_flush_interval: float = Field(default=0.25, gt=0, le=10)
    admin_allowed_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CIDRs (comma-separated in the environment) the admin API and console "
        "answer; empty: every address in the sandbox, none in production (fail closed)."
    )
    admin_audience: str = Field(default="bankgate-admin", description="The `aud` of admin API access tokens: "
                                "never the merchant APIs' audience, so neither kind of token is taken for the other.")
    admin_token_ttl: int = Field(default=600, ge=30, le=3600, description="Lifetime of admin API access tokens.")
    admin_port: int | None = Field(
        default=None, ge=1, le=65535, description="A second listener serving only /admin and /console; when set, "
        "the public listener answers 404 there."
    )
    metrics: Literal["off", "on", "admin"] = Field(
        default="off", description="Prometheus metrics at GET /metrics: `off`; `on` (on the main port); `admin` "
        "(only on the --admin-port listener, 404 on the main one). Off by default: the figures (traffic, refusals, "
        "user names with their certificates' expiry) are for operators, not for the internet the main port faces."
    )
    m2m_token_ttl: int = Field(default=300, ge=30, le=86400, description="Lifetime of certificate-bound tokens.")
    passphrase_ttl: float = Field(default=7 * 86400, gt=0, description="Seconds an initial passphrase stays valid.")
    # -- argon2id for M2M users' passwords and passphrases (RFC 9106); argon2-cffi's defaults --
    password_hash_time_cost: int = Field(default=3, ge=1, le=20, description="argon2id passes over memory.")
    password_hash_memory_kib: int = Field(
        default=65536, ge=64, le=4 * 1024 * 1024, description="argon2id memory per hash, in KiB (64 MiB by default). "
        "In production at least 19456 KiB with 2 passes (OWASP's floor)."
    )
    password_hash_parallelism: int = Field(default=4, ge=1, le=16, description="argon2id lanes per hash.")
    client_cert_header: Literal["nginx", "envoy", "traefik", "alb", "caddy"] | None = Field(
        default=None, description="The header a trusted TLS-terminating proxy forwards the client certificate in."
    )
    client_cert_header_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$",
        description="Another name for that header (nginx and Caddy let you choose it); default: the style's usual "
        "name, e.g. X-SSL-Client-Cert for nginx, X-Client-Cert-Der for Caddy.",
    )
    issuance_rate_limit: int = Field(
        default=1200, ge=0, description="Tokens per client (or user) per minute, over all processes; 0 turns it off."
    )
    # -- brute-force throttling and shared counters (throttle.py) --
    throttle_ip_failures: int = Field(
        default=20, ge=1, description="Failed authentications from one source address (an IPv4 address or an IPv6 "
        "/64), whatever the account, after which that address is blocked with a growing back-off."
    )
    throttle_account_ip_failures: int = Field(
        default=5, ge=1, description="Failed authentications of one account from one source address after which "
        "that account is blocked from that address only; its owner elsewhere is not affected."
    )
    throttle_account_failures: int = Field(
        default=50, ge=1, description="Failed authentications of one account from all addresses together after "
        "which the account is blocked everywhere: the backstop against guessing spread over many addresses."
    )
    throttle_window: float = Field(
        default=900.0, gt=0, description="Seconds without a failure after which a key's failure count starts again."
    )
    throttle_max_backoff: float = Field(
        default=900.0, ge=1, description="Longest block in seconds; past its threshold a key is blocked 1 s, then "
        "2 s, 4 s, ... doubling with every further failure, up to this."
    )
    throttle_sync_interval: float = Field(
        default=1.0, gt=0, le=60, description="Seconds between reloads of the blocked keys, so that every server "
        "process enforces blocks made by the others."
    )
    rate_limit_sync_interval: float = Field(
        default=0.5, gt=0, le=60, description="Seconds between writes of the issuance counts to the database; "
        "across processes the issuance limit is approximate by this much traffic."
    )
    max_body_bytes: int = Field(default=16384, ge=1024)
    # -- the resource side: guard, Idempotency-Key layer, sandbox payments API --
    revocation_sync_interval: float = Field(
        default=0.5, gt=0, le=60, description="Seconds between reloads of the revocation deny lists and the change "
        "feed; a token, client, user or certificate revoked, or a record changed, on one process is refused or seen by "
        "the others within this time plus one query (at once on the process that made the change)."
    )
    verified_token_cache_size: int = Field(
        default=10000, ge=0, description="Verified access tokens remembered per process, so a reused token is not "
        "verified again on every call; 0 turns the cache off."
    )
    idempotency_store: str = Field(
        default="database", description="Where Idempotency-Key records live: `database` (the server's own SQLite or "
        "PostgreSQL database) or a redis:// URL."
    )
    readiness_timeout: float = Field(
        default=2.0, gt=0, le=60, description="Seconds `/readyz` waits, in total, for its checks (database, Redis, "
        "signing keys, migrations) before it answers 503."
    )
    idempotency_retention: float = Field(
        default=86400.0, ge=60, le=90 * 86400, description="Seconds a completed response is kept for replay "
        "(24 h by default, like Stripe; Banked keeps 30 days: 2592000)."
    )
    idempotency_lease: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds a claimed key stays locked without news from the process "
        "that claimed it; a crashed request frees its key after this, never a 409 forever."
    )
    idempotency_mismatch_status: int = Field(
        default=422, description="Status when a key is reused with another request: 422 (the IETF draft) or 409 "
        "(as Banked documents)."
    )
    idempotency_required: bool = Field(
        default=False, description="Require an Idempotency-Key on every non-GET API call (payments always require one)."
    )
    sandbox_processing_delay: float = Field(
        default=0.0, ge=0, le=60, description="Sandbox only: seconds a payment takes after it is recorded and before "
        "the answer, to try timeouts and retries."
    )
    console_idle_timeout: float = Field(
        default=900.0, gt=0, le=86400, description="Seconds a web console session may stay unused before it ends."
    )
    console_session_lifetime: float = Field(
        default=8 * 3600.0, gt=0, le=7 * 86400, description="Seconds a web console session lasts at most, used or not."
    )
    # -- OpenTelemetry (`pip install 'bankgate[otel]'`; bankgate.tracing) --
    tracing: Literal["off", "otlp", "console"] = Field(
        default="off", description="Trace every request: `otlp` exports over OTLP/HTTP as the standard "
        "OTEL_EXPORTER_OTLP_* and OTEL_SERVICE_NAME variables say, `console` prints spans to stdout for a quick look; "
        "`off` loads nothing of OpenTelemetry."
    )
    tracing_sample_ratio: float = Field(
        default=1.0, ge=0, le=1, description="Share of requests that start a trace (a continued trace follows its "
        "caller's decision)."
    )
    tracing_parent: Literal["trusted", "any"] = Field(
        default="trusted", description="Whose W3C `traceparent` a request's span continues: `trusted` (peers in "
        "`trusted_proxies` only; anyone else starts a new trace, linked to theirs) or `any`."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    token_status: int = Field(
        default=201, description="Status of a successful POST /oauth/token: 201 as the Banked seed documents, or 200 "
        "as RFC 6749 §5.1 says, for strict clients (openid-client, oauth4webapi) that accept nothing else."
    )
    # -- the HTTP edges of `bankgate serve` (bankgate.http11): what one request may cost, how long a stop takes --
    max_header_bytes: int = Field(
        default=16384, ge=1024, le=1048576, description="Largest request line plus headers in bytes; larger is "
        "refused with 431 and the connection closed, without reading (or keeping) the rest."
    )
    max_headers: int = Field(
        default=100, ge=1, le=10000, description="Most header fields in one request; more is refused with 431."
    )
    header_timeout: float = Field(
        default=10.0, gt=0, le=3600, description="Seconds a request's headers may take from its first byte (from "
        "the connection's start for the first request); then 408 and the connection closed."
    )
    body_timeout: float = Field(
        default=10.0, gt=0, le=3600, description="Seconds without a byte of a request body the server is waiting "
        "for; then 408 and the connection closed."
    )
    keep_alive_timeout: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds an idle connection is kept open between requests."
    )
    shutdown_timeout: float = Field(
        default=10.0, ge=0, le=3600, description="Seconds a stopping server (SIGTERM, SIGINT) lets running "
        "requests finish before it cancels them and exits."
    )
    log_format: LogFormat = Field(
        default="text", description="`text` (uvicorn's lines) or `json`: one JSON object per line on stderr, with "
        "time, level, logger, message and the request id; with `--access-log`, one line per request (route, "
        "status, duration, request id, actor)."
    )

    @field_validator("trusted_proxies", "admin_allowed_ips", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("idempotency_mismatch_status")
    @classmethod
    def _check_mismatch_status(cls, value: int) -> int:
        if value not in (409, 422):
            raise ValueError("must be 422 (the IETF draft) or 409 (as Banked documents)")
        return value

    @field_validator("token_status")
    @classmethod
    def _check_token_status(cls, value: int) -> int:
        if value not in (200, 201):
            raise ValueError("must be 201 (as Banked documents) or 200 (RFC 6749 §5.1, for strict OAuth clients)")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted proxy {cidr!r} is not an IP address or CIDR") from exc
        return value

    @field_validator("admin_allowed_ips")
    @classmethod
    def _check_admin_ips(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"admin allowed address {cidr!r} is not an IP address or CIDR") from exc
        return value

    @model_validator(mode="after")
    def _check_issuer(self) -> Settings:
        if self.issuer is not None and not self.issuer.startswith(("http://", "https://")):
            raise ValueError(f"issuer {self.issuer!r} must be an http:// or https:// URL")
        if self.environment == "production" and (
            self.password_hash_memory_kib < PRODUCTION_HASH_MEMORY_KIB or self.password_hash_time_cost < 2
        ):
            raise ValueError(
                f"in production argon2id needs at least {PRODUCTION_HASH_MEMORY_KIB} KiB and 2 passes "
                "(BANKGATE_PASSWORD_HASH_MEMORY_KIB, BANKGATE_PASSWORD_HASH_TIME_COST)"
            )
        if self.admin_audience == self.audience:
            raise ValueError("BANKGATE_ADMIN_AUDIENCE must differ from BANKGATE_AUDIENCE: an admin token must never "
                             "be accepted by a merchant API, nor a merchant token by the admin API")
        if self.admin_port is not None and self.admin_port == self.port:
            raise ValueError("--admin-port must differ from --port")
        if self.metrics == "admin" and self.admin_port is None:
            raise ValueError("BANKGATE_METRICS=admin serves /metrics on the --admin-port listener only: set "
                             "--admin-port (BANKGATE_ADMIN_PORT), or use BANKGATE_METRICS=on")
        if self.password_hash_memory_kib < 8 * self.password_hash_parallelism:
            raise ValueError("argon2id needs at least 8 KiB of memory per lane (BANKGATE_PASSWORD_HASH_MEMORY_KIB)")
        return self

    def password_hasher(self) -> PasswordHasher:
        """The argon2id hasher these settings describe (hashes made with other parameters still verify)."""
        from argon2 import PasswordHasher

        return PasswordHasher(time_cost=self.password_hash_time_cost, memory_cost=self.password_hash_memory_kib,
                              parallelism=self.password_hash_parallelism)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_path(init_settings())
        if toml is not None:
            sources.append(_StrictTomlSource(settings_cls, toml_file=toml))
        return tuple(sources)

    # Derived values: one place decides each.

    @property
    def sqlalchemy_url(self) -> str:
        """The async SQLAlchemy URL: plain `sqlite:`/`postgresql:` URLs get their async driver."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'bankgate.db').resolve()}"
        if url.startswith("sqlite:"):
            return "sqlite+aiosqlite:" + url.removeprefix("sqlite:")
        for prefix in ("postgresql:", "postgres:"):
            if url.startswith(prefix):
                return "postgresql+asyncpg:" + url.removeprefix(prefix)
        return url

    @property
    def key_prefix(self) -> str:
        """`test` in the sandbox, `live` in production, as in `bk_live_…` / `sk_test_…`."""
        return "live" if self.environment == "production" else "test"

    def issuer_for(self, host: str, port: int, *, tls: bool = False) -> str:
        """The configured issuer, else the URL of `host:port` (see `listen_url`)."""
        if self.issuer:
            return self.issuer.rstrip("/")
        return listen_url(host, port, tls=tls)


def listen_url(host: str, port: int, *, tls: bool = False) -> str:
    """`http(s)://host:port` for a bound address; a bind-all address is not a URL anyone can reach: loopback."""
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):  # noqa: S104
        shown = "127.0.0.1"
    return f"{'https' if tls else 'http'}://{shown}:{port}"


class UnknownSettingError(ValueError):
    """A key in the TOML file that is no setting: a typo would otherwise be ignored and its default used."""


class _StrictTomlSource(TomlConfigSettingsSource):
    """The TOML file, refusing keys that name no setting (environment variables may hold anything, the file not)."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        super().__init__(settings_cls, toml_file=toml_file)
        known = sorted(settings_cls.model_fields)
        for key in self.toml_data:
            if key not in settings_cls.model_fields:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; settings are: {', '.join(known)}"
                raise UnknownSettingError(f"unknown setting {key!r} in {toml_file}{hint}")


def _toml_path(init: dict[str, Any]) -> Path | None:
    explicit = os.environ.get("BANKGATE_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"BANKGATE_CONFIG={explicit} does not exist")
        return path
    data_dir = init.get("data_dir") or os.environ.get("BANKGATE_DATA_DIR") or DEFAULT_DATA_DIR
    candidate = Path(data_dir) / "bankgate.toml"
    return candidate if candidate.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build settings; `None` overrides are dropped so that unset flags fall through to the environment."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
