"""The command line through the admin API (`bankgate --server URL --admin-key bka_… clients list`).

`RemoteServices` answers the part of `Services` the commands call, `services.admin.<group>.<use case>(...)`, with the
same signatures and the same records, each one an HTTP call to `/admin/v1` authenticated with the administrator's
key pair; the server runs the use case, as `api:<administrator>`, and audits it. The commands stay one copy: they
run a job against the services, local or remote, and render what comes back.

The secret comes from `BANKGATE_ADMIN_SECRET` or a hidden prompt, never from the command line; it travels only in
the `Authorization` header, and only over HTTPS (plain HTTP is accepted for a loopback address alone).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import typer

import bankgate
from bankgate.admin import Actor, AllowListing
from bankgate.admin.ips import Subject
from bankgate.cli._common import CliError
from bankgate.credentials.admins import AdminRecord, IssuedAdminSecret
from bankgate.credentials.allowlist import AllowEntry
from bankgate.credentials.clients import ClientRecord, IssuedSecret, SecretHash
from bankgate.credentials.users import M2M_USER_TYPE, NewUser, UserRecord
from bankgate.events import AuditEvent
from bankgate.pki import IssuedCertificate
from bankgate.pki.certificates import CertificateRecord
from bankgate.store.paging import MAX_LIMIT, Page
from bankgate.tokens.keys import SigningKey
from bankgate.tokens.signing_keys import KeyRetirement

__all__ = ["Remote", "RemoteError", "RemoteServices", "needs_local"]

T = TypeVar("T")

API_PREFIX = "/admin/v1"
#: The admin API's largest page; longer listings are read a page at a time.
_PAGE = MAX_LIMIT
#: Answers worth the same request again (with the same Idempotency-Key): the server was restarting or overloaded.
_RETRY_STATUSES = (502, 503, 504)
_ATTEMPTS = 3

class RemoteError(CliError):
    """The admin API refused, or could not be reached: the message says what happened and what to do."""


def needs_local(what: str) -> RemoteError:
    return RemoteError(f"`bankgate {what}` needs local access to the database; run it on the server, without "
                       "--server")


@dataclass(slots=True)
class Remote:
    """Where and as whom: `--server`, `--admin-key`, `--ca-file`; the secret is read when first needed."""

    server: str
    admin_key: str | None
    ca_file: Path | None = None
    _secret: str | None = field(default=None, repr=False)

    def secret(self) -> str:
        if self._secret is None:
            given = os.environ.get("BANKGATE_ADMIN_SECRET")
            if not given:
                given = str(typer.prompt("Admin secret (ska_…)", hide_input=True, err=True))
            self._secret = given.strip()
        if not self._secret:
            raise RemoteError("no admin secret: set BANKGATE_ADMIN_SECRET or type it when asked")
        return self._secret

    def base_url(self) -> str:
        parts = urlsplit(self.server.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"--server {self.server} is not a URL like https://auth.example.com")
        if parts.username is not None or parts.password is not None:
            raise RemoteError("--server takes no credentials in the URL: give --admin-key and "
                              "BANKGATE_ADMIN_SECRET")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise RemoteError(f"--server {self.server}: the admin secret goes only over HTTPS (plain HTTP to a "
                              "loopback address alone); use https://")
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{API_PREFIX}"

    def verify(self) -> ssl.SSLContext | bool:
        if self.ca_file is None:
            return True
        if not self.ca_file.is_file():
            raise RemoteError(f"--ca-file {self.ca_file} does not exist")
        return ssl.create_default_context(cafile=str(self.ca_file))

    def services(self) -> RemoteServices:
        if not self.admin_key:
            raise RemoteError("--server needs the administrator's API key: --admin-key bka_… or BANKGATE_ADMIN_KEY")
        return RemoteServices(_Api(self))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Api:
    """One sync HTTP client for one command: Basic auth, `Idempotency-Key` on every change (the same on a retry),
    problem+json answers turned into `RemoteError`."""

    def __init__(self, remote: Remote) -> None:
        self._remote = remote
        self._client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        if self._client is None:
            remote = self._remote
            self._client = httpx.Client(
                base_url=remote.base_url(), verify=remote.verify(), timeout=30,
                auth=httpx.BasicAuth(remote.admin_key or "", remote.secret()),
                headers={"user-agent": f"bankgate-cli/{bankgate.__version__}", "accept": "application/json"})
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        sent = dict(headers or {})
        if method != "GET":
            sent["idempotency-key"] = str(uuid.uuid4())  # once per change, reused by its retries
        query = {k: v for k, v in (params or {}).items() if v is not None}
        http = self._http()
        for attempt in range(_ATTEMPTS):
            try:
                response = http.request(method, path, json=body, params=query, headers=sent)
            except httpx.TransportError as exc:
                if attempt + 1 < _ATTEMPTS and not _tls_refused(exc):
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise RemoteError(f"cannot reach the admin API at {self._remote.server}: "
                                  f"{_reason(exc)}") from None
            if response.status_code in _RETRY_STATUSES and attempt + 1 < _ATTEMPTS:
                time.sleep(0.5 * (attempt + 1))
                continue
            if response.status_code >= 400:
                raise RemoteError(_problem(response, self._remote))
            return response
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **options: Any) -> Any:
        return self.request(method, path, **options).json()

    def read(self, path: str) -> tuple[Any, str]:
        """A resource and its ETag, for a change that must name the version it read (`If-Match`)."""
        response = self.request("GET", path)
        return response.json(), response.headers.get("etag", "")

    def change(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """PATCH or DELETE: GET the resource for its ETag, then change exactly that version."""
        _, tag = self.read(path)
        return self.json(method, path, body=body, headers={"if-match": tag})

    def every(self, path: str, name: str, params: dict[str, Any] | None = None,
              limit: int | None = None) -> Iterator[Any]:
        """Every item of a paged listing (or the first `limit`), following `next_cursor`."""
        cursor: str | None = None
        given = 0
        while True:
            document = self.json("GET", path, params={**(params or {}), "limit": _PAGE, "cursor": cursor})
            for item in document[name]:
                if limit is not None and given >= limit:
                    return
                given += 1
                yield item
            cursor = document.get("next_cursor")
            if not cursor:
                return


def _tls_refused(exc: BaseException) -> bool:
    """The server's certificate was not trusted: asking again changes nothing."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _problem(response: httpx.Response, remote: Remote) -> str:
    """A problem+json answer as one line: its detail, the fields it names, and what to do for 401."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return f"the admin API answered {response.status_code} {response.reason_phrase}"
    detail = str(problem.get("detail") or problem.get("title") or response.reason_phrase)
    fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in problem.get("errors") or ()
                       if isinstance(e, dict))
    message = f"{detail} ({fields})" if fields and fields not in detail else detail
    if response.status_code == 401:
        return (f"the admin API refused the key pair of {remote.admin_key} ({message}); check --admin-key and "
                "BANKGATE_ADMIN_SECRET")
    return f"{message} [{response.status_code}]"


def _part(value: str) -> str:
    return quote(value, safe="")


# -- records from their JSON ---------------------------------------------------------------------------------------
# What the API sends is what the records' `as_json` gives; no hash ever crosses the wire, so a record read here
# holds none (only whether there is one, where the JSON says so).

def _client(doc: dict[str, Any]) -> ClientRecord:
    return ClientRecord(
        id=doc["client_id"], api_key=doc["api_key"], name=doc["name"], auth_mode=doc["auth_mode"],
        scopes=tuple(doc["scopes"]), environment=doc["environment"], status=doc["status"],
        created_at=float(doc["created_at"]), revoked_at=doc.get("revoked_at"), version=int(doc.get("version", 1)),
        secrets=tuple(SecretHash("", float(s["created_at"]), s.get("expires_at")) for s in doc.get("secrets", ())))


def _user(doc: dict[str, Any]) -> UserRecord:
    return UserRecord(
        id=doc["user_id"], username=doc["username"], name=doc["name"], user_type=doc["user_type"],
        environment=doc["environment"], status=doc["status"], created_at=float(doc["created_at"]),
        passphrase_expires_at=doc.get("passphrase_expires_at"), password_changed_at=doc.get("password_changed_at"),
        password_hash=None if doc.get("must_reset_passphrase") else "", scopes=tuple(doc.get("scopes", ())),
        version=int(doc.get("version", 1)))


def _admin(doc: dict[str, Any]) -> AdminRecord:
    return AdminRecord(
        id=doc["admin_id"], name=doc["name"], role=doc["role"], api_key=doc["api_key"],
        environment=doc["environment"], status=doc["status"], created_at=float(doc["created_at"]),
        updated_at=float(doc["updated_at"]), version=int(doc["version"]),
        password_hash="" if doc.get("console_password") else None,
        totp_secret=b"" if doc.get("totp_enrolled") else None)


# A secret shown once is built from the answer that carries it, with no second request that could fail and lose it;
# the record then holds what that answer says (the rest as when just created).

def _issued_secret(doc: dict[str, Any], name: str) -> IssuedSecret:
    client = ClientRecord(id=doc["client_id"], api_key=doc["api_key"], name=doc.get("name", name),
                          auth_mode=doc["auth_mode"], scopes=tuple(doc["scopes"]), environment=doc["environment"],
                          status="active", created_at=time.time())
    return IssuedSecret(client, doc["secret_key"])


def _new_user(doc: dict[str, Any]) -> NewUser:
    user = UserRecord(id=doc["user_id"], username=doc["username"], name=doc["name"], user_type=M2M_USER_TYPE,
                      environment=doc["environment"], status="active", created_at=time.time(),
                      passphrase_expires_at=doc.get("passphrase_expires_at"), password_changed_at=None,
                      scopes=tuple(doc.get("scopes", ())))
    return NewUser(user, doc["initial_passphrase"])


def _issued_admin(doc: dict[str, Any]) -> IssuedAdminSecret:
    now = time.time()
    admin = AdminRecord(id=doc["admin_id"], name=doc["name"], role=doc["role"], api_key=doc["api_key"],
                        environment=doc["environment"], status="active", created_at=now, updated_at=now, version=1)
    return IssuedAdminSecret(admin, doc["secret_key"])


def _entry(doc: dict[str, Any]) -> AllowEntry:
    return AllowEntry(kind=doc["kind"], subject_id=doc["subject_id"], environment=doc["environment"],
                      cidr=doc["cidr"], created_at=float(doc["created_at"]))


def _subject(doc: dict[str, Any]) -> Subject:
    return Subject(kind=doc["kind"], id=doc["subject_id"], label=doc["subject"])


def _certificate(doc: dict[str, Any]) -> CertificateRecord:
    return CertificateRecord(
        serial=doc["serial"], user_id=doc["user_id"], environment=doc["environment"], thumbprint=doc["thumbprint"],
        x5t_s256=doc["x5t#S256"], subject=doc["subject"], not_before=float(doc["not_before"]),
        not_after=float(doc["not_after"]), certificate_pem=doc.get("certificate_pem", ""),
        status=doc.get("status", "valid"), revoked_at=doc.get("revoked_at"),
        created_at=float(doc.get("created_at", doc["not_before"])))


def _key(doc: dict[str, Any]) -> SigningKey:
    return SigningKey(kid=doc["kid"], alg=doc["alg"], public_jwk={}, created_at=float(doc["created_at"]),
                      retired_at=doc.get("retired_at"), publish_until=doc.get("published_until"), public_key=None)


def _event(doc: dict[str, Any]) -> AuditEvent:
    return AuditEvent(event=doc["event"], actor=doc["actor"], outcome=doc["outcome"], source_ip=doc.get("source_ip"),
                      detail=doc.get("detail") or {}, at=float(doc["at"]))


def _no_deleted_listing(deleted: bool, status: str | None, what: str) -> None:
    if deleted and status is None:
        raise RemoteError(f"--deleted lists every {what} locally; through the admin API ask for --status deleted")


# -- the use cases, one HTTP call each -----------------------------------------------------------------------------

class _Clients:
    def __init__(self, api: _Api) -> None:
        self._api = api

    async def page(self, *, limit: int, cursor: str | None, status: str | None, q: str | None,
                   deleted: bool) -> Page[ClientRecord]:
        _no_deleted_listing(deleted, status, "client")
        doc = self._api.json("GET", "/clients", params={"limit": limit, "cursor": cursor, "status": status, "q": q})
        return Page(tuple(_client(d) for d in doc["clients"]), doc.get("next_cursor"))

    async def get(self, api_key: str) -> ClientRecord:
        return _client(self._api.json("GET", f"/clients/{_part(api_key)}"))

    async def create(self, actor: Actor, name: str, scopes: list[str], auth_mode: str) -> IssuedSecret:
        doc = self._api.json("POST", "/clients", body={"name": name, "scopes": list(scopes), "auth_mode": auth_mode})
        return _issued_secret(doc, name)

    async def update(self, actor: Actor, api_key: str, *, name: str | None = None,
                     scopes: list[str] | None = None, auth_mode: str | None = None) -> ClientRecord:
        body = {k: v for k, v in (("name", name), ("scopes", scopes), ("auth_mode", auth_mode)) if v is not None}
        return _client(self._api.change("PATCH", f"/clients/{_part(api_key)}", body))

    async def _action(self, api_key: str, action: str) -> ClientRecord:
        return _client(self._api.json("POST", f"/clients/{_part(api_key)}/{action}"))

    async def disable(self, actor: Actor, api_key: str) -> ClientRecord:
        return await self._action(api_key, "disable")

    async def enable(self, actor: Actor, api_key: str) -> ClientRecord:
        return await self._action(api_key, "enable")

    async def revoke(self, actor: Actor, api_key: str) -> ClientRecord:
        return await self._action(api_key, "revoke")

    async def delete(self, actor: Actor, api_key: str) -> ClientRecord:
        return _client(self._api.change("DELETE", f"/clients/{_part(api_key)}"))

    async def rotate_secret(self, actor: Actor, api_key: str, overlap: float) -> IssuedSecret:
        doc = self._api.json("POST", f"/clients/{_part(api_key)}/rotate-secret", body={"overlap_seconds": overlap})
        return _issued_secret(doc, "")


class _Users:
    def __init__(self, api: _Api) -> None:
        self._api = api

    async def page(self, *, limit: int, cursor: str | None, status: str | None, q: str | None,
                   deleted: bool) -> Page[UserRecord]:
        _no_deleted_listing(deleted, status, "user")
        doc = self._api.json("GET", "/users", params={"limit": limit, "cursor": cursor, "status": status, "q": q})
        return Page(tuple(_user(d) for d in doc["users"]), doc.get("next_cursor"))

    async def get(self, username: str) -> UserRecord:
        return _user(self._api.json("GET", f"/users/{_part(username)}"))

    async def allow_list(self, user: UserRecord) -> list[AllowEntry]:
        doc = self._api.json("GET", f"/ip-allowlist/{_part(user.username)}")
        return [_entry(e) for e in doc["entries"]]

    async def create(self, actor: Actor, name: str, username: str | None, scopes: Any) -> NewUser:
        body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
        if username is not None:
            body["username"] = username
        return _new_user(self._api.json("POST", "/users", body=body))

    async def update(self, actor: Actor, username: str, *, name: str | None = None,
                     scopes: list[str] | None = None) -> UserRecord:
        body = {k: v for k, v in (("name", name), ("scopes", scopes)) if v is not None}
        return _user(self._api.change("PATCH", f"/users/{_part(username)}", body))

    async def new_passphrase(self, actor: Actor, username: str) -> NewUser:
        return _new_user(self._api.json("POST", f"/users/{_part(username)}/new-passphrase"))

    async def _action(self, username: str, action: str) -> UserRecord:
        return _user(self._api.json("POST", f"/users/{_part(username)}/{action}"))

    async def disable(self, actor: Actor, username: str) -> UserRecord:
        return await self._action(username, "disable")

    async def enable(self, actor: Actor, username: str) -> UserRecord:
        return await self._action(username, "enable")

    async def revoke(self, actor: Actor, username: str) -> UserRecord:
        return await self._action(username, "revoke")

    async def delete(self, actor: Actor, username: str) -> UserRecord:
        return _user(self._api.change("DELETE", f"/users/{_part(username)}"))


class _Ips:
    def __init__(self, api: _Api) -> None:
        self._api = api

    async def allow(self, actor: Actor, who: str, cidr: str) -> tuple[Subject, AllowEntry]:
        doc = self._api.json("POST", f"/ip-allowlist/{_part(who)}", body={"cidr": cidr})
        return _subject(doc), _entry(doc)

    async def remove(self, actor: Actor, who: str, cidr: str) -> tuple[Subject, list[AllowEntry]]:
        doc = self._api.json("DELETE", f"/ip-allowlist/{_part(who)}/{quote(cidr, safe='/')}")
        return _subject(doc), [_entry(e) for e in doc["entries"]]

    async def listing(self, who: str | None = None) -> AllowListing:
        doc = self._api.json("GET", "/ip-allowlist" if who is None else f"/ip-allowlist/{_part(who)}")
        return AllowListing(
            environment=doc["environment"], default=doc["default"],
            entries=tuple((e["subject"], _entry(e)) for e in doc["entries"]),
            subject=_subject(doc["subject"]) if doc.get("subject") else None,
            without_entries=tuple(doc.get("without_entries", ())))


def _csr_pem(request: bytes) -> str:
    """The API takes a PEM CSR; a DER one (what `--csr` also accepts) is converted here."""
    if request.lstrip().startswith(b"-----BEGIN"):
        return request.decode("ascii")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        return x509.load_der_x509_csr(request).public_bytes(serialization.Encoding.PEM).decode("ascii")
    except ValueError:
        raise RemoteError("--csr is no certificate signing request (PKCS#10, PEM or DER)") from None


class _Certs:
    def __init__(self, api: _Api) -> None:
        self._api = api

    async def issue(self, actor: Actor, username: str, deliver: Callable[[IssuedCertificate], T], *,
                    csr_pem: bytes | None = None, days: int = 365,
                    key_type: str = "ec") -> tuple[IssuedCertificate, T]:
        body: dict[str, Any] = {"days": days, "key_type": key_type}
        if csr_pem is not None:
            body["csr_pem"] = _csr_pem(csr_pem)
        doc = self._api.json("POST", f"/users/{_part(username)}/certificates", body=body)
        bundle = doc.get("pkcs12")
        issued = IssuedCertificate(record=_certificate({**doc, "created_at": time.time()}),
                                   pkcs12=base64.b64decode(bundle) if bundle else None,
                                   pkcs12_password=doc.get("pkcs12_password"))
        return issued, deliver(issued)

    async def list(self, username: str) -> list[CertificateRecord]:
        return [_certificate(d) for d in self._api.every(f"/users/{_part(username)}/certificates", "certificates")]

    async def get(self, serial: str) -> CertificateRecord:
        return _certificate(self._api.json("GET", f"/certificates/{_part(serial)}"))

    async def revoke(self, actor: Actor, serial: str) -> tuple[CertificateRecord, bool]:
        doc = self._api.json("POST", f"/certificates/{_part(serial)}/revoke")
        return _certificate(doc), bool(doc.get("revoked_now"))


class _Keys:
    def __init__(self, api: _Api) -> None:
        self._api = api

    async def list(self) -> list[SigningKey]:
        return [_key(d) for d in self._api.every("/signing-keys", "keys")]

    async def rotate(self, actor: Actor, alg: str | None = None) -> SigningKey:
        return _key(self._api.json("POST", "/signing-keys/rotate", body={"alg": alg} if alg else {}))

    async def retire(self, actor: Actor, kid: str, *, rotate: bool = False) -> KeyRetirement:
        doc = self._api.json("POST", f"/signing-keys/{_part(kid)}/retire", body={"rotate": rotate})
        replaced = doc.get("rotated_to")
        return KeyRetirement(_key(doc["retired"]), _key(replaced) if replaced else None)


class _Audit:
    def __init__(self, api: _Api) -> None:
        self._api = api

    async def tail(self, limit: int = 20, *, event: str | None = None, actor: str | None = None,
                   since: float | None = None, until: float | None = None, subject: str | None = None,
                   outcome: str | None = None) -> list[AuditEvent]:
        """The newest `limit` matching events, oldest first (the API gives them newest first)."""
        params = {"event": event, "actor": actor, "since": since, "until": until, "subject": subject,
                  "outcome": outcome}
        newest_first = [_event(d) for d in self._api.every("/audit", "events", params, limit=limit)]
        return newest_first[::-1]

    def export(self, *_: Any, **__: Any) -> Any:
        raise needs_local("audit tail --export")


class _Admins:
    def __init__(self, api: _Api) -> None:
        self._api = api

    async def list(self, *, deleted: bool = False) -> list[AdminRecord]:
        records = [_admin(d) for d in self._api.every("/admins", "admins")]
        if deleted:
            records += [_admin(d) for d in self._api.every("/admins", "admins", {"status": "deleted"})]
            records.sort(key=lambda r: r.created_at)
        return records

    async def get(self, name: str) -> AdminRecord:
        return _admin(self._api.json("GET", f"/admins/{_part(name)}"))

    async def create(self, actor: Actor, name: str, role: str) -> IssuedAdminSecret:
        return _issued_admin(self._api.json("POST", "/admins", body={"name": name, "role": role}))

    async def disable(self, actor: Actor, name: str) -> AdminRecord:
        return _admin(self._api.json("POST", f"/admins/{_part(name)}/disable"))

    async def enable(self, actor: Actor, name: str) -> AdminRecord:
        return _admin(self._api.json("POST", f"/admins/{_part(name)}/enable"))

    async def delete(self, actor: Actor, name: str) -> AdminRecord:
        return _admin(self._api.change("DELETE", f"/admins/{_part(name)}"))

    async def set_role(self, actor: Actor, name: str, role: str) -> AdminRecord:
        return _admin(self._api.change("PATCH", f"/admins/{_part(name)}", {"role": role}))

    async def rotate_secret(self, actor: Actor, name: str) -> IssuedAdminSecret:
        return _issued_admin(self._api.json("POST", f"/admins/{_part(name)}/rotate-secret"))


class _Admin:
    def __init__(self, api: _Api) -> None:
        self.clients = _Clients(api)
        self.users = _Users(api)
        self.ips = _Ips(api)
        self.certs = _Certs(api)
        self.keys = _Keys(api)
        self.audit = _Audit(api)
        self.admins = _Admins(api)


class RemoteServices:
    """`services.admin` over the admin API, for the commands' jobs (see the module's docstring)."""

    def __init__(self, api: _Api) -> None:
        self._api = api
        self.admin = _Admin(api)

    async def close(self) -> None:
        self._api.close()

