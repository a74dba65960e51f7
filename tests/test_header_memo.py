"""The header the store parsed at ingest is handed to the next reader of the same file (the live check),
once, and only while the file is unchanged (dicom/classify/reader.py `remember`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from dicom_fixtures import generate_study
from hostileutil import mr_dataset
from msfollowup.db import Database
from msfollowup.db.index import Instance, Series, Study
from msfollowup.dicom.classify import reader
from msfollowup.files.store import InstanceStore


def _file(tmp_path: Path, name: str) -> Path:
    ds = mr_dataset()
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_remembered_header_is_returned_once_then_the_file_is_read_again(tmp_path: Path) -> None:
    path = _file(tmp_path, "a.dcm")
    parsed = reader.read_header(path)
    assert parsed is not None
    reader.remember(path, parsed, path.stat().st_size)
    first = reader.read_header(path)
    assert first is not None and first.dataset is parsed.dataset and first.path == path
    again = reader.read_header(path)
    assert again is not None and again.dataset is not parsed.dataset
    assert again.dataset.SOPInstanceUID == parsed.dataset.SOPInstanceUID


def test_a_file_that_changed_size_is_read_from_disk(tmp_path: Path) -> None:
    path = _file(tmp_path, "b.dcm")
    parsed = reader.read_header(path)
    assert parsed is not None
    reader.remember(path, parsed, path.stat().st_size + 1)
    got = reader.read_header(path)
    assert got is not None and got.dataset is not parsed.dataset


def test_the_memo_is_bounded(tmp_path: Path) -> None:
    path = _file(tmp_path, "c.dcm")
    parsed = reader.read_header(path)
    assert parsed is not None
    size = path.stat().st_size
    reader.remember(path, parsed, size)
    for i in range(reader.RECENT_LIMIT):
        reader.remember(tmp_path / f"other-{i}.dcm", parsed, size)
    got = reader.read_header(path)
    assert got is not None and got.dataset is not parsed.dataset  # pushed out by the newer ones
    reader.remember(path, parsed, reader.RECENT_MAX_FILE + 1)  # too large to keep
    got = reader.read_header(path)
    assert got is not None and got.dataset is not parsed.dataset


# --- issue 17: only a process whose readers can use the memo fills it -------------------------------


def _ingest(folder: Path, source: Path, remember: bool) -> tuple[Path, Database]:
    """`source` ingested by a store in `folder` with `remember_headers` as given: its final path, the index."""
    folder.mkdir(exist_ok=True)
    db = Database(f"sqlite:///{folder / 'index.sqlite3'}")
    store = InstanceStore(folder / "var", db)
    store.remember_headers = remember
    temp = store.tmp / "one.part"
    shutil.copyfile(source, temp)
    return store.ingest_file(temp).path, db


def _stored(tmp_path: Path, remember: bool) -> Path:
    """One generated instance ingested by a store with `remember_headers` as given; its final path."""
    return _ingest(tmp_path, generate_study(tmp_path / "gen", slices=1, seed=47).files[0], remember)[0]


def test_the_store_hands_its_parse_to_the_next_reader(tmp_path: Path) -> None:
    path = _stored(tmp_path, remember=True)
    assert reader._recalled(path) is not None


def test_an_ingest_process_store_keeps_no_headers(tmp_path: Path) -> None:
    """An ingest process (runtime/ingest_workers.py) turns the memo off: nobody there reads it."""
    path = _stored(tmp_path, remember=False)
    assert reader._recalled(path) is None


def test_an_ingest_process_reads_only_the_index_attributes_and_indexes_the_same_rows(tmp_path: Path) -> None:
    """Without the memo the fast reader keeps the index attributes only (`only`); the rows match."""
    source = generate_study(tmp_path / "gen", slices=1, seed=48).files[0]
    rows = []
    for remember in (True, False):
        _path, db = _ingest(tmp_path / f"remember-{remember}", source, remember)
        with db.session() as s:
            rows.append([{k: v for k, v in vars(row).items() if not k.startswith("_") and not k.endswith("_at")
                          and k not in ("first_received", "last_received", "version")}
                         for model in (Study, Series, Instance) for row in s.query(model).all()])
    assert rows[0] == rows[1]
    assert rows[0][0]["patient_id"] and rows[0][0]["study_date"] and rows[0][1]["modality"] == "MR"
    parsed = reader.read_header(source, only=frozenset({0x00100020}))
    assert parsed is not None and list(parsed.dataset.keys()) == [0x00100020]  # PatientID only
