"""Writing files that hold secrets: atomically, and readable only by their owner."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(
    path: Path, data: str | bytes, *, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with ``data``: created with ``mode`` (never wider for a moment),
    chowned to ``owner`` (uid, gid) if given, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, mode)  # O_CREAT's mode is narrowed by the umask, never widened
        if owner is not None:
            os.chown(tmp, *owner)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
