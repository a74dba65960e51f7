"""Unit tests of series classification on small headers built here, plus the synthetic studies of
dicom_fixtures (every vendor style x classic/enhanced x profile, and the lying-description and
derived-FLAIR defects)."""

from __future__ import annotations

import datetime as dt
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from msfollowup.dicom.classify import (
    KINDS,
    SeriesClassification,
    classify_series,
    classify_study,
    read_header,
    read_headers,
    summarize,
)

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
AX = [1, 0, 0, 0, 1, 0]
SAG = [0, 1, 0, 0, 0, -1]
COR = [1, 0, 0, 0, 0, -1]
STUDY = generate_uid()


def mr(series: str | None = None, **attrs: Any) -> Dataset:
    """One classic MR header; attrs are DICOM keywords."""
    ds = Dataset()
    ds.SOPClassUID = MR_IMAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImageOrientationPatient = AX
    ds.SliceThickness = "3"
    ds.PixelSpacing = [0.9, 0.9]
    ds.MagneticFieldStrength = "3"
    ds.AcquisitionDate = "20260115"
    ds.AcquisitionTime = "100000"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def series(n: int = 3, **attrs: Any) -> list[Dataset]:
    uid = generate_uid()
    return [mr(series=uid, InstanceNumber=i + 1, **attrs) for i in range(n)]


