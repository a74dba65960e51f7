"""Directory flushes shared by concurrent ingests: one fsync of a folder covers every name made before it.

Each stored instance gets a new name in its series folder, and the name is durable only once the
folder is fsync'd. Concurrent senders of one study link into the same folders, and each fsync of a
folder writes its metadata and flushes the device's cache (link and fsync ~0.6 ms on the test
machine); the disk does them one at a time. A flush that *starts* after a name was linked makes that
name durable, so a caller whose link is already covered by a flush that started after it only waits
for that flush to end, and a caller that arrives while a flush is running (one that started before
its link) waits for it and then starts one flush for itself and everyone who arrived meanwhile. A
lone sender flushes exactly as before.

A failed flush is raised to the caller that ran it; the callers it would have covered run their own
(so each one sees its own folder's error, never a success it did not get).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class _Folder:
    __slots__ = ("cond", "covered", "linked", "running", "users")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.linked = 0  # tickets handed out: names made in this folder
        self.covered = 0  # every ticket up to this one is durable
        self.running = False
        self.users = 0


class DirectoryFlusher:
    """Coalesces the fsyncs of each folder across threads (see the module docstring)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._folders: dict[str, _Folder] = {}
        self.flushes = 0  # fsyncs run, for tests and benchmarks

    def flush(self, folder: str, fsync: Callable[[], None]) -> None:
        """Return once a flush of `folder` that began after this call did; `fsync` flushes it."""
        with self._guard:
            state = self._folders.get(folder)
            if state is None:
                state = self._folders[folder] = _Folder()
            state.users += 1
        try:
            self._wait_covered(state, fsync)
        finally:
            with self._guard:
                state.users -= 1
                if state.users == 0:
                    del self._folders[folder]

    def _wait_covered(self, state: _Folder, fsync: Callable[[], None]) -> None:
        with state.cond:
            state.linked += 1
            ticket = state.linked
            while state.covered < ticket:
                if state.running:
                    state.cond.wait()
                    continue
                state.running = True
                covers = state.linked  # every name linked before this flush starts
                state.cond.release()
                try:
                    fsync()
                finally:
                    state.cond.acquire()
                    state.running = False
                    state.cond.notify_all()
                # reached only when fsync succeeded (an error propagates, `covered` unchanged)
                self.flushes += 1
                state.covered = max(state.covered, covers)
