"""Protocol validation: study + profile (+ reference study) -> one result per requirement.

CONTRACT (shared with report.py, plans.py, pipeline.py): RequirementResult, ValidationResult,
validate_study. Profiles come from profiles.py (declarative files in protocols/).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from msfollowup.classify import SeriesClassification

Status = Literal["pass", "fail", "unverifiable"]
Verdict = Literal["compliant", "non-compliant", "unverifiable"]


@dataclass(frozen=True)
class RequirementResult:
    id: str  # stable id, e.g. "sequence.t2_flair", "field_strength", "contrast_delay"
    status: Status
    measured: Any  # JSON-serialisable
    limit: Any  # JSON-serialisable
    series: tuple[str, ...]  # SeriesInstanceUIDs that satisfied or failed it
    message: str  # one sentence a radiographer understands


@dataclass(frozen=True)
class ValidationResult:
    study_instance_uid: str
    profile_id: str
    profile_version: str
    verdict: Verdict
    series: tuple[SeriesClassification, ...]
    requirements: tuple[RequirementResult, ...]
    reference_study_uid: str | None
    checked_at: dt.datetime

    @property
    def missing_requirements(self) -> tuple[RequirementResult, ...]:
        return tuple(r for r in self.requirements if r.status != "pass")

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


def validate_study(
    series: Sequence[SeriesClassification],
    profile: Any,
    reference: Sequence[SeriesClassification] | None = None,
) -> ValidationResult:
    raise NotImplementedError
