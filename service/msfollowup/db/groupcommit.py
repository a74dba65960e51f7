"""Group commit: index transactions of concurrent ingests share one SQLite COMMIT (and its flush).

Every received instance is indexed in one short transaction, and with synchronous=FULL its COMMIT
waits for the WAL's flush (~1 ms here). Writers of one SQLite file take turns (db/rawsqlite.py), so
with four senders every instance waited for the others' flushes: in `benchmarks/ingest.py` case (c)
the association threads spent 17% of their time waiting for the turn and 14% in COMMIT.

Here the first thread to arrive leads: it waits for the writer's turn (db/rawsqlite.py), then takes
every transaction waiting at that moment (its own included), runs each in its own SAVEPOINT inside one
BEGIN IMMEDIATE ... COMMIT, and wakes them all after the COMMIT. Whoever arrived during that flush
waits, and the first of them leads the next group, so a lone sender (case a) pays nothing but a lock
and an Event, and N senders pay one flush per group.

What each caller sees is unchanged: its work runs in a transaction, its own exception (a unique
violation, a refusal) undoes only its own statements (the savepoint) and reaches it, and it returns
only after the COMMIT that holds its rows has returned; if that COMMIT fails every member gets the
error and nothing is acknowledged. The work runs on the leader's thread: it must take no lock the
waiting callers might hold (the index statements take none) and use nothing thread-local.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from msfollowup.db import rawsqlite

T = TypeVar("T")


class _Member(Generic[T]):
    """One caller's transaction in a group: its work, then its result or error."""

    __slots__ = ("error", "finished", "result", "wake", "work")

    def __init__(self, work: Callable[[rawsqlite.RawTransaction], T]) -> None:
        self.work = work
        self.wake = threading.Event()  # set once: the group holding it committed, or it leads the next
        self.finished = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # the work's own return value


class GroupCommitter:
    """The group commit of one engine's SQLite index (the instance store owns one, files/store.py)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._mutex = threading.Lock()
        self._waiting: list[_Member[Any]] = []
        self._leading = False
        self._connection: Any = None  # the leader's connection (see _transaction)
        self._tx: rawsqlite.RawTransaction | None = None
        self.groups = 0  # committed groups and their members, for tests and benchmarks
        self.members = 0

    def run(self, work: Callable[[rawsqlite.RawTransaction], T]) -> T:
        """Run `work(tx)` in an index transaction; returns its result once the transaction committed."""
        member: _Member[T] = _Member(work)
        with self._mutex:
            self._waiting.append(member)
            lead = not self._leading
            self._leading = True
        if not lead:
            member.wake.wait()
        if not member.finished:  # first to arrive, or handed the lead by the previous group's leader
            self._lead()
        return member.outcome()

    def run_many(self, works: list[Callable[[rawsqlite.RawTransaction], Any]]) -> list[BaseException | None]:
        """Run several transactions' work in one group (the index writer's batch, files/behind.py), each
        in its own savepoint; returns, in order, each one's error or None once the COMMIT returned.
        They join the group together: the leader takes the whole waiting list under the mutex."""
        members: list[_Member[Any]] = [_Member(work) for work in works]
        if not members:
            return []
        with self._mutex:
            self._waiting.extend(members)
            lead = not self._leading
            self._leading = True
        if not lead:
            members[0].wake.wait()
        if not members[0].finished:
            self._lead()
        return [member.error for member in members]

    def _lead(self) -> None:
        # The writer's turn first, the group second: whoever arrives while the leader waits for the
        # turn (another receiving process committing, or a write of the service) joins this commit
        # instead of waiting for the next one.
        try:
            end_turn: Callable[[], None] | None = rawsqlite.take_turn(self.engine)
            turn_error: BaseException | None = None
        except BaseException as exc:  # noqa: BLE001 - handed to every member of the group
            end_turn, turn_error = None, exc
        with self._mutex:
            group, self._waiting = self._waiting, []
        try:
            if end_turn is None:
                for member in group:
                    member.error = turn_error
            else:
                try:
                    self._commit(group)
                finally:
                    end_turn()
        finally:
            with self._mutex:
                successor = self._waiting[0] if self._waiting else None
                self._leading = successor is not None
            for member in group:
                member.finished = True
                member.wake.set()
            if successor is not None:
                successor.wake.set()

    def _commit(self, group: list[_Member[Any]]) -> None:
        try:
            tx = self._transaction()
            with tx.transaction():  # inside the writer's turn (_lead)
                if len(group) == 1:  # no savepoint needed: its error rolls the transaction back
                    group[0].result = group[0].work(tx)
                else:
                    for member in group:
                        self._run_member(tx, member)
            self.groups += 1
            self.members += len(group)
        except BaseException as exc:  # noqa: BLE001 - handed to the members (see below)
            # BEGIN's, COMMIT's, or a lone member's own error
            if isinstance(exc, SQLAlchemyError) and not isinstance(exc, IntegrityError):
                self._drop_connection()  # a broken connection (I/O error, file gone) is not reused
            for member in group:
                if member.error is None:
                    member.error = exc

    def _transaction(self) -> rawsqlite.RawTransaction:
        """A transaction on the committer's own connection: opened once through the engine (its pragmas
        and hooks) and detached from the pool, because a pool check-out and check-in per instance cost
        a fifth of the index transaction's time (py-spy). Only the leader uses it, one group at a time."""
        if self._tx is None:
            pooled = self.engine.raw_connection()
            pooled.detach()  # ours until dropped; the pool opens another for everyone else
            self._connection, self._tx = pooled, rawsqlite.RawTransaction(pooled.cursor())
        return self._tx

    def _drop_connection(self) -> None:
        connection, self._connection, self._tx = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too; it is gone either way
                pass

    @staticmethod
    def _run_member(tx: rawsqlite.RawTransaction, member: _Member[Any]) -> None:
        # No RELEASE: the COMMIT ends every savepoint (one statement less per member). ROLLBACK TO
        # undoes what was done since the newest savepoint of that name, this member's.
        tx.execute_sql("SAVEPOINT msf_member")
        try:
            member.result = member.work(tx)
        except BaseException as exc:  # noqa: BLE001 - the member's own error, raised in its own thread
            member.error = exc
            tx.execute_sql("ROLLBACK TO msf_member")
