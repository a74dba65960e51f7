"""The file a received data set is streamed into: in the store's tmp/, and ENOSPC-proof."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


_SEQUENCE = itertools.count()


def _create(folder: str) -> tuple[int, str]:
    """A new file of our own in `folder`: process id and a counter, created exclusively (a name left by
    an earlier process is skipped). tempfile.mkstemp's random names cost ~0.2 ms of CPU per instance."""
    while True:
        name = f"{folder}/{os.getpid()}-{next(_SEQUENCE)}.part"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), name
        except FileExistsError:
            continue


class SpoolFile:
    """The file pynetdicom streams a received data set into: in the store's tmp/, and ENOSPC-proof.

    pynetdicom writes from its network thread; an OSError there aborts the association, the sender
    gets no status and the partial file stays behind. This file instead records the first error, gives
    the space back (truncate to 0) and drops the rest of the data set, so the C-STORE handler can answer
    Out of Resources. Unbuffered: pynetdicom flushes after every fragment anyway.
    """

    def __init__(self, folder: Path | str) -> None:
        self.error: OSError | None = None
        self._fd: int | None = None
        # pynetdicom writes from the network thread, an abort discards from the association thread:
        # the lock keeps a write from landing on a descriptor number already closed and reused.
        self._lock = threading.Lock()
        try:
            self._fd, self.name = _create(str(folder))  # a str: pathlib's joins cost more than the open
        except OSError as exc:  # no inode / no descriptor left: same answer as a full disk
            self.error = exc
            self.name = os.path.join(folder, "unavailable.part")
        self.file = self  # pynetdicom calls `.file.flush()`

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        with self._lock:
            while self.error is None and self._fd is not None and view:
                try:
                    view = view[os.write(self._fd, view):]
                except OSError as exc:
                    self._fail(exc)
        return len(data)

    def flush(self) -> None:
        pass

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    def discard(self) -> None:
        """Close and remove: the data set never arrived completely."""
        self.error = self.error or OSError("discarded")
        self.close()
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass


def spool_factory(folder: Path) -> Callable[..., SpoolFile]:
    where = str(folder)

    def make(*_args: Any, **_kwargs: Any) -> SpoolFile:  # NamedTemporaryFile's signature, arguments unused
        return SpoolFile(where)

    return make
