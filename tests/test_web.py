"""The HTTP boundary's one renderer: each route family's error format, byte for byte, and the package itself
importing nothing beyond the standard library (the standalone guard imports it)."""

from __future__ import annotations

import json
import subprocess
import sys

from bankgate.web.errors import BANKING, BASIC_CHALLENGE, OAUTH, PROBLEM, HttpError, render_error


def test_an_oauth_error_renders_as_rfc_6749_json_with_its_challenge_and_retry_after() -> None:
    error = HttpError(401, "invalid_client", "check the key", challenge=BASIC_CHALLENGE, retry_after=2.4)
    status, headers, body = render_error(error, OAUTH)
    assert status == 401
    assert body == b'{"error": "invalid_client", "error_description": "check the key"}'
    assert headers == [
        (b"content-type", b"application/json"), (b"cache-control", b"no-store"), (b"pragma", b"no-cache"),
        (b"www-authenticate", BASIC_CHALLENGE), (b"retry-after", b"2"),
    ]


def test_a_problem_renders_as_rfc_9457_with_instance_and_extra_members() -> None:
    error = HttpError(422, "invalid", "amount: too small", title="Unprocessable Content",
                      extra={"errors": [{"field": "amount", "message": "too small"}]})
    status, headers, body = render_error(error, PROBLEM, instance="/api/v1/payments")
    assert status == 422
    assert json.loads(body) == {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
                                "detail": "amount: too small", "instance": "/api/v1/payments",
                                "errors": [{"field": "amount", "message": "too small"}]}
    assert headers[0] == (b"content-type", b"application/problem+json")
    assert (b"cache-control", b"no-store") in headers
    # The title defaults to the status's phrase.
    assert json.loads(render_error(HttpError(503, "x", "retry"), PROBLEM)[2])["title"] == "Service Unavailable"


def test_an_error_may_force_the_banking_circle_list_whatever_the_route_speaks() -> None:
    error = HttpError(400, "AuthorizationParseFailure", "not base64", format=BANKING)
    for route_format in (OAUTH, PROBLEM):
        status, headers, body = render_error(error, route_format)
        assert (status, headers[0]) == (400, (b"content-type", b"application/json"))
        assert json.loads(body) == {"errors": [{"errorCode": "AuthorizationParseFailure",
                                                "errorDescription": "not base64"}]}


def test_the_web_package_and_events_import_only_the_standard_library() -> None:
    code = (
        "import sys, bankgate.web, bankgate.events\n"
        "found = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'sqlalchemy', 'orjson', 'jwt', 'cryptography', 'httpx', 'redis'))\n"
        "assert not found, found\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
