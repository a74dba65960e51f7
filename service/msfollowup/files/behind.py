"""The index behind the answer: a received instance's rows are committed right after its C-STORE is
answered, by one writer thread, in batches (issue 17, thirteenth session).

Why: on SQLite every index transaction takes the one writer's turn. With four senders an instance
waited 2-4 ms for the turn and its COMMIT (0.58 ms with one sender) while the CPU of the machine was
free a fifth of the time: the senders waited, not the processor. Taking the index commit out of the
answer's path keeps them sending.

What still holds before Success (files/store.py, `InstanceStore.ingest_file`): the bytes are fsync'd
under their final name (its folder flushed) **and** under their spool name, whose name was made
durable ahead of time (files/spool.py `_Ready`). The spool name, with its second link, is the record a
crash replays: `InstanceStore.recover` indexes every spool file with a second link at start-up. It is
removed here only after the COMMIT holding the instance's rows returned. The checks an index
transaction could refuse an instance for run before the answer: a SOP Instance UID already indexed
under another study or series is refused (0xA900) as before. A second copy of an instance still
waiting here waits for its commit first (files/store.py `_wait_if_queued`), then meets it as an
indexed copy (a duplicate, a conflict, a replacement).

What a reader sees: the rows a few milliseconds after the answer. An association's A-RELEASE-RP is
sent only once the rows of everything it stored are committed (net/node.py `_before_release`), so a
sender that released its association finds its instances indexed, as before.

When a commit fails (the index locked, full, unreachable), the batch stays queued and is retried; the
store meanwhile indexes new instances before answering again (`failing`), so senders get the index's
failure as a status and nothing else is acknowledged until it recovers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msfollowup.db import groupcommit, rawsqlite
from msfollowup.files.index_header import IngestError

log = logging.getLogger(__name__)

BATCH = 256  # instances per index transaction at most
RETRY_SECONDS = (0.05, 0.2, 1.0)  # pauses between attempts after a failed commit (the last repeats)
# The writer waits this long after the first queued instance before it commits (fewer, larger
# commits: in-process, 1200 instances from 4 threads, 60-72 commits instead of 279-308; the answers
# do not wait for it, an A-RELEASE-RP does, at most this long plus the commit).
LINGER = 0.005


@dataclass
class Pending:
    """One answered instance whose rows are not committed yet."""

    sop: str
    work: Callable[[rawsqlite.RawTransaction], Any]  # the index statements (files/indexrows.py)
    spool_name: str  # the replayed record, removed after the commit
    final: Path
    indexed: threading.Event = field(default_factory=threading.Event)


class IndexBehind:
    """The writer thread and its queue (one per instance store, SQLite only)."""

    def __init__(self, committer: groupcommit.GroupCommitter, after_commit: Callable[[Pending], None]) -> None:
        self._committer = committer
        self._after_commit = after_commit
        self._cond = threading.Condition()
        self._queue: list[Pending] = []
        self._queued: dict[str, Pending] = {}  # SOP Instance UID -> its newest queued instance
        self._stopping = False
        self.failing: BaseException | None = None  # the last commit's error until one succeeds
        self._thread: threading.Thread | None = None

    def queued(self, sop: str) -> Pending | None:
        """The queued instance of this SOP Instance UID (None: none is queued)."""
        with self._cond:
            return self._queued.get(sop)

    def commit_failed(self, error: BaseException) -> None:
        """An index commit before the answer failed: new instances are indexed before their answer
        until a commit succeeds."""
        self.failing = error

    def commit_succeeded(self) -> None:
        """An index commit before the answer succeeded: the index takes writes again, unless the writer
        still has a failed batch of its own (then it clears `failing` when that batch commits)."""
        if self.failing is not None:
            with self._cond:
                if not self._queue:
                    self.failing = None

    def submit(self, pending: Pending) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="index-behind", daemon=True)
                self._thread.start()
            self._queue.append(pending)
            self._queued[pending.sop] = pending
            self._cond.notify()

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued now is committed; False when `timeout` passed first."""
        with self._cond:
            last = self._queue[-1] if self._queue else None
        return last is None or last.indexed.wait(timeout)

    def close(self, timeout: float) -> bool:
        """Commit what is queued (up to `timeout`) and stop the thread. Whatever is left stays a spool
        file with a second link, indexed by the next start's recovery."""
        done = self.drain(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.1, timeout) if done else 0.1)
        if not done:
            log.warning("index writer stopped with instances not indexed; the next start indexes them")
        return done

    def _run(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping and (not self._queue or attempt):
                    return
                linger = LINGER and len(self._queue) < BATCH and not self._stopping
            if linger:
                time.sleep(LINGER)
            with self._cond:
                batch = self._queue[:BATCH]
            try:
                written = self._write(batch)
            except Exception as exc:  # noqa: BLE001 - a bug must not end the thread: the queue would stall
                log.exception("index writer failed; retrying")
                self.failing, written = exc, False
            if written:
                attempt = 0
                continue
            with self._cond:
                if self._stopping:
                    return
            time.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
            attempt += 1

    def _write(self, batch: list[Pending]) -> bool:
        """Commit one batch; False (the batch stays queued) when the transaction itself failed."""
        errors = self._committer.run_many([p.work for p in batch])
        failed = next((e for e in errors if e is not None), None)
        if failed is not None and all(e is failed for e in errors) and not isinstance(failed, IngestError):
            # BEGIN's or COMMIT's error (every member gets the same one): nothing was written
            if self.failing is None:
                log.error("index commit failed; retrying, new instances are indexed before their answer: %s",
                          str(failed).partition("\n")[0][:200])
            self.failing = failed
            return False
        if self.failing is not None:
            log.info("index commit succeeded again")
            self.failing = None
        for pending, error in zip(batch, errors):
            self._finish(pending, error)
        with self._cond:
            del self._queue[:len(batch)]
            for pending in batch:
                if self._queued.get(pending.sop) is pending:
                    del self._queued[pending.sop]
        for pending in batch:
            pending.indexed.set()
        return True

    def _finish(self, pending: Pending, error: BaseException | None) -> None:
        if error is None:
            try:
                self._after_commit(pending)
                os.unlink(pending.spool_name)
            except OSError as exc:  # the rows are committed; a name left behind is indexed again, harmlessly
                log.warning("index writer: spool file not removed: %s", exc.strerror)
            return
        # The instance's own statements failed after its answer. A SOP Instance UID conflict the check
        # before the answer could not see (another receiving process queued it in the same moment):
        # its file stays where it is, and the log says so. Anything else keeps the spool name, so the
        # next start's recovery tries again.
        if isinstance(error, IngestError):
            log.error("answered instance not indexed: %s; its file stays in the store (series folder %s)",
                      error, pending.final.parent.name)
            try:
                os.unlink(pending.spool_name)
            except OSError:
                pass
            return
        log.error("answered instance not indexed (%s); recovery at the next start indexes it",
                  type(error).__name__)
