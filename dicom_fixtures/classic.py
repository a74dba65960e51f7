"""Classic MR Image Storage: one file per slice (per b-value for diffusion)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_fixtures import vendors
from dicom_fixtures.common import (
    MR_IMAGE,
    SliceGeometry,
    StudyContext,
    add_contrast_plain,
    add_image_pixel,
    add_patient_study_series,
    da,
    new_file_dataset,
    pixels,
    scanner_values,
    slice_geometry,
    tm,
    uid,
)
from dicom_fixtures.exam import PlannedSeries


@dataclass(frozen=True)
class Frame:
    """One image of a series: where it is, its b-value (diffusion), when it was acquired."""

    geometry: SliceGeometry
    b_value: int | None
    acquired: dt.datetime


def frames_of(p: PlannedSeries, slices: int, rows: int, columns: int) -> list[Frame]:
    geoms = slice_geometry(p, slices, rows, columns)
    dur = dt.timedelta(seconds=p.technique.duration_s)
    bs: tuple[int | None, ...] = p.b_values or (None,)
    out: list[Frame] = []
    for bi, b in enumerate(bs):
        for gi, g in enumerate(geoms):
            if p.technique.acquisition == "3D" or p.derived:
                when = p.start
            else:  # 2D: slices (and b-values) follow each other through the acquisition
                step = dur / max(1, len(geoms) * len(bs))
                when = p.start + step * (bi * len(geoms) + gi)
            out.append(Frame(g, b, when))
    return out


def add_mr_acquisition(ds: Dataset, ctx: StudyContext, p: PlannedSeries, b_value: int | None) -> None:
    """MR Image module acquisition attributes (classic)."""
    ph = vendors.physics(ctx.vendor, p)
    _, _, _, field, freq = scanner_values(ctx)
    ds.ScanningSequence = list(ph.scanning_sequence)
    ds.SequenceVariant = list(ph.sequence_variant)
    ds.ScanOptions = list(ph.scan_options) if ph.scan_options else ""
    ds.MRAcquisitionType = p.technique.acquisition
    seq_name = vendors.sequence_name(ctx.vendor, p, b_value)
    ds.SequenceName = seq_name
    ds.AngioFlag = "N"
    ds.SliceThickness = f"{p.slice_thickness:g}"
    ds.RepetitionTime = f"{ph.tr:g}"
    ds.EchoTime = f"{ph.te:g}"
    if "IR" in ph.scanning_sequence and ph.ti is not None:
        ds.InversionTime = f"{ph.ti:g}"
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = freq
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    if field is not None:
        ds.MagneticFieldStrength = field
    ds.SpacingBetweenSlices = f"{p.spacing_between_slices:g}"
    ds.EchoTrainLength = str(p.technique.etl)
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = "1502" if p.technique.epi else "220"
    ds.TransmitCoilName = vendors.SCANNERS[ctx.vendor].transmit_coil
    ds.ReceiveCoilName = vendors.SCANNERS[ctx.vendor].receive_coil
    ds.AcquisitionMatrix = [0, ctx.columns, ctx.rows, 0]
    ds.InPlanePhaseEncodingDirection = "ROW" if p.orientation == "SAG" else "COL"
    ds.FlipAngle = f"{ph.flip:g}"
    ds.VariableFlipAngleFlag = "Y" if p.technique.name == "FLAIR_3D" else "N"
    ds.SAR = "0.42"
    ds.dBdt = "0"
    if ctx.vendor in ("philips", "canon") and b_value is not None:
        ds.DiffusionBValue = float(b_value)
    if ctx.vendor == "philips" and b_value is None:
        ds.DiffusionBValue = 0.0  # Philips writes 0 on every series, diffusion or not


def _series_header(ctx: StudyContext, p: PlannedSeries, series_uid: str, series_number: int, desc: str,
                   folder: Path) -> Dataset:
    """Everything that is the same for every image of the series (built once, reused per file)."""
    content = p.start + dt.timedelta(seconds=max(p.technique.duration_s, 1) + 4)
    ds = new_file_dataset(folder / "1.dcm", MR_IMAGE, uid(series_uid, "sop", 1))
    add_patient_study_series(ds, ctx, p, series_uid, series_number, desc)
    ds.SOPClassUID = MR_IMAGE
    ds.InstanceCreationDate = da(content)
    ds.InstanceCreationTime = tm(content)
    ds.ImageType = vendors.image_type(ctx.vendor, p)
    ds.AcquisitionNumber = 1
    ds.ContentDate = da(content)
    ds.ContentTime = tm(content)
    if p.derived:
        ds.DerivationDescription = {"ADC": "ADC map", "TRACE": "isotropic trace-weighted image"}.get(
            p.kind, "multiplanar reformat")
    add_contrast_plain(ds, p)
    add_image_pixel(ds, ctx)
    ds.PixelSpacing = [f"{p.pixel_spacing:g}", f"{p.pixel_spacing:g}"]
    ds.WindowCenter = "800"
    ds.WindowWidth = "1600"
    ds.LossyImageCompression = "00"
    return ds


def write_classic_series(ctx: StudyContext, p: PlannedSeries, series_uid: str, series_number: int, desc: str,
                         folder: Path, slices: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    ds = _series_header(ctx, p, series_uid, series_number, desc, folder)
    for n, fr in enumerate(frames_of(p, slices, ctx.rows, ctx.columns), start=1):
        sop_uid = uid(series_uid, "sop", n)
        path = folder / f"{n}.dcm"
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = n
        ds.AcquisitionDate = da(fr.acquired)
        ds.AcquisitionTime = tm(fr.acquired)
        add_mr_acquisition(ds, ctx, p, fr.b_value)
        g = fr.geometry
        ds.ImagePositionPatient = [f"{v:g}" for v in g.ipp]
        ds.ImageOrientationPatient = [f"{v:g}" for v in g.iop]
        ds.SliceLocation = f"{g.slice_location:g}"
        vendors.add_private(ds, ctx.vendor, p, fr.b_value, enhanced=False)
        ds.PixelData = pixels(p, ctx.rows, ctx.columns, n, ctx.seed, fr.b_value).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
