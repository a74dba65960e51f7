"""The file a received data set is streamed into: in the store's tmp/, and ENOSPC-proof."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msfollowup.files.syncio import SMALL_FILE, fsync_path


_SEQUENCE = itertools.count()


_PID = [os.getpid()]  # this process's id: os.getpid() is a system call; kept right across fork
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


_BATCH = 32  # names made ahead per folder flush


class _Ready:
    """Spool names made ahead of time, durable in their folder (the folder fsync'd once per batch).

    Why: since issue 17's thirteenth session a received instance may be answered before its index
    commit (files/behind.py); its spool name is then the record a crash replays (`InstanceStore.recover`
    indexes a spool file with a second link), so the name must be durable before the answer. Making
    names in batches of `_BATCH` and flushing the folder once per batch costs one folder fsync per 32
    instances instead of one per instance. A name made ahead and never used is an empty file with one
    link: recovery removes it like any unacknowledged spool file.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: dict[str, list[str]] = {}

    def take(self, folder: str) -> str:
        with self.lock:
            names = self.names.get(folder)
            if not names:
                names = self.names[folder] = self._make(folder)
            return names.pop()

    @staticmethod
    def _make(folder: str) -> list[str]:
        names: list[str] = []
        while len(names) < _BATCH:
            name = f"{folder}/{_PID[0]}-{next(_SEQUENCE)}.part"
            try:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except FileExistsError:  # left by an earlier process with our process id: skipped
                continue
            names.append(name)
        fsync_path(Path(folder), directory=True)
        names.reverse()  # taken in the order made
        return names

    def forget(self) -> None:
        self.names = {}


_READY = _Ready()
os.register_at_fork(after_in_child=_READY.forget)  # a child makes its own names (its own process id)


def _create(folder: str) -> tuple[int, str]:
    """A file of our own in `folder`, its name already durable there (`_Ready`). Names are the process
    id and a counter: tempfile.mkstemp's random names cost ~0.2 ms of CPU per instance."""
    while True:
        name = _READY.take(folder)
        try:
            return os.open(name, os.O_WRONLY | os.O_CLOEXEC), name
        except FileNotFoundError:  # removed since it was made (a clean-up of the folder): the next one
            continue


class SpoolFile:
    """The file pynetdicom streams a received data set into: in the store's tmp/, and ENOSPC-proof.

    pynetdicom writes from its network thread; an OSError there aborts the association, the sender
    gets no status and the partial file stays behind. This file instead records the first error, gives
    the space back (truncate to 0) and drops the rest of the data set, so the C-STORE handler can answer
    Out of Resources. Unbuffered: pynetdicom flushes after every fragment anyway.

    `keep`: a file of at most this many bytes is also kept in memory as it is written (`content`), so
    the store's checks need not open and read it again (issue 17: the open, three stats, a seek, two
    reads and the close, and a copy out of the page cache, per instance); 0 keeps nothing.
    """

    def __init__(self, folder: Path | str, keep: int = 0) -> None:
        self.error: OSError | None = None
        self._fd: int | None = None
        self._keep = keep
        self._kept: list[bytes] | None = [] if keep else None  # None: too large, or not asked for
        self.size = 0  # bytes written
        self.handed_over = False  # the name now belongs to the index writer (files/behind.py): kept
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
            if self.error is None and self._fd is not None:
                self.size += len(data)
                if self._kept is not None and self.size > self._keep:
                    self._kept = None
                elif self._kept is not None:
                    self._kept.append(bytes(data))  # a copy: the caller may reuse its buffer
        return len(data)

    def content(self) -> bytes | None:
        """The whole file as written, when it was kept (at most `keep` bytes, no error); else None."""
        if self._kept is None or self.error is not None:
            return None
        return b"".join(self._kept)

    def fileno(self) -> int | None:
        """The open descriptor (written to; it can be flushed), None once closed or never opened."""
        return self._fd

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
        """Close and remove: the data set never arrived completely, or the store linked what it keeps.
        A name handed over to the index writer stays: it is removed after the commit of its rows."""
        self.error = self.error or OSError("discarded")
        self.close()
        if self.handed_over:
            return
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass


def spool_factory(folder: Path) -> Callable[..., SpoolFile]:
    """Spool files in `folder`, each keeping a small data set in memory for the store's checks."""
    where = str(folder)

    def make(*_args: Any, **_kwargs: Any) -> SpoolFile:  # NamedTemporaryFile's signature, arguments unused
        return SpoolFile(where, keep=SMALL_FILE)

    return make
