"""bankgate.client in the certificate style against a real `bankgate serve --tls`: Basic username:password on the
authorize endpoint over mutual TLS with the built-in CA's certificates (PEM pair and PKCS#12), the 300 s token
reused, single flight across threads and coroutines, and typed errors."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankgate.client import (
    Bankgate,
    BankgateAuth,
    BankingCircle,
    CertificateAuthorize,
    ClientCertificate,
    InvalidClient,
    MemoryCache,
    PasswordResetRequired,
    Token,
)
from client_helpers import issued
from conftest import AUTHORIZE, PASSWORD, Tls, run_cli

ORDER = {"application_id": "app_1", "amount": "12.50", "currency": "EUR", "reference": "Invoice 2026-002"}


def _banking_circle(tls: Tls, user: dict[str, Any], **options: Any) -> BankingCircle:
    base = tls.server.base_url
    return BankingCircle(user["username"], PASSWORD, cert=user["cert"], auth_url=base, api_url=base,
                         verify=str(tls.ca), cache=MemoryCache(), **options)


def test_banking_circle_preset_gets_a_300_second_token_and_pays_over_mutual_tls(tls: Tls) -> None:
    user = tls.new_user("Payments Robot", scopes=("app_1",))
    preset = _banking_circle(tls, user)
    with preset.client() as api:
        accounts = api.get("/api/v1/accounts")
        assert accounts.status_code == 200, accounts.text
        paid = api.post("/api/v1/payments", json=ORDER)
        assert paid.status_code == 201, paid.text
        for _ in range(5):
            assert api.get("/api/v1/whoami").json()["certificate_bound"] is True
    token = preset.token()
    assert token.lifetime == 300 and token.response["expires_in"] == "300"
    assert 265 < token.expires_at - time.time() <= 300
    assert issued(tls.server, user["username"]) == 1


def test_pkcs12_certificate_with_its_password_works_like_the_pem_pair(tls: Tls) -> None:
    user = tls.new_user("PKCS12 Robot", scopes=("app_1",))
    p12 = user["certificate"]["pkcs12_file"]
    password = user["certificate"]["pkcs12_password"]
    bankgate = Bankgate(tls.server.base_url, username=user["username"], password=PASSWORD, cert=p12,
                        cert_password=password, verify=str(tls.ca), cache=MemoryCache())
    with bankgate.client() as api:
        assert api.get("/api/v1/whoami").json()["thumbprint"] == user["certificate"]["thumbprint"]
    assert password not in repr(ClientCertificate.from_pkcs12(p12, password))
    with pytest.raises(ValueError, match="wrong password"):
        ClientCertificate.from_pkcs12(p12, "not the password")


def _expired_auth(tls: Tls, user: dict[str, Any]) -> BankgateAuth:
    source = CertificateAuthorize(tls.server.base_url + AUTHORIZE, user["username"], PASSWORD, user["cert"],
                                  verify=str(tls.ca))
    cache = MemoryCache()
    cache.set(source.cache_key, Token("expired.jwt.value", time.time() - 1, 300))
    return BankgateAuth(source, cache=cache)


def test_thirty_two_threads_and_a_thousand_coroutines_on_an_expired_token_make_one_request_each(tls: Tls) -> None:
    user = tls.new_user("Busy Robot")
    auth = _expired_auth(tls, user)
    context = auth.source.ssl_context
    barrier = threading.Barrier(32)
    statuses: list[int] = []
    with httpx.Client(base_url=tls.server.base_url, auth=auth, verify=context, timeout=60) as api:
        def work() -> None:
            barrier.wait()
            statuses.append(api.get("/api/v1/whoami").status_code)

        threads = [threading.Thread(target=work) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 32
    assert issued(tls.server, user["username"]) == 1

    auth = _expired_auth(tls, user)

    async def main() -> list[int]:
        async with httpx.AsyncClient(base_url=tls.server.base_url, auth=auth, verify=auth.source.ssl_context,
                                     limits=httpx.Limits(max_connections=20), timeout=120) as api:
            answers = await asyncio.gather(*(api.get("/api/v1/whoami") for _ in range(1000)))
        return [a.status_code for a in answers]

    assert asyncio.run(main()) == [200] * 1000
    assert issued(tls.server, user["username"]) == 2


def test_wrong_password_and_unreset_passphrase_are_typed_errors_that_hide_the_password(tls: Tls) -> None:
    user = tls.new_user("Careless Robot")
    wrong = "Not-The-Password-42"
    preset = BankingCircle(user["username"], wrong, cert=user["cert"], auth_url=tls.server.base_url,
                           verify=str(tls.ca), cache=MemoryCache())
    with pytest.raises(InvalidClient) as refused:
        preset.token()
    assert refused.value.status == 401 and "username or password is wrong" in str(refused.value)
    assert wrong not in str(refused.value) and wrong not in repr(preset) and wrong not in repr(preset.auth)

    fresh = tls.new_user("New Robot", reset=False)
    preset = BankingCircle(fresh["username"], fresh["initial_passphrase"], cert=fresh["cert"],
                           auth_url=tls.server.base_url, verify=str(tls.ca), cache=MemoryCache())
    with pytest.raises(PasswordResetRequired) as forbidden:
        preset.token()
    assert forbidden.value.status == 403 and "reset the initial passphrase" in str(forbidden.value)
    assert fresh["initial_passphrase"] not in str(forbidden.value)


def test_the_certificate_style_requires_a_certificate() -> None:
    with pytest.raises(ValueError, match="client certificate"):
        CertificateAuthorize("https://example.test" + AUTHORIZE, "user", "password", None)


def test_token_command_in_the_certificate_style(tls: Tls, tmp_path: Path) -> None:
    user = tls.new_user("Shell Robot")
    cert, key = user["cert"]
    answer = json.loads(run_cli(
        "token", "--authorize-url", tls.server.base_url, "--username", user["username"], "--cert", cert,
        "--key", key, "--ca", str(tls.ca), "--cache-dir", str(tmp_path), "--json",
        env={"BANKGATE_PASSWORD": PASSWORD}).stdout)
    assert answer["expires_in"] == "300" and answer["access_token"].count(".") == 2
    assert PASSWORD not in json.dumps(answer)
