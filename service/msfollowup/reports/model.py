"""The JSON report as a pydantic model; its JSON Schema (protocols/report-schema.json) is generated
from this model, never edited by hand: `python -m msfollowup.reports.model > protocols/report-schema.json`.

Schema versioning is semantic: a new optional field is a minor version, a removed or changed field a
major one (docs/report-schema.md). The validation result inside keeps unknown keys (it grows with the
checks); the envelope (schema, report, study) is closed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydicom.dataset import Dataset

from msfollowup import __version__
from msfollowup.core.vocabulary import KindName, StatusName, VerdictName
from msfollowup.reports.content import Reservation

SCHEMA_ID = "https://msfollowup.example/schemas/report.schema.json"
SCHEMA_NAME = "msfollowup-report"
SCHEMA_VERSION = "1.0.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Default of a field that may be absent but never null (pydantic does not validate defaults, so the
# schema says "type string, not required" instead of "string or null").
ABSENT: Any = None
Uid = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]
DateTimeText = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """Keeps keys it does not name. A field typed non-null with `default=None` may be absent but
    never null (pydantic does not validate defaults): the schema then says exactly that."""

    model_config = ConfigDict(extra="allow")


class SchemaInfo(_Closed):
    id: Literal["msfollowup-report"]
    version: Annotated[str, Field(pattern=r"^1\.[0-9]+\.[0-9]+$")]


class ReportInfo(_Closed):
    generated_at: DateTimeText
    msfollowup_version: Annotated[str, Field(min_length=1)]
    study_instance_uid: Uid
    study_version: Annotated[int, Field(ge=1)]
    sr_sop_instance_uid: Uid
    sr_series_instance_uid: Uid
    predecessor_sr_sop_instance_uid: Uid | None


class StudyIdentity(_Closed):
    """Identity copied from the stored images (one header). Clinical data: never log it."""

    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: Annotated[str | None, Field(description="DICOM DA, YYYYMMDD")] = None
    patient_sex: str | None = None
    accession_number: str | None = None
    study_date: Annotated[str | None, Field(description="DICOM DA, YYYYMMDD")] = None
    study_time: str | None = None
    study_description: str | None = None
    institution_name: str | None = None


class LoincCode(_Open):
    code: str
    meaning: str


class ProfileRef(_Open):
    id: Annotated[str, Field(min_length=1)]
    version: Annotated[str, Field(min_length=1)]
    title: str = Field(default=ABSENT)
    loinc: list[LoincCode] = Field(default=ABSENT)


class Summary(_Open):
    pass_: int = Field(default=ABSENT, alias="pass", ge=0)
    fail: int = Field(default=ABSENT, ge=0)
    unverifiable: int = Field(default=ABSENT, ge=0)


class SeriesFactsJson(_Open):
    sop_instance_uids: list[Uid] = Field(default=ABSENT)
    field_strength_t: float | None = None
    slice_thickness_mm: float | None = None
    pixel_spacing_mm: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None


class SeriesJson(_Open):
    series_instance_uid: Uid
    series_number: int | None = None
    description: str | None = None
    kind: KindName
    acquisition: Literal["2D", "3D"] | None = None
    derived: bool
    contrast: Literal["pre", "post", "unknown"] | None = None
    contrast_basis: str | None = None
    anatomy: str | None = Field(default=ABSENT, description="brain, cervical, thoracic, lumbar, spine or other")
    anatomy_basis: str | None = Field(default=ABSENT)
    evidence: dict[str, Any] = Field(default=ABSENT)
    confidence: float = Field(default=ABSENT, ge=0, le=1)
    basis: Literal["physics", "vendor", "description"] = Field(default=ABSENT)
    facts: SeriesFactsJson = Field(default=ABSENT)


class RequirementJson(_Open):
    id: Annotated[str, Field(min_length=1)]
    label: str = Field(default=ABSENT)
    status: StatusName
    informational: bool = Field(default=ABSENT, description="reported, never changes the verdict")
    measured: Any
    limit: Any
    series: list[Uid]
    message: str


class ValidationResultJson(_Open):
    """ValidationResult.to_json(): what was checked and the outcome."""

    study_instance_uid: Uid
    profile: ProfileRef
    verdict: VerdictName
    summary: Summary = Field(default=ABSENT)
    series: list[SeriesJson]
    requirements: list[RequirementJson]
    reference_study_uid: Uid | None
    checked_at: DateTimeText


class ReportDocument(_Closed):
    """One checked version of one study: report metadata, patient/study identity, and the validation
    result."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, title="msfollowup study report")

    schema_url: Annotated[Literal["https://msfollowup.example/schemas/report.schema.json"], Field(alias="$schema")]
    schema_: Annotated[SchemaInfo, Field(alias="schema")]
    report: ReportInfo
    study: StudyIdentity
    result: ValidationResultJson

    def to_json(self) -> dict[str, Any]:
        """The document as written: keys as in the schema, and only the keys the input had (the
        result is passed through unchanged)."""
        out: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return out


def json_schema() -> dict[str, Any]:
    """The report's JSON Schema (2020-12), generated from the model."""
    schema = ReportDocument.model_json_schema(by_alias=True)
    head = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "msfollowup study report",
        "description": (
            f"One checked version of one study: report metadata, patient/study identity, and the validation "
            f"result. Schema version {SCHEMA_VERSION} (semantic versioning: a new optional field is a minor "
            f"version, a removed or changed field a major one). Generated from msfollowup.reports.model; "
            f"see docs/report-schema.md."
        ),
    }
    return {**head, **{k: v for k, v in schema.items() if k not in ("title", "description")}}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def _identity_json(identity: Dataset) -> dict[str, Any]:
    def text(kw: str) -> str | None:
        value = identity.get(kw)
        return str(value) if value not in (None, "") else None

    return {name: text(kw) for name, kw in (
        ("patient_name", "PatientName"), ("patient_id", "PatientID"), ("patient_birth_date", "PatientBirthDate"),
        ("patient_sex", "PatientSex"), ("accession_number", "AccessionNumber"), ("study_date", "StudyDate"),
        ("study_time", "StudyTime"), ("study_description", "StudyDescription"),
        ("institution_name", "InstitutionName"),
    )}


def build_json(data: Mapping[str, Any], rec: Reservation, version: int, identity: Dataset,
               generated_at: dt.datetime) -> dict[str, Any]:
    """The JSON report, checked against the model before it is written (a broken one is a bug here)."""
    doc = ReportDocument.model_validate({
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
        "result": json.loads(json.dumps(data, default=str)),
    })
    return doc.to_json()


if __name__ == "__main__":
    print(schema_text(), end="")
