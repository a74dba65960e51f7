"""The DICOM Comprehensive SR (TID 1500 Measurement Report) of one validation result, with highdicom."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Any

import highdicom as hd
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from msfollowup import __version__
from msfollowup.site.config import Config
from msfollowup.reports.codes import (
    ACQUISITION_CODES, ACQUISITION_DIM, COLUMN_SPACING, CONTRAST_CODES, CONTRAST_PHASE, FIELD_STRENGTH, KIND_CODES,
    LOCAL, LOCAL_SCHEME_NAME, MM, PROTOCOL_NOT_FOLLOWED, QUALITY_ASSESSMENT, QUALITY_FINDING, REQUIREMENT_ID,
    REQUIREMENT_STATUS, ROW_SPACING, SLICE_THICKNESS, STATUS_CODES, TESLA, UNUSABLE, USABLE_DOES_NOT_MEET,
    USABLE_MEETS, VERDICT_CODES, VERDICT_NAME,
)
from msfollowup.reports.content import ReportError, counted_series, open_requirements
from msfollowup.reports.evidence import InstanceRef

CONTENT_SEQUENCE = 0x0040A730
SR_SERIES_NUMBER = 9900  # far above scanner series numbers, so the SR sorts last in a viewer
SR_SERIES_DESCRIPTION = "msfollowup protocol compliance"
MANUFACTURER = "msfollowup"


def _procedure_codes(cfg: Config, data: Mapping[str, Any]) -> list[Code]:
    """The LOINC code(s) of the profile's exam: from the result's profile block, else the profile."""
    profile = data["profile"]
    loinc = profile.get("loinc")
    if not loinc:
        from msfollowup.site.profiles import ProfileError, get_profile

        try:
            loinc = [l.model_dump() for l in get_profile(profile["id"], cfg.validation.protocols_dir).loinc]
        except ProfileError as exc:
            raise ReportError(f"study {data['study_instance_uid']}: no procedure code: {exc}") from None
    return [Code(str(l["code"]), "LN", str(l["meaning"])) for l in loinc]



def _tracking_uid(*parts: str) -> str:
    """Deterministic, so the same series keeps its tracking UID across report versions."""
    return str(generate_uid(entropy_srcs=["msfollowup-tracking", *parts]))


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _series_group(series: Mapping[str, Any], refs: Sequence[InstanceRef]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    facts = series.get("facts") or {}
    uid = series["series_instance_uid"]
    number = series.get("series_number")
    label = f"Series {number if number is not None else '?'} {series.get('kind', 'OTHER')}"
    measurements = []
    for name, value, unit in (
        (SLICE_THICKNESS, _num(facts.get("slice_thickness_mm")), MM),
        (FIELD_STRENGTH, _num(facts.get("field_strength_t")), TESLA),
    ):
        if value is not None:
            measurements.append(hd.sr.Measurement(name=name, value=value, unit=unit))
    spacing = facts.get("pixel_spacing_mm")
    if isinstance(spacing, (list, tuple)) and len(spacing) == 2:
        for name, value in ((ROW_SPACING, _num(spacing[0])), (COLUMN_SPACING, _num(spacing[1]))):
            if value is not None:
                measurements.append(hd.sr.Measurement(name=name, value=value, unit=MM))
    evaluations = []
    if series.get("contrast") in CONTRAST_CODES:
        evaluations.append(hd.sr.QualitativeEvaluation(CONTRAST_PHASE, CONTRAST_CODES[series["contrast"]]))
    if series.get("acquisition") in ACQUISITION_CODES:
        evaluations.append(hd.sr.QualitativeEvaluation(ACQUISITION_DIM, ACQUISITION_CODES[series["acquisition"]]))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_tracking_uid(uid), identifier=label[:64]),
        finding_type=KIND_CODES.get(str(series.get("kind")), KIND_CODES["OTHER"]),
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
    )


def _source_item(ref: InstanceRef) -> Dataset:
    """A TID 1501 'Source of Measurement' IMAGE item, exactly as highdicom's
    SourceImageForMeasurementGroup writes it, built directly: with hundreds of instances the
    highdicom objects (and their deep copies) cost most of a report's time."""
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121112", "DCM", "Source of Measurement"
    sop = Dataset()
    sop.ReferencedSOPClassUID = ref.sop_class_uid
    sop.ReferencedSOPInstanceUID = ref.sop_instance_uid
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "IMAGE"
    item.ConceptNameCodeSequence = [name]
    item.ReferencedSOPSequence = [sop]
    return item


