"""Certificate thumbprints: the one place that decides their format.

* `thumbprint_sha1`: the seed's token claim `thumbprint` (Banking Circle style): SHA-1 of the DER certificate as
  40 upper-case hex digits, the way Windows and .NET show a certificate's thumbprint.
* `x5t_s256`: RFC 8705 section 3.1, the `x5t#S256` confirmation of certificate-bound tokens: base64url (no
  padding) of the SHA-256 of the DER certificate.
"""

from __future__ import annotations

import base64
import hashlib
import re

__all__ = ["THUMBPRINT_SHA1", "X5T_S256", "thumbprint_sha1", "x5t_s256"]

#: What a `thumbprint_sha1` looks like.
THUMBPRINT_SHA1 = re.compile(r"[0-9A-F]{40}")
#: What an `x5t_s256` looks like: 32 bytes in unpadded base64url.
X5T_S256 = re.compile(r"[A-Za-z0-9_-]{43}")


def thumbprint_sha1(der: bytes) -> str:
    """SHA-1 of the DER certificate, 40 upper-case hex digits (the seed's `thumbprint`)."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def x5t_s256(der: bytes) -> str:
    """RFC 8705 `x5t#S256`: base64url without padding of the SHA-256 of the DER certificate."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")
