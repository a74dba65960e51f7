"""The index behind the answer (files/behind.py, issue 17 session 13): a new instance of an association
that already stored one is answered once it is durable under its final name and its spool name (made
durable ahead, files/spool.py), and its rows are committed right after. What must hold:

- after the answer and before the commit, the spool file has a second link: a crash there is replayed
  by `recover` (in-process crash point below, and kill -9 of a real node while the index is locked);
- what the index transaction would refuse is refused before the answer (SOP Instance UID conflicts,
  committed or still queued), and nothing of it stays in store/;
- an association's A-RELEASE-RP comes after the commit of everything it stored;
- the spool names are durable in their folder before use, one folder flush per batch.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicom_fixtures import generate_study
from msfollowup.db import Database, groupcommit
from msfollowup.files import spool as spool_module
from msfollowup.files.spool import SpoolFile
from msfollowup.files.store import IngestError, Instance, InstanceStore, Outcome
from msfollowup.files.syncio import SMALL_FILE
from nodeutil import RunningNode, dataset_bytes, spool_left


def _spooled(store: InstanceStore, source: Path) -> SpoolFile:
    """`source` in a spool file of tmp/, still open, as the node's lean path leaves it."""
    spool = SpoolFile(store.tmp, keep=SMALL_FILE)
    spool.write(source.read_bytes())
    return spool


def _indexed(db: Database) -> set[str]:
    with db.session() as s:
        return set(s.scalars(s.query(Instance.sop_instance_uid).statement))


class _HeldWriter:
    """Holds the store's index writer before its commit until released (a crash point)."""

    def __init__(self, monkeypatch: Any) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        real = groupcommit.GroupCommitter.run_many

        def held(committer: Any, works: Any) -> Any:
            self.entered.set()
            self.release.wait(30)
            return real(committer, works)

        monkeypatch.setattr(groupcommit.GroupCommitter, "run_many", held)


def test_answered_before_commit_a_crash_there_is_replayed_by_recovery(tmp_path: Path, monkeypatch: Any) -> None:
    study = generate_study(tmp_path / "gen", slices=3, seed=131)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "var", db)
    held = _HeldWriter(monkeypatch)
    first = study.files[0]  # as on the node: an association's first instance is indexed before its answer
    shutil.copyfile(first, store.tmp / "first.part")
    assert store.ingest_file(store.tmp / "first.part").indexed is None
    (store.tmp / "first.part").unlink()
    results = []
    for source in study.files[1:]:
        spool = _spooled(store, source)
        results.append(store.ingest_file(Path(spool.name), spooled=spool, index_behind=True))
        spool.discard()  # what the node does after answering: the name stays, handed over
    assert held.entered.wait(10)
    assert all(r.outcome is Outcome.STORED and r.indexed is not None for r in results)
    assert not any(r.indexed.is_set() for r in results if r.indexed is not None)
    assert len(_indexed(db)) == 1, "committed before the writer ran"
    # The crash point: answered, durable under both names, not indexed.
    records = [p for p in store.tmp.iterdir() if p.stat().st_nlink == 2]
    assert len(records) == len(results)
    for r in results:
        assert r.path.exists()

    # "Restart": a new store on the same folders recovers (the held writer never commits).
    monkeypatch.undo()
    again = InstanceStore(tmp_path / "var", Database(f"sqlite:///{tmp_path / 'index.sqlite3'}"))
    counts = again.recover()
    assert counts["indexed"] == len(results)
    assert _indexed(db) == {r.sop_instance_uid for r in results} | {pydicom.dcmread(first).SOPInstanceUID}
    assert spool_left(tmp_path / "var") == []
    held.release.set()


def test_the_spool_name_goes_only_after_the_commit(tmp_path: Path) -> None:
    study = generate_study(tmp_path / "gen", slices=2, seed=132)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "var", db)
    spool = _spooled(store, study.files[0])
    name = Path(spool.name)
    result = store.ingest_file(name, spooled=spool, index_behind=True)
    spool.discard()
    assert result.indexed is not None and result.indexed.wait(10)
    assert _indexed(db) == {result.sop_instance_uid}
    assert not name.exists(), "the replayed record stays after its commit"
    assert result.path.read_bytes() == study.files[0].read_bytes()
    assert store.close(5)


