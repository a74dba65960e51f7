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

    def writeback(path: Path) -> None:
        events.append(f"writeback {Path(path).name}")
        real_writeback(path)

    def check(*args: Any) -> Any:
        events.append("checked")
        return real_check(*args)

    def slow_fsync(path: Path, directory: bool = False) -> None:
        if not directory:
            time.sleep(0.3)  # a slow disk
            events.append(f"flushed {Path(path).name}")
        real_fsync(path, directory)

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

    def failing_fsync(path: Path, directory: bool = False) -> None:
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

    def fsync(path: Path, directory: bool = False) -> None:
        if directory:
            events.append(f"flushed {Path(path).relative_to(store.root.parent)}")
        real_fsync(path, directory)

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
