"""Header modules shared by the classic and the enhanced writer, plus geometry and pixels."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from dicom_fixtures import vendors
from dicom_fixtures.exam import PlannedSeries

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"
IMPLEMENTATION_VERSION = "DICOM_FIXTURES_1"


@dataclass(frozen=True)
class StudyContext:
    """Everything that is the same for every file of one generated study."""

    study_uid: str
    frame_of_reference_uid: str
    patient_id: str
    patient_name: str
    study_date: dt.date
    study_start: dt.datetime
    accession: str
    vendor: str
    profile: str
    defects: tuple[str, ...]
    character_set: str
    rows: int
    columns: int
    seed: int
    bolus: dt.datetime | None


STUDY_DESCRIPTIONS = {
    "ms-brain-routine": "MRI BRAIN WITHOUT AND WITH CONTRAST",
    "ms-brain-new-deficit": "MRI BRAIN WITHOUT AND WITH CONTRAST",
    "ms-brain-pml-suspected": "MRI BRAIN WITHOUT AND WITH CONTRAST",
    "ms-brain-pml-screening": "MRI BRAIN WITHOUT CONTRAST",
    "ms-brain-no-contrast": "MRI BRAIN WITHOUT CONTRAST",
    "ms-spine-new-deficit": "MRI CERVICAL AND THORACIC SPINE WITHOUT AND WITH CONTRAST",
}


def uid(*parts: object) -> str:
    """Deterministic UID: same inputs, same UID (pydicom hashes the entropy sources)."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def da(d: dt.date | dt.datetime) -> str:
    return d.strftime("%Y%m%d")


def tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.") + f"{t.microsecond // 1000:03d}"


def safe_name(text: str) -> str:
    """A series description as a folder name (descriptions hold spaces, '+', '(', '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "series"


def new_file_dataset(path: Path, sop_class: str, sop_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    return ds


def scanner_values(ctx: StudyContext) -> tuple[str, str, str, str | None, str]:
    """model, serial, station, field strength (None: absent), imaging frequency, with defects applied."""
    sc = vendors.SCANNERS[ctx.vendor]
    model, serial, station = sc.model, sc.serial, sc.station
    if "different_scanner" in ctx.defects:
        model, serial, station = vendors.OTHER_SCANNERS[ctx.vendor]
    field: str | None = sc.field_t
    freq = sc.frequency
    if "field_1_0T" in ctx.defects:
        field, freq = "1", "42.58"
    if "no_field_strength" in ctx.defects:
        field = None
    return model, serial, station, field, freq


def add_patient_study_series(ds: Dataset, ctx: StudyContext, p: PlannedSeries, series_uid: str,
                             series_number: int, desc: str) -> None:
    """Patient, General Study, Patient Study, General Series, Frame of Reference, General Equipment."""
    sc = vendors.SCANNERS[ctx.vendor]
    model, serial, station, _, _ = scanner_values(ctx)
    ds.SpecificCharacterSet = ctx.character_set
    ds.PatientName = ctx.patient_name
    ds.PatientID = ctx.patient_id
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientBirthDate = "19850312"
    ds.PatientSex = "F"
    ds.PatientAge = f"{ctx.study_date.year - 1985:03d}Y"
    ds.PatientWeight = "68"
    ds.PatientSize = "1.68"
    ds.StudyInstanceUID = ctx.study_uid
    ds.StudyDate = da(ctx.study_date)
    ds.StudyTime = tm(ctx.study_start)
    ds.ReferringPhysicianName = "SMITH^ANNA^^DR"
    ds.StudyID = str(1000 + ctx.seed % 9000)
    ds.AccessionNumber = ctx.accession
    ds.StudyDescription = STUDY_DESCRIPTIONS[ctx.profile]
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = da(p.start)
    ds.SeriesTime = tm(p.start)
    ds.SeriesDescription = desc
    ds.ProtocolName = desc
    ds.BodyPartExamined = p.body_part
    ds.PatientPosition = "HFS"
    ds.OperatorsName = "TECH^MR"
    ds.FrameOfReferenceUID = ctx.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = sc.manufacturer
    ds.InstitutionName = sc.institution
    ds.StationName = station
    ds.ManufacturerModelName = model
    ds.DeviceSerialNumber = serial
    ds.SoftwareVersions = list(sc.software) if len(sc.software) > 1 else sc.software[0]
    ds.InstitutionalDepartmentName = "Radiology"
    ds.PerformedProcedureStepStartDate = da(ctx.study_start)
    ds.PerformedProcedureStepStartTime = tm(ctx.study_start)
    ds.PerformedProcedureStepID = f"MR{ctx.study_start:%Y%m%d%H%M%S}"
    ds.PerformedProcedureStepDescription = STUDY_DESCRIPTIONS[ctx.profile]


def add_image_pixel(ds: Dataset, ctx: StudyContext) -> None:
    """Image Pixel module of every generated MR image, classic or enhanced: 12 bits stored in 16."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ctx.rows
    ds.Columns = ctx.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0


def add_contrast_plain(ds: Dataset, p: PlannedSeries) -> None:
    """Contrast/Bolus module: what the console writes once the operator registered the injection."""
    if not p.contrast_given:
        return
    ds.ContrastBolusAgent = "Gadobutrol 1.0 mmol/ml (Gadovist)"
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusVolume = "6.8"
    ds.ContrastBolusTotalDose = "6.8"
    ds.ContrastBolusIngredient = "GADOLINIUM"
    ds.ContrastBolusIngredientConcentration = "604.72"  # mg/ml gadobutrol
    if p.bolus_start is not None:
        ds.ContrastBolusStartTime = tm(p.bolus_start)


# --- geometry -------------------------------------------------------------------------------------------

_IOP = {"AX": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), "SAG": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        "COR": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)}
_CENTRE_Z = {"BRAIN": 20.0, "CSPINE": -110.0, "TSPINE": -330.0}