def test_a_conflict_is_refused_before_the_answer_committed_or_queued(tmp_path: Path, monkeypatch: Any) -> None:
    """The same SOP Instance UID under another study: refused 0xA900 whether the first copy is indexed
    or still waiting for its commit (waited for), and the refused copy's file leaves store/."""
    study = generate_study(tmp_path / "gen", slices=2, seed=133)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "var", db)

    def other_study(source: Path, name: str) -> Path:
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID = generate_uid()
        out = tmp_path / name
        ds.save_as(out)
        return out

    # committed first copy
    spool = _spooled(store, study.files[0])
    first = store.ingest_file(Path(spool.name), spooled=spool, index_behind=True)
    spool.discard()
    assert first.indexed is not None and first.indexed.wait(10)
    copy = other_study(study.files[0], "copy0.dcm")
    spool = _spooled(store, copy)
    with pytest.raises(IngestError) as raised:
        store.ingest_file(Path(spool.name), spooled=spool, index_behind=True)
    spool.discard()
    assert raised.value.status == 0xA900 and "study" in str(raised.value)

    # queued first copy (its writer held before the commit, for 0.5 s): the second copy waits for
    # that commit, then is refused as against an indexed copy
    held = _HeldWriter(monkeypatch)
    spool = _spooled(store, study.files[1])
    queued = store.ingest_file(Path(spool.name), spooled=spool, index_behind=True)
    spool.discard()
    assert held.entered.wait(10)
    copy = other_study(study.files[1], "copy1.dcm")
    spool = _spooled(store, copy)
    threading.Timer(0.5, held.release.set).start()
    with pytest.raises(IngestError) as raised:
        store.ingest_file(Path(spool.name), spooled=spool, index_behind=True)
    spool.discard()
    assert raised.value.status == 0xA900
    assert queued.indexed is not None and queued.indexed.is_set(), "refused before the first copy's commit"
    stored = {p.name for p in store.root.rglob("*.dcm")}
    assert len(stored) == 2 and len(list(store.root.rglob("*.dcm"))) == 2, "a refused copy stayed in store/"
    assert spool_left(tmp_path / "var") == []


def test_spool_names_are_made_ahead_with_one_folder_flush_per_batch(tmp_path: Path, monkeypatch: Any) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    flushed: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        flushed.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(spool_module.os, "fsync", fsync)
    spools = [SpoolFile(folder) for _ in range(spool_module._BATCH + 1)]
    assert flushed == [True, True], "one flush of the folder per batch of names"
    # The names exist before they are used: the batch's rest waits, empty, in the folder.
    assert len(list(folder.iterdir())) == 2 * spool_module._BATCH
    for s in spools:
        s.discard()
    assert len(list(folder.iterdir())) == spool_module._BATCH - 1  # made ahead, unused: empty, one link
    assert all(p.stat().st_size == 0 and p.stat().st_nlink == 1 for p in folder.iterdir())


# --- a real node ---------------------------------------------------------------------------------