def save(ds: Dataset, path: Path, ts: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.save_as(path, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=ts != ExplicitVRBigEndian,
               enforce_file_format=True)
    return path


# Physics decides --------------------------------------------------------------------------------------

MPRAGE: dict[str, Any] = dict(ScanningSequence=["GR", "IR"], SequenceVariant=["SK", "SP", "MP"], MRAcquisitionType="3D",
              RepetitionTime="2300", EchoTime="2.3", InversionTime="900", FlipAngle="8", SequenceName="*tfl3d1_16")


def test_flair_description_with_t1_physics_is_t1() -> None:
    c = classify_series(series(SeriesDescription="AX FLAIR", **MPRAGE))
    assert (c.kind, c.acquisition, c.basis) == ("T1", "3D", "physics")
    assert "T2_FLAIR" in c.evidence["description_conflict"]
    assert c.evidence["InversionTime"] == 900.0 and c.evidence["rule"]


def test_flair_physics_2d_and_3d() -> None:
    two_d = classify_series(series(ScanningSequence=["SE", "IR"], MRAcquisitionType="2D", RepetitionTime="9000",
                                   EchoTime="85", InversionTime="2500", FlipAngle="150"))
    three_d = classify_series(series(ScanningSequence=["SE", "IR"], MRAcquisitionType="3D", RepetitionTime="5000",
                                     EchoTime="388", InversionTime="1800", SequenceVariant=["SK", "SP", "MP"]))
    assert (two_d.kind, two_d.acquisition) == ("T2_FLAIR", "2D")
    assert (three_d.kind, three_d.acquisition) == ("T2_FLAIR", "3D")
    assert two_d.counts and three_d.counts


@pytest.mark.parametrize(
    ("attrs", "kind"),
    [
        (dict(ScanningSequence="SE", RepetitionTime="5000", EchoTime="95"), "T2"),
        (dict(ScanningSequence="SE", RepetitionTime="3000", EchoTime="12"), "PD"),
        (dict(ScanningSequence="SE", RepetitionTime="600", EchoTime="10"), "T1"),
        (dict(ScanningSequence=["SE", "IR"], RepetitionTime="4000", EchoTime="40", InversionTime="160"), "STIR"),
        (dict(ScanningSequence="GR", MRAcquisitionType="3D", RepetitionTime="27", EchoTime="20", FlipAngle="15"),
         "SWI"),
        (dict(ScanningSequence="GR", MRAcquisitionType="3D", RepetitionTime="5.5", EchoTime="2.8", FlipAngle="10"),
         "T1"),
        # GE BRAVO: IR-prepared but ScanningSequence says only GR; the TI gives it away
        (dict(Manufacturer="GE MEDICAL SYSTEMS", ScanningSequence="GR", SequenceVariant=["SS", "SP", "SK"],
              RepetitionTime="8.2", EchoTime="3.2", InversionTime="450", FlipAngle="12"), "T1"),
        # Philips TFE: no inversion time written at all
        (dict(Manufacturer="Philips", ScanningSequence="GR", SequenceVariant="MP", RepetitionTime="8.1",
              EchoTime="3.7", FlipAngle="8"), "T1"),
    ],
    ids=["T2", "PD", "T1-SE", "STIR", "SWI", "T1-GRE", "GE-BRAVO", "Philips-TFE"],
)
def test_physics(attrs: dict[str, Any], kind: str) -> None:
    c = classify_series(series(**attrs))
    assert c.kind == kind, c.evidence
    assert c.basis == "physics"


def test_philips_b0_on_a_turbo_spin_echo_is_not_dwi() -> None:
    def philips_tse() -> Dataset:
        ds = mr(series=uid, Manufacturer="Philips Medical Systems",
                ImageType=["ORIGINAL", "PRIMARY", "M_SE", "M", "SE"], ScanningSequence="SE", SequenceVariant="SK",
                RepetitionTime="4000", EchoTime="100", DiffusionBValue=0.0)
        blk = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
        blk.add_new(0x03, "FL", 0.0)
        blk.add_new(0x20, "LO", "TSE")
        return ds

    uid = generate_uid()
    c = classify_series([philips_tse() for _ in range(3)])
    assert c.kind == "T2"
    assert c.evidence["rule"] == "spin echo, long TR and long TE"


def _dwi_base(uid: str, manufacturer: str) -> Dataset:
    return mr(series=uid, Manufacturer=manufacturer, ScanningSequence=["EP", "SE"], RepetitionTime="5000",
              EchoTime="80", ImageType=["ORIGINAL", "PRIMARY", "OTHER"])


def test_philips_b_value_only_in_private_tag_stored_as_un(tmp_path: Path) -> None:
    """dicom2nifti-style files: (2001,1003) written as UN, raw float32 bytes (00 00 7A 44 = 1000.0)."""
    uid = generate_uid()
    paths = []
    for i, b in enumerate((0.0, 1000.0)):
        ds = _dwi_base(uid, "Philips Healthcare")
        ds.ScanningSequence = "SE"
        ds.add_new(0x20010010, "LO", "Philips Imaging DD 001")
        ds.add_new(0x20011003, "UN", struct.pack("<f", b))
        paths.append(save(ds, tmp_path / f"{i}.dcm"))
    groups, problems, skipped = read_headers(paths)
    assert (problems, skipped) == ([], 0)
    c = classify_series(groups[uid])
    assert c.kind == "DWI"
    assert c.evidence["b_values"]["Philips(2001,1003)"] == (0.0, 1000.0)


def test_ge_b_value_with_1e9_offset() -> None:
    uid = generate_uid()
    datasets = []
    for b in (0, 1000):
        ds = _dwi_base(uid, "GE MEDICAL SYSTEMS")
        blk = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        blk.add_new(0x39, "IS", [b + 1_000_000_000 if b else 0, 8, 0, 0])
        datasets.append(ds)
    c = classify_series(datasets)
    assert c.kind == "DWI" and c.evidence["b_values"] == {"GE(0043,1039)": (0.0, 1000.0)}


def test_siemens_b_value_in_0019_100c_and_trace_adc_maps() -> None:
    uid = generate_uid()
    datasets = []
    for b in ("0", "1000"):
        ds = _dwi_base(uid, "SIEMENS")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", b)
        datasets.append(ds)
    dwi = classify_series(datasets)
    adc = classify_series(series(ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"], ScanningSequence="EP",
                                 MRAcquisitionType="2D"))
    trace = classify_series(series(ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW"], ScanningSequence="EP"))
    fa = classify_series(series(ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "FA"], ScanningSequence="EP"))
    assert dwi.kind == "DWI" and dwi.evidence["b_values"] == {"Siemens(0019,100C)": (0.0, 1000.0)}
    assert (adc.kind, adc.derived, adc.acquisition, adc.counts) == ("ADC", True, "2D", False)
    assert (trace.kind, trace.derived) == ("TRACE", True)
    assert fa.derived and not fa.counts


def test_dwi_series_with_a_trace_image_mixed_in_stays_dwi() -> None:
    """Philips keeps the isotropic (trace) image inside the DWI series."""
    uid = generate_uid()
    datasets = []
    for b, image_type in ((0.0, "M_SE"), (1000.0, "M_SE"), (1000.0, "ISOTROPIC")):
        ds = _dwi_base(uid, "Philips Medical Systems")
        ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "M", "SE"]
        ds.DiffusionBValue = b
        datasets.append(ds)
    c = classify_series(datasets)
    assert (c.kind, c.derived) == ("DWI", False)


def _frame(b: float, te: float = 80.0) -> Dataset:
    frame = Dataset()
    diffusion = Dataset()
    diffusion.DiffusionBValue = b
    diffusion.DiffusionDirectionality = "DIRECTIONAL" if b else "NONE"
    frame.MRDiffusionSequence = DicomSequence([diffusion])
    echo = Dataset()
    echo.EffectiveEchoTime = te
    frame.MREchoSequence = DicomSequence([echo])
    orient = Dataset()
    orient.ImageOrientationPatient = AX
    frame.PlaneOrientationSequence = DicomSequence([orient])
    return frame


def enhanced(frames: Sequence[Dataset], **attrs: Any) -> Dataset:
    defaults: dict[str, Any] = dict(SOPClassUID=ENHANCED_MR, NumberOfFrames=str(len(frames)),
                                    ImageType=["ORIGINAL", "PRIMARY", "M", "NONE"], MRAcquisitionType="2D")
    ds = mr(**{**defaults, **attrs})
    for kw in ("SliceThickness", "PixelSpacing", "ImageOrientationPatient", "AcquisitionTime", "AcquisitionDate"):
        del ds[kw]
    ds.AcquisitionDateTime = "20260115100000.000000"
    shared = Dataset()
    measures = Dataset()
    measures.SliceThickness = "4"
    measures.PixelSpacing = [1.5, 1.5]
    shared.PixelMeasuresSequence = DicomSequence([measures])
    timing = Dataset()
    timing.RepetitionTime = "5000"
    timing.FlipAngle = "90"
    shared.MRTimingAndRelatedParametersSequence = DicomSequence([timing])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(list(frames))
    return ds


def test_enhanced_b_values_only_per_frame(tmp_path: Path) -> None:
    """No DIFFUSION in ImageType, no top-level b-value: the frames alone say it is a DWI."""
    ds = enhanced([_frame(0), _frame(0), _frame(1000)], EchoPulseSequence="SPIN")
    in_memory = classify_series([ds])
    groups, _, _ = read_headers([save(ds, tmp_path / "dwi.dcm")])
    from_file = classify_series(groups[ds.SeriesInstanceUID])
    for c in (in_memory, from_file):
        assert c.kind == "DWI", c.evidence
        assert c.evidence["b_values"] == {"MRDiffusionSequence": (0.0, 1000.0)}
        assert (c.facts.slice_thickness_mm, c.facts.pixel_spacing_mm) == (4.0, (1.5, 1.5))
        assert (c.facts.frame_count, c.facts.orientation) == (3, "AX")


def test_enhanced_inversion_times_siemens_xa(tmp_path: Path) -> None:
    """XA writes InversionTimes in MRModifierSequence instead of InversionTime."""
    ds = enhanced([_frame(0, te=90.0) for _ in range(2)], EchoPulseSequence="SPIN")
    for f in ds.PerFrameFunctionalGroupsSequence:
        del f.MRDiffusionSequence
    modifier = Dataset()
    modifier.InversionRecovery = "YES"
    modifier.InversionTimes = [2500.0]
    ds.SharedFunctionalGroupsSequence[0].MRModifierSequence = DicomSequence([modifier])
    ds.SharedFunctionalGroupsSequence[0].MRTimingAndRelatedParametersSequence[0].RepetitionTime = "9000"
    groups, _, _ = read_headers([save(ds, tmp_path / "flair.dcm")])
    c = classify_series(groups[ds.SeriesInstanceUID])
    assert (c.kind, c.acquisition) == ("T2_FLAIR", "2D"), c.evidence
    assert c.evidence["InversionTime"] == 2500.0


def test_bold_with_image_type_t2_is_other() -> None:
    ds = enhanced([_frame(0, te=30.0)], EchoPulseSequence="GRADIENT", EchoPlanarPulseSequence="YES",
                  AcquisitionContrast="T2", ImageType=["ORIGINAL", "PRIMARY", "T2", "NONE"])
    del ds.PerFrameFunctionalGroupsSequence[0].MRDiffusionSequence
    c = classify_series([ds])
    assert c.kind == "OTHER" and not c.counts, c.evidence


def test_field_map_with_image_type_t1_is_other() -> None:
    c = classify_series(series(ImageType=["ORIGINAL", "PRIMARY", "T1", "MIXED"], ComplexImageComponent="MIXED",
                               ScanningSequence="GR", RepetitionTime="3.8", EchoTime="1.5", FlipAngle="12"))
    assert c.kind == "OTHER" and not c.counts


# Localizers -------------------------------------------------------------------------------------------


def test_ge_three_plane_localizer_with_spin_echo_te_81() -> None:
    uid = generate_uid()
    datasets = [mr(series=uid, Manufacturer="GE MEDICAL SYSTEMS", ImageType=["ORIGINAL", "PRIMARY", "OTHER"],
                   ScanningSequence="SE", RepetitionTime="1200", EchoTime="81", SliceThickness="8",
                   ImageOrientationPatient=iop) for iop in (AX, SAG, COR)]
    c = classify_series(datasets)
    assert c.kind == "LOCALIZER" and not c.counts and c.contrast is None
    assert c.facts.orientations == ("AX", "COR", "SAG")


def test_thick_slice_localizer_and_siemens_3d_scout() -> None:
    thick = classify_series(series(ScanningSequence="GR", RepetitionTime="16", EchoTime="3.7", FlipAngle="20",
                                   SliceThickness="10"))
    scout = classify_series(series(SeriesDescription="AAHead_Scout_64ch-head-coil", ScanningSequence="GR",
                                   MRAcquisitionType="3D", RepetitionTime="3.15", EchoTime="1.37", FlipAngle="8",
                                   SliceThickness="1.6", ImageOrientationPatient=SAG))
    assert thick.kind == "LOCALIZER" and thick.basis == "physics"
    assert scout.kind == "LOCALIZER" and scout.basis == "description" and not scout.counts


def test_localizer_words_do_not_beat_flair_physics() -> None:
    c = classify_series(series(SeriesDescription="FLAIR planning", ScanningSequence=["SE", "IR"],
                               RepetitionTime="9000", EchoTime="85", InversionTime="2500"))
    assert c.kind == "T2_FLAIR" and c.basis == "physics"


def test_double_inversion_recovery_is_not_a_flair() -> None:
    ds = enhanced([_frame(0, te=300.0)], EchoPulseSequence="SPIN", MRAcquisitionType="3D")
    del ds.PerFrameFunctionalGroupsSequence[0].MRDiffusionSequence
    modifier = Dataset()
    modifier.InversionRecovery = "YES"
    modifier.InversionTimes = [3400.0, 450.0]
    ds.SharedFunctionalGroupsSequence[0].MRModifierSequence = DicomSequence([modifier])
    c = classify_series([ds])
    assert c.kind == "OTHER" and "double inversion" in c.evidence["rule"]


def test_philips_epi_swi_is_swi_not_fmri() -> None:
    def swip() -> Dataset:
        ds = mr(series=uid, Manufacturer="Philips", ScanningSequence="GR", MRAcquisitionType="3D",
                RepetitionTime="31", EchoTime="21", FlipAngle="17", EchoTrainLength="3")
        ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x20, "LO", "SWIp")
        return ds

    uid = generate_uid()
    c = classify_series([swip(), swip()])
    assert c.kind == "SWI", c.evidence


