"""The store's index rows, in-process on a real SQLite file and real files."""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_fixtures import generate_study
from msfollowup.db import Database
from msfollowup.files import store as store_module
from msfollowup.files.spool import SpoolFile
from msfollowup.files.syncio import SMALL_FILE
from msfollowup.files.store import IngestError, Instance, InstanceStore, Study


def test_multi_valued_character_set_is_indexed_in_dicom_backslash_form(tmp_path: Path) -> None:
    study = generate_study(tmp_path / "gen", slices=1, seed=41)
    ds = pydicom.dcmread(study.files[0])
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    source = tmp_path / "one.dcm"
    ds.save_as(source)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "var", db)
    temp = store.tmp / "one.part"
    shutil.copyfile(source, temp)
    store.ingest_file(temp)
    with db.session() as s:
        row = s.get(Study, study.study_uid)
        assert row is not None and row.specific_character_set == "ISO 2022 IR 6\\ISO 2022 IR 87"


# --- issue 17: the disk writes the bytes while the checks parse the file ------------------------------


def _one(tmp_path: Path) -> tuple[InstanceStore, Database, Path]:
    study = generate_study(tmp_path / "gen", slices=1, seed=43)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "var", db)
    temp = store.tmp / "one.part"
    shutil.copyfile(study.files[0], temp)
    return store, db, temp


def test_nothing_is_linked_before_the_received_bytes_are_flushed(tmp_path: Path, monkeypatch: Any) -> None:
    """The disk is asked to start writing before the checks; a slow fsync still comes before the
    final name."""
    store, _db, temp = _one(tmp_path)
    events: list[str] = []

    def writeback(path: Path, fd: int | None = None) -> None:
        events.append(f"writeback {Path(path).name}")
        real_writeback(path, fd)

    def check(*args: Any) -> Any:
        events.append("checked")
        return real_check(*args)

    def slow_fsync(path: Path, directory: bool = False, fd: int | None = None) -> None:
        if not directory:
            time.sleep(0.3)  # a slow disk
            events.append(f"flushed {Path(path).name}")
        real_fsync(path, directory, fd)

    def link(src: Any, dst: Any) -> None:
        events.append(f"linked {Path(src).name}")
        real_link(src, dst)

    real_fsync, real_link, real_writeback = store_module._fsync_path, os.link, store_module._start_writeback
    real_check = store._check
    monkeypatch.setattr(store_module, "_fsync_path", slow_fsync)
    monkeypatch.setattr(store_module, "_start_writeback", writeback)
    monkeypatch.setattr(store, "_check", check)
    monkeypatch.setattr(store_module.os, "link", link)
    store.ingest_file(temp)
    assert events == ["writeback one.part", "checked", "flushed one.part", "linked one.part"]


def test_a_failed_flush_fails_the_store_and_links_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    store, db, temp = _one(tmp_path)

    def failing_fsync(path: Path, directory: bool = False, fd: int | None = None) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store_module, "_fsync_path", failing_fsync)
    with pytest.raises(OSError) as raised:
        store.ingest_file(temp)
    assert raised.value.errno == errno.EIO
    assert not list(store.root.rglob("*.dcm"))
    with db.session() as s:
        assert s.query(Instance).count() == 0


def test_a_refused_file_answers_its_own_error_not_the_flush(tmp_path: Path) -> None:
    """A malformed file is refused for what it is, even though its writeback was started."""
    store, _db, temp = _one(tmp_path)
    temp.write_bytes(temp.read_bytes()[:400])  # cut inside the header
    with pytest.raises(IngestError) as raised:
        store.ingest_file(temp)
    assert raised.value.status == 0xC000
    assert not list(store.root.rglob("*.dcm"))


def _spooled(store: InstanceStore, source: Path) -> SpoolFile:
    """`source` written into a spool file in tmp/ as the node's lean path writes it: still open."""
    spool = SpoolFile(store.tmp, keep=SMALL_FILE)
    data = source.read_bytes()
    spool.write(data[:132])
    spool.write(data[132:])
    return spool


