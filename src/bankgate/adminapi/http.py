"""The admin API's conventions, written once: JSON in and out, RFC 9457 problems (422 with field errors), ETags and
`If-Match` (RFC 9110 §13.1.1; 412 on a mismatch, 428 when missing: RFC 6585 §3), cursor pagination with a `Link`
header (RFC 8288), `Cache-Control: no-store` on every answer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from bankgate.store.paging import DEFAULT_LIMIT, MAX_LIMIT, Page
from bankgate.web.errors import PROBLEM, HttpError, render_error
from bankgate.web.headers import NO_STORE

__all__ = ["Body", "FieldError", "Invalid", "cursor_of", "etag", "expected_version", "json_response", "limit_of",
           "page_response", "problem_response", "read_body", "version_tag"]


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class Invalid(HttpError):
    """422 with the fields that were wrong: `errors: [{"field", "message"}]`."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        super().__init__(422, "invalid_request", detail, title="Unprocessable Content",
                         extra={"errors": [{"field": e.field, "message": e.message} for e in errors]})


def problem_response(error: HttpError, path: str | None = None) -> Response:
    status, headers, body = render_error(error, PROBLEM, instance=path)
    response = Response(body, status)
    response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
    return response


def json_response(document: Any, status: int = 200, *, tag: str | None = None,
                  headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(document).encode()
    response = Response(body, status, media_type="application/json")
    for raw_name, raw_value in NO_STORE:
        response.headers[raw_name.decode()] = raw_value.decode()
    if tag is not None:
        response.headers["etag"] = tag
    for name, text in (headers or {}).items():
        response.headers[name] = text
    return response


def etag(representation: dict[str, Any]) -> str:
    """A strong ETag of a resource's representation: changes whenever anything in it does (a version, a status,
    a name), the same on every server process."""
    digest = hashlib.sha256(json.dumps(representation, sort_keys=True, default=str).encode()).hexdigest()
    return f'"{digest[:32]}"'


def version_tag(record_id: str, version: int) -> str:
    """The strong ETag of a versioned record (client, user, administrator): its id and `version`, which every change
    of the row increments, so the tag says which version a later `If-Match` read."""
    return f'"{record_id}.{version}"'


_PRECONDITION_FAILED = ("the resource changed since that ETag was read; GET it again and retry with its new ETag")


def _precondition_failed() -> HttpError:
    return HttpError(412, "precondition_failed", _PRECONDITION_FAILED, title="Precondition Failed")


def _if_match(request: Request) -> list[str]:
    sent = request.headers.get("if-match")
    if sent is None:
        raise HttpError(428, "precondition_required", "send If-Match with the ETag of a GET of this resource, so "
                        "that a change made meanwhile is not overwritten", title="Precondition Required")
    return [tag.strip() for tag in sent.split(",")]


def expected_version(request: Request, record_id: str, current: int, *, required: bool = True) -> int | None:
    """The `version` an `If-Match` names, for the use case to write only at that version (the check is the UPDATE's
    own, so two writers holding the same ETag cannot both win): None for `*` (or no header where it is optional),
    428 when it is required and missing, 412 when no tag names a version of this record."""
    if not required and "if-match" not in request.headers:
        return None
    tags = _if_match(request)
    if "*" in tags:
        return None
    versions: list[int] = []
    for tag in tags:
        named, _, version = tag.removeprefix('"').removesuffix('"').rpartition(".")
        if tag.startswith('"') and tag.endswith('"') and named == record_id and version.isdigit():
            versions.append(int(version))
    if not versions:
        raise _precondition_failed()
    return current if current in versions else versions[0]


async def read_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The JSON object of the request; an empty body is an empty object."""
    raw = await request.body()
    if len(raw) > max_bytes:
        raise HttpError(413, "invalid_request", f"the request body is larger than {max_bytes} bytes")
    if not raw.strip():
        return {}
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HttpError(415, "invalid_request", f"send the body as application/json, not {media or 'no type'}",
                        title="Unsupported Media Type")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HttpError(400, "invalid_request", "the body is not valid JSON", title="Bad Request") from None
    if not isinstance(document, dict):
        raise Invalid([FieldError("body", "must be a JSON object")])
    return document


class Body:
    """Typed reads of a JSON object, collecting every wrong field before one 422."""

    def __init__(self, document: dict[str, Any], allowed: Sequence[str]) -> None:
        self._document = document
        self.errors: list[FieldError] = [FieldError(name, "is not a field of this request; allowed: "
                                                    + (", ".join(allowed) or "none"))
                                         for name in document if name not in allowed]

    def has(self, name: str) -> bool:
        return name in self._document

    def string(self, name: str, *, required: bool = False, max_length: int = 200) -> str | None:
        value = self._document.get(name)
        if value is None:
            if required:
                self.errors.append(FieldError(name, "is required"))
            return None
        if not isinstance(value, str) or not value.strip() or len(value) > max_length:
            self.errors.append(FieldError(name, f"must be a string of 1 to {max_length} characters"))
            return None
        return value

    def strings(self, name: str, *, required: bool = False) -> list[str] | None:
        value = self._document.get(name)
        if value is None:
            if required:
                self.errors.append(FieldError(name, "is required"))
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 100:
            self.errors.append(FieldError(name, "must be a list of at most 100 strings"))
            return None
        return value

    def number(self, name: str, *, minimum: float = 0, maximum: float = 10**9) -> float | None:
        value = self._document.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not minimum <= value <= maximum:
            self.errors.append(FieldError(name, f"must be a number from {minimum:g} to {maximum:g}"))
            return None
        return float(value)

    def boolean(self, name: str) -> bool | None:
        value = self._document.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.errors.append(FieldError(name, "must be true or false"))
            return None
        return value

    def check(self) -> None:
        if self.errors:
            raise Invalid(self.errors)


def limit_of(request: Request) -> int:
    """`?limit=` as a number; its bounds are the listing's (`bankgate.store.paging`), checked by the use case."""
    text = request.query_params.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or len(text) > 6:
        raise Invalid([FieldError("limit", f"must be a whole number from 1 to {MAX_LIMIT}")])
    return int(text)


def cursor_of(request: Request) -> str | None:
    """`?cursor=`: `next_cursor` of the previous page, opaque here; the use case checks it."""
    return request.query_params.get("cursor") or None


def page_response(request: Request, name: str, page: Page[Any], render: Callable[[Any], Any]) -> Response:
    """`{name: [...], "next_cursor": …}` with `Link: <…>; rel="next"` when there is more."""
    headers: dict[str, str] = {}
    if page.next_cursor is not None:
        query = {k: v for k, v in request.query_params.items() if k != "cursor"}
        query["cursor"] = page.next_cursor
        headers["link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'
    return json_response({name: [render(item) for item in page.items], "next_cursor": page.next_cursor},
                         headers=headers)
