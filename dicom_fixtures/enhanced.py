"""Enhanced MR Image Storage: one multi-frame object per series, with shared and per-frame functional groups."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from dicom_fixtures import vendors
from dicom_fixtures.classic import Frame, frames_of
from dicom_fixtures.common import (
    ENHANCED_MR_IMAGE,
    StudyContext,
    add_image_pixel,
    add_patient_study_series,
    da,
    new_file_dataset,
    pixels,
    scanner_values,
    tm,
    uid,
)
from dicom_fixtures.exam import PlannedSeries

_ANATOMY = {"BRAIN": ("12738006", "Brain"), "CSPINE": ("122494005", "Cervical spine"),
            "TSPINE": ("122495006", "Thoracic spine")}


def _item(**kw: object) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def dt_str(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")


def _frame_type_item(ctx: StudyContext, p: PlannedSeries) -> Dataset:
    return _item(FrameType=vendors.enhanced_image_type(ctx.vendor, p), PixelPresentation="MONOCHROME",
                 VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="MPR" if p.mpr else "NONE",
                 ComplexImageComponent="MAGNITUDE", AcquisitionContrast=p.technique.acquisition_contrast)


def _timing(ctx: StudyContext, p: PlannedSeries) -> Dataset:
    ph = vendors.physics(ctx.vendor, p)
    gradient = p.technique.echo_pulse == "GRADIENT" or p.technique.epi
    return _item(RepetitionTime=f"{ph.tr:g}", FlipAngle=f"{ph.flip:g}", EchoTrainLength=str(p.technique.etl),
                 RFEchoTrainLength=1 if gradient else p.technique.etl,
                 GradientEchoTrainLength=p.technique.etl if p.technique.epi else (1 if gradient else 0),
                 SpecificAbsorptionRateSequence=Sequence([_item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                                                SpecificAbsorptionRateValue=0.42)]),
                 GradientOutputType="DB_DT", GradientOutput=38.2,
                 OperatingModeSequence=Sequence([_item(OperatingModeType="GRADIENT", OperatingMode="IEC_NORMAL"),
                                                 _item(OperatingModeType="RF", OperatingMode="IEC_NORMAL")]))


def _modifier(ctx: StudyContext, p: PlannedSeries) -> Dataset:
    ph = vendors.physics(ctx.vendor, p)
    ir = p.technique.ti is not None
    item = _item(InversionRecovery="YES" if ir else "NO", FlowCompensation="NONE",
                 T2Preparation="NO", SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE",
                 PartialFourier="NO", ParallelAcquisition="YES",
                 ParallelAcquisitionTechnique="SMASH" if ctx.vendor == "siemens" else "SENSE",
                 ParallelReductionFactorInPlane=2.0, ParallelReductionFactorOutOfPlane=1.0,
                 ParallelReductionFactorSecondInPlane=1.0)
    if ir:
        item.InversionTimes = [float(ph.ti if ph.ti is not None else p.technique.ti or 0)]
    if p.technique.echo_pulse == "GRADIENT":
        item.Spoiling = "RF"
    return item


def _coils(ctx: StudyContext) -> tuple[Dataset, Dataset]:
    sc = vendors.SCANNERS[ctx.vendor]
    rx = _item(ReceiveCoilName=sc.receive_coil, ReceiveCoilManufacturerName=sc.coil_manufacturer,
               ReceiveCoilType="MULTICOIL", QuadratureReceiveCoil="NO",
               MultiCoilDefinitionSequence=Sequence([_item(MultiCoilElementName=f"H{i}", MultiCoilElementUsed="YES")
                                                     for i in range(1, 5)]))
    tx = _item(TransmitCoilName=sc.transmit_coil, TransmitCoilManufacturerName=sc.coil_manufacturer,
               TransmitCoilType="BODY")
    return rx, tx


def _shared_group(ctx: StudyContext, p: PlannedSeries, frames: list[Frame], source_series: str | None) -> Dataset:
    ph = vendors.physics(ctx.vendor, p)
    _, _, _, _, freq = scanner_values(ctx)
    g = Dataset()
    g.PixelMeasuresSequence = Sequence([_item(PixelSpacing=[f"{p.pixel_spacing:g}"] * 2,
                                              SliceThickness=f"{p.slice_thickness:g}",
                                              SpacingBetweenSlices=f"{p.spacing_between_slices:g}")])
    if len({f.geometry.iop for f in frames}) == 1:
        g.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=[f"{v:g}"
                                                                              for v in frames[0].geometry.iop])])
    code, meaning = _ANATOMY[p.body_part]
    g.FrameAnatomySequence = Sequence([_item(AnatomicRegionSequence=Sequence([_code(code, "SCT", meaning)]),
                                             FrameLaterality="U")])
    g.PixelValueTransformationSequence = Sequence([_item(RescaleIntercept="0", RescaleSlope="1",
                                                         RescaleType="US")])
    g.FrameVOILUTSequence = Sequence([_item(WindowCenter="800", WindowWidth="1600")])
    g.MRImageFrameTypeSequence = Sequence([_frame_type_item(ctx, p)])
    g.MRTimingAndRelatedParametersSequence = Sequence([_timing(ctx, p)])
    g.MRFOVGeometrySequence = Sequence([_item(
        InPlanePhaseEncodingDirection="ROW" if p.orientation == "SAG" else "COLUMN",
        MRAcquisitionFrequencyEncodingSteps=ctx.columns, MRAcquisitionPhaseEncodingStepsInPlane=ctx.rows,
        PercentSampling="100", PercentPhaseFieldOfView="100",
        **({"MRAcquisitionPhaseEncodingStepsOutOfPlane": len(frames)}
           if p.technique.acquisition == "3D" else {}))])
    g.MREchoSequence = Sequence([_item(EffectiveEchoTime=float(ph.te))])
    g.MRModifierSequence = Sequence([_modifier(ctx, p)])
    g.MRImagingModifierSequence = Sequence([_item(MagnetizationTransfer="NONE", BloodSignalNulling="NO",
                                                  Tagging="NONE", TransmitterFrequency=float(freq),
                                                  PixelBandwidth="1502" if p.technique.epi else "220")])
    rx, tx = _coils(ctx)
    g.MRReceiveCoilSequence = Sequence([rx])
    g.MRTransmitCoilSequence = Sequence([tx])
    g.MRAveragesSequence = Sequence([_item(NumberOfAverages="1")])
    g.MRSpatialSaturationSequence = Sequence([])
    if p.kind in ("TRACE", "ADC"):
        g.MRDiffusionSequence = Sequence([_item(DiffusionBValue=1000.0, DiffusionDirectionality="ISOTROPIC")])
    if p.contrast_given:
        g.ContrastBolusUsageSequence = Sequence([_item(ContrastBolusAgentNumber=1,
                                                       ContrastBolusAgentAdministered="YES",
                                                       ContrastBolusAgentDetected="NO")])
    if p.derived:
        source = _item(ReferencedSOPClassUID=ENHANCED_MR_IMAGE,
                       ReferencedSOPInstanceUID=_source_uids(ctx, p, source_series)[1],
                       PurposeOfReferenceCodeSequence=Sequence([_code(
                           "121322", "DCM", "Source image for image processing operation")]))
        deriv = {"ADC": ("113041", "Apparent Diffusion Coefficient"),
                 "TRACE": ("113043", "Diffusion weighted")}.get(p.kind, ("113072", "Multiplanar reformatting"))
        g.DerivationImageSequence = Sequence([_item(DerivationCodeSequence=Sequence([_code(deriv[0], "DCM",
                                                                                           deriv[1])]),
                                                    SourceImageSequence=Sequence([source]))])
    return g


def _per_frame(p: PlannedSeries, frames: list[Frame], dwi_index: dict[int | None, int]) -> list[Dataset]:
    out = []
    one_orientation = len({f.geometry.iop for f in frames}) == 1
    for n, f in enumerate(frames, start=1):
        g = Dataset()
        dims = [f.geometry.stack, f.geometry.in_stack]
        if p.kind == "DWI":
            dims.append(dwi_index[f.b_value])
        g.FrameContentSequence = Sequence([_item(
            FrameAcquisitionNumber=1, FrameReferenceDateTime=dt_str(f.acquired),
            FrameAcquisitionDateTime=dt_str(f.acquired),
            FrameAcquisitionDuration=float(p.technique.duration_s * 1000 / max(1, len(frames))),
            StackID=str(f.geometry.stack), InStackPositionNumber=f.geometry.in_stack, DimensionIndexValues=dims)])
        g.PlanePositionSequence = Sequence([_item(ImagePositionPatient=[f"{v:g}" for v in f.geometry.ipp])])
        if not one_orientation:
            g.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=[f"{v:g}"
                                                                                  for v in f.geometry.iop])])
        if p.kind == "DWI":
            b = f.b_value or 0
            g.MRDiffusionSequence = Sequence([_item(DiffusionBValue=float(b),
                                                    DiffusionDirectionality="NONE" if b == 0 else "ISOTROPIC")])
        out.append(g)
    return out


def _dimensions(ds: Dataset, p: PlannedSeries, series_uid: str) -> None:
    org = uid(series_uid, "dimension-organization")
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=org)])
    fc = Tag("FrameContentSequence")
    idx = [_item(DimensionOrganizationUID=org, DimensionIndexPointer=Tag("StackID"), FunctionalGroupPointer=fc,
                 DimensionDescriptionLabel="Stack"),
           _item(DimensionOrganizationUID=org, DimensionIndexPointer=Tag("InStackPositionNumber"),
                 FunctionalGroupPointer=fc, DimensionDescriptionLabel="Position in stack")]
    if p.kind == "DWI":
        idx.append(_item(DimensionOrganizationUID=org, DimensionIndexPointer=Tag("DiffusionBValue"),
                         FunctionalGroupPointer=Tag("MRDiffusionSequence"), DimensionDescriptionLabel="b-value"))
    ds.DimensionIndexSequence = Sequence(idx)


def _pulse_sequence(ds: Dataset, ctx: StudyContext, p: PlannedSeries) -> None:
    """MR Pulse Sequence module (required for ORIGINAL images)."""
    t = p.technique
    ds.PulseSequenceName = vendors.pulse_sequence_name(ctx.vendor, p)
    ds.MRAcquisitionType = t.acquisition
    ds.EchoPulseSequence = t.echo_pulse
    if t.echo_pulse != "GRADIENT":
        ds.MultipleSpinEcho = "NO"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "YES" if t.epi else "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "FAT" if t.epi else "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE" if t.epi else "PARTIAL"
    if t.acquisition == "3D":
        ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1


def _contrast(ds: Dataset, p: PlannedSeries) -> None:
    """Enhanced Contrast/Bolus module, plus the plain attributes that vendors also write."""
    if not p.contrast_given:
        return
    profile = _item(ContrastBolusVolume="6.8")
    if p.bolus_start is not None:
        profile.ContrastBolusStartTime = tm(p.bolus_start)
    ds.ContrastBolusAgentSequence = Sequence([_item(
        CodeValue="GADOBUTROL", CodingSchemeDesignator="99MSF", CodeMeaning="Gadobutrol (Gadovist)",
        ContrastBolusAgentNumber=1,
        ContrastBolusAdministrationRouteSequence=Sequence([_code("47625008", "SCT", "Intravenous route")]),
        ContrastBolusIngredientCodeSequence=Sequence([_code("GADOLINIUM", "99MSF", "Gadolinium")]),
        ContrastBolusVolume="6.8", ContrastBolusIngredientConcentration="604.72",
        ContrastAdministrationProfileSequence=Sequence([profile]))])
    ds.ContrastBolusAgent = "Gadobutrol 1.0 mmol/ml (Gadovist)"
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusVolume = "6.8"
    if p.bolus_start is not None:
        ds.ContrastBolusStartTime = tm(p.bolus_start)


def _source_uids(ctx: StudyContext, p: PlannedSeries, source_series: str | None) -> tuple[str, str]:
    """(series, instance) the derived object was computed from; an MPR's source may not be in the study."""
    series = source_series or uid(ctx.study_uid, "mpr-source-series", p.key)
    return series, uid(series, "sop", 1)


