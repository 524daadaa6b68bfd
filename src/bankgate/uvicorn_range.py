"""The uvicorn versions bankgate's server is tested with, and the start-up check that refuses any other.

`bankgate.mtls` and `bankgate.http11` subclass uvicorn's HTTP/1.1 protocol classes and rely on their internals
(the request cycle, the parser callbacks, the connection's transport). A uvicorn release outside the tested range may
change them without notice, and the request-size limits, deadlines and the client certificate of mutual TLS would
then fail silently. So the server refuses to start on it: failing closed beats serving without its protections.

The range has one home: the `uvicorn` requirement of the `server` extra in `pyproject.toml`, read back here from the
installed package's metadata (`>=` lower bound, `<` upper bound).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import metadata

__all__ = ["UntestedUvicorn", "check_uvicorn", "tested_range"]

_REQUIREMENT = re.compile(r"^uvicorn(\[[^\]]*\])?\s*(?=[<>=~!;]|$)(?P<spec>[^;]*)")
_BOUND = re.compile(r"^\s*(?P<op>>=|<)\s*(?P<version>[0-9][0-9A-Za-z.]*)\s*$")


class UntestedUvicorn(RuntimeError):
    """The installed uvicorn is outside the range bankgate is tested with."""


def _release(version: str) -> tuple[int, ...]:
    """`0.55.0` -> (0, 55, 0); a pre-release or local suffix is ignored (`0.56.0rc1` -> (0, 56, 0))."""
    parts: list[int] = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() != len(piece):
            break
    if not parts:
        raise ValueError(f"not a version number: {version!r}")
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def tested_range(requirements: Iterable[str] | None = None) -> tuple[str, str]:
    """(lower bound, included; upper bound, excluded) of uvicorn, from bankgate's installed metadata (or from
    `requirements`, in the metadata's `Requires-Dist` form)."""
    if requirements is None:
        requirements = metadata.requires("bankgate") or []
    for requirement in requirements:
        found = _REQUIREMENT.match(requirement)
        if found is None:
            continue
        bounds: dict[str, str] = {}
        for clause in found.group("spec").split(","):
            bound = _BOUND.match(clause)
            if bound is None:
                break
            bounds[bound.group("op")] = bound.group("version")
        else:
            if set(bounds) == {">=", "<"}:
                return bounds[">="], bounds["<"]
        raise UntestedUvicorn(f"bankgate's installed metadata requires {requirement!r}, not the tested range "
                              "('>=A,<B'): it is stale or altered; reinstall bankgate ('bankgate[server]', or "
                              "pip install -e '.[server]' in a checkout)")
    raise UntestedUvicorn("bankgate's metadata names no uvicorn requirement: reinstall it with `pip install "
                          "'bankgate[server]'`")


def check_uvicorn(version: str | None = None) -> str:
    """Return the uvicorn version (installed, or `version`) when it is in the tested range; else raise.

    The message names the version, the tested range and what to do about it.
    """
    if version is None:
        import uvicorn

        version = uvicorn.__version__
    low, high = tested_range()
    if _release(low) <= _release(version) < _release(high):
        return version
    raise UntestedUvicorn(
        f"uvicorn {version} is installed, but bankgate's server is tested with uvicorn >={low},<{high} only "
        f"(its HTTP protocols subclass uvicorn's, whose internals change between releases). Install a tested one: "
        f"pip install 'uvicorn[standard]>={low},<{high}' (or reinstall 'bankgate[server]').")
