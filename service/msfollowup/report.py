"""Reports of one checked study version: a DICOM SR (TID 1500), a JSON document and an HTML page.

Files live under `<data_dir>/reports/<StudyInstanceUID>/v<version>.{dcm,json,html}` and are never
overwritten by a later version: a re-validated study gets a new SR that names its predecessor.
`write_reports` is the pipeline's entry point. It reserves the SR's UIDs in the `reports` table before
writing anything, so a crash-and-retry rebuilds the *same* SR (same SOP Instance UID) instead of a
second one, and it enqueues the SR for every configured destination (see outbox.py).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import string
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import highdicom as hd
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ComprehensiveSRStorage, generate_uid
from pydicom.valuerep import DA, TM
from sqlalchemy import Integer, String, Text, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from msfollowup import __version__
from msfollowup.config import Config
from msfollowup.db import Base, Database, UTCDateTime, utcnow
from msfollowup.outbox import enqueue
from msfollowup.validate import ValidationResult

log = logging.getLogger(__name__)

SCHEMA_ID = "https://msfollowup.example/schemas/report.schema.json"
SCHEMA_NAME = "msfollowup-report"
SCHEMA_VERSION = "1.0.0"
CONTENT_SEQUENCE = 0x0040A730
SR_SERIES_NUMBER = 9900  # far above scanner series numbers, so the SR sorts last in a viewer
SR_SERIES_DESCRIPTION = "msfollowup protocol compliance"
MANUFACTURER = "msfollowup"
VERDICTS = ("compliant", "non-compliant", "unverifiable")
NOT_COUNTING_KINDS = ("LOCALIZER", "OTHER")

# --- codes --------------------------------------------------------------------------------------
# Standard codes where DICOM has one; a private scheme (99MSFU, declared in the SR header) for the
# rest, so that every coded value in the SR maps back to exactly one value of our JSON.
LOCAL = "99MSFU"
LOCAL_SCHEME_NAME = "msfollowup local codes"


def _local(value: str, meaning: str) -> Code:
    return Code(value, LOCAL, meaning)


KIND_CODES: dict[str, Code] = {
    "T2_FLAIR": _local("T2FLAIR", "T2-weighted FLAIR"),
    "T2": Code("110805", "DCM", "T2 Weighted MR Signal Intensity"),
    "PD": Code("110803", "DCM", "Proton Density Weighted MR Signal Intensity"),
    "T1": Code("110804", "DCM", "T1 Weighted MR Signal Intensity"),
    "DWI": Code("113043", "DCM", "Diffusion weighted"),
    "ADC": Code("113041", "DCM", "Apparent Diffusion Coefficient"),
    "TRACE": _local("DWTRACE", "Diffusion-weighted trace image"),
    "STIR": _local("STIR", "Short tau inversion recovery"),
    "SWI": _local("SWI", "Susceptibility-weighted imaging"),
    "LOCALIZER": Code("121311", "DCM", "Localizer"),
    "OTHER": _local("OTHERSERIES", "Other series"),
}
QUALITY_ASSESSMENT = Code("111050", "DCM", "Quality Assessment")
QUALITY_FINDING = Code("111052", "DCM", "Quality Finding")
PROTOCOL_NOT_FOLLOWED = Code("130570", "DCM", "Protocol not followed")
USABLE_MEETS = Code("111237", "DCM", "Usable - Meets the quality control standard")
USABLE_DOES_NOT_MEET = Code("111236", "DCM", "Usable - Does not meet the quality control standard")
UNUSABLE = Code("111235", "DCM", "Unusable - Quality renders image unusable")
VERDICT_NAME = _local("VERDICT", "Protocol compliance verdict")
VERDICT_CODES: dict[str, Code] = {
    "compliant": _local("COMPLIANT", "Compliant with protocol"),
    "non-compliant": _local("NONCOMPLIANT", "Not compliant with protocol"),
    "unverifiable": _local("UNVERIFIABLE", "Protocol compliance could not be verified"),
}
REQUIREMENT_STATUS = _local("REQSTATUS", "Requirement status")
REQUIREMENT_ID = _local("REQID", "Requirement identifier")
STATUS_CODES: dict[str, Code] = {
    "fail": _local("REQFAIL", "Requirement not met"),
    "unverifiable": _local("REQUNVERIFIABLE", "Requirement could not be verified"),
}
CONTRAST_PHASE = _local("CONTRASTPHASE", "Contrast phase")
CONTRAST_CODES: dict[str, Code] = {
    "pre": _local("PRECONTRAST", "Before contrast administration"),
    "post": _local("POSTCONTRAST", "After contrast administration"),
}
ACQUISITION_DIM = _local("ACQDIM", "Acquisition dimensionality")
ACQUISITION_CODES: dict[str, Code] = {"2D": _local("2D", "2D acquisition"), "3D": _local("3D", "3D acquisition")}
SLICE_THICKNESS = Code("112225", "DCM", "Slice Thickness")
ROW_SPACING = Code("111066", "DCM", "Vertical Pixel Spacing")  # PixelSpacing[0]: between rows
COLUMN_SPACING = Code("111026", "DCM", "Horizontal Pixel Spacing")  # PixelSpacing[1]
FIELD_STRENGTH = Code("130542", "DCM", "Magnetic field strength")
MM = Code("mm", "UCUM", "millimeter")
TESLA = Code("T", "UCUM", "Tesla")

# Patient/study attributes highdicom reads from the first evidence item; type 2 -> may be empty.
_IDENTITY_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)


class ReportError(Exception):
    """A report that cannot be written; the message names the study UID and the problem (no PHI)."""


class UnknownStudyReport(ReportError):
    """No report exists for the requested study."""


class Report(Base):
    """One row per (study, version): the SR's reserved UIDs and where the three files are."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # No foreign key to studies: reports are clinical documents kept after the images are purged.
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sr_series_instance_uid: Mapped[str] = mapped_column(String(64))
    predecessor_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    verdict: Mapped[str | None] = mapped_column(String(16))
    sr_path: Mapped[str | None] = mapped_column(Text)  # relative to <data_dir>
    json_path: Mapped[str | None] = mapped_column(Text)
    html_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    written_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # None: reserved, not yet written

    __table_args__ = (UniqueConstraint("study_uid", "version", name="uq_reports_version"),)


