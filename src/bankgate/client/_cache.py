"""Where tokens are kept between requests: in memory (one process), in a directory (processes on one machine) or
in Redis (a fleet). Entries are named by a SHA-256 of endpoint, credentials and scope, never by the credentials."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from bankgate.client._errors import MissingDependency
from bankgate.client._token import Token

__all__ = ["FileCache", "MemoryCache", "RedisCache", "TokenCache", "cache_key", "default_cache_dir"]


def cache_key(*parts: str | None) -> str:
    """A SHA-256 over every part (endpoint, style, identity, secret, scope, certificate): two clients that differ in
    any of them never share a token (Duende CVE-2025-26620), and no stored name reveals a credential."""
    digest = hashlib.sha256()
    for part in parts:
        encoded = (part or "").encode()
        digest.update(len(encoded).to_bytes(4, "big"))
        digest.update(encoded)
    return digest.hexdigest()


@runtime_checkable
class TokenCache(Protocol):
    """What the auth needs from a cache. `shared` caches cross process boundaries and provide `lock()`."""

    shared: bool

    def get(self, key: str) -> Token | None: ...

    def set(self, key: str, token: Token) -> None: ...

    def discard(self, key: str, value: str) -> None:
        """Forget the entry if it still holds the token `value` (a newer one, fetched meanwhile, stays)."""
        ...

    def lock(self, key: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        """Held while one process fetches the token for `key`, so the others wait and then read it."""
        ...


class MemoryCache:
    """Tokens of this process. The default: one shared instance, keys keep clients apart."""

    shared = False

    def __init__(self) -> None:
        self._entries: dict[str, Token] = {}
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryCache(entries={len(self._entries)})"

    def get(self, key: str) -> Token | None:
        return self._entries.get(key)

    def set(self, key: str, token: Token) -> None:
        with self._mutex:
            self._entries[key] = token

    def discard(self, key: str, value: str) -> None:
        with self._mutex:
            entry = self._entries.get(key)
            if entry is not None and entry.value == value:
                del self._entries[key]

    def clear(self) -> None:
        with self._mutex:
            self._entries.clear()

    def lock(self, key: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/bankgate/tokens`, else `~/.cache/bankgate/tokens`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bankgate" / "tokens"


class FileCache:
    """Tokens in a directory (mode 0700, files 0600), shared by the processes of one machine.

    Writes go to a temporary file renamed into place, so a reader never sees half an entry; `lock()` is an
    `fcntl.flock` on a per-key lock file, released by the kernel if the holder dies. POSIX only.
    """

    shared = True

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        try:
            import fcntl  # noqa: F401
        except ImportError as exc:  # Windows
            raise MissingDependency("fcntl", "FileCache (a POSIX system)") from exc
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)

    def __repr__(self) -> str:
        return f"FileCache({str(self.directory)!r})"

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> Token | None:
        try:
            return Token.from_json(self._path(key).read_bytes())
        except FileNotFoundError:
            return None

    def set(self, key: str, token: Token) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(token.to_json())
            os.replace(temporary, self._path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def discard(self, key: str, value: str) -> None:
        entry = self.get(key)
        if entry is not None and entry.value == value:
            with contextlib.suppress(FileNotFoundError):
                self._path(key).unlink()

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[None]:
        import fcntl

        fd = os.open(self.directory / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break  # a stuck holder must not stop us: fetch without the lock
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # closing releases the lock


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisCache:
    """Tokens in Redis, shared by every process of a fleet; needs the `redis` package.

    Entries expire with the token; `lock()` is `SET NX PX` with a random owner value, released only by its owner,
    and expiring on its own if the owner dies.
    """

    shared = True

    def __init__(self, url_or_client: Any = "redis://127.0.0.1:6379/0", *, prefix: str = "bankgate:token:") -> None:
        if isinstance(url_or_client, str):
            try:
                import redis
            except ImportError as exc:
                raise MissingDependency("redis", "RedisCache") from exc
            self._redis = redis.Redis.from_url(url_or_client)
        else:
            self._redis = url_or_client
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"RedisCache(prefix={self.prefix!r})"

    def get(self, key: str) -> Token | None:
        raw = self._redis.get(self.prefix + key)
        return Token.from_json(raw) if raw else None

    def set(self, key: str, token: Token) -> None:
        ttl_ms = int((token.expires_at - time.time()) * 1000)
        if ttl_ms > 0:
            self._redis.set(self.prefix + key, token.to_json(), px=ttl_ms)

    def discard(self, key: str, value: str) -> None:
        raw = self._redis.get(self.prefix + key)
        entry = Token.from_json(raw) if raw else None
        if raw is not None and entry is not None and entry.value == value:
            self._redis.eval(_RELEASE, 1, self.prefix + key, raw)

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[None]:
        name, owner = f"{self.prefix}lock:{key}", uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        acquired = False
        while not acquired and time.monotonic() < deadline:
            acquired = bool(self._redis.set(name, owner, nx=True, px=int(timeout * 1000)))
            if not acquired:
                time.sleep(0.02)
        try:
            yield
        finally:
            if acquired:
                self._redis.eval(_RELEASE, 1, name, owner)