def _attach_sources(sr: Dataset, counted: Sequence[Mapping[str, Any]], refs: Sequence[InstanceRef]) -> None:
    """Append each counted series' instances to its measurement group (groups are in `counted` order)."""
    container = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    groups = list(container.ContentSequence)
    by_series: dict[str, list[InstanceRef]] = {}
    for r in refs:
        by_series.setdefault(r.series_uid, []).append(r)
    for group, series in zip(groups, counted):
        items = [_source_item(r) for r in by_series.get(series["series_instance_uid"], ())]
        # As a plain element: highdicom's ContentSequence would convert every item to its classes.
        group[CONTENT_SEQUENCE] = DataElement(CONTENT_SEQUENCE, "SQ", DicomSequence([*group.ContentSequence, *items]))


def _quality(verdict: str, counted: Sequence[Mapping[str, Any]]) -> Code:
    """DCM image-usability code for the verdict: nothing usable at all -> unusable."""
    if verdict == "compliant":
        return USABLE_MEETS
    if not counted:
        return UNUSABLE
    return USABLE_DOES_NOT_MEET


def _study_group(data: Mapping[str, Any], counted: Sequence[Mapping[str, Any]]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    verdict = data["verdict"]
    evaluations = [
        hd.sr.QualitativeEvaluation(QUALITY_ASSESSMENT, _quality(verdict, counted)),
        hd.sr.QualitativeEvaluation(VERDICT_NAME, VERDICT_CODES[verdict]),
    ]
    if any(r.get("status") == "fail" for r in open_requirements(data)):
        evaluations.append(hd.sr.QualitativeEvaluation(QUALITY_FINDING, PROTOCOL_NOT_FOLLOWED))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_tracking_uid(data["study_instance_uid"]), identifier="Study protocol compliance"
        ),
        qualitative_evaluations=evaluations,
    )
    for req in open_requirements(data):
        group[0].ContentSequence.append(_finding_item(req))
    return group


def _finding_item(req: Mapping[str, Any]) -> hd.sr.TextContentItem:
    """A failed/unverifiable requirement: its sentence as a TEXT finding, status and id as modifiers."""
    item = hd.sr.TextContentItem(
        name=codes.DCM.Finding,
        value=str(req.get("message") or req.get("id")),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    status = STATUS_CODES.get(str(req.get("status")), STATUS_CODES["unverifiable"])
    item.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(REQUIREMENT_STATUS, status, hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD),
        hd.sr.TextContentItem(REQUIREMENT_ID, str(req.get("id")), hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD),
    ])
    return item


def _observation_context(cfg: Config) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=str(generate_uid(entropy_srcs=["msfollowup-device", cfg.node.ae_title])),
        name=cfg.node.ae_title,
        manufacturer_name=MANUFACTURER,
        model_name="msfollowup",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )




def build_sr(
    cfg: Config,
    data: Mapping[str, Any],
    evidence: Sequence[Dataset],
    refs: Sequence[InstanceRef],
    sop_instance_uid: str,
    series_instance_uid: str,
    version: int,
    predecessor: Dataset | None = None,
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR holding a TID 1500 Measurement Report of one validation result."""
    counted = counted_series(data)
    groups = [_series_group(s, refs) for s in counted]
    groups.append(_study_group(data, counted))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(cfg),
        procedure_reported=_procedure_codes(cfg, data),
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=version,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        previous_versions=[predecessor] if predecessor is not None else None,
        series_description=SR_SERIES_DESCRIPTION,
        software_versions=__version__,
        # UTF-8 whatever the images used: findings and names may hold any character (names are
        # decoded on read and re-encoded on write, so nothing is lost).
        specific_character_set="ISO_IR 192",
    )
    _attach_sources(sr, counted, refs)
    coding = Dataset()
    coding.CodingSchemeDesignator = LOCAL
    coding.CodingSchemeName = LOCAL_SCHEME_NAME
    coding.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [coding]
    return sr



def sr_bytes(sr: hd.sr.ComprehensiveSR) -> bytes:
    buf = BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
