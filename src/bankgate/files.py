"""Files bankgate writes hold secrets or say who may authenticate: owner-only, whatever the umask or the directory.

The database (password hashes, encrypted keys, the audit trail), `master.key`, private keys and certificates are
created 0600 and directories bankgate creates 0700. The mode is given to `open(2)` (so there is no moment at which
the file is readable by others) and set again with `chmod`, because a umask like 0277 could remove owner bits too.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_DIR", "PRIVATE_FILE", "private_dir", "private_file", "tighten", "write_private"]

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) 0700; an existing directory is the operator's and is left as it is."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    for created in missing:
        with contextlib.suppress(FileNotFoundError):  # another process may have removed it meanwhile
            os.chmod(created, PRIVATE_DIR)


def tighten(path: Path) -> None:
    """Take group and other permissions off an existing file of ours; a file of another owner (provisioned by an
    administrator) is left alone, so this never fails a start that worked before."""
    with contextlib.suppress(FileNotFoundError):
        info = path.stat()
        if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.geteuid():
            os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)


def private_file(path: Path) -> None:
    """Create `path` empty and 0600 if it does not exist, else tighten it (see `tighten`)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        tighten(path)
        return
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write `data` to `path` with mode 0600. With `replace`, an existing file is replaced atomically (a reader
    sees the old content or the new one, and the new file is 0600 whatever the old one's mode was); without it,
    an existing file is an error (`FileExistsError`)."""
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if replace else path
    if replace:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), PRIVATE_FILE)
            handle.write(data)
        if replace:
            os.replace(target, path)
    except BaseException:
        if replace:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        raise
