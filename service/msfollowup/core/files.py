"""The one durable file write: temp file in the same folder -> fsync -> rename -> fsync folder.

A reader sees either the old file or the whole new one, never half of it, and after the call returns
the new file survives a power loss (the rename is durable only once the folder is fsync'd).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """Make a rename or a new link inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, payload: bytes, fsync: bool = True) -> None:
    """Replace `path` with `payload` atomically; `fsync=False` only for non-durable benchmarks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_directory(path.parent)
