"""What a check produces: one RequirementResult per requirement, the ValidationResult of a study, and the
small vocabulary the judging modules share (statuses, a required sequence in a region, display helpers)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from msfollowup.dicom.classify import SeriesClassification, SeriesFacts
from msfollowup.site.profiles import Region, SequenceRule

Status = Literal["pass", "fail", "unverifiable"]
Verdict = Literal["compliant", "non-compliant", "unverifiable"]

# Proton gyromagnetic ratio / 2 pi: physics, not site policy, so it lives here and not in protocols/.
GYROMAGNETIC_MHZ_PER_T = 42.577
_RANK: dict[str, int] = {"pass": 0, "unverifiable": 1, "fail": 2}


@dataclass(frozen=True)
class RequirementResult:
    id: str  # stable id, e.g. "sequence.t2_flair", "field_strength", "contrast_delay"
    status: Status
    measured: Any  # JSON-serialisable
    limit: Any  # JSON-serialisable
    series: tuple[str, ...]  # SeriesInstanceUIDs that satisfied or failed it
    message: str  # one sentence a radiographer understands
    informational: bool = False  # reported, never changes the verdict
    label: str = ""  # what was required, e.g. "T2 FLAIR (or PD)"
    # "recommended": a failure is a warning shown in the report, never a recall (informational is then set)
    severity: str = "required"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "status": self.status,
            "informational": self.informational,
            "severity": self.severity,
            "measured": self.measured,
            "limit": self.limit,
            "series": list(self.series),
            "message": self.message,
        }


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
    profile_summary: dict[str, Any] = field(default_factory=dict, compare=False)  # Profile.summary()

    @property
    def missing_requirements(self) -> tuple[RequirementResult, ...]:
        return tuple(r for r in self.requirements if r.status != "pass" and not r.informational)

    def to_json(self) -> dict[str, Any]:
        counts = {s: sum(1 for r in self.requirements if r.status == s and not r.informational)
                  for s in ("pass", "fail", "unverifiable")}
        return {
            "study_instance_uid": self.study_instance_uid,
            "profile": {"id": self.profile_id, "version": self.profile_version, **self.profile_summary},
            "verdict": self.verdict,
            "summary": counts,
            "series": [s.to_json() for s in self.series],
            "requirements": [r.to_json() for r in self.requirements],
            "reference_study_uid": self.reference_study_uid,
            "checked_at": self.checked_at.isoformat(),
        }


# --- small helpers ------------------------------------------------------------------------------


def _n(x: float) -> str:
    """A number as a radiographer writes it: 3, 1.3, 0.94."""
    return f"{round(x, 2):g}"


def _name(s: SeriesClassification) -> str:
    num = s.facts.series_number if s.facts.series_number is not None else "?"
    return f'series {num} "{s.facts.description}"' if s.facts.description else f"series {num}"


def _names(series: Iterable[SeriesClassification]) -> str:
    return ", ".join(_name(s) for s in series)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(abs(seconds))), 60)
    return f"{m} min {s} s"


def _acquisition(s: SeriesClassification) -> str | None:
    if s.acquisition:
        return s.acquisition
    raw = (s.facts.mr_acquisition_type or "").strip().upper()
    return raw if raw in ("2D", "3D") else None


def field_strength_t(f: SeriesFacts) -> tuple[float | None, str]:
    """Field strength in tesla and where it came from; ImagingFrequency stands in when it is missing."""
    from_frequency = bool(getattr(f, "field_strength_from_frequency", False))  # summarize() did the fallback
    if f.field_strength_t and not (from_frequency and f.imaging_frequency_mhz):
        return f.field_strength_t, "MagneticFieldStrength"
    if f.imaging_frequency_mhz:
        return f.imaging_frequency_mhz / GYROMAGNETIC_MHZ_PER_T, f"ImagingFrequency {_n(f.imaging_frequency_mhz)} MHz"
    return None, ""


def _worst(statuses: Iterable[Status]) -> Status:
    out: Status = "pass"
    for s in statuses:
        if _RANK[s] > _RANK[out]:
            out = s
    return out


# --- requirement instances and candidate choice ---------------------------------------------------


@dataclass(frozen=True)
class _Instance:
    """One required sequence in one region (or anywhere when the rule has no regions)."""

    rule: SequenceRule
    region: Region | None
    exam: Region | None = None  # the profile's body region (brain): filters out series of other regions
    others: tuple[Region, ...] = ()

    @property
    def key(self) -> str:
        return self.rule.id + (f".{self.region.name}" if self.region else "")

    @property
    def label(self) -> str:
        return self.rule.label + (f" ({self.region.label})" if self.region else "")
