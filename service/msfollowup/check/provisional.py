"""Provisional check of a study still being acquired: what is met so far, what is missing, what fails now.

Pure domain rule (no database, network or files): the caller hands in the classified series that have
settled and the profile the exam is expected to follow. The final check at completion (pipeline.py) is
unchanged; this only reuses `validate.validate_study` on what has arrived, and sorts its requirement
results into the four things a radiographer at the console acts on while the patient is still on the table:

- met: a required series is there and passes its technical checks;
- missing: a required series has not arrived (one more sequence to run);
- failing: a series arrived but fails now, with the reason (e.g. 5 mm FLAIR slices, contrast delay too short);
- uncertain: the headers cannot decide yet (unverifiable);
and timers: a post-contrast series that is still missing or too early gets "contrast given at 10:02, not
before 10:07", so the console can count down.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from msfollowup.dicom.classify import SeriesClassification
from msfollowup.site.profiles import Profile
from msfollowup.check.validate import RequirementResult, validate_study

ProfileSource = Literal["worklist", "plan", "default"]


@dataclass(frozen=True)
class Expected:
    """The protocol the exam should follow and where that came from."""

    profile: Profile
    source: ProfileSource  # the worklist item the study fulfils, else the patient's plan, else the site default


@dataclass(frozen=True)
class StudyContext:
    """What the panel shows about the exam itself (no patient name, ID or birth date unless enabled)."""

    study_uid: str
    scanner: str  # calling AE of the modality, else station name, else "unknown"
    station_name: str | None = None
    accession: str | None = None
    patient_initials: str | None = None
    patient_name: str | None = None  # only when the site enables names on the live page
    complete: bool = False  # the completion sweep closed the study: the final check takes over
    receiving: tuple[dict[str, Any], ...] = ()  # series still arriving: uid, number, description, instances


@dataclass(frozen=True)
class Timer:
    requirement: str  # e.g. "sequence.t1_post"
    label: str
    contrast_start: dt.datetime  # scanner local time, as the headers record it
    not_before: dt.datetime  # contrast start + the profile's minimum delay

    def to_json(self, tz: dt.tzinfo | None) -> dict[str, Any]:
        """`not_before_epoch_ms` makes the countdown independent of the browser's clock format; naive
        scanner times are taken as the node's local time zone (the scanner and node share a site)."""
        aware = self.not_before if self.not_before.tzinfo else self.not_before.replace(tzinfo=tz)
        if aware.tzinfo is None:
            aware = aware.astimezone()
        return {
            "requirement": self.requirement,
            "label": self.label,
            "contrast_start": self.contrast_start.isoformat(),
            "not_before": self.not_before.isoformat(),
            "not_before_epoch_ms": int(aware.timestamp() * 1000),
            "message": f"{self.label}: contrast given at {self.contrast_start:%H:%M}, "
                       f"not before {self.not_before:%H:%M}",
        }


@dataclass(frozen=True)
class ProvisionalResult:
    context: StudyContext
    profile_id: str
    profile_version: str
    profile_label: str
    profile_source: ProfileSource
    series: tuple[dict[str, Any], ...]
    met: tuple[dict[str, Any], ...]
    missing: tuple[dict[str, Any], ...]
    failing: tuple[dict[str, Any], ...]
    uncertain: tuple[dict[str, Any], ...]
    timers: tuple[Timer, ...]
    computed_at: dt.datetime
    tz: dt.tzinfo | None = field(default=None, compare=False)

    def content(self) -> dict[str, Any]:
        """Everything but the computation time: two results with the same content are the same state."""
        c = self.context
        return {
            "study_instance_uid": c.study_uid,
            "scanner": c.scanner,
            "station_name": c.station_name,
            "accession_number": c.accession,
            "patient_initials": c.patient_initials,
            "patient_name": c.patient_name,
            "complete": c.complete,
            "profile": {"id": self.profile_id, "version": self.profile_version, "label": self.profile_label,
                        "source": self.profile_source},
            "series": list(self.series),
            "receiving": list(c.receiving),
            "met": list(self.met),
            "missing": list(self.missing),
            "failing": list(self.failing),
            "uncertain": list(self.uncertain),
            "timers": [t.to_json(self.tz) for t in self.timers],
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.content(), "computed_at": self.computed_at.isoformat()}


