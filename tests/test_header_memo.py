"""The header the store parsed at ingest is handed to the next reader of the same file (the live check),
once, and only while the file is unchanged (dicom/classify/reader.py `remember`)."""

from __future__ import annotations

from pathlib import Path

from hostileutil import mr_dataset
from msfollowup.dicom.classify import reader


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
