"""The synthetic study generator: what it writes must be real DICOM and must say what it claims.

Every assertion reads the files back with pydicom (or dciodvfy), never just the returned metadata.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_fixtures import DEFECTS, PROFILES, VENDORS, GeneratedStudy, generate_study, write_large_multiframe

KINDS = ("T2_FLAIR", "T2", "PD", "T1", "DWI", "ADC", "TRACE", "STIR", "SWI", "LOCALIZER", "OTHER")
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
MR = "1.2.840.10008.5.1.4.1.1.4"
DCIODVFY = Path("/usr/bin/dciodvfy")
SAMPLES = Path(__file__).resolve().parent.parent / "dicom_fixtures" / "samples"


def _headers(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def _time(ds: Dataset, date_kw: str, time_kw: str) -> dt.datetime:
    t = str(getattr(ds, time_kw))
    return dt.datetime.strptime(str(getattr(ds, date_kw)) + t.split(".")[0], "%Y%m%d%H%M%S")


def _first_acq(datasets: list[Dataset]) -> dt.datetime:
    if datasets[0].SOPClassUID == ENHANCED_MR:
        return dt.datetime.strptime(str(datasets[0].AcquisitionDateTime).split(".")[0], "%Y%m%d%H%M%S")
    return min(_time(d, "AcquisitionDate", "AcquisitionTime") for d in datasets)


def _bolus(ds: Dataset) -> dt.datetime | None:
    if "ContrastBolusStartTime" not in ds:
        return None
    return _time(ds, "StudyDate", "ContrastBolusStartTime")


def _shared(ds: Dataset) -> Dataset:
    return ds.SharedFunctionalGroupsSequence[0]


def _thickness_pixel(ds: Dataset) -> tuple[float, float]:
    if ds.SOPClassUID == ENHANCED_MR:
        pm = _shared(ds).PixelMeasuresSequence[0]
        return float(pm.SliceThickness), float(pm.PixelSpacing[0])
    return float(ds.SliceThickness), float(ds.PixelSpacing[0])


# --- every vendor x profile --------------------------------------------------------------------------------

REQUIRED: dict[str, set[tuple[str, str | None]]] = {  # (kind, contrast) per profile, GUIDELINES.md 1
    "ms-brain-routine": {("T2", None), ("T2_FLAIR", None), ("T1", "pre"), ("T1", "post")},
    "ms-brain-new-deficit": {("T2", None), ("T2_FLAIR", None), ("T1", "pre"), ("T1", "post")},
    "ms-brain-pml-screening": {("T2", None), ("T2_FLAIR", None), ("DWI", None), ("ADC", None), ("TRACE", None)},
    "ms-brain-pml-suspected": {("T2", None), ("T2_FLAIR", None), ("DWI", None), ("ADC", None), ("TRACE", None),
                               ("T1", "pre"), ("T1", "post")},
    "ms-brain-no-contrast": {("T2", None), ("T2_FLAIR", None)},
    "ms-spine-new-deficit": {("T2", None), ("STIR", None), ("T1", "pre"), ("T1", "post")},
}


def _check_study(study: GeneratedStudy, profile: str, out: Path) -> None:
    assert study.series[0].expected_kind == "LOCALIZER"
    have: set[tuple[str, str | None]] = {(s.expected_kind, None) for s in study.series}
    have |= {(s.expected_kind, s.expected_contrast) for s in study.series if s.expected_kind == "T1"}
    assert REQUIRED[profile] <= have
    assert len(study.files) == sum(len(s.files) for s in study.series)
    previous_acquired: dt.datetime | None = None
    for s in study.series:
        assert s.expected_kind in KINDS
        headers = _headers(s.files)
        for path, ds in zip(s.files, headers):
            assert path.parent.parent == out and path.parent.name.startswith(f"{s.series_number}_")
            assert re.fullmatch(r"\d+\.dcm", path.name)
            assert ds.StudyInstanceUID == study.study_uid
            assert ds.SeriesInstanceUID == s.series_uid
            assert int(ds.SeriesNumber) == s.series_number
            assert ds.SeriesDescription == s.description
            assert ds.PatientID == study.patient_id
            assert ds.Modality == "MR"
            assert ds.DeviceSerialNumber and ds.StationName
            assert float(ds.MagneticFieldStrength) in (1.5, 3.0)
        acquired = _first_acq(headers)
        if not s.expected_derived:  # acquisition order = series order
            assert previous_acquired is None or acquired > previous_acquired
            previous_acquired = acquired
        if s.expected_kind != "LOCALIZER" and not s.expected_derived:
            thick, pixel = _thickness_pixel(headers[0])
            assert (thick, pixel) == ((1.0, 1.0) if s.expected_acquisition == "3D" else (3.0, 0.9))
        if s.expected_kind == "T1" and s.expected_contrast == "post":
            bolus = _bolus(headers[0])
            assert bolus is not None and headers[0].ContrastBolusAgent and headers[0].ContrastBolusRoute
            assert float(headers[0].ContrastBolusVolume) > 0
            assert acquired - bolus >= dt.timedelta(minutes=6)
        if s.expected_contrast == "pre" or s.expected_contrast is None:
            assert "ContrastBolusAgent" not in headers[0]
    if profile == "ms-spine-new-deficit":
        parts = {(s.body_part, s.expected_kind, s.expected_contrast) for s in study.series}
        for region in ("CSPINE", "TSPINE"):
            for kind, phase in (("T2", "pre"), ("STIR", "pre"), ("T1", "pre"), ("T1", "post")):
                assert (region, kind, phase) in parts
        assert {h.BodyPartExamined for s in study.series for h in _headers(s.files[:1])} == {"CSPINE", "TSPINE"}


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_vendor_and_profile_classic(tmp_path: Path, vendor: str, profile: str) -> None:
    study = generate_study(tmp_path, profile=profile, vendor=vendor, slices=2, seed=3)
    _check_study(study, profile, tmp_path)
    assert {pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID for f in study.files} == {MR}
    img = pydicom.dcmread(study.series[1].files[0]).pixel_array
    assert img.shape == (64, 64) and img.max() > 0


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("profile", ["ms-brain-pml-suspected", "ms-spine-new-deficit", "ms-brain-no-contrast"])
def test_every_vendor_enhanced(tmp_path: Path, vendor: str, profile: str) -> None:
    study = generate_study(tmp_path, profile=profile, vendor=vendor, slices=3, enhanced=True)
    _check_study(study, profile, tmp_path)
    for s in study.series:
        assert len(s.files) == 1
        ds = pydicom.dcmread(s.files[0])
        assert ds.SOPClassUID == ENHANCED_MR
        assert len(ds.ImageType) == 4
        shared = _shared(ds)
        for kw in ("PixelMeasuresSequence", "MRImageFrameTypeSequence", "FrameAnatomySequence",
                   "PixelValueTransformationSequence"):
            assert kw in shared, kw
        frame_type = shared.MRImageFrameTypeSequence[0]
        assert list(frame_type.FrameType) == list(ds.ImageType)
        assert frame_type.AcquisitionContrast == ds.AcquisitionContrast
        if not s.expected_derived:
            for kw in ("MRTimingAndRelatedParametersSequence", "MRModifierSequence", "MRFOVGeometrySequence",
                       "MREchoSequence", "MRReceiveCoilSequence", "MRTransmitCoilSequence"):
                assert kw in shared, kw
            assert ds.MRAcquisitionType == s.expected_acquisition
        frames = ds.PerFrameFunctionalGroupsSequence
        assert len(frames) == int(ds.NumberOfFrames) == ds.pixel_array.shape[0]
        for f in frames:
            assert "FrameContentSequence" in f and "PlanePositionSequence" in f
        if s.expected_kind == "DWI":
            bvals = [f.MRDiffusionSequence[0].DiffusionBValue for f in frames]
            assert sorted(set(bvals)) == [0.0, 1000.0] and len(bvals) == 6
            assert ds.AcquisitionContrast == "DIFFUSION"
        if s.expected_kind == "LOCALIZER":
            orientations = {tuple(f.PlaneOrientationSequence[0].ImageOrientationPatient) for f in frames}
            assert len(orientations) == 3
        if s.expected_contrast == "post":
            assert shared.ContrastBolusUsageSequence[0].ContrastBolusAgentAdministered == "YES"
            profile_item = ds.ContrastBolusAgentSequence[0].ContrastAdministrationProfileSequence[0]
            assert profile_item.ContrastBolusStartTime == ds.ContrastBolusStartTime


# --- vendor styles -------------------------------------------------------------------------------------------

def _dwi_headers(tmp_path: Path, vendor: str) -> tuple[GeneratedStudy, list[Dataset]]:
    study = generate_study(tmp_path, profile="ms-brain-pml-screening", vendor=vendor, slices=2)
    return study, _headers(study.by_key("dwi").files)


def test_siemens_style(tmp_path: Path) -> None:
    study, dwi = _dwi_headers(tmp_path, "siemens")
    assert {d.Manufacturer for d in dwi} == {"SIEMENS"}
    assert float(dwi[0].ImagingFrequency) == 123.25 and float(dwi[0].MagneticFieldStrength) == 3
    creator = dwi[0].private_block(0x0019, "SIEMENS MR HEADER")
    assert sorted({int(d.private_block(0x0019, "SIEMENS MR HEADER")[0x0C].value) for d in dwi}) == [0, 1000]
    assert creator is not None
    assert {d.SequenceName for d in dwi} == {"*ep_b0", "*ep_b1000t"}
    assert list(dwi[0].ImageType[:3]) == ["ORIGINAL", "PRIMARY", "DIFFUSION"]
    t2 = _headers(study.by_key("t2").files)[0]
    assert list(t2.ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
    assert t2.SequenceName.startswith("*tse2d")
    adc = _headers(study.by_key("adc").files)[0]
    assert adc.ImageType[0] == "DERIVED" and "ADC" in adc.ImageType


def test_ge_style(tmp_path: Path) -> None:
    study, dwi = _dwi_headers(tmp_path, "ge")
    assert dwi[0].Manufacturer == "GE MEDICAL SYSTEMS" and dwi[0].ManufacturerModelName.startswith("SIGNA")
    assert list(dwi[0].ImageType) == ["ORIGINAL", "PRIMARY", "OTHER"]
    slop = [list(d.private_block(0x0043, "GEMS_PARM_01")[0x39].value) for d in dwi]
    assert all(len(v) == 4 for v in slop)
    assert sorted({v[0] % 1_000_000_000 for v in slop}) == [0, 1000]
    assert "DiffusionBValue" not in dwi[0]  # GE keeps it private
    loc = _headers(study.series[0].files)[0]
    assert loc.SeriesDescription == "3-Plane Localizer" and "LOCALIZER" not in loc.ImageType


def test_philips_style(tmp_path: Path) -> None:
    study, dwi = _dwi_headers(tmp_path, "philips")
    assert dwi[0].Manufacturer.startswith("Philips")
    assert sorted({float(d.private_block(0x2001, "Philips Imaging DD 001")[0x03].value) for d in dwi}) == [0, 1000]
    t2 = _headers(study.by_key("t2").files)[0]
    assert list(t2.ImageType) == ["ORIGINAL", "PRIMARY", "M_SE", "M", "SE"]
    assert t2.DiffusionBValue == 0.0  # the real Philips trap: b=0 on a non-diffusion series
    assert study.series[1].series_number == 201


def test_canon_style(tmp_path: Path) -> None:
    study, dwi = _dwi_headers(tmp_path, "canon")
    assert dwi[0].Manufacturer in ("CANON_MEC", "TOSHIBA")
    assert dwi[0].ManufacturerModelName.startswith("Vantage")
    assert list(dwi[0].ImageType[:3]) == ["ORIGINAL", "PRIMARY", "MR"]
    assert sorted({float(d.DiffusionBValue) for d in dwi}) == [0, 1000]


# --- defects --------------------------------------------------------------------------------------------------

def _profile_for(defect: str) -> str:
    return "ms-brain-pml-screening" if defect == "missing_dwi" else "ms-brain-routine"


def _all(study: GeneratedStudy) -> Iterator[Dataset]:
    for s in study.series:
        yield from _headers(s.files)


@pytest.mark.parametrize("enhanced", [False, True])
@pytest.mark.parametrize("defect", DEFECTS)
def test_defect_changes_what_it_says(tmp_path: Path, defect: str, enhanced: bool) -> None:
    profile = _profile_for(defect)
    good = generate_study(tmp_path / "good", profile=profile, slices=2, enhanced=enhanced)
    bad = generate_study(tmp_path / "bad", profile=profile, slices=2, enhanced=enhanced, defects=[defect])
    assert bad.study_uid != good.study_uid
    kinds = [s.expected_kind for s in bad.series]
    descs = [h.SeriesDescription for h in _headers([s.files[0] for s in bad.series])]
    counted = [s for s in bad.series if s.expected_kind != "LOCALIZER" and not s.expected_derived]
    if defect == "missing_flair":
        assert "T2_FLAIR" not in kinds and not any("fl" in d.lower() for d in descs)
    elif defect == "missing_t2":
        assert "T2" not in kinds and "T2_FLAIR" in kinds
    elif defect == "missing_t1_post":
        assert [s.expected_contrast for s in bad.series if s.expected_kind == "T1"] == ["pre"]
        assert not any("ContrastBolusAgent" in h for h in _all(bad))
    elif defect == "missing_dwi":
        assert not {"DWI", "ADC", "TRACE"} & set(kinds)
    elif defect == "field_1_0T":
        assert {(float(h.MagneticFieldStrength), _freq(h)) for h in _all(bad)} == {(1.0, 42.58)}
    elif defect == "no_field_strength":
        assert not any("MagneticFieldStrength" in h for h in _all(bad))
        assert all(_freq(h) > 60 for h in _all(bad))
    elif defect == "thick_slices_5mm":
        two_d = [s for s in counted if s.expected_acquisition == "2D"]
        assert two_d and all(_thickness_pixel(_headers(s.files[:1])[0])[0] == 5.0 for s in two_d)
    elif defect == "pixel_1_3mm":
        assert all(_thickness_pixel(_headers(s.files[:1])[0])[1] == 1.3 for s in counted)
    elif defect in ("contrast_2min", "no_contrast_start"):
        post = _headers(next(s for s in bad.series if s.key == "t1_post").files)
        assert post[0].ContrastBolusAgent
        if defect == "contrast_2min":
            assert _first_acq(post) - _bolus(post[0]) == dt.timedelta(minutes=2)  # type: ignore[operator]
        else:
            assert _bolus(post[0]) is None
    elif defect == "flair_derived_mpr_only":
        flairs = [s for s in bad.series if s.expected_kind == "T2_FLAIR"]
        assert len(flairs) == 1 and flairs[0].expected_derived
        ds = _headers(flairs[0].files[:1])[0]
        assert ds.ImageType[0] == "DERIVED" and "MPR" in ds.ImageType
        if not enhanced:
            assert list(ds.ImageType[:3]) == ["DERIVED", "SECONDARY", "MPR"]
    elif defect == "lying_description":
        liar = next(s for s in bad.series if s.description == "AX FLAIR")
        assert liar.expected_kind == "T1"
        assert _headers(liar.files[:1])[0].SeriesDescription == "AX FLAIR"
    elif defect == "localizer_only":
        assert kinds == ["LOCALIZER"]
    elif defect == "different_scanner":
        g, b = _headers(good.files[:1])[0], _headers(bad.files[:1])[0]
        assert g.DeviceSerialNumber != b.DeviceSerialNumber and g.StationName != b.StationName
        assert g.Manufacturer == b.Manufacturer
    else:
        pytest.fail(f"no check for defect {defect}")


def _freq(ds: Dataset) -> float:
    if "ImagingFrequency" in ds:
        return float(ds.ImagingFrequency)
    return float(_shared(ds).MRImagingModifierSequence[0].TransmitterFrequency)


def test_defect_that_does_not_apply_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="contrast"):
        generate_study(tmp_path, profile="ms-brain-pml-screening", defects=["contrast_2min"])
    with pytest.raises(ValueError, match="missing_dwi"):
        generate_study(tmp_path, profile="ms-brain-routine", defects=["missing_dwi"])
    with pytest.raises(ValueError, match="contrast_2min"):  # no post T1 means no injection to time
        generate_study(tmp_path, defects=["contrast_2min", "missing_t1_post"])
    assert not list(tmp_path.rglob("*.dcm"))  # refused before writing anything
    with pytest.raises(ValueError, match="unknown defect"):
        generate_study(tmp_path, defects=["no_such_defect"])
    with pytest.raises(ValueError, match="unknown vendor"):
        generate_study(tmp_path, vendor="hitachi")
    with pytest.raises(ValueError, match="unknown profile"):
        generate_study(tmp_path, profile="ms-knee")


def test_defects_combine(tmp_path: Path) -> None:
    study = generate_study(tmp_path, defects=["thick_slices_5mm", "pixel_1_3mm", "field_1_0T"], slices=1)
    t2 = _headers(study.by_key("t2").files)[0]
    assert (float(t2.SliceThickness), float(t2.PixelSpacing[0]), float(t2.MagneticFieldStrength)) == (5, 1.3, 1)


# --- identity, size, encoding -----------------------------------------------------------------------------------

def test_uids_are_deterministic_per_seed(tmp_path: Path) -> None:
    a = generate_study(tmp_path / "a", seed=7, slices=1)
    b = generate_study(tmp_path / "b", seed=7, slices=1)
    c = generate_study(tmp_path / "c", seed=8, slices=1)
    uids = [[pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in s.files] for s in (a, b, c)]
    assert a.study_uid == b.study_uid and uids[0] == uids[1]
    assert c.study_uid != a.study_uid and not set(uids[2]) & set(uids[0])
    d = generate_study(tmp_path / "d", seed=7, slices=1, study_uid="1.2.3.4.5")
    assert {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in d.files} == {"1.2.3.4.5"}


def test_many_instances(tmp_path: Path) -> None:
    study = generate_study(tmp_path, profile="ms-brain-pml-suspected", slices=30)
    assert len(study.files) >= 200
    assert len({pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in study.files}) == len(study.files)


def test_character_set_and_identity_fields(tmp_path: Path) -> None:
    study = generate_study(tmp_path, slices=1, patient_name="MÜLLER^JÖRG", patient_id="P-77",
                           character_set="ISO_IR 192", accession="ACC123", study_date="20250301")
    ds = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "MÜLLER^JÖRG"
    assert ds.PatientID == "P-77" and ds.AccessionNumber == "ACC123" and ds.StudyDate == "20250301"


# --- dciodvfy -----------------------------------------------------------------------------------------------------

def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("enhanced", [False, True])
@pytest.mark.parametrize("vendor", VENDORS)
def test_dciodvfy_finds_no_errors(tmp_path: Path, vendor: str, enhanced: bool) -> None:
    """First file of every series type: localizer, 2D/3D, pre/post contrast, DWI, ADC, TRACE, MPR, spine."""
    files: list[Path] = []
    for profile, defects in (("ms-brain-pml-suspected", ()), ("ms-spine-new-deficit", ()),
                             ("ms-brain-routine", ("flair_derived_mpr_only",))):
        study = generate_study(tmp_path / profile, profile=profile, vendor=vendor, enhanced=enhanced, slices=2,
                               defects=defects)
        files += [s.files[0] for s in study.series]
    problems = {str(f.relative_to(tmp_path)): errs for f in files if (errs := _dciodvfy_errors(f))}
    assert problems == {}


# --- large object -------------------------------------------------------------------------------------------------

def test_large_multiframe_streams_with_bounded_memory(tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    tracemalloc.start()
    try:
        path = write_large_multiframe(tmp_path / "big" / "large.dcm", size, study_uid="1.2.826.0.1.3680043.10.1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size // 5
    assert size <= os.path.getsize(path) < size + 2 * 512 * 512 + 200_000
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID == ENHANCED_MR and ds.StudyInstanceUID == "1.2.826.0.1.3680043.10.1"
    assert int(ds.NumberOfFrames) * ds.Rows * ds.Columns * 2 >= size
    assert len(ds.PerFrameFunctionalGroupsSequence) == int(ds.NumberOfFrames)


def test_large_multiframe_pixels_are_readable(tmp_path: Path) -> None:
    path = write_large_multiframe(tmp_path / "small.dcm", 3 * 512 * 512 * 2)
    ds = pydicom.dcmread(path)
    assert ds.pixel_array.shape == (3, 512, 512)
    if DCIODVFY.exists():
        assert _dciodvfy_errors(path) == []


# --- CLI and committed samples ------------------------------------------------------------------------------------

def test_cli(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "dicom_fixtures", "--out", str(tmp_path / "s"), "--vendor", "ge",
                          "--defect", "thick_slices_5mm", "--defect", "no_contrast_start", "--slices", "2",
                          "--seed", "4"], capture_output=True, text=True, check=True)
    uid_line, count_line = run.stdout.splitlines()[:2]
    files = sorted((tmp_path / "s").rglob("*.dcm"))
    assert int(count_line.split()[0]) == len(files) > 0
    assert pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID == uid_line
    bad = subprocess.run([sys.executable, "-m", "dicom_fixtures", "--out", str(tmp_path / "x"), "--profile",
                          "ms-brain-no-contrast", "--defect", "contrast_2min"], capture_output=True, text=True)
    assert bad.returncode == 2 and "contrast" in bad.stderr


def test_committed_samples_are_valid() -> None:
    files = sorted(SAMPLES.rglob("*.dcm"))
    assert files, "dicom_fixtures/samples holds no DICOM files"
    assert (SAMPLES / "README.md").is_file()
    assert sum(f.stat().st_size for f in SAMPLES.rglob("*") if f.is_file()) < 2 * 1024 * 1024
    classes = {pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID for f in files}
    assert classes == {MR, ENHANCED_MR}
