"""Robustness (issue 13): removing any single non-identity attribute from a real (or generated) T1,
FLAIR, SWI or DWI series never turns it into another diagnostic class; it may only lower confidence or
end as OTHER (nothing decides).

A plain run draws a fixed-seed sample of (series, attribute) pairs; MSF_FUZZ_EXAMPLES=N explores N random
pairs, MSF_FUZZ_EXAMPLES=all removes every attribute of every series in turn (about 20 s on the real data).
"""

from __future__ import annotations

import copy
import csv
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import generate_uid

from msfollowup.dicom.classify import classify_series, read_headers

try:
    from test_realdata import REALDATA
except pytest.skip.Exception:  # no shared/realdata: the generated and SWI series still run
    REALDATA = Path("shared/realdata")

DIAGNOSTIC = {"T1_PRE": "T1", "T1_POST": "T1", "FLAIR_2D": "T2_FLAIR", "FLAIR_3D": "T2_FLAIR", "SWI": "SWI",
              "DWI": "DWI"}
IDENTITY = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientName",
                      "PatientID", "PatientBirthDate", "FrameOfReferenceUID"})
_EXPLORE = os.environ.get("MSF_FUZZ_EXAMPLES", "")

Case = tuple[str, str, list[Dataset]]  # (name, expected kind, full headers)


def _read(paths: Sequence[Path]) -> list[Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # value-length warnings of the vendors' files
        return [dcmread(p, stop_before_pixels=True) for p in paths]


def _real_cases() -> list[Case]:
    if not (REALDATA / "MANIFEST.tsv").is_file():
        return []
    with open(REALDATA / "MANIFEST.tsv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["label"] in DIAGNOSTIC]
    return [(r["local_dir"], DIAGNOSTIC[r["label"]], _read(sorted((REALDATA / r["local_dir"]).iterdir())))
            for r in rows]


def _swi_cases() -> list[Case]:
    """No SWI among the real series yet: the three vendor styles, built as the scanners write them."""
    from test_classify import mr

    def one(n: int, **attrs: Any) -> list[Dataset]:
        uid = generate_uid()
        return [mr(series=uid, InstanceNumber=i + 1, **attrs) for i in range(n)]

    siemens = one(3, ImageType=["ORIGINAL", "PRIMARY", "M", "SWI", "ND", "NORM"], ScanningSequence="GR",
                  SequenceVariant=["SP", "OSP"], MRAcquisitionType="3D", RepetitionTime="27", EchoTime="20",
                  FlipAngle="15", SequenceName="*swi3d1r", SeriesDescription="SWI_Images")
    philips = one(3, Manufacturer="Philips", ImageType=["ORIGINAL", "PRIMARY", "SW_M", "M", "SW"],
                  ScanningSequence="GR", MRAcquisitionType="3D", RepetitionTime="31", EchoTime="7.2",
                  FlipAngle="17", SeriesDescription="SWIp")
    for ds in philips:
        ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x20, "LO", "SWIp")
    uid = generate_uid()
    ge = [mr(series=uid, Manufacturer="GE MEDICAL SYSTEMS", ImageType=["ORIGINAL", "PRIMARY", "OTHER"],
             ScanningSequence="GR", MRAcquisitionType="3D", RepetitionTime="40", EchoTime=str(te), FlipAngle="15",
             SeriesDescription="Ax SWAN", ScanOptions=["SWAN"]) for te in (4.9, 15.0, 25.0, 35.0)]
    return [("siemens-swi", "SWI", siemens), ("philips-swip", "SWI", philips), ("ge-swan", "SWI", ge)]


def _generated_cases(folder: Path) -> list[Case]:
    fixtures = pytest.importorskip("dicom_fixtures")
    cases: list[Case] = []
    for vendor in ("siemens", "ge", "philips", "canon"):
        for enhanced in (False, True):
            study = fixtures.generate_study(folder / f"{vendor}-{enhanced}", vendor=vendor, enhanced=enhanced,
                                            slices=2, rows=16, columns=16, seed=7)
            groups, _, _ = read_headers([study.out_dir])
            for s in study.series:
                if s.expected_kind in ("T1", "T2_FLAIR", "SWI", "DWI") and not s.expected_derived:
                    paths = [h.path for h in groups[s.series_uid] if h.path is not None]
                    cases.append((f"{vendor}-{'enh' if enhanced else 'classic'}-{s.description}", s.expected_kind,
                                  _read(paths)))
    return cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    found = _real_cases() + _swi_cases() + _generated_cases(tmp_path_factory.mktemp("robust"))
    for name, kind, datasets in found:  # the property starts from a correct label
        assert classify_series(datasets).kind == kind, name
    return found


def _without(datasets: Sequence[Dataset], tag: BaseTag) -> list[Dataset]:
    out = []
    for ds in datasets:
        copy_ = copy.copy(ds)  # shallow: the element dict is replaced, the originals stay intact
        copy_._dict = {t: e for t, e in ds._dict.items() if t != tag}
        out.append(copy_)
    return out


def _removable(datasets: Sequence[Dataset]) -> list[BaseTag]:
    return sorted({e.tag for ds in datasets for e in ds if e.keyword not in IDENTITY})


def _check(name: str, kind: str, datasets: Sequence[Dataset], tag: BaseTag) -> None:
    c = classify_series(_without(datasets, tag))
    keyword = datasets[0][tag].keyword if tag in datasets[0] else ""
    assert c.kind in (kind, "OTHER"), f"{name}: without {tag} {keyword}: {kind} became {c.kind} ({c.evidence})"


@pytest.mark.skipif(_EXPLORE == "all", reason="the exhaustive test below runs instead")
@settings(max_examples=int(_EXPLORE) if _EXPLORE.isdigit() else 150, derandomize=not _EXPLORE.isdigit(),
          deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_removing_one_attribute_never_changes_the_diagnostic_class(cases: list[Case],
                                                                   data: st.DataObject) -> None:
    name, kind, datasets = data.draw(st.sampled_from(cases), label="series")
    tag = data.draw(st.sampled_from(_removable(datasets)), label="attribute")
    _check(name, kind, datasets, tag)


@pytest.mark.skipif(_EXPLORE != "all", reason="MSF_FUZZ_EXAMPLES=all removes every attribute of every series")
def test_removing_each_attribute_never_changes_the_diagnostic_class(cases: list[Case]) -> None:
    for name, kind, datasets in cases:
        for tag in _removable(datasets):
            _check(name, kind, datasets, tag)
