"""The revocation feed, `GET /oauth/revocations?since=<cursor>`: RFC 7009 revocations published to resource servers
that verify tokens on their own (`Guard.remote(..., revocations=True)`), so a revoked token stops working there too.

The answer holds the revoked tokens not yet expired (`jti`, `expires_at`) and the revoked subjects (`client:<id>`,
`user:<id>`, `cert:<x5t#S256>`) with their cut-off `not_before` (tokens issued at or before it are refused; null:
every token), recorded since the cursor (all of them without one), and `next`, the cursor of the next poll. It is
read from the same rows the server's own processes reload their deny list from (`RevocationList.read_since`).

Not public: the subjects name the clients, users and certificates that were revoked and when, which is none of
another client's business. The caller authenticates with a client key pair (HTTP Basic, as for introspection,
RFC 7662 §2.1), throttled like every key pair, and the client must have the `bankgate:revocations` application.
Refusals go to the audit trail (`revocations.denied`); successful polls do not (one every few seconds per API).
"""

from __future__ import annotations

import json
import math

from bankgate.credentials.clients import ClientRecord
from bankgate.guard.revocations import FEED_SCOPE
from bankgate.oauth.endpoint import OAuthEndpoint
from bankgate.oauth.errors import JSON_NO_STORE, OAuthError
from bankgate.oauth.http import Send, respond
from bankgate.oauth.request import Params
from bankgate.runtime import Runtime

__all__ = ["RevocationFeedEndpoint"]


def _cursor(value: str | None) -> float | None:
    """The point in time a `next` cursor stands for; OAuthError when it is not one this server gave out."""
    if value is None:
        return None
    try:
        since = float(value)
    except ValueError:
        since = math.nan
    if not math.isfinite(since) or since < 0:
        raise OAuthError.invalid_request("since must be the `next` cursor of an earlier answer (or left out)")
    return since


class RevocationFeedEndpoint(OAuthEndpoint):
    denied_event = "revocations.denied"

    async def handle(
        self, runtime: Runtime, client: ClientRecord, params: Params, source_ip: str | None, send: Send
    ) -> None:
        if FEED_SCOPE not in client.scopes:
            raise OAuthError(
                "insufficient_scope",
                f"this client may not read the revocation feed: ask your integration manager for a client with "
                f"the {FEED_SCOPE} application",
                403,
            )
        batch = await runtime.services.revocations.read_since(_cursor(params.get("since")))
        body = {
            "tokens": [{"jti": jti, "expires_at": expires_at} for jti, expires_at in batch.tokens],
            "subjects": [{"subject": subject, "not_before": not_before} for subject, not_before in batch.subjects],
            "next": repr(batch.newest),
        }
        await respond(send, 200, json.dumps(body).encode(), JSON_NO_STORE)
