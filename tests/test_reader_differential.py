"""Differential test of the fast header reader against pydicom, on every real file of shared/realdata and
every synthetic file of dicom_fixtures (4 vendor styles x classic/enhanced, with and without contrast):
every kept attribute, every kept private element, the per-frame findings, and the classification of
each file must be the same whichever reader read it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from msfollowup.dicom.classify import HEADER_KEYWORDS, as_header, classify_series, read_header

try:
    from test_realdata import ALL_FILES, REALDATA
except pytest.skip.Exception:  # no shared/realdata beside the repository: the synthetic half still runs
    ALL_FILES, REALDATA = [], Path("shared/realdata")

_SEQUENCES = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    if isinstance(value, Dataset):
        return value
    return str(value)


def _compare(path: Path) -> None:
    header = read_header(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = dcmread(path, stop_before_pixels=True)
    assert header is not None, path
    fast = header.dataset
    for keyword in HEADER_KEYWORDS:
        if keyword == "PerFrameFunctionalGroupsSequence":
            assert len(fast.get(keyword) or ()) == len(full.get(keyword) or ()), keyword
            continue
        assert _plain(fast.get(keyword)) == _plain(full.get(keyword)), keyword
    for elem in fast:  # the vendor private elements the reader keeps
        if elem.tag.is_private:
            assert elem.tag in full, elem.tag
            assert fast[elem.tag].value == full[elem.tag].value, elem.tag
    reference = as_header(full)
    assert header.first_frame == reference.first_frame
    assert header.frame_b_values == reference.frame_b_values
    assert header.frame_contrast == reference.frame_contrast
    a, b = classify_series([header]), classify_series([full])
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)


@pytest.mark.skipif(not ALL_FILES, reason=f"real scanner data not found at {REALDATA}")
@pytest.mark.parametrize("path", ALL_FILES, ids=[str(p.relative_to(REALDATA)) for p in ALL_FILES])
def test_real_file(path: Path) -> None:
    _compare(path)


@pytest.mark.parametrize("enhanced", [False, True], ids=["classic", "enhanced"])
@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips", "canon"])
def test_synthetic_files(tmp_path: Path, vendor: str, enhanced: bool) -> None:
    fixtures = pytest.importorskip("dicom_fixtures")
    files: list[Path] = []
    for profile in ("ms-brain-routine", "ms-spine-new-deficit"):
        study = fixtures.generate_study(tmp_path / profile, profile=profile, vendor=vendor, enhanced=enhanced,
                                        slices=2, rows=16, columns=16, seed=3)
        files += sorted(p for p in study.out_dir.rglob("*") if p.is_file())
    assert files
    for path in files:
        _compare(path)
