"""Where a request comes from, and over which scheme. Proxy headers are believed only from configured proxies,
never from anyone else."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["TrustedProxies"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def trusts(self, host: str | None) -> bool:
        if not self.networks or not host:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client_ip(self, scope: Mapping[str, Any]) -> str | None:
        """The peer address; behind trusted proxies, the right-most X-Forwarded-For hop that is not one of them."""
        client = scope.get("client")
        peer = client[0] if client else None
        if not self.trusts(peer):
            return peer
        hops: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                hops.extend(h.strip() for h in value.decode("latin-1").split(","))
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a garbled chain proves nothing; fall back to the proxy itself
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer

    def scheme(self, scope: Mapping[str, Any]) -> str:
        """`https` or `http`: the connection's own scheme; behind a trusted proxy, what its `X-Forwarded-Proto` says
        (the left-most value: the scheme the first proxy was reached over)."""
        client = scope.get("client")
        if self.trusts(client[0] if client else None):
            for name, value in scope.get("headers", ()):
                if name == b"x-forwarded-proto":
                    forwarded: str = value.decode("latin-1").split(",")[0].strip().lower()
                    if forwarded in ("http", "https"):
                        return forwarded
        return "https" if scope.get("scheme") in ("https", "wss") else "http"
