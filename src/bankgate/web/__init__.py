"""The HTTP boundary every route shares, in the standard library alone (the standalone guard imports it): the ASGI
types, the headers of a response that must not be cached, one reader of `Authorization: Basic`, and errors as
data with one renderer.
"""

from bankgate.web.asgi import ASGIApp, Message, Receive, Scope, Send
from bankgate.web.basic import BasicCredentials, MalformedBasic, NotBasic, parse_basic
from bankgate.web.errors import BANKING, OAUTH, PROBLEM, ErrorFormat, HttpError, render_error, send_error
from bankgate.web.headers import JSON_NO_STORE, NO_STORE, DuplicateHeader, header, respond, single_header

__all__ = [
    "BANKING", "JSON_NO_STORE", "NO_STORE", "OAUTH", "PROBLEM", "ASGIApp", "BasicCredentials", "DuplicateHeader",
    "ErrorFormat", "HttpError", "MalformedBasic", "Message", "NotBasic", "Receive", "Scope", "Send", "header",
    "parse_basic", "render_error", "respond", "send_error", "single_header",
]