def test_a_spooled_file_is_flushed_through_its_own_descriptor_and_checked_from_memory(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The lean path's spool is still open: its descriptor is written back and flushed (not the name
    opened again), and the bytes it kept are what the checks read (the file is not read back)."""
    store, db, temp = _one(tmp_path)
    spool = _spooled(store, temp)
    flushed: list[int | None] = []
    real_fsync, real_writeback = store_module._fsync_path, store_module._start_writeback

    def fsync(path: Path, directory: bool = False, fd: int | None = None) -> None:
        if not directory:
            flushed.append(fd)
        real_fsync(path, directory, fd)

    def writeback(path: Path, fd: int | None = None) -> None:
        flushed.append(fd)
        real_writeback(path, fd)

    def no_read(path: Path) -> bytes | None:
        raise AssertionError("the spooled file was read back")

    monkeypatch.setattr(store_module, "_fsync_path", fsync)
    monkeypatch.setattr(store_module, "_start_writeback", writeback)
    monkeypatch.setattr(store_module, "_small_file", no_read)
    result = store.ingest_file(Path(spool.name), spooled=spool)
    assert flushed == [spool.fileno(), spool.fileno()] and spool.fileno() is not None
    assert result.path.read_bytes() == temp.read_bytes()
    with db.session() as s:
        row = s.get(Instance, result.sop_instance_uid)
        assert row is not None and row.size == temp.stat().st_size
    spool.discard()


def test_a_spooled_file_whose_flush_fails_is_not_stored(tmp_path: Path, monkeypatch: Any) -> None:
    store, db, temp = _one(tmp_path)
    spool = _spooled(store, temp)

    def failing_fsync(path: Path, directory: bool = False, fd: int | None = None) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store_module, "_fsync_path", failing_fsync)
    with pytest.raises(OSError):
        store.ingest_file(Path(spool.name), spooled=spool)
    assert not list(store.root.rglob("*.dcm"))
    spool.discard()


def test_a_spool_keeps_only_a_small_whole_file(tmp_path: Path) -> None:
    """Beyond `keep` bytes, or after a failed write, nothing is kept: the store reads the file."""
    small = SpoolFile(tmp_path, keep=10)
    small.write(b"12345")
    small.write(bytearray(b"67890"))
    assert small.content() == b"1234567890" and small.size == 10
    small.write(b"x")
    assert small.content() is None and small.size == 11
    assert SpoolFile(tmp_path).content() is None  # keep=0: never asked to keep
    broken = SpoolFile(tmp_path, keep=10)
    broken.write(b"12")
    broken.close()  # writes after this are dropped, as after a failure
    broken.write(b"34")
    assert broken.fileno() is None and broken.size == 2
    failed = SpoolFile(tmp_path, keep=10)
    failed.write(b"12")
    failed._fail(OSError(errno.ENOSPC, "No space left on device"))
    assert failed.content() is None


# --- issue 17: a series folder is durably named before the first link into it, once per process ----


def test_a_folder_made_by_someone_else_is_flushed_into_its_parent_before_the_link(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Another ingest's mkdir may not be flushed yet when this one links: flush it here too, once."""
    store, _db, temp = _one(tmp_path)
    ds = pydicom.dcmread(temp)
    series_dir = store.root / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
    series_dir.mkdir(parents=True)  # made, as far as this store knows, by somebody else
    events: list[str] = []
    real_fsync, real_link = store_module._fsync_path, os.link

    def fsync(path: Path, directory: bool = False, fd: int | None = None) -> None:
        if directory:
            events.append(f"flushed {Path(path).relative_to(store.root.parent)}")
        real_fsync(path, directory, fd)

    def link(src: Any, dst: Any) -> None:
        events.append("linked")
        real_link(src, dst)

    monkeypatch.setattr(store_module, "_fsync_path", fsync)
    monkeypatch.setattr(store_module.os, "link", link)
    store.ingest_file(temp)
    study = f"store/{ds.StudyInstanceUID}"
    assert events == ["flushed store", f"flushed {study}", "linked", f"flushed {study}/{ds.SeriesInstanceUID}"]

    events.clear()  # the next instance of that series: the folder is known, only the link's own flush
    second = store.tmp / "two.part"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(second)
    store.ingest_file(second)
    assert events == ["linked", f"flushed {study}/{ds.SeriesInstanceUID}"]


def test_a_remembered_folder_removed_since_is_made_again(tmp_path: Path) -> None:
    """Retention may remove a study's folders; the next instance of it is still stored."""
    store, db, temp = _one(tmp_path)
    received = temp.read_bytes()
    first = store.ingest_file(temp)
    shutil.rmtree(first.path.parent.parent)  # the whole study folder, as retention does
    with db.session() as s:
        s.query(Instance).delete()
    again = store.tmp / "again.part"
    again.write_bytes(received)
    result = store.ingest_file(again)
    assert result.path.exists() and result.path.parent == first.path.parent


# --- issue 17: an instance of a study being received sets only its arrival time ------------------


def _next_instance(store: InstanceStore, source: Path, name: str) -> Path:
    """Another instance of `source`'s series, as a temp file in tmp/."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    temp = store.tmp / name
    ds.save_as(temp)
    return temp


def test_a_receiving_study_gets_its_arrival_time_and_a_failed_one_is_reopened(tmp_path: Path) -> None:
    """The short update (last_received only) is for a study being received; a failed study that gets
    an instance is reopened as before: receiving again, its failure reason cleared."""
    store, db, temp = _one(tmp_path)
    source = tmp_path / "source.dcm"
    shutil.copyfile(temp, source)
    first = store.ingest_file(temp)
    with db.session() as s:
        study = s.get(Study, first.study_uid)
        assert study is not None
        before = study.last_received
    time.sleep(0.01)
    store.ingest_file(_next_instance(store, source, "two.part"))
    with db.session() as s:
        study = s.get(Study, first.study_uid)
        assert study is not None and study.state == "receiving" and study.failure_reason is None
        assert study.last_received > before
        study.state, study.failure_reason = "failed", "check failed: boom"
    store.ingest_file(_next_instance(store, source, "three.part"))
    with db.session() as s:
        study = s.get(Study, first.study_uid)
        assert study is not None and (study.state, study.failure_reason) == ("receiving", None)
        assert s.query(Instance).count() == 3
