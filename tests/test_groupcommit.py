"""Flushes shared by concurrent ingests: the index's group commit (db/groupcommit.py) and the series
folders' fsyncs (files/dirflush.py). Each shares a flush only with callers whose change it covers, and
each caller still gets its own error."""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from msfollowup.db import Database, rawsqlite
from msfollowup.db.groupcommit import GroupCommitter
from msfollowup.files.dirflush import DirectoryFlusher


def _committer(tmp_path: Path) -> tuple[GroupCommitter, Path]:
    path = tmp_path / "index.sqlite3"
    db = Database(f"sqlite:///{path}")
    with sqlite3.connect(path) as c:
        c.executescript("""
            CREATE TABLE parent (id INTEGER PRIMARY KEY);
            CREATE TABLE child (id INTEGER PRIMARY KEY,
                                parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
            CREATE TABLE t (id INTEGER PRIMARY KEY);""")
    return GroupCommitter(db.engine), path


def _rows(path: Path, table: str = "t") -> list[int]:
    with sqlite3.connect(path) as c:
        return sorted(r[0] for r in c.execute(f"SELECT id FROM {table}"))


def _insert(key: int, table: str = "t", then: Callable[[], None] = lambda: None) -> Callable[[Any], int]:
    def work(tx: rawsqlite.RawTransaction) -> int:
        tx.execute_sql(f"INSERT INTO {table} (id) VALUES ({key})" if table != "child"
                       else f"INSERT INTO child (id, parent) VALUES ({key}, 999)")  # no parent 999
        then()
        return key
    return work


def _group(committer: GroupCommitter, works: list[Callable[[Any], int]]) -> list[Any]:
    """Run `works[0]` as the leader, held inside its transaction until the others are waiting, so the
    rest form one group. Returns each one's result or exception."""
    entered, go = threading.Event(), threading.Event()
    outcomes: list[Any] = [None] * len(works)
    leader_work = works[0]

    def held(tx: Any) -> int:
        entered.set()
        assert go.wait(10)
        return leader_work(tx)

    def call(i: int, work: Callable[[Any], int]) -> None:
        try:
            outcomes[i] = committer.run(work)
        except BaseException as exc:  # noqa: BLE001 - the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(0, held))]
    threads[0].start()
    assert entered.wait(10)
    threads += [threading.Thread(target=call, args=(i, w)) for i, w in enumerate(works) if i]
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 10
    while len(committer._waiting) < len(works) - 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    go.set()
    for t in threads:
        t.join(10)
    return outcomes


def test_transactions_that_arrive_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    committer, path = _committer(tmp_path)
    assert _group(committer, [_insert(i) for i in range(5)]) == [0, 1, 2, 3, 4]
    assert _rows(path) == [0, 1, 2, 3, 4]
    # the leader's own transaction, then one for the four that waited meanwhile
    assert (committer.groups, committer.members) == (2, 5)
    assert committer.run(_insert(9)) == 9 and committer.groups == 3  # a lone caller commits alone


def test_transactions_that_arrive_while_the_leader_waits_for_the_writers_turn_join_its_commit(
        tmp_path: Path) -> None:
    """Another receiving process (here: another thread) holds the writer's turn; the first caller leads
    and waits for the turn, three more arrive meanwhile. All four commit together once the turn is free
    (taking the group before the turn made it two commits: the leader alone, then the three)."""
    committer, path = _committer(tmp_path)
    holding, free = threading.Event(), threading.Event()

    def other_writer() -> None:
        with rawsqlite.writer_turn(committer.engine):
            holding.set()
            assert free.wait(10)

    holder = threading.Thread(target=other_writer)
    holder.start()
    assert holding.wait(10)
    outcomes: list[Any] = [None] * 4

    def call(i: int) -> None:
        outcomes[i] = committer.run(_insert(i))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not committer._leading and time.monotonic() < deadline:
        time.sleep(0.005)
    for t in threads[1:]:
        t.start()
    while len(committer._waiting) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(committer._waiting) == 4, "the leader took its group before it had the writer's turn"
    free.set()
    for t in [holder, *threads]:
        t.join(10)
    assert outcomes == [0, 1, 2, 3] and _rows(path) == [0, 1, 2, 3]
    assert (committer.groups, committer.members) == (1, 4)


def test_a_turn_that_cannot_be_taken_fails_every_member(tmp_path: Path, monkeypatch: Any) -> None:
    committer, path = _committer(tmp_path)

    def no_turn(engine: Any, timeout: float = 30.0) -> Callable[[], None]:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rawsqlite, "take_turn", no_turn)
    with pytest.raises(OSError, match="No locks available"):
        committer.run(_insert(0))
    monkeypatch.undo()
    assert committer.run(_insert(1)) == 1 and _rows(path) == [1], "the committer did not recover"


