"""The per-instance index transaction on SQLite through the DB-API connection, without SQLAlchemy's
per-statement machinery.

The ingest indexes every received instance in one short transaction of three statements. Through
SQLAlchemy Core each statement costs ~0.1-0.2 ms of CPU (execution context, events, result proxy,
type processing), about as much as parsing the header; on the raw sqlite3 connection the same
transaction costs a fraction of that. The connection is the engine's own (its pragmas:
WAL, synchronous=FULL, foreign keys, busy timeout), and the transaction is `BEGIN IMMEDIATE ... COMMIT`
as the engine's begin hook would issue, so durability and locking are unchanged. db/groupcommit.py
runs these transactions (concurrent ingests share one), each in the writer's turn (`writer_turn`).

`RawTransaction` offers the part of sqlalchemy's Connection that files/store.py's index code uses
(`execute(statement, params).first()/.one()/.rowcount` and `begin_nested()`) for SELECT, INSERT and
UPDATE statements, compiled once each by SQLAlchemy's SQLite compiler. Errors come out as
SQLAlchemy's own exception classes (DBAPIError.instance, parameters hidden), so callers handle both
paths alike. PostgreSQL keeps SQLAlchemy Core.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import sqlite3
import threading
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, exc
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import Insert, Select, Update, visitors
from sqlalchemy.sql.elements import BindParameter


def _stored(value: Any) -> Any:
    """A parameter as SQLAlchemy's SQLite dialect stores it (UTCDateTime: UTC, 'YYYY-MM-DD HH:MM:SS.ffffff')."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


class _Result:
    def __init__(self, row: Any, rowcount: int) -> None:
        self._row = row
        self.rowcount = rowcount  # rows an INSERT/UPDATE changed, as SQLAlchemy's CursorResult says

    def first(self) -> Any:
        return self._row

    def one(self) -> Any:
        if self._row is None:
            raise exc.NoResultFound("No row was found when one was required")
        return self._row


# SQL text per statement object (and parameter names): the statements are built once, at import.
_SQL_CACHE: dict[tuple[Any, ...], tuple[str, Any]] = {}
_NAMED = sqlite.dialect(paramstyle="named")  # sqlite3 takes a dict of named parameters


# Index transactions take turns on a lock per database file: a thread lock within the process, then
# flock(2) on `<index>-writer.lock` across processes (the ingest processes of runtime/ingest_workers.py,
# CLI commands). Without it, writers that want SQLite's write lock at the same moment meet in its busy
# handler, which sleeps 1, 2, 5, 10 ... 100 ms between tries instead of waking when the lock is free.
# Measured with four threads (a 2 ms pause, then BEGIN IMMEDIATE, two statements, COMMIT with
# synchronous=FULL): 905-942 transactions/s and waits for the lock of 3.2 ms at p90 (105 ms at most)
# without the lock, 1,260-1,543/s and 0.3-1.0 ms with it. Two ingest processes with four senders:
# 209 instances/s without the flock, 242 with it (one process: 206-234). SQLAlchemy's transactions take
# the same turns (db/__init__.py). The lock file is separate from the index on purpose: closing any
# descriptor of the index file would drop SQLite's own POSIX locks on it.
_WRITE_LOCKS: dict[str, threading.Lock] = {}
_LOCK_FILES: dict[str, int] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(engine: Engine) -> threading.Lock:
    key = str(engine.url.database)
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.Lock())


def _lock_file(engine: Engine) -> int | None:
    """The descriptor of the index's writer lock file (kept open), or None for an in-memory index."""
    path = engine.url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    with _WRITE_LOCKS_GUARD:
        fd = _LOCK_FILES.get(path)
        if fd is None:
            fd = _LOCK_FILES[path] = os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return fd


def take_turn(engine: Engine, timeout: float = 30.0) -> Callable[[], None]:
    """Wait for this process's and then this machine's turn to write the index (see _WRITE_LOCKS);
    returns what ends the turn. After `timeout` (the busy timeout) without the thread lock the caller
    goes on without it and SQLite's busy handler decides, as it would without this lock: a thread that
    opens a second transaction while its first is open fails as before instead of hanging."""
    lock = _write_lock(engine)
    got = lock.acquire(timeout=timeout)
    fd = _lock_file(engine) if got else None
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def end() -> None:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if got:
            lock.release()
    return end


