"""Issue 13: classification on harder headers: SWI and phase, enhanced frame-level types, contrast
without contrast attributes, anatomy, files without a SeriesInstanceUID."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from msfollowup.dicom.classify import (
    SeriesClassification,
    classify_series,
    classify_study,
    read_headers,
    regions_of,
    study_anatomy,
)
from msfollowup.dicom.classify.tokens import contrast_said
from test_classify import SAG, _frame, enhanced, mr, save, series

SIEMENS_SWI: dict[str, Any] = dict(ScanningSequence="GR", SequenceVariant=["SP", "OSP"], MRAcquisitionType="3D",
                                   RepetitionTime="27", EchoTime="20", FlipAngle="15", SequenceName="*swi3d1r")


def _strip(datasets: list[Dataset], *keywords: str) -> list[Dataset]:
    for ds in datasets:
        for kw in keywords:
            if kw in ds:
                del ds[kw]
    return datasets


STRIPPED = ("SeriesDescription", "ProtocolName")


# SWI and phase ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_type, kind, derived", [
    (["ORIGINAL", "PRIMARY", "M", "SWI", "ND"], "SWI", False),
    (["DERIVED", "PRIMARY", "MNIP", "ND"], "SWI", True),
    (["ORIGINAL", "PRIMARY", "P", "ND"], "OTHER", False),
], ids=["siemens-swi", "siemens-mnip", "siemens-phase"])
def test_siemens_swi_family_without_descriptions(image_type: list[str], kind: str, derived: bool) -> None:
    c = classify_series(_strip(series(ImageType=image_type, **SIEMENS_SWI), *STRIPPED))
    assert (c.kind, c.derived) == (kind, derived), c.evidence
    if kind == "OTHER":
        assert "susceptibility" in c.evidence["rule"]


@pytest.mark.parametrize("image_type, kind", [
    (["ORIGINAL", "PRIMARY", "SW_M", "M", "SW"], "SWI"),
    (["ORIGINAL", "PRIMARY", "SW_P", "P", "SW"], "OTHER"),
], ids=["magnitude", "phase"])
def test_philips_swip_from_image_type_alone(image_type: list[str], kind: str) -> None:
    """Descriptions, scan technique and most sequence attributes stripped: ImageType value 3 decides."""
    c = classify_series(_strip(series(Manufacturer="Philips", ImageType=image_type, ScanningSequence="GR",
                                      RepetitionTime="31", EchoTime="7.2", FlipAngle="17"), *STRIPPED))
    assert c.kind == kind, c.evidence


def test_ge_swan_multi_echo_is_never_t1() -> None:
    """SWAN: several echoes from ~5 to ~45 ms; the first echo is short, yet it is no T1."""
    uid = generate_uid()
    datasets = [mr(series=uid, Manufacturer="GE MEDICAL SYSTEMS", ImageType=["ORIGINAL", "PRIMARY", "OTHER"],
                   ScanningSequence="GR", MRAcquisitionType="3D", RepetitionTime="40", EchoTime=str(te),
                   FlipAngle="15") for te in (4.9, 15.0, 25.0, 35.0, 45.0)]
    c = classify_series(datasets)
    assert c.kind == "SWI", c.evidence
    swan = classify_series(_strip(series(Manufacturer="GE MEDICAL SYSTEMS", ImageType=["ORIGINAL", "PRIMARY", "SWAN"],
                                         ScanningSequence="GR", RepetitionTime="40", EchoTime="4.9"), *STRIPPED))
    assert swan.kind == "SWI", swan.evidence


# Enhanced: frame-level types --------------------------------------------------------------------------

def _frame_type(frame: Dataset, frame_type: list[str], contrast: str) -> Dataset:
    item = Dataset()
    item.FrameType = frame_type
    item.AcquisitionContrast = contrast
    frame.MRImageFrameTypeSequence = DicomSequence([item])
    return frame


@pytest.mark.parametrize("frame_type, contrast, te, kind", [
    (["ORIGINAL", "PRIMARY", "T1", "NONE"], "T1", 4.0, "T1"),
    (["ORIGINAL", "PRIMARY", "FLAIR", "NONE"], "FLUID_ATTENUATED", 120.0, "T2_FLAIR"),
    (["ORIGINAL", "PRIMARY", "SW_M", "NONE"], "T2_STAR", 20.0, "SWI"),
], ids=["t1", "flair", "swi"])
def test_enhanced_from_frame_groups_without_top_level_attributes(tmp_path: Path, frame_type: list[str],
                                                                  contrast: str, te: float, kind: str) -> None:
    frames = [_frame_type(_frame(0, te=te), frame_type, contrast) for _ in range(2)]
    for f in frames:
        del f.MRDiffusionSequence
    ds = enhanced(frames)
    for kw in ("ImageType", "MRAcquisitionType", "SeriesDescription", "ProtocolName", "EchoPulseSequence"):
        if kw in ds:
            del ds[kw]
    del ds.SharedFunctionalGroupsSequence[0].MRTimingAndRelatedParametersSequence
    groups, problems, _ = read_headers([save(ds, tmp_path / "enh.dcm")])
    assert problems == []
    for c in (classify_series([ds]), classify_series(groups[ds.SeriesInstanceUID])):
        assert c.kind == kind, c.evidence


# Contrast without contrast attributes -----------------------------------------------------------------

T1_SE: dict[str, Any] = dict(ScanningSequence="SE", RepetitionTime="600", EchoTime="10")
T2_SE: dict[str, Any] = dict(ScanningSequence="SE", RepetitionTime="5000", EchoTime="95")
FLAIR: dict[str, Any] = dict(ScanningSequence=["SE", "IR"], RepetitionTime="9000", EchoTime="90",
                             InversionTime="2500")


def _at(minute: int, n: int = 2, **attrs: Any) -> list[Dataset]:
    t = (dt.datetime(2026, 1, 15, 10, 0) + dt.timedelta(minutes=minute)).strftime("%H%M%S")
    return series(n, AcquisitionTime=t, **attrs)


def _by_number(results: list[SeriesClassification]) -> dict[int | None, SeriesClassification]:
    return {c.facts.series_number: c for c in results}


def test_t1_repeated_after_other_series_is_post_without_attributes() -> None:
    study = [_at(0, SeriesNumber=1, **T1_SE), _at(5, SeriesNumber=2, **FLAIR), _at(10, SeriesNumber=3, **T2_SE),
             _at(15, SeriesNumber=4, **T1_SE), _at(20, SeriesNumber=5, **T2_SE)]
    got = _by_number(classify_study(study))
    assert (got[1].contrast, got[4].contrast, got[5].contrast) == ("pre", "post", "post")
    assert got[4].evidence["contrast_source"] == "study" and "repeated" in (got[4].contrast_basis or "")
    assert got[2].contrast == "unknown"  # between the two T1: the injection time is not known


def test_t1_repeated_back_to_back_is_no_pattern() -> None:
    got = _by_number(classify_study([_at(0, SeriesNumber=1, **T1_SE), _at(5, SeriesNumber=2, **T1_SE)]))
    assert got[1].contrast == got[2].contrast == "unknown"


@pytest.mark.parametrize("text, said", [
    ("t1_se_tra_post", "post"), ("T1 +C", "post"), ("AX T1 SE C+", "post"), ("T1W_SE KM", "post"),
    ("T1_ce_tra", "post"), ("T1 ohne KM", "pre"), ("t1 nativ", "pre"), ("MRI BRAIN WITHOUT CONTRAST", "pre"),
    ("MRI BRAIN WITHOUT AND WITH CONTRAST", None), ("T1_MPRAGE", None), ("t2_space", None), ("prescan", None),
])
def test_description_tokens(text: str, said: str | None) -> None:
    got = contrast_said(text)
    assert (got[0] if got else None) == said


def test_description_decides_only_after_attributes_and_pattern() -> None:
    c = classify_series(series(SeriesDescription="T1 SE tra +C", **T1_SE))
    assert (c.contrast, c.evidence["contrast_source"]) == ("post", "description")
    attrs = classify_series(series(SeriesDescription="T1 SE tra +C", ContrastBolusAgent="NONE", **T1_SE))
    assert (attrs.contrast, attrs.evidence["contrast_source"]) == ("pre", "attributes")


def test_study_without_contrast_says_pre_only_when_it_says_so() -> None:
    plain = classify_series(series(StudyDescription="MRI BRAIN WITHOUT CONTRAST", **T1_SE))
    assert plain.contrast == "unknown"  # classify_series alone: the study's words come in classify_study
    (c,) = classify_study([series(StudyDescription="MRI BRAIN WITHOUT CONTRAST", **T1_SE)])
    assert c.contrast == "pre" and "StudyDescription" in (c.contrast_basis or "")
    (both,) = classify_study([series(StudyDescription="MRI BRAIN WITHOUT AND WITH CONTRAST", **T1_SE)])
    assert both.contrast == "unknown"


def test_unknown_contrast_makes_a_post_contrast_requirement_unverifiable() -> None:
    from msfollowup.site.profiles import get_profile
    from msfollowup.check.validate import validate_study

    profile = get_profile("ms-brain-routine")
    study = classify_study([_at(0, SeriesNumber=1, SliceThickness="1", MRAcquisitionType="3D",
                                **{**T1_SE, "SeriesDescription": "T1 3D"})])
    assert study[0].contrast == "unknown"
    result = validate_study(study, profile)
    t1 = [r for r in result.requirements if r.id in ("sequence.t1_pre", "sequence.t1_post")]
    assert len(t1) == 2, [r.id for r in result.requirements]
    # Never a pass from silence: the lone T1 leaves the pre-contrast T1 unverifiable ("contrast is unknown"),
    # and since one series cannot be both, the post-contrast T1 is missing (validate._one_series_cannot_be_both).
    by = {r.id: r for r in t1}
    assert by["sequence.t1_pre"].status == "unverifiable" and "contrast is unknown" in by["sequence.t1_pre"].message
    assert by["sequence.t1_post"].status == "fail"


# Anatomy ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs, anatomy", [
    (dict(BodyPartExamined="CSPINE"), "cervical"),
    (dict(BodyPartExamined="TSPINE"), "thoracic"),
    (dict(BodyPartExamined="LSPINE"), "lumbar"),
    (dict(BodyPartExamined="CTSPINE"), "cervical+thoracic"),
    (dict(SeriesDescription="t2_tse_sag_HWS"), "cervical"),
    (dict(SeriesDescription="Sag T2 L-SPINE"), "lumbar"),
    (dict(StudyDescription="MRT BWS"), "thoracic"),
    (dict(BodyPartExamined="KNEE"), "other"),
    (dict(PatientPosition="HFS", Rows=256, Columns=256, PixelSpacing=[0.9, 0.9]), "brain"),
    (dict(PatientPosition="HFS", Rows=512, Columns=512, PixelSpacing=[0.8, 0.8], ImageOrientationPatient=SAG),
     "spine"),
    (dict(PatientPosition="FFS", Rows=256, Columns=256, PixelSpacing=[0.9, 0.9]), None),
])
def test_series_anatomy(attrs: dict[str, Any], anatomy: str | None) -> None:
    c = classify_series(series(**T2_SE, **attrs))
    assert c.anatomy == anatomy, c.anatomy_basis
    assert c.anatomy_basis


def test_study_anatomy_gives_the_purposes() -> None:
    study = classify_study([series(BodyPartExamined="CSPINE", **T2_SE), series(BodyPartExamined="TSPINE", **T2_SE),
                            series(**T1_SE)])
    got = study_anatomy(study)
    assert got.purposes == ("cervical", "thoracic")
    assert len(got.unknown) == 1
    assert regions_of("whole-spine") == {"cervical", "thoracic", "lumbar"}
    brain = classify_study([series(BodyPartExamined="BRAIN", **T2_SE), series(**T1_SE)])
    assert [c.anatomy for c in brain] == ["brain", "brain"]  # the unknown one takes the study's region
    assert "every other series" in (brain[1].anatomy_basis or "")


# Files without a SeriesInstanceUID ----------------------------------------------------------------------

def test_file_without_series_uid_is_reported_and_still_classified(tmp_path: Path) -> None:
    good = series(2, SeriesNumber=3, **T2_SE)
    for i, ds in enumerate(good):
        save(ds, tmp_path / f"good{i}.dcm")
    broken = [mr(SeriesNumber=7, SeriesDescription="t1_se_tra", **T1_SE) for _ in range(2)]
    for i, ds in enumerate(broken):
        del ds.SeriesInstanceUID
        save(ds, tmp_path / f"broken{i}.dcm")
    groups, problems, skipped = read_headers([tmp_path])
    assert (problems, skipped) == ([], 0)  # problems: files not classified; these are, with the reason below
    synthetic = [k for k in groups if k.startswith("no-series-uid:")]
    assert len(synthetic) == 1 and len(groups[synthetic[0]]) == 2  # the two broken files stay together
    results = _by_number(classify_study(list(groups.values())))
    assert results[7].kind == "T1" and results[7].facts.series_instance_uid == synthetic[0]
    assert results[7].evidence["identity"] == "no SeriesInstanceUID: synthetic series key"
    assert results[7].to_json()["evidence"]["identity"]  # in the report's series evidence
    assert results[3].kind == "T2"