def test_a_members_own_error_undoes_only_its_own_statements(tmp_path: Path) -> None:
    committer, path = _committer(tmp_path)

    def boom() -> None:
        raise ValueError("refused")

    outcomes = _group(committer, [_insert(0), _insert(1), _insert(2, then=boom), _insert(3)])
    assert outcomes[:2] == [0, 1] and outcomes[3] == 3
    assert isinstance(outcomes[2], ValueError)
    assert _rows(path) == [0, 1, 3], "the failed member's insert was committed"
    assert committer.groups == 2


def test_a_failed_commit_fails_every_member_and_keeps_nothing(tmp_path: Path) -> None:
    """A deferred foreign key fails the COMMIT itself: no member may return as if committed."""
    committer, path = _committer(tmp_path)
    outcomes = _group(committer, [_insert(0), _insert(1), _insert(7, table="child"), _insert(3)])
    assert outcomes[0] == 0  # the leader's own group committed before
    assert all(isinstance(o, IntegrityError) for o in outcomes[1:]), outcomes
    assert _rows(path) == [0] and _rows(path, "child") == []
    assert committer.run(_insert(5)) == 5 and _rows(path) == [0, 5], "the committer did not recover"


def test_one_folder_flush_covers_every_name_linked_before_it_started(tmp_path: Path) -> None:
    flusher = DirectoryFlusher()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def fsync() -> None:
        calls.append(len(calls))
        if len(calls) == 1:  # the first flush is slow; the others arrive while it runs
            started.set()
            assert release.wait(10)

    threads = [threading.Thread(target=flusher.flush, args=("f", fsync))]
    threads[0].start()
    assert started.wait(10)
    threads += [threading.Thread(target=flusher.flush, args=("f", fsync)) for _ in range(3)]
    for t in threads[1:]:
        t.start()
    time.sleep(0.2)  # all three wait: the running flush began before their links
    assert len(calls) == 1
    release.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 2, "the three who arrived during the first flush need exactly one more"
    flusher.flush("f", fsync)
    assert len(calls) == 3, "a caller arriving after every flush ended must flush again"
    assert flusher._folders == {}


def test_a_failed_folder_flush_is_raised_and_the_others_flush_for_themselves(tmp_path: Path) -> None:
    flusher = DirectoryFlusher()
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []
    errors: list[BaseException] = []

    def fsync() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            started.set()
            assert release.wait(10)
            raise OSError(errno.EIO, "Input/output error")

    def call() -> None:
        try:
            flusher.flush("f", fsync)
        except OSError as exc:
            errors.append(exc)

    first = threading.Thread(target=call, name="first")
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=call, name=f"other{i}") for i in range(2)]
    for t in others:
        t.start()
    time.sleep(0.1)
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert [e.errno for e in errors] == [errno.EIO] and calls[0] == "first"
    assert len(calls) == 2, "the callers behind a failed flush must run one that covers them"


def test_concurrent_ingests_into_one_series_share_folder_flushes_and_commits(tmp_path: Path, monkeypatch: Any) -> None:
    """Through the store: every instance indexed and linked, with fewer commits and folder flushes
    than instances when eight threads ingest into one series at once. The folder's flush is made
    slow (5 ms, a busy disk) so that the threads meet there whatever this machine's disk does."""
    import shutil

    from hostileutil import mr_dataset
    from msfollowup.db.index import Instance
    from msfollowup.files import store as store_module
    from msfollowup.files.store import InstanceStore

    real_fsync = store_module._fsync_path

    def slow_folder_fsync(path: Path, directory: bool = False, fd: int | None = None) -> None:
        if directory:
            time.sleep(0.005)
        real_fsync(path, directory, fd)

    monkeypatch.setattr(store_module, "_fsync_path", slow_folder_fsync)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}", auto_upgrade=True)
    store = InstanceStore(tmp_path / "var", db)
    first = mr_dataset()
    sources = []
    for i in range(64):
        ds = mr_dataset(study_uid=first.StudyInstanceUID)
        ds.SeriesInstanceUID, ds.InstanceNumber = first.SeriesInstanceUID, i + 1
        sources.append(tmp_path / f"{i}.dcm")
        ds.save_as(sources[-1], enforce_file_format=True)
    barrier = threading.Barrier(8)

    def ingest(part: list[Path]) -> None:
        barrier.wait()
        for src in part:
            temp = store.tmp / f"{src.stem}.part"
            shutil.copyfile(src, temp)
            store.ingest_file(temp)
            temp.unlink()

    threads = [threading.Thread(target=ingest, args=(sources[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with db.session() as s:
        assert s.query(Instance).count() == 64
    assert len(list(store.root.rglob("*.dcm"))) == 64
    assert store._committer.members == 64 and store._committer.groups < 64
    assert store._folder_flushes.flushes < 64
