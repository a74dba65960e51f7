"""What every report format reads from a validation result: the checked input, the series that
count, the open requirements, the reserved SR identity, and the report errors."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from msfollowup.core.errors import MsFollowupError
from msfollowup.core.vocabulary import VERDICTS
from msfollowup.check.validate import ValidationResult

NOT_COUNTING_KINDS = ("LOCALIZER", "OTHER")


class ReportError(MsFollowupError):
    """A report that cannot be written; the message names the study UID and the problem (no PHI)."""


class UnknownStudyReport(ReportError):
    """No report exists for the requested study."""


@dataclass(frozen=True)
class Reservation:
    """The SR identity reserved in the `reports` table before any file is written."""

    report_id: int
    sop_instance_uid: str
    series_instance_uid: str
    predecessor_sop_instance_uid: str | None
    predecessor_series_instance_uid: str | None
    created_at: dt.datetime


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