def test_description_only_fallback_is_marked_and_weak() -> None:
    c = classify_series(series(SeriesDescription="Ax T2 FLAIR"))
    assert (c.kind, c.basis) == ("T2_FLAIR", "description")
    assert c.confidence <= 0.5
    assert c.evidence["SeriesDescription"] == "Ax T2 FLAIR"


def test_nothing_known_is_other() -> None:
    c = classify_series(series())
    assert c.kind == "OTHER" and c.evidence["rule"] == "no rule matched"


# Derived ----------------------------------------------------------------------------------------------


def test_mpr_of_post_contrast_t1_is_t1_post_and_derived() -> None:
    c = classify_series(series(ImageType=["DERIVED", "SECONDARY", "MPR", "CSA MPR", "", "CSAPARALLEL", "M"],
                               ScanningSequence="GR", MRAcquisitionType="3D", RepetitionTime="5.53",
                               EchoTime="2.81", FlipAngle="10", ContrastBolusAgent="11 ml Omniscan"))
    assert (c.kind, c.contrast, c.derived, c.counts) == ("T1", "post", True, False)
    assert "ContrastBolusAgent" in (c.contrast_basis or "")


@pytest.mark.parametrize(
    "attrs",
    [
        dict(ImageType=["DERIVED", "SECONDARY", "PROJECTION IMAGE"], ScanningSequence="GR", RepetitionTime="30",
             EchoTime="6", FlipAngle="35"),
        dict(ImageType=["DERIVED", "SECONDARY"], Manufacturer="BIOLAB", ManufacturerModelName="nifti2dicom",
             SeriesDescription="anat-T1w"),
        dict(ImageType=["DERIVED", "PRIMARY", "ASL", "RCBF"]),
    ],
    ids=["MIP", "nifti2dicom", "relCBF"],
)
def test_maps_and_reformats_are_derived(attrs: dict[str, Any]) -> None:
    c = classify_series(series(**attrs))
    assert c.derived and not c.counts