def _associate(node: RunningNode) -> Any:
    ae = AE(ae_title="STORESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ds = pydicom.dcmread(next(iter(node.data_dir.parent.rglob("*.dcm"))), stop_before_pixels=True)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    return assoc


def test_kill_9_while_answered_instances_wait_for_a_locked_index_loses_none(tmp_path: Path) -> None:
    """The first instance of an association is indexed before its answer; then the index is locked by
    another process: the next instances are answered from their durable records (or refused once the
    node sees the index failing). kill -9 while it is still locked; after the restart every instance
    answered Success is indexed and byte-identical, and no refused one is in store/."""
    study = generate_study(tmp_path / "gen", slices=12, seed=134)
    node = RunningNode(tmp_path, stable_seconds=60, sections={"storage": {"busy_timeout_seconds": 0.5}}).start()
    holder = None
    try:
        assoc = _associate(node)
        datasets = [pydicom.dcmread(p) for p in study.files]
        assert assoc.send_c_store(datasets[0]).Status == 0
        holder = sqlite3.connect(node.data_dir / "index.sqlite3", timeout=5, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets[1:]]
        assert statuses[0] == 0, "the second instance is answered from its durable record"
        assert all(s == 0 or 0xA700 <= s <= 0xA7FF for s in statuses), [hex(s) for s in statuses]
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(10)
        assoc.abort()
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
        node.stop()
    answered = {datasets[0].SOPInstanceUID} | {ds.SOPInstanceUID for ds, s in zip(datasets[1:], statuses) if s == 0}
    refused = {ds.SOPInstanceUID for ds, s in zip(datasets[1:], statuses) if s != 0}
    node = RunningNode(tmp_path, stable_seconds=60, port=node.port).start()
    try:
        rows = {r.sop_instance_uid: r for r in node.instances(study.study_uid)}
        assert set(rows) == answered, "an answered instance was lost, or a refused one indexed"
        sources = {ds.SOPInstanceUID: p for ds, p in zip(datasets, study.files)}
        for sop in answered:
            assert dataset_bytes(node.data_dir / "store" / rows[sop].path) == dataset_bytes(sources[sop])
        in_store = {p.stem for p in (node.data_dir / "store").rglob("*.dcm")}
        assert in_store == answered and not refused & in_store
        assert spool_left(node.data_dir) == []
    finally:
        node.stop()


def test_a_released_association_finds_its_instances_indexed(tmp_path: Path) -> None:
    """The A-RELEASE-RP waits for the commit of the association's instances: read at once after the
    release, every row is there (200 instances, most of them indexed behind their answer)."""
    study = generate_study(tmp_path / "gen", slices=200, rows=64, columns=64, seed=135)
    node = RunningNode(tmp_path, stable_seconds=60).start()
    try:
        assoc = _associate(node)
        for p in study.files:
            assert assoc.send_c_store(pydicom.dcmread(p)).Status == 0
        assoc.release()
        con = sqlite3.connect(node.data_dir / "index.sqlite3", timeout=30)
        try:
            (count,) = con.execute("SELECT count(*) FROM instances WHERE study_uid = ?", (study.study_uid,)).fetchone()
        finally:
            con.close()
        assert count == len(study.files)
    finally:
        node.stop()


def test_index_commit_before_indexes_every_instance_before_its_answer(tmp_path: Path) -> None:
    """`[storage] index_commit = "before"`: no writer thread; a spooled instance asked to go behind
    is indexed before ingest_file returns, its spool name left to the caller."""
    study = generate_study(tmp_path / "gen", slices=1, seed=136)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "var", db, index_commit="before")
    assert store.behind is None
    spool = _spooled(store, study.files[0])
    result = store.ingest_file(Path(spool.name), spooled=spool, index_behind=True)
    assert result.indexed is None and _indexed(db) == {result.sop_instance_uid}
    spool.discard()
    assert spool_left(tmp_path / "var") == []


def test_an_identical_copy_of_a_queued_instance_waits_for_its_commit(tmp_path: Path, monkeypatch: Any) -> None:
    study = generate_study(tmp_path / "gen", slices=1, seed=137)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "var", db)
    held = _HeldWriter(monkeypatch)
    spool = _spooled(store, study.files[0])
    first = store.ingest_file(Path(spool.name), spooled=spool, index_behind=True)
    spool.discard()
    assert held.entered.wait(10)
    threading.Timer(0.3, held.release.set).start()
    spool = _spooled(store, study.files[0])
    again = store.ingest_file(Path(spool.name), spooled=spool, index_behind=True)
    spool.discard()
    assert first.indexed is not None and first.indexed.is_set()
    assert again.outcome is Outcome.DUPLICATE_SAME and again.indexed is None
    assert _indexed(db) == {first.sop_instance_uid}
    assert spool_left(tmp_path / "var") == []


def test_a_failing_commit_is_retried_and_new_instances_meet_the_failure(tmp_path: Path) -> None:
    """The index locked by another process: the queued instance's commit fails and is retried; while
    it fails, a new instance is indexed before its answer and gets the index's error; once the lock
    goes, the queued one is committed and its spool name removed."""
    study = generate_study(tmp_path / "gen", slices=2, seed=138)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}", busy_timeout=0.3)
    store = InstanceStore(tmp_path / "var", db)
    holder = sqlite3.connect(tmp_path / "index.sqlite3", timeout=5, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        spool = _spooled(store, study.files[0])
        queued = store.ingest_file(Path(spool.name), spooled=spool, index_behind=True)
        spool.discard()
        assert queued.indexed is not None
        deadline = time.monotonic() + 10
        while store.behind is not None and store.behind.failing is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.behind is not None and store.behind.failing is not None
        spool = _spooled(store, study.files[1])
        with pytest.raises(Exception) as raised:
            store.ingest_file(Path(spool.name), spooled=spool, index_behind=True)
        spool.discard()
        assert "locked" in str(raised.value)
        assert not queued.indexed.is_set()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert queued.indexed.wait(10)
    assert _indexed(db) == {queued.sop_instance_uid}
    assert spool_left(tmp_path / "var") == []
    assert len(list(store.root.rglob("*.dcm"))) == 1, "the refused instance's link was taken back"