@dataclass(frozen=True)
class ReportRecord:
    study_uid: str
    version: int
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    predecessor_sop_instance_uid: str | None
    verdict: str
    sr_path: Path
    json_path: Path
    html_path: Path
    created_at: dt.datetime


# --- input ---------------------------------------------------------------------------------------


def result_dict(result: ValidationResult | Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a validation result (what study_checks.result_json holds), checked."""
    data = dict(result) if isinstance(result, Mapping) else result.to_json()
    study = data.get("study_instance_uid")
    if not isinstance(study, str) or not study:
        raise ReportError("validation result has no study_instance_uid")
    if data.get("verdict") not in VERDICTS:
        raise ReportError(f"study {study}: validation result has unknown verdict {data.get('verdict')!r}")
    for key in ("series", "requirements"):
        if not isinstance(data.get(key), list):
            raise ReportError(f"study {study}: validation result has no {key} list")
    profile = data.get("profile")
    if not isinstance(profile, Mapping) or not profile.get("id"):
        raise ReportError(f"study {study}: validation result names no profile")
    return data


def counted_series(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Series that count toward the profile: acquired (not derived, not localizer/other) or named
    by a requirement; in the order of the result."""
    named = {uid for r in data["requirements"] for uid in (r.get("series") or ())}
    return [
        s for s in data["series"]
        if s.get("series_instance_uid") in named
        or (not s.get("derived") and s.get("kind") not in NOT_COUNTING_KINDS)
    ]


def open_requirements(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Failed or unverifiable requirements that count (informational items never do)."""
    return [r for r in data["requirements"] if r.get("status") != "pass" and not r.get("informational")]


def _procedure_codes(cfg: Config, data: Mapping[str, Any]) -> list[Code]:
    """The LOINC code(s) of the profile's exam: from the result's profile block, else the profile."""
    profile = data["profile"]
    loinc = profile.get("loinc")
    if not loinc:
        from msfollowup.profiles import ProfileError, get_profile

        try:
            loinc = [l.model_dump() for l in get_profile(profile["id"], cfg.validation.protocols_dir).loinc]
        except ProfileError as exc:
            raise ReportError(f"study {data['study_instance_uid']}: no procedure code: {exc}") from None
    return [Code(str(l["code"]), "LN", str(l["meaning"])) for l in loinc]


# --- evidence ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _InstanceRef:
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def _instance_index(db: Database, study_uid: str) -> dict[str, tuple[str, str, str]]:
    """sop_instance_uid -> (series_uid, sop_class_uid, path) for the study, from the store index."""
    from msfollowup.store import Instance

    with db.session() as s:
        rows = s.execute(
            select(Instance.sop_instance_uid, Instance.series_uid, Instance.sop_class_uid, Instance.path)
            .where(Instance.study_uid == study_uid)
        ).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _evidence_refs(data: Mapping[str, Any], index: Mapping[str, tuple[str, str, str]]) -> list[_InstanceRef]:
    """Every instance of every classified series: the verdict was decided over all of them.

    The series' facts list its instances; without them, the index's instances of that series.
    """
    study = data["study_instance_uid"]
    by_series: dict[str, list[str]] = {}
    for uid, (series_uid, _, _) in index.items():
        by_series.setdefault(series_uid, []).append(uid)
    refs: list[_InstanceRef] = []
    seen: set[str] = set()
    for series in data["series"]:
        facts = series.get("facts") or {}
        series_uid = series["series_instance_uid"]
        classes = list(facts.get("sop_class_uids") or ())
        uids = facts.get("sop_instance_uids") or sorted(by_series.get(series_uid, ()))
        for uid in uids:
            if uid in seen:
                continue
            seen.add(uid)
            if uid in index:
                refs.append(_InstanceRef(index[uid][0], index[uid][1], uid))
            elif len(classes) == 1:
                refs.append(_InstanceRef(series_uid, classes[0], uid))
            else:
                raise ReportError(f"study {study}: instance {uid} is neither indexed nor of a known SOP class")
    if not refs:
        raise ReportError(f"study {study}: validation result references no instance")
    return refs


def _identity(cfg: Config, study_uid: str, refs: Sequence[_InstanceRef],
              index: Mapping[str, tuple[str, str, str]]) -> Dataset:
    """Header (no pixels) of the first stored evidence instance: the SR copies patient/study from it."""
    store = Path(cfg.storage.data_dir) / "store"
    for ref in refs:
        if ref.sop_instance_uid not in index:
            continue
        path = store / index[ref.sop_instance_uid][2]
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            log.warning("study %s: cannot read stored instance %s: %s", study_uid, ref.sop_instance_uid,
                        type(exc).__name__)
            continue
        if _value_or_none(ds, "StudyInstanceUID") != study_uid:
            raise ReportError(f"study {study_uid}: stored instance {ref.sop_instance_uid} is of another study")
        _drop_unparseable(ds, study_uid)
        return ds
    raise ReportError(f"study {study_uid}: no readable stored instance to copy patient/study identity from")


def _parses(kind: Callable[[str], object], value: str) -> bool:
    try:
        kind(value)
    except (ValueError, TypeError):
        return False
    return True


_PARSED_BY_HIGHDICOM: dict[str, Callable[[str], bool]] = {
    "PatientBirthDate": lambda v: _parses(DA, v),
    "StudyDate": lambda v: _parses(DA, v),
    "StudyTime": lambda v: _parses(TM, v),
    "PatientSex": lambda v: v in ("M", "F", "O"),
}


def _value_or_none(ds: Dataset, keyword: str) -> Any:
    """The element's value, None when absent or undecodable (an unknown VR makes pydicom raise)."""
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - NotImplementedError, ValueError ...: whatever the bytes provoke
        return None


def _drop_unparseable(ds: Dataset, study_uid: str) -> None:
    """Make the patient/study attributes highdicom copies safe to copy: present (type 2), with their
    dictionary VR and a value highdicom parses. A malformed one in the images (wrong VR, bad date ...)
    would fail every SR of the study with an error quoting the value; the SR leaves it empty instead
    and the log names the attribute only."""
    for kw in _IDENTITY_TYPE2:
        if kw not in ds:
            setattr(ds, kw, None)
            continue
        parses = _PARSED_BY_HIGHDICOM.get(kw, lambda v: True)
        try:
            elem = ds[kw]  # converting a raw element with an unknown VR raises
            good = elem.VR == dictionary_VR(kw) and (elem.value in (None, "") or parses(str(elem.value)))
        except Exception:  # noqa: BLE001 - NotImplementedError, ValueError ...: whatever the bytes provoke
            good = False
        if good:
            continue
        log.warning("study %s: %s in the images is not a valid value; left empty in the SR", study_uid, kw)
        del ds[kw]
        setattr(ds, kw, None)  # a fresh element: the dictionary VR, empty


def _evidence_datasets(identity: Dataset, study_uid: str, refs: Sequence[_InstanceRef]) -> list[Dataset]:
    """Minimal datasets (four UIDs each) for the evidence sequence; the identity header goes first."""
    out = [identity]
    first = identity.SOPInstanceUID
    for ref in refs:
        if ref.sop_instance_uid == first:
            continue
        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ref.series_uid
        ds.SOPClassUID = ref.sop_class_uid
        ds.SOPInstanceUID = ref.sop_instance_uid
        out.append(ds)
    return out


# --- the SR ---------------------------------------------------------------------------------------


def _tracking_uid(*parts: str) -> str:
    """Deterministic, so the same series keeps its tracking UID across report versions."""
    return str(generate_uid(entropy_srcs=["msfollowup-tracking", *parts]))


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _series_group(series: Mapping[str, Any], refs: Sequence[_InstanceRef]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
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


def _source_item(ref: _InstanceRef) -> Dataset:
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


def _attach_sources(sr: Dataset, counted: Sequence[Mapping[str, Any]], refs: Sequence[_InstanceRef]) -> None:
    """Append each counted series' instances to its measurement group (groups are in `counted` order)."""
    container = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    groups = list(container.ContentSequence)
    by_series: dict[str, list[_InstanceRef]] = {}
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


@dataclass(frozen=True)
class _Reservation:
    report_id: int
    sop_instance_uid: str
    series_instance_uid: str
    predecessor_sop_instance_uid: str | None
    predecessor_series_instance_uid: str | None
    created_at: dt.datetime


def build_sr(
    cfg: Config,
    data: Mapping[str, Any],
    evidence: Sequence[Dataset],
    refs: Sequence[_InstanceRef],
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


# --- JSON and HTML ------------------------------------------------------------------------------


def _identity_json(identity: Dataset) -> dict[str, Any]:
    def text(kw: str) -> str | None:
        value = identity.get(kw)
        return str(value) if value not in (None, "") else None

    return {
        "patient_name": text("PatientName"),
        "patient_id": text("PatientID"),
        "patient_birth_date": text("PatientBirthDate"),
        "patient_sex": text("PatientSex"),
        "accession_number": text("AccessionNumber"),
        "study_date": text("StudyDate"),
        "study_time": text("StudyTime"),
        "study_description": text("StudyDescription"),
        "institution_name": text("InstitutionName"),
    }


def build_json(data: Mapping[str, Any], rec: _Reservation, version: int, identity: Dataset,
               generated_at: dt.datetime) -> dict[str, Any]:
    return {
        "$schema": SCHEMA_ID,
        "schema": {"id": SCHEMA_NAME, "version": SCHEMA_VERSION},
        "report": {
            "generated_at": generated_at.isoformat(),
            "msfollowup_version": __version__,
            "study_instance_uid": data["study_instance_uid"],
            "study_version": version,
            "sr_sop_instance_uid": rec.sop_instance_uid,
            "sr_series_instance_uid": rec.series_instance_uid,
            "predecessor_sr_sop_instance_uid": rec.predecessor_sop_instance_uid,
        },
        "study": _identity_json(identity),
        "result": data,
    }


_VERDICT_TEXT = {
    "compliant": ("COMPLIANT", "The study follows the protocol."),
    "non-compliant": ("NOT COMPLIANT", "The study does not follow the protocol: see the failed requirements below."),
    "unverifiable": ("CANNOT BE VERIFIED", "Some requirements could not be checked from the images' headers."),
}
_STATUS_TEXT = {"pass": "Pass", "fail": "FAIL", "unverifiable": "Cannot verify", "info": "Info"}


def _e(value: Any) -> str:
    """Escaped display text for a radiographer: None -> a dash, numbers short, lists joined,
    mappings as 'key: value' lines (measured values and limits are often small objects)."""
    if value is None or value == "":
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return html.escape(f"{value:g}")
    if isinstance(value, (list, tuple)):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        return (" x " if numeric and len(value) in (2, 3) else ", ").join(_e(v) for v in value) or "&ndash;"
    if isinstance(value, Mapping):
        return "<br>".join(f"{html.escape(str(k).replace('_', ' '))}: {_e(v)}" for k, v in value.items())
    return html.escape(str(value), quote=True)


def _template(name: str) -> string.Template:
    return string.Template(resources.files("msfollowup").joinpath("templates", name).read_text("utf-8"))


def _dicom_date(value: str | None) -> str | None:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _requirement_rows(data: Mapping[str, Any], numbers: Mapping[str, Any]) -> str:
    order = {"fail": 0, "unverifiable": 1, "pass": 2, "info": 3}
    rows = []
    reqs = [(("info" if r.get("informational") else str(r.get("status"))), r) for r in data["requirements"]]
    for status, r in sorted(reqs, key=lambda sr: order.get(sr[0], 4)):
        series = ", ".join(str(numbers.get(u, u)) for u in r.get("series") or ())
        label = f"<b>{_e(r['label'])}</b><br>" if r.get("label") else ""
        rows.append(
            f'<tr class="st-{_e(status)}"><td class="status">{_e(_STATUS_TEXT.get(status, status))}</td>'
            f"<td>{label}{_e(r.get('message'))}<div class=\"rid\">{_e(r.get('id'))}</div></td>"
            f"<td>{_e(r.get('measured'))}</td><td>{_e(r.get('limit'))}</td><td>{_e(series)}</td></tr>"
        )
    return "\n".join(rows) or '<tr><td colspan="5">No requirements were checked.</td></tr>'


def _person_name(value: str | None) -> str | None:
    """DICOM PN 'Family^Given^Middle^Prefix^Suffix' as 'Family, Given Middle' (first group only)."""
    if not value:
        return value
    parts = [p for p in value.split("=")[0].split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:4] if p)
    return f"{family}, {rest}" if rest else family


def _series_rows(data: Mapping[str, Any], counted_uids: set[str]) -> str:
    rows = []
    ordered = sorted(data["series"], key=lambda s: (s.get("series_number") is None, s.get("series_number") or 0))
    for s in ordered:
        f = s.get("facts") or {}
        counts = s.get("series_instance_uid") in counted_uids
        evidence = s.get("evidence") or {}
        details = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in sorted(evidence.items()))
        basis = f"basis: {_e(s.get('basis'))}, confidence {_e(s.get('confidence'))}"
        rows.append(
            f'<tr class="{"counts" if counts else "ignored"}">'
            f"<td>{_e(s.get('series_number'))}</td><td>{_e(s.get('description'))}</td>"
            f"<td><b>{_e(s.get('kind'))}</b>{' (derived)' if s.get('derived') else ''}</td>"
            f"<td>{_e(s.get('acquisition'))}</td><td>{_e(s.get('contrast'))}</td>"
            f"<td>{_e(f.get('slice_thickness_mm'))}</td><td>{_e(f.get('pixel_spacing_mm'))}</td>"
            f"<td>{_e(f.get('field_strength_t'))}</td><td>{_e(f.get('instance_count'))}</td>"
            f"<td>{'yes' if counts else 'no'}</td></tr>"
            f'<tr class="evidence"><td></td><td colspan="9"><details><summary>Why {_e(s.get("kind"))}? '
            f"({basis})</summary><table class=\"kv\">{details or '<tr><td>no evidence recorded</td></tr>'}"
            f"<tr><th>contrast basis</th><td>{_e(s.get('contrast_basis'))}</td></tr>"
            f"<tr><th>Series Instance UID</th><td>{_e(s.get('series_instance_uid'))}</td></tr>"
            f"</table></details></td></tr>"
        )
    return "\n".join(rows) or '<tr><td colspan="10">No series.</td></tr>'


def build_html(doc: Mapping[str, Any]) -> str:
    """The stand-alone page: verdict first, then requirements, then series (evidence on demand)."""
    data = doc["result"]
    meta = doc["report"]
    who = doc["study"]
    verdict = data["verdict"]
    headline, explanation = _VERDICT_TEXT[verdict]
    numbers = {s["series_instance_uid"]: s.get("series_number") for s in data["series"]}
    counted_uids = {s["series_instance_uid"] for s in counted_series(data)}
    profile = data["profile"]
    open_count = len(open_requirements(data))
    counted_reqs = sum(1 for r in data["requirements"] if not r.get("informational"))
    return _template("report.html").substitute(
        title=_e(f"Protocol check: {headline}"),
        verdict_class=_e(verdict),
        verdict=_e(headline),
        verdict_explanation=_e(explanation),
        open_count=_e(f"{open_count} of {counted_reqs} requirements not met or not verifiable"),
        patient_name=_e(_person_name(who.get("patient_name"))),
        patient_id=_e(who.get("patient_id")),
        birth_date=_e(_dicom_date(who.get("patient_birth_date"))),
        study_date=_e(_dicom_date(who.get("study_date"))),
        accession=_e(who.get("accession_number")),
        study_description=_e(who.get("study_description")),
        profile=_e(f"{profile.get('title') or profile.get('id')} ({profile.get('id')} v{profile.get('version')})"),
        requirement_rows=_requirement_rows(data, numbers),
        series_rows=_series_rows(data, counted_uids),
        study_uid=_e(data["study_instance_uid"]),
        study_version=_e(meta["study_version"]),
        reference=_e(data.get("reference_study_uid")),
        checked_at=_e(data.get("checked_at")),
        generated_at=_e(meta["generated_at"]),
        sr_uid=_e(meta["sr_sop_instance_uid"]),
        predecessor=_e(meta.get("predecessor_sr_sop_instance_uid")),
        software=_e(f"msfollowup {meta['msfollowup_version']}"),
    )


# --- files and the reports table --------------------------------------------------------------------


def report_dir(cfg: Config, study_uid: str) -> Path:
    if not study_uid or not all(c.isdigit() or c == "." for c in study_uid) or len(study_uid) > 64:
        raise ReportError(f"not a valid Study Instance UID: {study_uid!r}")
    return Path(cfg.storage.data_dir) / "reports" / study_uid


def _write_atomic(path: Path, payload: bytes, fsync: bool) -> None:
    """temp file -> fsync -> rename -> fsync dir: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _sr_bytes(sr: hd.sr.ComprehensiveSR) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _reserve(db: Database, study_uid: str, version: int) -> _Reservation:
    """The report row of (study, version), created with fresh UIDs if missing (race-safe)."""
    for _ in range(2):
        with db.session() as s:
            row = s.scalars(select(Report).where(Report.study_uid == study_uid, Report.version == version)).first()
            if row is None:
                prev = s.scalars(
                    select(Report)
                    .where(Report.study_uid == study_uid, Report.version < version, Report.written_at.is_not(None))
                    .order_by(Report.version.desc())
                ).first()
                row = Report(
                    study_uid=study_uid,
                    version=version,
                    sr_sop_instance_uid=str(hd.UID()),
                    # All versions of a study's report live in one SR series, instance number = version.
                    sr_series_instance_uid=prev.sr_series_instance_uid if prev else str(hd.UID()),
                    predecessor_sop_instance_uid=prev.sr_sop_instance_uid if prev else None,
                    created_at=utcnow(),
                )
                try:
                    with s.begin_nested():
                        s.add(row)
                except IntegrityError:
                    continue  # another worker reserved it first: read theirs
            prev_series = None
            if row.predecessor_sop_instance_uid:
                prev_series = s.scalars(
                    select(Report.sr_series_instance_uid).where(
                        Report.sr_sop_instance_uid == row.predecessor_sop_instance_uid
                    )
                ).first()
            return _Reservation(
                report_id=row.id,
                sop_instance_uid=row.sr_sop_instance_uid,
                series_instance_uid=row.sr_series_instance_uid,
                predecessor_sop_instance_uid=row.predecessor_sop_instance_uid,
                predecessor_series_instance_uid=prev_series,
                created_at=row.created_at,
            )
    raise ReportError(f"study {study_uid}: cannot reserve report version {version}")


def _record(cfg: Config, row: Report) -> ReportRecord:
    base = Path(cfg.storage.data_dir)
    return ReportRecord(
        study_uid=row.study_uid,
        version=row.version,
        sr_sop_instance_uid=row.sr_sop_instance_uid,
        sr_series_instance_uid=row.sr_series_instance_uid,
        predecessor_sop_instance_uid=row.predecessor_sop_instance_uid,
        verdict=row.verdict or "",
        sr_path=base / (row.sr_path or ""),
        json_path=base / (row.json_path or ""),
        html_path=base / (row.html_path or ""),
        created_at=row.created_at,
    )


def _files_present(cfg: Config, row: Report) -> bool:
    base = Path(cfg.storage.data_dir)
    return all(p is not None and (base / p).is_file() for p in (row.sr_path, row.json_path, row.html_path))


def write_reports(
    db: Database, cfg: Config, study_uid: str, version: int, result: ValidationResult | Mapping[str, Any]
) -> ReportRecord:
    """SR + JSON + HTML of one study version, recorded and queued for delivery. Idempotent."""
    if version < 1:
        raise ReportError(f"study {study_uid}: report version must be >= 1, got {version}")
    data = result_dict(result)
    if data["study_instance_uid"] != study_uid:
        raise ReportError(f"study {study_uid}: validation result is for study {data['study_instance_uid']}")
    folder = report_dir(cfg, study_uid)
    with db.session() as s:
        done = s.scalars(select(Report).where(Report.study_uid == study_uid, Report.version == version)).first()
        if done is not None and done.written_at is not None and _files_present(cfg, done):
            enqueue(s, cfg, done.id, study_uid, version, done.sr_sop_instance_uid, str(done.sr_path))
            return _record(cfg, done)

    res = _reserve(db, study_uid, version)
    index = _instance_index(db, study_uid)
    refs = _evidence_refs(data, index)
    identity = _identity(cfg, study_uid, refs, index)
    predecessor = None
    if res.predecessor_sop_instance_uid and res.predecessor_series_instance_uid:
        predecessor = Dataset()
        predecessor.StudyInstanceUID = study_uid
        predecessor.SeriesInstanceUID = res.predecessor_series_instance_uid
        predecessor.SOPClassUID = ComprehensiveSRStorage
        predecessor.SOPInstanceUID = res.predecessor_sop_instance_uid
    sr = build_sr(cfg, data, _evidence_datasets(identity, study_uid, refs), refs,
                  res.sop_instance_uid, res.series_instance_uid, version, predecessor)
    doc = build_json(data, res, version, identity, utcnow())
    fsync = cfg.storage.fsync
    paths = {ext: folder / f"v{version}.{ext}" for ext in ("dcm", "json", "html")}
    _write_atomic(paths["dcm"], _sr_bytes(sr), fsync)
    _write_atomic(paths["json"], json.dumps(doc, indent=2, ensure_ascii=False, default=str).encode("utf-8"), fsync)
    _write_atomic(paths["html"], build_html(doc).encode("utf-8"), fsync)

    base = Path(cfg.storage.data_dir)
    rel = {ext: str(p.relative_to(base)) for ext, p in paths.items()}
    with db.session() as s:
        row = s.get(Report, res.report_id)
        if row is None:
            raise ReportError(f"study {study_uid}: report row of version {version} vanished")
        row.sr_path, row.json_path, row.html_path = rel["dcm"], rel["json"], rel["html"]
        row.verdict = data["verdict"]
        row.written_at = utcnow()
        enqueue(s, cfg, row.id, study_uid, version, row.sr_sop_instance_uid, rel["dcm"])
        record = _record(cfg, row)
    log.info("report written: study %s v%d verdict %s, SR %s", study_uid, version, data["verdict"],
             res.sop_instance_uid)
    return record


def latest_report(db: Database, cfg: Config, study_uid: str) -> ReportRecord:
    with db.session() as s:
        row = s.scalars(
            select(Report)
            .where(Report.study_uid == study_uid, Report.written_at.is_not(None))
            .order_by(Report.version.desc())
        ).first()
        if row is None:
            raise UnknownStudyReport(f"no report for study {study_uid}")
        return _record(cfg, row)


def list_reports(db: Database, cfg: Config, study_uid: str) -> list[ReportRecord]:
    with db.session() as s:
        rows: Iterable[Report] = s.scalars(
            select(Report)
            .where(Report.study_uid == study_uid, Report.written_at.is_not(None))
            .order_by(Report.version)
        )
        return [_record(cfg, r) for r in rows]
