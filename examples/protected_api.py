"""A payment API of your own, protected by bankgate: run a bankgate server, then

    BANKGATE_ISSUER=http://127.0.0.1:8000 uvicorn examples.protected_api:app --port 9000

and call it with a token from that server:

    curl -s -X POST http://127.0.0.1:9000/transfers -H "Authorization: Bearer $ACCESS_TOKEN" \\
      -H "Idempotency-Key: $(python3 -c 'import uuid; print(uuid.uuid4())')" \\
      -H 'Content-Type: application/json' -d '{"application_id": "app_12345", "amount": "10.00"}'

The guard checks the token against the server's JWKS (and the certificate binding of M2M tokens); the
Idempotency-Key layer replays a retried transfer instead of running it twice.
"""

from __future__ import annotations

import itertools
import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request

from bankgate.guard import Guard, GuardMiddleware, Principal, require_principal
from bankgate.idempotency import IdempotencyMiddleware, MemoryIdempotencyStore

ISSUER = os.environ.get("BANKGATE_ISSUER", "http://127.0.0.1:8000")

app = FastAPI(title="Example payments API")
# Outermost last: the guard authenticates first, then idempotency keys are scoped by its principal.
app.add_middleware(IdempotencyMiddleware, store=MemoryIdempotencyStore(), required=True)
app.add_middleware(GuardMiddleware, guard=Guard.remote(ISSUER), exclude=["/healthz"])

_ids = itertools.count(1)
transfers: list[dict[str, Any]] = []


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/transfers", status_code=201)
async def transfer(request: Request, principal: Annotated[Principal, Depends(require_principal)]) -> dict[str, Any]:
    body = await request.json()
    application = str(body.get("application_id", ""))
    if not principal.has_scope(application):
        raise HTTPException(403, f"{principal.kind} {principal.subject} may not act for {application!r}")
    record = {"id": next(_ids), "application_id": application, "amount": str(body.get("amount")),
              "by": principal.subject}
    transfers.append(record)
    return record