def test_non_image_objects_never_count() -> None:
    sr = mr(SOPClassUID="1.2.840.10008.5.1.4.1.1.88.33", Modality="SR")
    sc = mr(SOPClassUID="1.2.840.10008.5.1.4.1.1.7", Modality="MR")
    for c in (classify_series([sr]), classify_series([sc])):
        assert c.kind == "OTHER" and not c.counts
    assert classify_series([sc]).derived


# Contrast over the study --------------------------------------------------------------------------------


T1_SE: dict[str, Any] = dict(ScanningSequence="SE", RepetitionTime="600", EchoTime="10")
T2_SE: dict[str, Any] = dict(ScanningSequence="SE", RepetitionTime="5000", EchoTime="95")


def test_contrast_carries_forward_in_time() -> None:
    loc = series(ScanningSequence="GR", RepetitionTime="8", EchoTime="4", SliceThickness="12",
                 AcquisitionTime="095500")
    t1_pre = series(AcquisitionTime="100000", **T1_SE)
    t2_post = series(AcquisitionTime="101000", ContrastBolusAgent="Gadobutrol", **T2_SE)
    t1_late = series(AcquisitionTime="102000", **T1_SE)
    results = {c.facts.series_instance_uid: c for c in classify_study([t1_late, loc, t2_post, t1_pre])}
    pre, post, late, localizer = (results[s[0].SeriesInstanceUID] for s in (t1_pre, t2_post, t1_late, loc))
    assert (pre.kind, pre.contrast) == ("T1", "pre") and "before" in (pre.contrast_basis or "")
    assert post.contrast == "post" and post.contrast_basis == "ContrastBolusAgent present (Gadobutrol)"
    assert (late.kind, late.contrast) == ("T1", "post")
    assert (late.contrast_basis or "").startswith("acquired after a post-contrast series")
    assert localizer.contrast is None


