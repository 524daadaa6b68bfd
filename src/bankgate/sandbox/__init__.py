"""The sandbox payments API served by `bankgate serve` in the sandbox environment."""

from bankgate.sandbox.api import sandbox_app

__all__ = ["sandbox_app"]
