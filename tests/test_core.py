"""core/: the shared vocabulary is right by itself (DIMSE statuses from pynetdicom's tables, the
durable write, DICOM date/time values)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from msfollowup.core import dicomtime, dimse
from msfollowup.core.files import atomic_write
from msfollowup.core.vocabulary import LOCAL_CODING_SCHEME, VERDICTS, Verdict
from msfollowup.reports.codes import LOCAL


@pytest.mark.parametrize("code, stored", [
    (0x0000, True), (0xB000, True), (0xB006, True), (0xB007, True), (0x0001, True), (0x0107, True), (0x0116, True),
    (0xA700, False), (0xA900, False), (0xC000, False), (0x0110, False), (0xFF00, False), (0xFE00, False),
])
def test_a_store_counts_as_delivered_on_success_or_warning_only(code: int, stored: bool) -> None:
    assert dimse.is_stored(code) is stored


def test_status_names_match_pynetdicom() -> None:
    assert (dimse.SUCCESS, dimse.PENDING, dimse.CANCEL) == (0x0000, 0xFF00, 0xFE00)
    assert dimse.category(dimse.OUT_OF_RESOURCES) == "Failure"
    assert dimse.category(dimse.ELEMENTS_DISCARDED) == "Warning"
    with pytest.raises(AssertionError):
        dimse._code(dimse._GENERAL, 0x0110, "Out of Resources")  # a wrong name for a code fails loudly


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "v1.json"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["v1.json"]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "v1.html"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["v1.html"]


def test_dicom_dates_and_times() -> None:
    assert dicomtime.parse_da(" 20260115 ") == dt.date(2026, 1, 15)
    assert dicomtime.parse_da("2026-01-15") is None and dicomtime.parse_da("20261399") is None
    assert dicomtime.format_da(dt.date(2026, 1, 5)) == "20260105"
    assert dicomtime.parse_tm("093015.25") == dt.time(9, 30, 15, 250000)
    assert dicomtime.parse_tm("09") == dt.time(9) and dicomtime.parse_tm("10:20:30") == dt.time(10, 20, 30)
    assert dicomtime.parse_tm("2560") is None and dicomtime.parse_tm("ab") is None
    assert dicomtime.iso_from_da("20260115") == "2026-01-15" and dicomtime.iso_from_da("bad") == "bad"


def test_one_local_coding_scheme_and_verdict_set() -> None:
    assert LOCAL == LOCAL_CODING_SCHEME == "99MSFU"
    assert VERDICTS == tuple(v.value for v in Verdict) == ("compliant", "non-compliant", "unverifiable")