def test_contrast_bolus_start_time_marks_the_injection() -> None:
    before = series(AcquisitionTime="100000", **T1_SE)
    after = series(AcquisitionTime="101500", **T1_SE)
    marker = series(AcquisitionTime="102000", ContrastBolusStartTime="101000", **T2_SE)
    c_before, c_after, c_marker = classify_study([before, after, marker])
    assert c_before.contrast == "pre"
    assert c_after.contrast == "post" and "ContrastBolusStartTime" in (c_after.contrast_basis or "")
    assert c_marker.facts.contrast_bolus_start == dt.datetime(2026, 1, 15, 10, 10)


def test_series_acquired_before_its_own_bolus_start_is_pre() -> None:
    c = classify_series(series(AcquisitionTime="100000", ContrastBolusAgent="Gadobutrol",
                               ContrastBolusStartTime="101000", **T1_SE))
    assert (c.contrast, c.contrast_basis) == ("pre", "acquired before ContrastBolusStartTime")


def test_t1_without_contrast_evidence_is_unknown_never_pre() -> None:
    """Issue 13: silence is not evidence; before, a T1 without contrast attributes was called pre."""
    c = classify_series(series(**T1_SE))
    assert c.contrast == "unknown"
    assert c.contrast_basis and "no contrast attributes" in c.contrast_basis
    assert c.evidence["contrast_source"] == "none"


