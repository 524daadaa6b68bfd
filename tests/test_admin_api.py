"""The admin API (`/admin/v1`, bankgate.adminapi): authentication (admin key pair or admin token), roles, the
resources over the use cases, and its conventions (problems, Idempotency-Key, ETag/If-Match, cursor pages)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import InProcessServer, Server, basic

API = "/admin/v1"


class Admin:
    def __init__(self, server: Server, created: dict[str, Any]) -> None:
        self.server = server
        self.name: str = created["name"]
        self.api_key: str = created["api_key"]
        self.secret_key: str = created["secret_key"]
        self.headers = {"Authorization": basic(self.api_key, self.secret_key)}

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.server.http.get(API + path, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.server.http.post(API + path, json=body, headers=headers, **kwargs)

    def patch(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.server.http.patch(API + path, json=body, headers=headers, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.server.http.delete(API + path, headers=headers, **kwargs)


def new_admin(server: Server, name: str, role: str) -> Admin:
    return Admin(server, server.cli_json("admins", "create", name, "--role", role))


@pytest.fixture
def owner(server: Server) -> Admin:
    return new_admin(server, "ops-owner", "owner")


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    document: dict[str, Any] = response.json()
    assert document["status"] == status
    return document


def test_me_says_who_calls_and_what_it_may_do(server: Server, owner: Admin) -> None:
    answer = owner.get("/me")
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    me = answer.json()
    assert me["name"] == "ops-owner" and me["role"] == "owner" and me["authenticated_with"] == "basic"
    assert "admins:write" in me["permissions"] and "secret_key" not in me


def test_unknown_key_and_wrong_secret_get_the_same_401(server: Server, owner: Admin) -> None:
    unknown = server.http.get(f"{API}/me", headers={"Authorization": basic("bka_test_" + "A" * 24, "ska_test_x")})
    wrong = server.http.get(f"{API}/me", headers={"Authorization": basic(owner.api_key, "ska_test_wrong")})
    none = server.http.get(f"{API}/me")
    for answer in (unknown, wrong, none):
        _problem(answer, 401)
        assert answer.headers["www-authenticate"].startswith('Basic realm="bankgate-admin"')
    assert unknown.json() == wrong.json() | {"instance": unknown.json()["instance"]}
    assert unknown.json()["detail"] == wrong.json()["detail"]


def test_a_merchant_key_pair_is_not_an_administrator(server: Server) -> None:
    client = server.create_client("app_1")
    answer = server.http.get(f"{API}/clients", headers={"Authorization": basic(client["api_key"],
                                                                                client["secret_key"])})
    _problem(answer, 401)


def test_client_lifecycle_over_the_api(server: Server, owner: Admin) -> None:
    created = owner.post("/clients", {"name": "Acme shop", "scopes": ["app_1", "app_2"]})
    assert created.status_code == 201, created.text
    client = created.json()
    assert client["secret_key"].startswith("sk_test_")
    assert created.headers["location"] == f"{API}/clients/{client['api_key']}"
    key = client["api_key"]
    # the new key pair works at the token endpoint
    assert server.token(client).status_code == 201

    shown = owner.get(f"/clients/{key}")
    assert shown.status_code == 200 and "secret_key" not in shown.json()
    tag = shown.headers["etag"]
    _problem(owner.patch(f"/clients/{key}", {"name": "Acme"}), 428)
    _problem(owner.patch(f"/clients/{key}", {"name": "Acme"}, headers={"If-Match": '"stale"'}), 412)
    renamed = owner.patch(f"/clients/{key}", {"name": "Acme", "scopes": ["app_1"]}, headers={"If-Match": tag})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Acme" and renamed.json()["scopes"] == ["app_1"]
    assert renamed.headers["etag"] != tag
    _problem(owner.patch(f"/clients/{key}", {"name": "Again"}, headers={"If-Match": tag}), 412)
    tag = renamed.headers["etag"]
    bad_mode = _problem(owner.patch(f"/clients/{key}", {"auth_mode": "magic"}, headers={"If-Match": tag}), 422)
    assert [e["field"] for e in bad_mode["errors"]] == ["auth_mode"]
    to_basic = owner.patch(f"/clients/{key}", {"auth_mode": "basic"}, headers={"If-Match": tag})
    assert to_basic.status_code == 200 and to_basic.json()["auth_mode"] == "basic"
    assert server.token(client).status_code == 400, "a basic client gets no token"
    back = owner.patch(f"/clients/{key}", {"auth_mode": "oauth2"}, headers={"If-Match": to_basic.headers["etag"]})
    assert back.status_code == 200 and back.json()["auth_mode"] == "oauth2"

    assert owner.post(f"/clients/{key}/disable").json()["status"] == "disabled"
    assert server.token(client).status_code == 401
    assert owner.post(f"/clients/{key}/enable").json()["status"] == "active"
    rotated = owner.post(f"/clients/{key}/rotate-secret", {"overlap_seconds": 0})
    assert rotated.status_code == 200 and rotated.json()["secret_key"] != client["secret_key"]
    assert server.token({**client, "secret_key": rotated.json()["secret_key"]}).status_code == 201
    assert owner.post(f"/clients/{key}/revoke").json()["status"] == "revoked"
    conflict = _problem(owner.post(f"/clients/{key}/enable"), 409)
    assert "revoked" in conflict["detail"]
    current = owner.get(f"/clients/{key}").headers["etag"]
    _problem(owner.delete(f"/clients/{key}"), 428)
    deleted = owner.delete(f"/clients/{key}", headers={"If-Match": current})
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    _problem(owner.get("/clients/bk_test_nothing"), 404)

    events = [e for e in server.audit(100) if e["event"].startswith("client.")]
    assert [e["event"] for e in events] == ["client.created", "client.updated", "client.updated", "client.updated",
                                            "client.disabled", "client.enabled", "client.secret_rotated",
                                            "client.revoked", "client.deleted"]
    assert {e["actor"] for e in events} == {"api:ops-owner"}
    assert {e["source_ip"] for e in events} == {"127.0.0.1"}


def test_validation_errors_name_their_fields(server: Server, owner: Admin) -> None:
    missing = _problem(owner.post("/clients", {"scopes": "app_1", "colour": "red"}), 422)
    assert {e["field"] for e in missing["errors"]} == {"name", "scopes", "colour"}
    bad_scope = _problem(owner.post("/clients", {"name": "x", "scopes": ["not an id!"]}), 422)
    assert [e["field"] for e in bad_scope["errors"]] == ["scopes"]
    bad_mode = _problem(owner.post("/clients", {"name": "x", "scopes": ["app_1"], "auth_mode": "magic"}), 422)
    assert [e["field"] for e in bad_mode["errors"]] == ["auth_mode"]
    not_json = owner.post("/clients", content=b"{", headers={"Content-Type": "application/json"})
    _problem(not_json, 400)
    _problem(owner.get("/clients?limit=0"), 422)
    _problem(owner.get("/clients?cursor=bm9wZQ"), 422)
    assert owner.get("/clients").json() == {"clients": [], "next_cursor": None}


def test_an_idempotent_post_is_replayed_not_repeated(server: Server, owner: Admin) -> None:
    body = {"name": "Once", "scopes": ["app_1"]}
    first = owner.post("/clients", body, headers={"Idempotency-Key": "k-1"})
    again = owner.post("/clients", body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
    assert len(owner.get("/clients").json()["clients"]) == 1
    other = owner.post("/clients", {"name": "Twice", "scopes": ["app_1"]}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422
    assert len(owner.get("/clients").json()["clients"]) == 1
    # the kept answer holds a secret: it rests encrypted
    import sqlite3

    with sqlite3.connect(server.data_dir / "bankgate.db") as db:
        kept = [row[0] for row in db.execute("SELECT body FROM idempotency_keys")]
    assert kept and all(first.json()["secret_key"].encode() not in bytes(b) for b in kept)


def test_pages_follow_the_cursor(server: Server, owner: Admin) -> None:
    for n in range(5):
        assert owner.post("/clients", {"name": f"client {n}", "scopes": ["app_1"]}).status_code == 201
    seen: list[str] = []
    answer = owner.get("/clients?limit=2")
    pages = 0
    while True:
        pages += 1
        document = answer.json()
        seen += [c["name"] for c in document["clients"]]
        if document["next_cursor"] is None:
            assert "link" not in answer.headers
            break
        link = answer.headers["link"]
        assert link.endswith('>; rel="next"') and f"cursor={document['next_cursor']}" in link
        answer = owner.get(link[1:link.index(">")].removeprefix(API))
    assert pages == 3 and seen == [f"client {n}" for n in range(5)]
    assert [c["name"] for c in owner.get("/clients?q=CLIENT 3").json()["clients"]] == ["client 3"]
    _problem(owner.get("/clients?status=sleeping"), 422)


def test_roles_decide_what_an_administrator_may_do(server: Server, owner: Admin) -> None:
    auditor = new_admin(server, "watcher", "auditor")
    manager = new_admin(server, "onboarding", "integration-manager")
    refused = _problem(auditor.post("/clients", {"name": "x", "scopes": ["app_1"]}), 403)
    assert refused["permission"] == "clients:write"
    assert auditor.get("/clients").status_code == 200
    assert auditor.get("/audit").status_code == 200
    assert manager.post("/clients", {"name": "x", "scopes": ["app_1"]}).status_code == 201
    _problem(manager.post("/signing-keys/rotate"), 403)
    assert manager.get("/signing-keys").status_code == 200
    rotated = owner.post("/signing-keys/rotate")
    assert rotated.status_code == 201, rotated.text
    assert len(owner.get("/signing-keys").json()["keys"]) == 2
    assert [e["actor"] for e in server.audit(50) if e["event"] == "key.rotated"][-1] == "api:ops-owner"


def test_admin_tokens_and_merchant_tokens_never_cross(server: Server, owner: Admin) -> None:
    issued = server.http.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "admin:*"},
                              headers=owner.headers)
    assert issued.status_code == 201, issued.text
    token = issued.json()
    assert token["expires_in"] == 600 and "admin:admins:write" in token["scope"].split()
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    me = server.http.get(f"{API}/me", headers=bearer)
    assert me.status_code == 200 and me.json()["authenticated_with"] == "bearer"
    # a merchant API refuses the admin token, and the admin key pair
    whoami = server.http.get("/api/v1/whoami", headers=bearer)
    assert whoami.status_code == 401 and "audience" in whoami.json()["error_description"]
    assert server.http.get("/api/v1/whoami", headers=owner.headers).status_code == 401
    # and the admin API refuses a merchant token
    client = server.create_client("app_1")
    merchant = server.token(client).json()["access_token"]
    refused = _problem(server.http.get(f"{API}/me", headers={"Authorization": f"Bearer {merchant}"}), 401)
    assert "audience" in refused["detail"]
    # a narrower token narrows the role
    narrow = server.http.post("/oauth/token", data={"grant_type": "client_credentials",
                                                    "scope": "admin:clients:read"}, headers=owner.headers).json()
    narrow_bearer = {"Authorization": f"Bearer {narrow['access_token']}"}
    assert server.http.get(f"{API}/clients", headers=narrow_bearer).status_code == 200
    _problem(server.http.post(f"{API}/clients", json={"name": "x", "scopes": ["app_1"]}, headers=narrow_bearer),
             403)
    auditor = new_admin(server, "watcher", "auditor")
    too_wide = server.http.post("/oauth/token", data={"grant_type": "client_credentials",
                                                      "scope": "admin:clients:write"}, headers=auditor.headers)
    assert too_wide.status_code == 400 and too_wide.json()["error"] == "invalid_scope"
    wrong = server.http.post("/oauth/token", data={"grant_type": "client_credentials"},
                             headers={"Authorization": basic(owner.api_key, "ska_test_wrong")})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    # disabling the administrator stops its token at once
    new_admin(server, "second-owner", "owner")
    server.cli("admins", "disable", "ops-owner")
    _problem(server.http.get(f"{API}/me", headers=bearer), 401)


def test_users_over_the_api(server: Server, owner: Admin) -> None:
    created = owner.post("/users", {"name": "API Testuser", "scopes": ["app_1"]})
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["username"] == "api-testuser" and len(user["initial_passphrase"]) == 29
    path = f"/users/{user['username']}"
    tag = owner.get(path).headers["etag"]
    assert owner.patch(path, {"scopes": ["app_1", "app_2"]}, headers={"If-Match": tag}).json()["scopes"] == [
        "app_1", "app_2"]
    again = owner.post(f"{path}/new-passphrase")
    assert again.status_code == 200 and again.json()["initial_passphrase"] != user["initial_passphrase"]
    assert owner.post(f"{path}/disable").json()["status"] == "disabled"
    assert owner.post(f"{path}/enable").json()["status"] == "active"
    assert [u["username"] for u in owner.get("/users?q=testuser").json()["users"]] == ["api-testuser"]
    _problem(owner.post("/users", {"name": "x", "username": "Not Valid"}), 422)

    # IP allow list entries, v4 and v6, validated by the allow-list module
    allowed = owner.post(f"/ip-allowlist/{user['username']}", {"cidr": "192.0.2.0/24"})
    assert allowed.status_code == 201, allowed.text
    assert owner.post(f"/ip-allowlist/{user['username']}", {"cidr": "2001:db8::/32"}).status_code == 201
    bad = _problem(owner.post(f"/ip-allowlist/{user['username']}", {"cidr": "300.1.1.1/8"}), 422)
    assert bad["errors"][0]["field"] == "cidr"
    listing = owner.get(f"/ip-allowlist/{user['username']}").json()
    assert sorted(e["cidr"] for e in listing["entries"]) == ["192.0.2.0/24", "2001:db8::/32"]
    removed = owner.delete(f"/ip-allowlist/{user['username']}/2001:db8::/32")
    assert removed.status_code == 200, removed.text
    assert [e["cidr"] for e in removed.json()["entries"]] == ["192.0.2.0/24"]
    _problem(owner.delete(f"/ip-allowlist/{user['username']}/2001:db8::/32"), 404)

    # certificates: from a CSR (PEM back) and generated (PKCS#12 with its password, once)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api-testuser")]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    from_csr = owner.post(f"{path}/certificates", {"csr_pem": csr})
    assert from_csr.status_code == 201, from_csr.text
    assert from_csr.json()["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert "pkcs12" not in from_csr.json()
    generated = owner.post(f"{path}/certificates", {"key_type": "ec"}).json()
    assert generated["pkcs12"] and generated["pkcs12_password"] and "private_key_pem" not in generated
    _problem(owner.post(f"{path}/certificates", {"csr_pem": "not a csr"}), 422)
    listed = owner.get(f"{path}/certificates").json()["certificates"]
    assert len(listed) == 2
    serial = listed[0]["serial"]
    pem = owner.get(f"/certificates/{serial}", headers={"Accept": "application/x-pem-file"})
    assert pem.status_code == 200 and pem.text.startswith("-----BEGIN CERTIFICATE-----")
    assert owner.post(f"/certificates/{serial}/revoke").json()["status"] == "revoked"

    current = owner.get(path).headers["etag"]
    assert owner.delete(path, headers={"If-Match": current}).json()["status"] == "deleted"
    events = {e["event"] for e in server.audit(100) if e["actor"] == "api:ops-owner"}
    assert {"user.created", "user.updated", "user.passphrase_reissued", "user.disabled", "user.enabled",
            "ip.allowed", "ip.removed", "cert.issued", "cert.revoked", "user.deleted"} <= events


def test_the_audit_trail_filters_and_pages(server: Server, owner: Admin) -> None:
    for n in range(3):
        owner.post("/clients", {"name": f"c{n}", "scopes": ["app_1"]})
    created = owner.get("/audit?event=client.created&actor=api:ops-owner&limit=2")
    assert created.status_code == 200, created.text
    first = created.json()
    assert [e["detail"]["scopes"] for e in first["events"]] == [["app_1"], ["app_1"]]
    assert first["next_cursor"] is not None
    rest = owner.get(f"/audit?event=client.created&actor=api:ops-owner&limit=2&cursor={first['next_cursor']}")
    assert len(rest.json()["events"]) == 1 and rest.json()["next_cursor"] is None
    api_key = first["events"][0]["detail"]["api_key"]
    assert len(owner.get(f"/audit?subject={api_key}").json()["events"]) == 1
    assert owner.get("/audit?outcome=failure&event=client.created").json()["events"] == []
    _problem(owner.get("/audit?outcome=maybe"), 422)
    _problem(owner.get("/audit?since=yesterday"), 422)


def test_admin_addresses_fail_closed_in_production(server_factory: Any) -> None:
    server = server_factory({"BANKGATE_ENVIRONMENT": "production"})
    owner = new_admin(server, "ops-owner", "owner")
    refused = _problem(owner.get("/me"), 403)
    assert "BANKGATE_ADMIN_ALLOWED_IPS" in refused["detail"]
    token = server.http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=owner.headers)
    assert token.status_code == 403
    allowed = server_factory({"BANKGATE_ENVIRONMENT": "production", "BANKGATE_ADMIN_ALLOWED_IPS": "127.0.0.0/8"},
                             data_dir=server.data_dir)
    assert Admin(allowed, {"name": owner.name, "api_key": owner.api_key, "secret_key": owner.secret_key}).get(
        "/me").status_code == 200


def test_unknown_routes_and_methods_are_problems(server: Server, owner: Admin) -> None:
    _problem(owner.get("/nothing"), 404)
    wrong_method = _problem(owner.server.http.put(f"{API}/clients", headers=owner.headers), 405)
    assert "GET, POST" in wrong_method["detail"]


def test_audit_json_is_not_a_secret_store(server: Server, owner: Admin) -> None:
    created = owner.post("/clients", {"name": "c", "scopes": ["app_1"]}).json()
    assert created["secret_key"] not in json.dumps(server.audit(100))


def test_admin_port_serves_the_admin_api_alone(server_factory: Any) -> None:
    from conftest import free_port

    admin_port = free_port()
    server = server_factory(args=("--admin-port", str(admin_port)))
    owner = new_admin(server, "ops-owner", "owner")
    public = server.http.get(f"{API}/me", headers=owner.headers)
    assert public.status_code == 404
    assert server.http.get("/healthz").status_code == 200
    with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=10) as admin_listener:
        me = admin_listener.get(f"{API}/me", headers=owner.headers)
        assert me.status_code == 200, me.text
        assert me.json()["name"] == "ops-owner"
        assert admin_listener.get("/healthz").status_code == 404
        assert admin_listener.post("/oauth/token", data={"grant_type": "client_credentials"}).status_code == 404


def test_administrators_over_the_api(server: Server, owner: Admin) -> None:
    manager = new_admin(server, "onboarding", "integration-manager")
    refused = _problem(manager.post("/admins", {"name": "sneaky", "role": "owner"}), 403)
    assert refused["permission"] == "admins:write"
    _problem(manager.get("/admins"), 403)
    created = owner.post("/admins", {"name": "watcher", "role": "auditor"})
    assert created.status_code == 201, created.text
    watcher = Admin(server, created.json())
    assert watcher.get("/me").json()["role"] == "auditor"
    _problem(owner.post("/admins", {"name": "watcher", "role": "auditor"}), 422)
    invalid = _problem(owner.post("/admins", {"name": "x y", "role": "root"}), 422)
    assert invalid["errors"][0]["field"] == "name"
    assert [a["name"] for a in owner.get("/admins").json()["admins"]] == ["ops-owner", "onboarding", "watcher"]
    tag = owner.get("/admins/watcher").headers["etag"]
    promoted = owner.patch("/admins/watcher", {"role": "integration-manager"}, headers={"If-Match": tag})
    assert promoted.status_code == 200 and promoted.json()["role"] == "integration-manager"
    assert watcher.get("/me").json()["role"] == "integration-manager"  # decided again on every request
    # the last active owner cannot be demoted, disabled or deleted
    me_tag = owner.get("/admins/ops-owner").headers["etag"]
    assert "last active owner" in _problem(
        owner.patch("/admins/ops-owner", {"role": "auditor"}, headers={"If-Match": me_tag}), 409)["detail"]
    _problem(owner.post("/admins/ops-owner/disable"), 409)
    rotated = owner.post("/admins/watcher/rotate-secret").json()
    _problem(watcher.get("/me"), 401)
    assert Admin(server, rotated).get("/me").status_code == 200
    assert owner.post("/admins/watcher/disable").json()["status"] == "disabled"
    _problem(Admin(server, rotated).get("/me"), 401)
    current = owner.get("/admins/watcher").headers["etag"]
    assert owner.delete("/admins/watcher", headers={"If-Match": current}).json()["status"] == "deleted"
    events = [e for e in server.audit(100) if e["event"].startswith("admin.") and e["actor"] == "api:ops-owner"]
    assert [e["event"] for e in events] == ["admin.created", "admin.updated", "admin.secret_rotated",
                                            "admin.disabled", "admin.deleted"]
    assert created.json()["secret_key"] not in json.dumps(server.audit(100))


def test_guessing_an_administrator_secret_is_throttled(server: Server, owner: Admin) -> None:
    wrong = {"Authorization": basic(owner.api_key, "ska_test_guess")}
    for _ in range(5):  # BANKGATE_THROTTLE_ACCOUNT_IP_FAILURES
        _problem(server.http.get(f"{API}/me", headers=wrong), 401)
    blocked = _problem(owner.get("/me"), 429)
    assert int(owner.get("/me").headers["retry-after"]) >= 1
    assert "retry in" in blocked["detail"]
    denied = [e for e in server.audit(50) if e["event"] == "admin_api.denied"]
    assert [e["detail"]["reason"] for e in denied][:5] == ["wrong_secret"] * 5
    assert all(e["source_ip"] == "127.0.0.1" for e in denied)


def _walk(admin: Admin, path: str, name: str) -> tuple[list[dict[str, Any]], int]:
    """Every item of a listing, following `Link: rel="next"` from page to page; and the number of pages."""
    items: list[dict[str, Any]] = []
    answer, pages = admin.get(path), 0
    while True:
        assert answer.status_code == 200, answer.text
        pages += 1
        document = answer.json()
        items += document[name]
        if document["next_cursor"] is None:
            assert "link" not in answer.headers
            return items, pages
        link = answer.headers["link"]
        assert link.endswith('>; rel="next"') and f"cursor={document['next_cursor']}" in link
        answer = admin.get(link[1:link.index(">")].removeprefix(API))


def test_a_filtered_walk_shows_every_client_once_even_while_clients_are_added(server: Server, owner: Admin) -> None:
    made = [owner.post("/clients", {"name": f"shop {n}", "scopes": ["app_1"] if n % 2 else ["app_2"],
                                    "auth_mode": "basic" if n % 3 == 0 else "oauth2"}).json() for n in range(9)]
    basic_keys = [c["api_key"] for n, c in enumerate(made) if n % 3 == 0]
    seen, pages = _walk(owner, "/clients?auth_mode=basic&limit=2", "clients")
    assert [c["api_key"] for c in seen] == basic_keys and pages == 2
    app_1 = [c["api_key"] for n, c in enumerate(made) if n % 2]
    assert [c["api_key"] for c in _walk(owner, "/clients?scope=app_1&limit=3", "clients")[0]] == app_1

    # a client added during a walk comes after the cursor: none is shown twice, every earlier one once
    first = owner.get("/clients?limit=4").json()
    late = owner.post("/clients", {"name": "late shop", "scopes": ["app_1"]}).json()
    rest, _ = _walk(owner, f"/clients?limit=4&cursor={first['next_cursor']}", "clients")
    walked = [c["api_key"] for c in first["clients"] + rest]
    assert walked == [c["api_key"] for c in made] + [late["api_key"]]

    # a deleted client leaves the default listing, and is found by its status
    doomed = made[0]["api_key"]
    tag = owner.get(f"/clients/{doomed}").headers["etag"]
    assert owner.delete(f"/clients/{doomed}", headers={"If-Match": tag}).status_code == 200
    assert doomed not in [c["api_key"] for c in _walk(owner, "/clients?limit=50", "clients")[0]]
    assert [c["api_key"] for c in owner.get("/clients?status=deleted").json()["clients"]] == [doomed]

    # a cursor is good only for the listing and the filters that made it
    other_filters = _problem(owner.get(f"/clients?auth_mode=oauth2&limit=4&cursor={first['next_cursor']}"), 422)
    assert other_filters["errors"][0]["field"] == "cursor" and "start again without cursor" in other_filters["detail"]
    cut = _problem(owner.get(f"/clients?limit=4&cursor={first['next_cursor'][:-3]}"), 422)
    assert cut["errors"][0]["field"] == "cursor"
    users_cursor = _problem(owner.get(f"/users?limit=4&cursor={first['next_cursor']}"), 422)
    assert "start again without cursor" in users_cursor["detail"]
    assert _problem(owner.get("/clients?auth_mode=magic"), 422)["errors"][0]["field"] == "auth_mode"
    assert _problem(owner.get("/clients?limit=501"), 422)["errors"][0]["field"] == "limit"
    assert _problem(owner.get("/clients?limit=two"), 422)["errors"][0]["field"] == "limit"


def test_users_and_administrators_page_with_their_filters(server: Server, owner: Admin) -> None:
    names = [owner.post("/users", {"name": f"Batch User {n}"}).json()["username"] for n in range(5)]
    seen, pages = _walk(owner, "/users?q=batch&limit=2", "users")
    assert [u["username"] for u in seen] == names and pages == 3
    for name in ("reader-1", "reader-2", "reader-3"):
        new_admin(server, name, "auditor")
    admins, pages = _walk(owner, "/admins?q=reader&limit=2", "admins")
    assert [a["name"] for a in admins] == ["reader-1", "reader-2", "reader-3"] and pages == 2
    assert _problem(owner.get("/admins?status=asleep"), 422)["errors"][0]["field"] == "status"


def test_a_certificate_listing_pages_by_status(server: Server, owner: Admin) -> None:
    username = owner.post("/users", {"name": "Cert Holder"}).json()["username"]
    serials = [owner.post(f"/users/{username}/certificates", {"key_type": "ec"}).json()["serial"] for _ in range(3)]
    assert owner.post(f"/certificates/{serials[1]}/revoke").status_code == 200
    listed, pages = _walk(owner, f"/users/{username}/certificates?limit=2", "certificates")
    assert [c["serial"] for c in listed] == serials and pages == 2
    valid = owner.get(f"/users/{username}/certificates?status=valid").json()["certificates"]
    assert [c["serial"] for c in valid] == [serials[0], serials[2]]
    soon = owner.get(f"/users/{username}/certificates?expiring_within=2592000").json()["certificates"]
    assert soon == []  # a year's validity: none ends within 30 days
    assert len(owner.get(f"/users/{username}/certificates?expiring_within=31622400").json()["certificates"]) == 2
    _problem(owner.get(f"/users/{username}/certificates?expiring_within=soon"), 422)
    _problem(owner.get("/users/nobody-here/certificates"), 404)


def test_a_stale_etag_changes_nothing(server: Server, owner: Admin) -> None:
    key = owner.post("/clients", {"name": "Versioned", "scopes": ["app_1"]}).json()["api_key"]
    shown = owner.get(f"/clients/{key}")
    first_tag = shown.headers["etag"]
    assert first_tag == f'"{shown.json()["client_id"]}.{shown.json()["version"]}"'
    renamed = owner.patch(f"/clients/{key}", {"name": "Renamed"}, headers={"If-Match": first_tag})
    assert renamed.status_code == 200 and renamed.json()["version"] == shown.json()["version"] + 1
    before = owner.get(f"/clients/{key}")

    stale = _problem(owner.patch(f"/clients/{key}", {"name": "Overwritten"}, headers={"If-Match": first_tag}), 412)
    assert "changed since" in stale["detail"]
    _problem(owner.post(f"/clients/{key}/disable", headers={"If-Match": first_tag}), 412)
    _problem(owner.delete(f"/clients/{key}", headers={"If-Match": first_tag}), 412)
    weak = _problem(owner.patch(f"/clients/{key}", {"name": "x"}, headers={"If-Match": f"W/{before.headers['etag']}"}),
                    412)  # If-Match compares strongly (RFC 9110 §13.1.1)
    assert weak["status"] == 412
    other = owner.post("/clients", {"name": "Other", "scopes": ["app_1"]}).json()["api_key"]
    other_tag = owner.get(f"/clients/{other}").headers["etag"]
    _problem(owner.patch(f"/clients/{key}", {"name": "x"}, headers={"If-Match": other_tag}), 412)

    after = owner.get(f"/clients/{key}")
    assert after.json() == before.json() and after.headers["etag"] == before.headers["etag"]
    assert [e["event"] for e in server.audit(100) if e["detail"].get("api_key") == key] == [
        "client.created", "client.updated"]
    # the current tag (or *) still works, for users and administrators alike
    assert owner.post(f"/clients/{key}/disable", headers={"If-Match": after.headers["etag"]}).status_code == 200

    username = owner.post("/users", {"name": "Versioned User"}).json()["username"]
    user_tag = owner.get(f"/users/{username}").headers["etag"]
    assert owner.patch(f"/users/{username}", {"name": "New"}, headers={"If-Match": user_tag}).status_code == 200
    _problem(owner.patch(f"/users/{username}", {"name": "Old"}, headers={"If-Match": user_tag}), 412)
    _problem(owner.delete(f"/users/{username}", headers={"If-Match": user_tag}), 412)
    assert owner.get(f"/users/{username}").json()["name"] == "New"
    new_admin(server, "versioned-admin", "auditor")
    admin_tag = owner.get("/admins/versioned-admin").headers["etag"]
    assert owner.patch("/admins/versioned-admin", {"role": "integration-manager"},
                       headers={"If-Match": admin_tag}).status_code == 200
    _problem(owner.patch("/admins/versioned-admin", {"role": "owner"}, headers={"If-Match": admin_tag}), 412)
    _problem(owner.post("/admins/versioned-admin/disable", headers={"If-Match": admin_tag}), 412)
    shown_admin = owner.get("/admins/versioned-admin").json()
    assert shown_admin["role"] == "integration-manager" and shown_admin["status"] == "active"
    assert owner.patch("/admins/versioned-admin", {"role": "owner"}, headers={"If-Match": "*"}).status_code == 200


def test_two_patches_with_one_etag_one_wins(server: Server, owner: Admin) -> None:
    import asyncio

    assert isinstance(server, InProcessServer)
    key = owner.post("/clients", {"name": "Contended", "scopes": ["app_1"]}).json()["api_key"]
    tag = owner.get(f"/clients/{key}").headers["etag"]

    async def both() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=server.app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url=server.base_url, headers=owner.headers) as http:
            return list(await asyncio.gather(*(
                http.patch(f"{API}/clients/{key}", json={"name": name}, headers={"If-Match": tag})
                for name in ("First writer", "Second writer"))))

    answers = server.http.portal.call(both)  # type: ignore[attr-defined]
    assert sorted(a.status_code for a in answers) == [200, 412], [a.text for a in answers]
    (winner,) = [a for a in answers if a.status_code == 200]
    (loser,) = [a for a in answers if a.status_code == 412]
    assert "version 1 asked, 2 now" in loser.json()["detail"]  # refused by the write itself, not by an earlier read
    assert owner.get(f"/clients/{key}").json()["name"] == winner.json()["name"]
    updates = [e for e in server.audit(100) if e["event"] == "client.updated" and e["detail"]["api_key"] == key]
    assert [e["detail"]["name"] for e in updates] == [winner.json()["name"]]


def test_the_audit_trail_filters_by_subject_and_outcome(server: Server, owner: Admin) -> None:
    client = owner.post("/clients", {"name": "Audited", "scopes": ["app_1"]}).json()
    owner.post(f"/clients/{client['api_key']}/rotate-secret", {"overlap_seconds": 0})
    owner.post("/clients", {"name": "Bystander", "scopes": ["app_1"]})
    by_id = owner.get(f"/audit?subject={client['client_id']}").json()["events"]
    assert [e["event"] for e in by_id] == ["client.secret_rotated", "client.created"]  # newest first, every name
    user = owner.post("/users", {"name": "Audit Subject"}).json()
    wrong = server.http.post(f"/api/v1/users/{user['username']}/password",
                             json={"passphrase": "not-the-passphrase", "new_password": "Another-Long-Pass-42"})
    assert wrong.status_code in (400, 401, 403), wrong.text
    failures = owner.get(f"/audit?subject={user['username']}&outcome=failure").json()["events"]
    assert [(e["event"], e["outcome"]) for e in failures] == [("user.password_reset", "failure")]
    successes = owner.get(f"/audit?subject={user['username']}&outcome=success").json()["events"]
    assert [e["event"] for e in successes] == ["user.created"]
    everything, _ = _walk(owner, "/audit?limit=2", "events")
    assert len(everything) == len({json.dumps(e, sort_keys=True) for e in everything}) >= 5
    assert _problem(owner.get("/audit?outcome=maybe"), 422)["errors"][0]["field"] == "outcome"
    assert _problem(owner.get("/audit?since=20&until=10"), 422)["status"] == 422
    assert _problem(owner.get("/audit?event=*"), 422)["errors"][0]["field"] == "event"


def test_the_audit_export_streams_a_file_an_auditor_may_read(server: Server, owner: Admin) -> None:
    import csv
    import io

    for n in range(3):
        owner.post("/clients", {"name": f"exported {n}", "scopes": ["app_1"]})
    watcher = new_admin(server, "export-reader", "auditor")
    expected = list(reversed(owner.get("/audit?event=client.created&limit=500").json()["events"]))
    assert len(expected) == 3

    lines = watcher.get("/audit/export?event=client.created")
    assert lines.status_code == 200, lines.text
    assert lines.headers["content-type"] == "application/x-ndjson"
    assert lines.headers["content-disposition"] == 'attachment; filename="bankgate-audit.jsonl"'
    assert lines.headers["cache-control"] == "no-store"
    exported = [json.loads(line) for line in lines.text.splitlines()]
    assert [(e["event"], e["actor"], e["outcome"], e["detail"]) for e in exported] == [
        (e["event"], e["actor"], e["outcome"], e["detail"]) for e in expected]
    assert all(e["at"].startswith("20") and e["at"].endswith("Z") for e in exported)  # RFC 3339 UTC

    table = watcher.get("/audit/export?format=csv&event=client.created&actor=api:ops-owner")
    assert table.status_code == 200 and table.headers["content-type"] == "text/csv; charset=utf-8"
    assert table.headers["content-disposition"] == 'attachment; filename="bankgate-audit.csv"'
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert [json.loads(r["detail"].removeprefix("'"))["api_key"] for r in rows] == [
        e["detail"]["api_key"] for e in expected]
    assert all(r["event"] == "client.created" and r["actor"] == "api:ops-owner" for r in rows)
    assert [r["at"] for r in rows] == [e["at"] for e in exported]

    nothing = watcher.get("/audit/export?format=csv&outcome=failure&event=client.created")
    assert nothing.text.splitlines() == ["at,event,actor,source_ip,outcome,detail"]
    assert _problem(watcher.get("/audit/export?format=xml"), 422)["errors"][0]["field"] == "format"
    assert _problem(watcher.get("/audit/export?outcome=maybe"), 422)["errors"][0]["field"] == "outcome"
    _problem(server.http.get(f"{API}/audit/export"), 401)
    server.flush_audit()
    audited = owner.get("/audit?event=audit.exported&limit=500").json()["events"]
    assert len(audited) == 3, "each export that ran is in the trail, a refused one is not"
    assert {e["actor"] for e in audited} == {"api:export-reader"}
    assert {e["detail"]["format"] for e in audited} == {"jsonl", "csv"}