def _source_evidence(ds: Dataset, ctx: StudyContext, p: PlannedSeries, source_series: str | None) -> None:
    series, sop = _source_uids(ctx, p, source_series)
    ds.SourceImageEvidenceSequence = Sequence([_item(
        StudyInstanceUID=ctx.study_uid,
        ReferencedSeriesSequence=Sequence([_item(
            SeriesInstanceUID=series,
            ReferencedSOPSequence=Sequence([_item(ReferencedSOPClassUID=ENHANCED_MR_IMAGE,
                                                  ReferencedSOPInstanceUID=sop)]))]))])


def build_enhanced(ctx: StudyContext, p: PlannedSeries, series_uid: str, series_number: int, desc: str,
                   path: Path, frames: list[Frame], source_series: str | None) -> Dataset:
    sop_uid = uid(series_uid, "sop", 1)
    ds = new_file_dataset(path, ENHANCED_MR_IMAGE, sop_uid)
    add_patient_study_series(ds, ctx, p, series_uid, series_number, desc)
    _, _, _, field, _ = scanner_values(ctx)
    content = p.start + dt.timedelta(seconds=max(p.technique.duration_s, 1) + 4)
    ds.SOPClassUID = ENHANCED_MR_IMAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = da(content)
    ds.InstanceCreationTime = tm(content)
    image_type = vendors.enhanced_image_type(ctx.vendor, p)
    ds.ImageType = image_type
    ds.InstanceNumber = 1
    ds.ContentDate = da(content)
    ds.ContentTime = tm(content)
    ds.NumberOfFrames = len(frames)
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = dt_str(p.start)
    ds.AcquisitionDuration = float(p.technique.duration_s)
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    if field is not None:
        ds.MagneticFieldStrength = field
    ds.ApplicableSafetyStandardAgency = "IEC"
    add_image_pixel(ds, ctx)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    item = _frame_type_item(ctx, p)
    for k in ("PixelPresentation", "VolumetricProperties", "VolumeBasedCalculationTechnique",
              "ComplexImageComponent", "AcquisitionContrast"):
        setattr(ds, k, getattr(item, k))
    if image_type[0] == "ORIGINAL":
        _pulse_sequence(ds, ctx, p)
    else:  # derived: the standard forbids the pulse sequence module; name the source instead
        _source_evidence(ds, ctx, p, source_series)
    ds.AcquisitionContextSequence = Sequence([])
    _contrast(ds, p)
    _dimensions(ds, p, series_uid)
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_group(ctx, p, frames, source_series)])
    bs = sorted({f.b_value for f in frames}, key=lambda b: b or 0)
    ds.PerFrameFunctionalGroupsSequence = Sequence(_per_frame(p, frames, {b: i for i, b in enumerate(bs, 1)}))
    if ctx.vendor == "philips" and p.kind != "DWI":
        ds.DiffusionBValue = 0.0  # the Philips trap, enhanced files too
    vendors.add_private(ds, ctx.vendor, p, frames[0].b_value, enhanced=True)
    return ds


def write_enhanced_series(ctx: StudyContext, p: PlannedSeries, series_uid: str, series_number: int, desc: str,
                          folder: Path, slices: int, source_series: str | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "1.dcm"
    frames = frames_of(p, slices, ctx.rows, ctx.columns)
    ds = build_enhanced(ctx, p, series_uid, series_number, desc, path, frames, source_series)
    arr = np.stack([pixels(p, ctx.rows, ctx.columns, n, ctx.seed, f.b_value) for n, f in enumerate(frames, 1)])
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return [path]