def test_enhanced_contrast_usage_sequence() -> None:
    ds = enhanced([_frame(0)], EchoPulseSequence="GRADIENT")
    usage = Dataset()
    usage.ContrastBolusAgentNumber = 1
    usage.ContrastBolusAgentAdministered = "YES"
    ds.SharedFunctionalGroupsSequence[0].ContrastBolusUsageSequence = DicomSequence([usage])
    assert classify_series([ds]).contrast == "post"


# Facts, reading, JSON ---------------------------------------------------------------------------------


def test_summarize_facts() -> None:
    datasets = series(n=2, ImagingFrequency="63.87", ImageOrientationPatient=SAG, SpacingBetweenSlices="3.3",
                      SeriesNumber="7", SeriesDescription="t2_tse_sag")
    for ds in datasets:
        del ds.MagneticFieldStrength
    datasets[1].AcquisitionTime = "095959.5"
    f = summarize(datasets)
    assert f.field_strength_t == 1.5 and f.field_strength_from_frequency
    assert (f.orientation, f.series_number, f.instance_count, f.frame_count) == ("SAG", 7, 2, 2)
    assert f.acquisition_datetime == dt.datetime(2026, 1, 15, 9, 59, 59, 500000)
    assert f.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in datasets)
    with pytest.raises(ValueError, match="at least one dataset"):
        summarize([])
    assert summarize(series(MagneticFieldStrength="15000")).field_strength_t == 1.5  # gauss, old GE


def test_to_json_is_serialisable_and_leaves_out_the_patient() -> None:
    c = classify_series(series(PatientName="SECRET^PATIENT", PatientID="ID-4711", ContrastBolusAgent="Gd",
                               **MPRAGE))
    data = json.loads(json.dumps(c.to_json()))
    for key in ("series_instance_uid", "series_number", "description", "kind", "acquisition", "derived",
                "contrast", "contrast_basis", "evidence", "confidence", "basis", "facts"):
        assert key in data
    assert data["facts"]["acquisition_datetime"] == "2026-01-15T10:00:00"
    assert "SECRET" not in json.dumps(data) and "ID-4711" not in json.dumps(data)
    assert data["kind"] in KINDS


