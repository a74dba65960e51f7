"""The classifier against real scanner series with ground-truth labels (shared/realdata/MANIFEST.tsv).

One test per series folder, so a failure names the folder. The labels and the traps they hold are
described in shared/realdata/README.md.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from msfollowup.dicom.classify import SeriesClassification, classify_study, read_header, read_headers

def _find_realdata() -> Path:
    """shared/realdata beside the repository (or beside the folder of worktrees), or MSF_REALDATA."""
    if os.environ.get("MSF_REALDATA"):
        return Path(os.environ["MSF_REALDATA"])
    for parent in Path(__file__).resolve().parents[1:4]:
        if (parent / "shared" / "realdata" / "MANIFEST.tsv").is_file():
            return parent / "shared" / "realdata"
    return Path(__file__).resolve().parents[2] / "shared" / "realdata"


REALDATA = _find_realdata()

if not (REALDATA / "MANIFEST.tsv").is_file():
    pytest.skip(f"real scanner data not found at {REALDATA} (shared/ must sit beside the repository)",
                allow_module_level=True)

with open(REALDATA / "MANIFEST.tsv", newline="", encoding="utf-8") as _fh:
    ROWS: list[dict[str, str]] = list(csv.DictReader(_fh, delimiter="\t"))

# label -> (kind, acquisition or None to skip, contrast or None to skip)
LABELS: dict[str, tuple[str | None, str | None, str | None]] = {
    "FLAIR_2D": ("T2_FLAIR", "2D", None),
    "FLAIR_3D": ("T2_FLAIR", "3D", None),
    "T1_PRE": ("T1", None, "pre"),
    "T1_POST": ("T1", None, "post"),
    "DERIVED": (None, None, None),
    **{k: (k, None, None) for k in ("T2", "PD", "DWI", "ADC", "TRACE", "STIR", "SWI", "LOCALIZER", "OTHER")},
}


def _classified(row: dict[str, str]) -> list[SeriesClassification]:
    # local_dir is what is on disk: the pCASL row's source is a .dcm.gz upstream, but its folder holds
    # the decompressed .dcm, so every folder is read as plain DICOM and every copied file must count.
    folder = REALDATA / row["local_dir"]
    assert folder.is_dir(), f"{row['local_dir']} listed in MANIFEST.tsv but missing on disk"
    groups, problems, skipped = read_headers([folder])
    assert problems == [], problems
    assert skipped == 0, f"{skipped} files of {row['local_dir']} not recognised as DICOM"
    assert groups, f"no DICOM series found in {row['local_dir']}"
    return classify_study(list(groups.values()))


def _brief(c: SeriesClassification) -> str:
    return (f"{c.kind} {c.acquisition} derived={c.derived} contrast={c.contrast} basis={c.basis} "
            f"rule={c.evidence.get('rule')!r}")


@pytest.mark.parametrize("row", ROWS, ids=[r["local_dir"] for r in ROWS])
def test_label(row: dict[str, str]) -> None:
    label = row["label"]
    assert label in LABELS, f"unknown label {label} in MANIFEST.tsv"
    kind, acquisition, contrast = LABELS[label]
    results = _classified(row)
    instances = sum(c.facts.instance_count for c in results)
    assert instances == int(row["n_files_copied"]), "every copied file must be read"
    for c in results:
        where = f"{row['local_dir']}: {_brief(c)}"
        if kind is not None:
            assert c.kind == kind, where
        if acquisition is not None:
            assert c.acquisition == acquisition, where
        if contrast == "pre":  # T1_PRE: no contrast attributes; pre needs evidence, never silence (issue 13)
            assert c.contrast in ("pre", "unknown"), where
            assert c.contrast_basis, where
        elif contrast is not None:
            assert c.contrast == contrast, where
            assert c.contrast_basis, where
        if label == "DERIVED" or row["image_type"].startswith("DERIVED\\SECONDARY"):
            assert c.derived, where
        if label in ("DERIVED", "LOCALIZER", "OTHER"):
            assert not c.counts, where
        else:
            if label not in ("ADC", "TRACE") and not row["image_type"].startswith("DERIVED\\SECONDARY"):
                assert c.counts, where
        assert 0 < c.confidence <= 1, where
        assert c.evidence.get("rule"), where
        assert json.loads(json.dumps(c.to_json()))["kind"] == c.kind


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@pytest.mark.parametrize("row", ROWS, ids=[r["local_dir"] for r in ROWS])
def test_facts_match_manifest(row: dict[str, str]) -> None:
    """Field strength as written (1.494 stays 1.494), slice thickness and pixel spacing from classic
    attributes or the enhanced functional groups."""
    results = _classified(row)
    field = _number(row["field_strength"])
    thickness = _number(row["slice_thickness"])
    spacing = [_number(v) for v in row["pixel_spacing"].split("\\")] if row["pixel_spacing"] else []
    for c in results:
        f = c.facts
        if field is not None and field > 100:  # not tesla (old GE): normalised, by the frequency when written
            assert f.field_strength_t in (field / 1000, field / 10000), f.field_strength_t
            if f.imaging_frequency_mhz:
                assert math.isclose(f.field_strength_t * 42.577, f.imaging_frequency_mhz, rel_tol=0.05)
        elif field is not None:
            assert f.field_strength_t is not None and math.isclose(f.field_strength_t, field, rel_tol=1e-6)
        if thickness is not None:
            assert f.slice_thickness_mm is not None and math.isclose(f.slice_thickness_mm, thickness, rel_tol=1e-6)
        if len(spacing) == 2 and None not in spacing:
            assert f.pixel_spacing_mm is not None
            assert all(math.isclose(a, b, rel_tol=1e-6)  # type: ignore[arg-type]
                       for a, b in zip(f.pixel_spacing_mm, spacing))
        assert f.sop_instance_uids and len(set(f.sop_instance_uids)) == f.instance_count
        assert f.acquisition_datetime is not None or row["local_dir"].startswith("pydicom/")


def _diffusion_max(row: dict[str, str]) -> float | None:
    values = []
    for part in row["b_values"].split("|"):
        text = part.strip().split(":")[-1]
        for v in text.split("/"):
            n = _number(v.strip("' "))
            if n is not None:
                values.append(n)
    return max(values) if values else None


DWI_ROWS = [r for r in ROWS if r["label"] == "DWI"]


@pytest.mark.parametrize("row", DWI_ROWS, ids=[r["local_dir"] for r in DWI_ROWS])
def test_dwi_b_values_found_where_the_vendor_put_them(row: dict[str, str]) -> None:
    b_max = _diffusion_max(row)
    (c,) = _classified(row)
    found = [b for values in c.evidence.get("b_values", {}).values() for b in values]
    if b_max is not None and b_max > 50:
        assert found and math.isclose(max(found), b_max, rel_tol=1e-3), c.evidence
    else:  # e.g. a private tag stored as UN that the manifest could not decode
        assert c.kind == "DWI" and c.evidence.get("declared")


# The reader keeps only the attributes the classifier needs and decodes them lazily; every one of them
# must read the same as pydicom's full parse of the same file.
_COMPARED = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "ImageType", "SeriesDescription",
             "ProtocolName", "Manufacturer", "MagneticFieldStrength", "SliceThickness", "PixelSpacing",
             "ScanningSequence", "SequenceVariant", "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle",
             "MRAcquisitionType", "DiffusionBValue", "ContrastBolusAgent", "AcquisitionDateTime",
             "AcquisitionDate", "AcquisitionTime", "NumberOfFrames", "ImageOrientationPatient",
             "PulseSequenceName", "AcquisitionContrast", "SeriesNumber")


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    return str(value)


ALL_FILES = sorted(p for r in ROWS for p in (REALDATA / r["local_dir"]).iterdir() if p.is_file())


@pytest.mark.parametrize("path", ALL_FILES, ids=[str(p.relative_to(REALDATA)) for p in ALL_FILES])
def test_fast_reader_agrees_with_pydicom(path: Path) -> None:
    header = read_header(path)
    full = dcmread(path, stop_before_pixels=True)
    assert header is not None
    fast = header.dataset
    for keyword in _COMPARED:
        assert _plain(fast.get(keyword)) == _plain(full.get(keyword)), keyword
    if "SharedFunctionalGroupsSequence" in full:
        assert fast.SharedFunctionalGroupsSequence[0] == full.SharedFunctionalGroupsSequence[0]
    if "PerFrameFunctionalGroupsSequence" in full:
        frames = full.PerFrameFunctionalGroupsSequence
        assert header.first_frame == frames[0]
        expected = sorted({round(float(f.MRDiffusionSequence[0].DiffusionBValue), 3) for f in frames
                           if "MRDiffusionSequence" in f and "DiffusionBValue" in f.MRDiffusionSequence[0]})
        assert list(header.frame_b_values) == expected
        assert len(fast.PerFrameFunctionalGroupsSequence) == len(frames)  # still complete if someone asks


# Anatomy: the MANIFEST's anatomy column (c-spine / t-spine / l-spine / whole-spine / brain / other) ----------

ANATOMY = {"brain": "brain", "c-spine": "cervical", "t-spine": "thoracic", "l-spine": "lumbar",
           "whole-spine": "whole-spine", "other": "other"}
ANATOMY_ROWS = [r for r in ROWS if r["anatomy"]]


@pytest.mark.parametrize("row", ANATOMY_ROWS, ids=[r["local_dir"] for r in ANATOMY_ROWS])
def test_anatomy(row: dict[str, str]) -> None:
    from msfollowup.dicom.classify import regions_of, study_anatomy

    want = ANATOMY[row["anatomy"]]
    results = _classified(row)
    for c in results:
        assert c.anatomy == want, f"{row['local_dir']}: {c.anatomy} ({c.anatomy_basis})"
        assert c.anatomy_basis
        assert c.to_json()["anatomy"] == want
    study = study_anatomy(results)
    counted = [c for c in results if c.kind not in ("LOCALIZER", "OTHER")]
    if counted:
        assert set(study.purposes) == set(regions_of(want))
