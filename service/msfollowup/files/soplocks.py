"""One SOP Instance UID is linked and indexed by one ingest at a time, so that a failed ingest can take
its fresh link back without removing a concurrent copy's success (files/store.py).

Striped: 64 locks, a UID's stripe from a CRC of its bytes (the same in every process; `hash()` of a str
is not). Within a process a thread lock; with `share(folder)` (the ingest processes of one service,
runtime/ingest_workers.py) also flock(2) on `folder/sop-NN`, which every process of the service opens.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STRIPES = 64


class SopLocks:
    def __init__(self) -> None:
        self._locks = [threading.Lock() for _ in range(STRIPES)]
        self._folder: Path | None = None
        self._fds: dict[int, int] = {}

    def share(self, folder: Path) -> None:
        """From now on the stripes are held across the processes that share `folder` too."""
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder

    @contextmanager
    def held(self, sop: str) -> Iterator[None]:
        stripe = zlib.crc32(sop.encode("ascii", "replace")) % STRIPES
        with self._locks[stripe]:
            if self._folder is None:
                yield
                return
            fd = self._fds.get(stripe)
            if fd is None:  # opened once per stripe, under the stripe's thread lock
                fd = self._fds[stripe] = os.open(self._folder / f"sop-{stripe:02d}",
                                                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