@contextmanager
def writer_turn(engine: Engine) -> Iterator[None]:
    end = take_turn(engine)
    try:
        yield
    finally:
        end()


class RawTransaction:
    """One BEGIN IMMEDIATE ... COMMIT on a pooled sqlite3 connection (see the module doc); one thread."""

    def __init__(self, cursor: Any) -> None:
        self._cur = cursor

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._run("BEGIN IMMEDIATE", {})
        try:
            yield
            self._run("COMMIT", {})
        except BaseException:
            try:
                self._cur.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # no transaction left to roll back (the failed COMMIT ended it)
            raise

    def execute_sql(self, sql: str) -> None:
        """A statement without parameters or rows (SAVEPOINT, RELEASE ...)."""
        self._run(sql, {})

    def _run(self, sql: str, params: dict[str, Any]) -> sqlite3.Cursor:
        try:
            return self._cur.execute(sql, params)  # type: ignore[no-any-return]
        except sqlite3.Error as error:
            raise exc.DBAPIError.instance(sql, None, error, sqlite3.Error, hide_parameters=True) from error

    @staticmethod
    def _compiled(statement: Any, params: dict[str, Any]) -> tuple[str, Any]:
        """SQL text (named parameters) and a row type (None: a statement without rows), compiled by
        SQLAlchemy's own SQLite compiler once per statement and set of parameter names."""
        key = (id(statement), tuple(sorted(params)))
        hit = _SQL_CACHE.get(key)
        if hit is not None:
            return hit
        if isinstance(statement, Select):
            hit = (statement.compile(dialect=_NAMED).string,
                   namedtuple("Row", [c.key for c in statement.selected_columns]))  # type: ignore[misc]
        elif isinstance(statement, (Insert, Update)):
            where = statement.whereclause if isinstance(statement, Update) else None
            binds = set() if where is None else {e.key for e in visitors.iterate(where) if isinstance(e, BindParameter)}
            hit = (statement.compile(dialect=_NAMED, column_keys=sorted(k for k in params if k not in binds)).string, None)
        else:
            raise TypeError(f"unsupported statement {type(statement).__name__}")
        _SQL_CACHE[key] = hit
        return hit

    def execute(self, statement: Any, params: dict[str, Any]) -> _Result:
        sql, row_type = self._compiled(statement, params)
        cur = self._run(sql, {k: _stored(v) for k, v in params.items()})
        if row_type is None:
            return _Result(None, cur.rowcount)
        row = cur.fetchone()
        return _Result(None if row is None else row_type(*row), cur.rowcount)

    @contextmanager
    def begin_nested(self) -> Iterator[None]:
        """A SAVEPOINT: an IntegrityError inside undoes only what was done inside."""
        self._run("SAVEPOINT msf_nested", {})
        try:
            yield
        except BaseException:
            self._run("ROLLBACK TO msf_nested", {})
            self._run("RELEASE msf_nested", {})
            raise
        self._run("RELEASE msf_nested", {})



class Readers:
    """Connections for the reads on the ingest path (files/store.py `_queue_index`), opened through
    the engine (its pragmas) and detached from its pool: a pool check-out and check-in costs more than
    the read. Each is used by one thread at a time; at most as many stay open as were ever used at
    once (the receiving threads)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._free: list[Any] = []
        self._lock = threading.Lock()

    @contextmanager
    def reading(self) -> Iterator[RawTransaction]:
        """Statements outside a transaction (SELECTs, each its own snapshot), RawTransaction's way."""
        with self._lock:
            pooled = self._free.pop() if self._free else None
        if pooled is None:
            pooled = self.engine.raw_connection()
            pooled.detach()
        broken = False
        try:
            yield RawTransaction(pooled.cursor())
        except exc.DBAPIError:
            broken = True
            try:
                pooled.close()  # a broken connection is not reused
            except Exception:  # noqa: BLE001 - it is gone either way
                pass
            raise
        finally:
            if not broken:  # reused after the caller's own errors too (a refusal)
                with self._lock:
                    self._free.append(pooled)
