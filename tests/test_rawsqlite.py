"""The SQLite index transaction on the DB-API connection (db/rawsqlite.py) writes what SQLAlchemy Core
writes: the same rows, timestamps in the same stored form that read back as UTC, the same refusals."""

from __future__ import annotations

import re
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from hostileutil import mr_dataset
from msfollowup.db import Database
from msfollowup.db.groupcommit import GroupCommitter
from msfollowup.db.index import Instance, Study
from msfollowup.files.store import IngestError, InstanceStore

STORED_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


class CoreStore(InstanceStore):
    """The same store with the index transaction through SQLAlchemy Core (as on PostgreSQL)."""

    def _in_transaction(self, work: Callable[[Any], bool]) -> bool:
        with self.db.engine.begin() as c:
            return work(c)


def _files(tmp: Path) -> list[Path]:
    study = generate_uid()
    out = []
    for i in range(3):
        ds = mr_dataset(study_uid=study)
        ds.InstanceNumber = i + 1
        if i:
            ds.SeriesInstanceUID = first_series
        else:
            first_series = ds.SeriesInstanceUID
        path = tmp / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def _ingest(store: InstanceStore, files: list[Path]) -> None:
    for i, f in enumerate(files):
        temp = store.tmp / f"in-{i}.part"
        shutil.copy(f, temp)
        store.ingest_file(temp, calling_ae="RAWTEST")
        temp.unlink()


def _rows(db_file: Path, table: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db_file)
    try:
        return sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
    finally:
        con.close()


def _without_times(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(v for v in r if not (isinstance(v, str) and STORED_TIME.match(v))) for r in rows]


def test_raw_and_core_index_transactions_write_the_same_rows(tmp_path: Path) -> None:
    files = _files(tmp_path)
    stores = {}
    for name, cls in (("raw", InstanceStore), ("core", CoreStore)):
        db = Database(f"sqlite:///{tmp_path}/{name}.sqlite3")
        stores[name] = cls(tmp_path / name, db, fsync=False)
        _ingest(stores[name], files)
    for table in ("studies", "series", "instances"):
        raw_rows, core_rows = _rows(tmp_path / "raw.sqlite3", table), _rows(tmp_path / "core.sqlite3", table)
        assert len(raw_rows) == len(core_rows) > 0
        assert _without_times(raw_rows) == _without_times(core_rows), table
        stamps = [[v for v in r if isinstance(v, str) and STORED_TIME.match(v)] for r in raw_rows + core_rows]
        assert all(stamps), f"{table}: every row has its timestamps in SQLAlchemy's stored form"
    with stores["raw"].db.session() as s:
        inst = s.query(Instance).first()
        study = s.query(Study).first()
        assert inst is not None and inst.received_at.utcoffset() is not None
        assert study is not None and study.last_received >= study.first_received


def test_the_same_sop_instance_in_another_study_is_refused_on_both(tmp_path: Path) -> None:
    ds = mr_dataset()
    other = mr_dataset(sop_uid=ds.SOPInstanceUID)
    for name, cls in (("raw", InstanceStore), ("core", CoreStore)):
        store = cls(tmp_path / name, Database(f"sqlite:///{tmp_path}/{name}.sqlite3"), fsync=False)
        for i, item in enumerate((ds, other)):
            temp = store.tmp / f"{i}.part"
            item.save_as(temp, enforce_file_format=True)
            if i == 0:
                store.ingest_file(temp)
            else:
                with pytest.raises(IngestError) as refused:
                    store.ingest_file(temp)
                assert refused.value.status == 0xA900 and "already in study" in str(refused.value)


def test_a_uid_under_another_vr_is_judged_as_pydicom_reads_it(tmp_path: Path) -> None:
    """The ingest reads UIDs from the raw bytes only when the element's VR is UI: a hostile file whose
    StudyInstanceUID is encoded as OB (found by tests/test_fuzz.py) is refused as the later stages would
    read it, instead of being indexed and then failing every check."""
    ds = mr_dataset()
    del ds.StudyInstanceUID
    ds.add_new(0x0020000D, "OB", b"1.2.3.4\0")
    store = InstanceStore(tmp_path / "s", Database(f"sqlite:///{tmp_path}/i.sqlite3"), fsync=False)
    temp = store.tmp / "ob.part"
    ds.save_as(temp, enforce_file_format=True)
    with pytest.raises(IngestError) as refused:
        store.ingest_file(temp)
    assert refused.value.status == 0xC000 and "StudyInstanceUID" in str(refused.value)


def test_index_transactions_of_one_process_take_turns_on_a_lock_per_file(tmp_path: Path) -> None:
    """Threads that would otherwise meet in SQLite's busy handler (which sleeps up to 100 ms between
    tries) queue on one lock per database file, whichever Database object they came through."""
    from msfollowup.db import rawsqlite

    url = f"sqlite:///{tmp_path / 'index.db'}"
    first, second = Database(url, auto_upgrade=True), Database(url)

    def held(_tx: Any) -> bool:
        return rawsqlite._write_lock(second.engine).locked()

    def fails(_tx: Any) -> None:
        1 / 0

    assert GroupCommitter(first.engine).run(held)
    assert not rawsqlite._write_lock(second.engine).locked()
    with pytest.raises(ZeroDivisionError):
        GroupCommitter(second.engine).run(fails)
    assert not rawsqlite._write_lock(first.engine).locked(), "a failed transaction kept the lock"


def test_sqlalchemy_transactions_take_the_same_turn_and_read_sessions_none(tmp_path: Path) -> None:
    """Sessions hold the writer's turn from BEGIN to COMMIT/ROLLBACK; a read session reads a snapshot
    without it (it would otherwise wait here for the turn this very thread holds) and may not write."""
    from sqlalchemy import text

    from msfollowup.db import rawsqlite

    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}", auto_upgrade=True)
    turn = rawsqlite._write_lock(db.engine)
    with db.session() as s:
        s.execute(text("SELECT 1"))
        assert turn.locked()
    assert not turn.locked()
    with pytest.raises(ZeroDivisionError), db.session() as s:
        s.execute(text("SELECT 1"))
        1 / 0
    assert not turn.locked(), "a rolled-back session kept the turn"

    def read_meanwhile(_tx: Any) -> int:  # an index transaction is open ...
        with db.read_session() as s:  # ... and a reader is not held up by it
            return int(s.execute(text("SELECT count(*) FROM instances")).scalar_one())

    assert GroupCommitter(db.engine).run(read_meanwhile) == 0
    with pytest.raises(RuntimeError, match="read session may not write"), db.read_session() as s:
        s.add(Study(study_uid="1.2.3"))
        s.flush()
    assert not turn.locked()