def test_read_headers_skips_non_dicom_and_names_damaged_files(tmp_path: Path) -> None:
    good = save(mr(PatientName="SECRET^PATIENT", **T2_SE), tmp_path / "good.dcm")
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "empty").write_bytes(b"")
    data = good.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 40])  # ends inside an element
    sub = tmp_path / "sub"
    sub.mkdir()
    save(mr(**T1_SE), sub / "other.dcm")
    groups, problems, skipped = read_headers([tmp_path])
    assert skipped == 2
    assert len(groups) == 2
    assert len(problems) == 1 and "cut.dcm" in problems[0] and "damaged" in problems[0]
    assert "SECRET" not in problems[0]


def test_raw_dataset_without_preamble_is_read(tmp_path: Path) -> None:
    """Old ACR-NEMA style files carry no preamble and no file meta; they are still DICOM."""
    ds = mr(**T2_SE)
    path = tmp_path / "raw"
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    groups, problems, skipped = read_headers([path])
    assert (problems, skipped) == ([], 0)
    assert classify_series(groups[ds.SeriesInstanceUID]).kind == "T2"


def test_a_file_cut_anywhere_is_read_or_reported_never_raises(tmp_path: Path) -> None:
    whole = save(mr(**T2_SE), tmp_path / "whole.dcm").read_bytes()
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    for n in range(0, len(whole), 7):
        (cut_dir / f"{n:05d}.dcm").write_bytes(whole[:n])
    groups, problems, skipped = read_headers([cut_dir])
    files = len(list(cut_dir.iterdir()))
    read = sum(len(v) for v in groups.values())
    assert read + len(problems) + skipped == files
    assert skipped >= 1 and problems  # shorter than the preamble: not DICOM; cut after it: damaged


@given(st.binary(min_size=0, max_size=400))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_garbage_after_the_preamble_never_raises(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "garbage.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + tail)
    groups, problems, skipped = read_headers([path])
    assert sum(len(v) for v in groups.values()) + len(problems) + skipped == 1


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian],
                         ids=["implicit", "deflated", "big-endian"])
def test_other_transfer_syntaxes_read_the_same(tmp_path: Path, ts: str) -> None:
    ds = mr(**MPRAGE)
    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "0")
    explicit = read_header(save(ds.copy(), tmp_path / "explicit.dcm"))
    other = read_header(save(ds.copy(), tmp_path / "other.dcm", ts))
    assert explicit is not None and other is not None
    a, b = classify_series([explicit]), classify_series([other])
    assert (a.kind, a.acquisition, a.evidence) == (b.kind, b.acquisition, b.evidence)


# The synthetic studies of dicom_fixtures ------------------------------------------------------------------

fixtures = pytest.importorskip("dicom_fixtures")


def _check_generated(study: Any, results: list[SeriesClassification]) -> list[str]:
    by_uid = {c.facts.series_instance_uid: c for c in results}
    wrong = []
    for s in study.series:
        c = by_uid.get(s.series_uid)
        got = (c.kind, c.acquisition, c.derived, c.contrast) if c else None
        want = (s.expected_kind, s.expected_acquisition, s.expected_derived, s.expected_contrast)
        if got != want:
            wrong.append(f"{s.description}: got {got}, expected {want} ({c.evidence if c else 'missing'})")
    return wrong


@pytest.mark.parametrize("enhanced_files", [False, True], ids=["classic", "enhanced"])
@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips", "canon"])
def test_generated_studies(tmp_path: Path, vendor: str, enhanced_files: bool) -> None:
    cases: list[tuple[str, tuple[str, ...]]] = [(p, ()) for p in fixtures.PROFILES]
    cases += [("ms-brain-routine", ("lying_description",)), ("ms-brain-routine", ("flair_derived_mpr_only",))]
    wrong = []
    for i, (profile, defects) in enumerate(cases):
        study = fixtures.generate_study(tmp_path / str(i), profile=profile, vendor=vendor, enhanced=enhanced_files,
                                        defects=defects, slices=2, seed=i)
        groups, problems, skipped = read_headers([study.out_dir])
        assert (problems, skipped) == ([], 0)
        wrong += [f"{profile} {defects}: {w}" for w in _check_generated(study, classify_study(list(groups.values())))]
    assert not wrong, "\n".join(wrong)
