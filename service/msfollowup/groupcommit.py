"""Group commit: the index rows of all concurrent C-STOREs committed in one transaction, one flush.

Each association's thread used to commit its own index transaction. On SQLite the write lock is held
across the commit's WAL fsync, so with several senders the commits queue one fsync after another. Here
the first thread to arrive commits (leader); threads arriving meanwhile queue their work and wait for
the lock; the next leader then runs all queued work in one transaction and one commit, each piece in
its own savepoint (a refused instance undoes only its rows). Nothing returns before the commit that
holds its rows is durable, so the guarantee of docs/architecture.md "Durability" is unchanged.
No thread of its own: the waiting C-STORE threads take turns as the committer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")


class _Work(Generic[T]):
    __slots__ = ("fn", "result", "error", "done")

    def __init__(self, fn: Callable[[Connection], T]) -> None:
        self.fn = fn
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit:
    """Run `fn(connection)` in a transaction shared with the other callers waiting at the same time."""

    def __init__(self, engine: Callable[[], Engine], max_batch: int = 64) -> None:
        self.engine = engine  # looked up per commit: the Database may replace its engine
        self.max_batch = max_batch
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()  # one committer at a time
        self._queue: list[_Work[Any]] = []

    def run(self, fn: Callable[[Connection], T]) -> T:
        work: _Work[T] = _Work(fn)
        with self._queue_lock:
            self._queue.append(work)
        while not work.done:
            with self._commit_lock:
                if work.done:  # a leader committed it while this thread waited
                    break
                with self._queue_lock:
                    batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                self._commit(batch)
        if work.error is not None:
            raise work.error
        return work.result  # type: ignore[return-value]

    def _commit(self, batch: list[_Work[Any]]) -> None:
        try:
            with self.engine().begin() as c:
                if len(batch) == 1:  # alone: its error rolls the whole (its own) transaction back
                    work = batch[0]
                    try:
                        work.result = work.fn(c)
                    except BaseException as exc:
                        work.error = exc
                        raise
                else:
                    for work in batch:
                        try:
                            with c.begin_nested():
                                work.result = work.fn(c)
                        except Exception as exc:  # noqa: BLE001 - handed to its own caller
                            work.error = exc
        except BaseException as exc:  # the commit failed (or the lone work did): nobody's rows are durable
            for work in batch:
                if work.error is None:
                    work.error = exc
        finally:
            for work in batch:
                work.done = True
