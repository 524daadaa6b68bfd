"""Properties of the OAuth request parsing: any input gives parameters or an RFC 6749 error, never a crash."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import parse_qsl, unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bankgate.oauth.errors import OAuthError
from bankgate.oauth.request import Params, _parse_urlencoded, client_credentials, read_params

url_text = st.text(alphabet=st.sampled_from("abc=&%+_-.:20AF~ é"), max_size=40)


@given(url_text)
def test_urlencoded_fast_path_agrees_with_parse_qsl(text: str) -> None:
    try:
        expected = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError):
        with pytest.raises(OAuthError):
            _parse_urlencoded(text, "body")
        return
    assert _parse_urlencoded(text, "body") == expected


@given(st.binary(max_size=80))
def test_any_authorization_header_gives_credentials_or_an_oauth_error(raw: bytes) -> None:
    header = raw.decode("latin-1")
    try:
        credentials = client_credentials(header, Params({}, frozenset()))
    except OAuthError as err:
        assert err.error in ("invalid_request", "invalid_client")
        assert err.status in (400, 401)
    else:
        assert credentials.api_key


@given(st.one_of(st.binary(max_size=60), st.text(alphabet="ab:%41é", max_size=20).map(str.encode)))
def test_any_basic_payload_gives_credentials_or_an_oauth_error(payload: bytes) -> None:
    header = "Basic " + base64.b64encode(payload).decode()
    try:
        credentials = client_credentials(header, Params({}, frozenset()))
    except OAuthError as err:
        assert err.error == "invalid_request"
    else:
        # RFC 6749 §2.3.1: each part is form-urlencoded before base64.
        key, _, secret = payload.decode("utf-8").partition(":")
        assert (credentials.api_key, credentials.secret) == (unquote(key), unquote(secret))


def _scope(body: bytes, content_type: bytes | None, query: bytes = b"") -> dict[str, object]:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    return {"type": "http", "headers": headers, "query_string": query}


def _read(body: bytes, content_type: bytes | None, query: bytes = b"", chunks: int = 1) -> Params:
    pieces = [body[i::chunks] for i in range(chunks)] if chunks > 1 else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    return asyncio.run(read_params(_scope(body, content_type, query), receive, 16384))


@given(st.binary(max_size=200), st.sampled_from([b"application/json", b"application/x-www-form-urlencoded", None]))
def test_any_body_gives_parameters_or_an_oauth_error(body: bytes, content_type: bytes | None) -> None:
    try:
        params = _read(body, content_type)
    except OAuthError as err:
        assert err.error == "invalid_request"
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.values.items())


def test_json_scope_list_is_joined_with_spaces() -> None:
    params = _read(b'{"grant_type": "client_credentials", "scope": ["app_1", "app_2"]}', b"application/json")
    assert params.get("scope") == "app_1 app_2"


def test_same_parameter_in_query_and_body_with_different_values_is_refused() -> None:
    with pytest.raises(OAuthError, match="more than once"):
        _read(b"scope=app_1", b"application/x-www-form-urlencoded", query=b"scope=app_2")


def test_body_over_the_limit_is_refused_with_413() -> None:
    with pytest.raises(OAuthError) as caught:
        _read(b"a=" + b"x" * 20000, b"application/x-www-form-urlencoded")
    assert caught.value.status == 413