def initials(patient_name: str | None) -> str | None:
    """DICOM PN "FAMILY^GIVEN^MIDDLE" -> "G.F." (given first, as a radiographer says it)."""
    if not patient_name:
        return None
    alpha = patient_name.split("=")[0]  # alphabetic group only
    parts = [p.strip() for p in alpha.split("^")]
    family = parts[0] if parts else ""
    given = parts[1] if len(parts) > 1 else ""
    letters = [w[0].upper() for w in (given, family) if w]
    return "".join(f"{x}." for x in letters) or None


def series_summary(s: SeriesClassification) -> dict[str, Any]:
    """The few facts the panel shows (the full facts, with every SOP Instance UID, stay in the final check)."""
    f = s.facts
    return {
        "series_instance_uid": f.series_instance_uid,
        "series_number": f.series_number,
        "description": f.description,
        "kind": s.kind,
        "acquisition": s.acquisition,
        "contrast": s.contrast,
        "derived": s.derived,
        "counts": s.counts,
        "orientation": f.orientation,
        "slice_thickness_mm": f.slice_thickness_mm,
        "instance_count": f.instance_count,
        "acquisition_datetime": f.acquisition_datetime.isoformat() if f.acquisition_datetime else None,
    }


def _item(r: RequirementResult) -> dict[str, Any]:
    return {"id": r.id, "label": r.label, "message": r.message, "series": list(r.series)}


def _is_missing(r: RequirementResult) -> bool:
    """A presence requirement failed with no series chosen: the sequence has not been acquired (yet)."""
    return r.id.startswith("sequence.") and r.status == "fail" and not r.series


def _bolus_start(series: Sequence[SeriesClassification]) -> dt.datetime | None:
    starts = [s.facts.contrast_bolus_start for s in series if s.facts.contrast_bolus_start is not None]
    return min(starts) if starts else None


def _timers(profile: Profile, series: Sequence[SeriesClassification],
            open_ids: set[str]) -> tuple[Timer, ...]:
    """A countdown per post-contrast requirement not yet met, once the contrast start is known."""
    start = _bolus_start(series)
    if start is None:
        return ()
    delay = dt.timedelta(minutes=profile.limits.contrast_delay_min_minutes)
    out: list[Timer] = []
    for rule in profile.sequences:
        if rule.contrast != "post":
            continue
        ids = {f"sequence.{rule.id}", *(f"sequence.{rule.id}.{r}" for r in rule.regions)}
        delay_ids = {"contrast_delay", *(f"contrast_delay.{i.removeprefix('sequence.')}" for i in ids)}
        if ids & open_ids or delay_ids & open_ids:
            out.append(Timer(f"sequence.{rule.id}", rule.label, start, start + delay))
    return tuple(out)


def provisional_check(
    series: Sequence[SeriesClassification],
    expected: Expected,
    context: StudyContext,
    now: dt.datetime | None = None,
    tz: dt.tzinfo | None = None,
) -> ProvisionalResult:
    """Judge what has arrived so far against the expected profile.

    Missing sequences are expected while an exam runs: they are listed, not a verdict. Informational
    items (exam length) are left out: they cannot change what the radiographer does next.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    profile = expected.profile
    result = validate_study(series, profile, None, now=now) if series else None
    reqs = [r for r in (result.requirements if result else ()) if not r.informational]
    if result is None:  # nothing settled yet: every required sequence is still to come
        reqs = list(validate_study([], profile, None, now=now).requirements)
        reqs = [r for r in reqs if r.id.startswith("sequence.")]
    met = tuple(_item(r) for r in reqs if r.status == "pass")
    missing = tuple(_item(r) for r in reqs if _is_missing(r))
    failing = tuple(_item(r) for r in reqs if r.status == "fail" and not _is_missing(r))
    uncertain = tuple(_item(r) for r in reqs if r.status == "unverifiable" and series)
    open_ids = {r.id for r in reqs if r.status != "pass"}
    ordered = sorted(series, key=lambda s: (s.facts.series_number is None, s.facts.series_number or 0))
    return ProvisionalResult(
        context=context,
        profile_id=profile.id,
        profile_version=profile.version,
        profile_label=profile.title,
        profile_source=expected.source,
        series=tuple(series_summary(s) for s in ordered),
        met=met,
        missing=missing,
        failing=failing,
        uncertain=uncertain,
        timers=_timers(profile, series, open_ids),
        computed_at=now,
        tz=tz,
    )
