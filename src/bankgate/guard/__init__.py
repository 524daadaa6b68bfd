"""The resource side: accepting bankgate's tokens in front of an API."""

from bankgate.guard.verifier import InvalidToken, Principal, TokenVerifier

__all__ = ["InvalidToken", "Principal", "TokenVerifier"]
