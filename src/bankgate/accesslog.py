"""The access log (`bankgate serve --access-log`) without secrets: query parameter values redacted.

bankgate refuses credentials and tokens in query strings, but a refused request is still logged, and a log is
kept, copied and read far more widely than a database. One filter on uvicorn's `uvicorn.access` logger rewrites
every logged request target before it is formatted. This module imports nothing heavy: uvicorn workers load it
while configuring logging, before they answer the supervisor's health checks.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus

__all__ = ["REDACTED", "SECRET_QUERY_PARAMETERS", "RedactQuerySecrets", "redact_query"]

#: Query parameters whose values the access log never writes: OAuth and bankgate credentials and tokens
#: (RFC 6749 §2.3.1, §4.1.2; RFC 7662/7009 `token`; RFC 7521 `assertion`), and any name containing one of
#: `_SECRET_PARTS`. bankgate refuses them in query strings; the log must not keep them either.
SECRET_QUERY_PARAMETERS = frozenset({
    "access_token", "api_key", "apikey", "assertion", "client_assertion", "client_secret", "code", "code_verifier",
    "id_token", "new_password", "passphrase", "password", "refresh_token", "secret", "secret_key", "token",
})
_SECRET_PARTS = ("secret", "password", "passphrase", "token", "assertion", "api_key")
REDACTED = "***"


def _is_secret_name(name: str) -> bool:
    name = unquote_plus(name).strip().lower().replace("-", "_")
    return name in SECRET_QUERY_PARAMETERS or any(part in name for part in _SECRET_PARTS)


def redact_query(target: str) -> str:
    """`target` (a path with its query string) with the value of every secret parameter replaced by `***`."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    fields = []
    for field in query.split("&"):
        name, equals, _ = field.partition("=")
        fields.append(f"{name}={REDACTED}" if equals and _is_secret_name(name) else field)
    return f"{path}?{'&'.join(fields)}"


class RedactQuerySecrets(logging.Filter):
    """On uvicorn's access logger: secret query parameter values out of every logged request line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(arg) if isinstance(arg, str) and "?" in arg else arg
                                for arg in record.args)
        return True