@dataclass(frozen=True)
class SliceGeometry:
    orientation: str  # AX / SAG / COR of this slice
    iop: tuple[float, ...]
    ipp: tuple[float, float, float]
    slice_location: float
    stack: int  # 1-based stack (localizer: one per plane)
    in_stack: int  # 1-based position in the stack


def _normal(iop: tuple[float, ...]) -> np.ndarray:
    return np.cross(np.array(iop[:3]), np.array(iop[3:]))


def slice_geometry(p: PlannedSeries, n_slices: int, rows: int, columns: int) -> list[SliceGeometry]:
    """Positions of each slice; a three-plane localizer yields three stacks (AX, SAG, COR)."""
    planes = ["SAG", "COR", "AX"] if p.orientation == "LOC3" else [p.orientation]
    per_plane = max(1, min(3, n_slices)) if p.orientation == "LOC3" else n_slices
    centre = np.array([0.0, 0.0, _CENTRE_Z.get(p.body_part, 0.0)])
    out: list[SliceGeometry] = []
    for s_idx, plane in enumerate(planes, start=1):
        iop = _IOP[plane]
        r, c, n = np.array(iop[:3]), np.array(iop[3:]), _normal(iop)
        for k in range(per_plane):
            offset = (k - (per_plane - 1) / 2) * p.spacing_between_slices
            centre_k = centre + offset * n
            ipp = centre_k - r * (columns / 2) * p.pixel_spacing - c * (rows / 2) * p.pixel_spacing
            ipp_t = (round(float(ipp[0]), 4), round(float(ipp[1]), 4), round(float(ipp[2]), 4))
            out.append(SliceGeometry(plane, iop, ipp_t, round(float(np.dot(ipp, n)), 4), s_idx, k + 1))
    return out


# --- pixels ---------------------------------------------------------------------------------------------

_LEVEL = {"T2": 1400, "T2_FLAIR": 900, "T1": 1100, "STIR": 1200, "DWI": 800, "ADC": 1600, "TRACE": 700,
          "LOCALIZER": 600, "PD": 1300}


def pixels(p: PlannedSeries, rows: int, columns: int, index: int, seed: int, b_value: int | None) -> np.ndarray:
    """A smooth elliptical 'head' with a few bright 'lesions' and noise: small, plausible, 12-bit."""
    rng = np.random.default_rng([seed, index, len(p.key), sum(map(ord, p.key))])
    y, x = np.mgrid[0:rows, 0:columns]
    cy, cx = (rows - 1) / 2, (columns - 1) / 2
    r2 = ((y - cy) / (rows * 0.42)) ** 2 + ((x - cx) / (columns * 0.36)) ** 2
    level = _LEVEL.get(p.kind, 1000) * (0.55 if b_value == 1000 and p.kind == "DWI" else 1.0)
    img = np.where(r2 < 1.0, level * (1.0 - 0.3 * r2), 0.0)
    for _ in range(3):
        ly, lx = rng.uniform(0.3, 0.7) * rows, rng.uniform(0.3, 0.7) * columns
        img += 500.0 * np.exp(-(((y - ly) ** 2 + (x - lx) ** 2) / 6.0))
    img += rng.normal(0.0, 20.0, size=img.shape)
    return np.clip(img, 0, 4095).astype(np.uint16)
