"""The purpose(s) of a received study (issue 10 item 1): brain, spine, or both, with the evidence.

Order of evidence: the worklist item the study fulfils (its Study Instance UID or accession number names
the purpose and the profile), else the anatomy of its series from the headers (BodyPartExamined, then the
series description, using the body regions of constraints.toml). A study whose purpose cannot be decided
is "undetermined": it is listed for review, never recalled as a failed brain exam.

The anatomy function here is a stand-in until the classifier reports per-series anatomy itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from msfollowup.dicom.classify import SeriesClassification
from msfollowup.site.profiles import Region

BRAIN, SPINE, UNDETERMINED = "brain", "spine", "undetermined"
SPINE_REGIONS = ("cervical", "thoracic", "lumbar")


@dataclass(frozen=True)
class StudyPurpose:
    purpose: str  # brain / spine / undetermined
    evidence: str  # one sentence: why
    profile_id: str | None = None  # the worklist item's profile, when the study fulfils one
    regions: tuple[str, ...] = field(default=())  # anatomy seen: brain, cervical, thoracic, lumbar


def series_anatomy(s: SeriesClassification, regions: Sequence[Region]) -> str | None:
    """brain / cervical / thoracic / lumbar, or None when the headers do not say."""
    by_name = {r.name: r for r in regions}
    for name in ("brain", *SPINE_REGIONS):
        r = by_name.get(name)
        if r is not None and r.matches(s.facts.body_part, s.facts.description or s.facts.protocol_name):
            return name
    spine = by_name.get("spine")
    if spine is not None and spine.matches(s.facts.body_part, s.facts.description) is True:
        return "spine"
    return None


def from_worklist(session: Session, study_uid: str, accession: str | None) -> StudyPurpose | None:
    """The purpose of the worklist item this study fulfils (open or already closed), if any."""
    from msfollowup.db.worklist import ScheduledStep

    conds = [ScheduledStep.study_uid == study_uid]
    if accession:
        conds.append(ScheduledStep.accession_number == accession)
    step = session.scalars(select(ScheduledStep).where(or_(*conds)).order_by(ScheduledStep.id.desc())).first()
    if step is None:
        return None
    how = "Study Instance UID" if step.study_uid == study_uid else "accession number"
    return StudyPurpose(step.purpose, f"fulfils worklist item {step.accession_number} ({how})", step.profile_id)


def from_headers(series: Sequence[SeriesClassification], regions: Sequence[Region]) -> list[StudyPurpose]:
    """One purpose per body part the acquired series show; a combined brain + spine session gives two."""
    seen: dict[str, list[str]] = {}
    for s in series:
        if s.kind in ("LOCALIZER",):
            continue
        where = series_anatomy(s, regions)
        if where is not None:
            seen.setdefault(where, []).append(s.facts.description or s.facts.series_instance_uid)
    out = []
    if BRAIN in seen:
        out.append(StudyPurpose(BRAIN, f"brain anatomy in {len(seen[BRAIN])} series (BodyPartExamined/description)",
                                regions=(BRAIN,)))
    spine = [r for r in (*SPINE_REGIONS, "spine") if r in seen]
    if spine:
        out.append(StudyPurpose(SPINE, f"spine anatomy ({', '.join(spine)}) in "
                                f"{sum(len(seen[r]) for r in spine)} series", regions=tuple(spine)))
    return out or [StudyPurpose(UNDETERMINED, "no series says which body part it shows (BodyPartExamined and "
                                "descriptions are empty or unknown)")]


def study_purposes(session: Session, study_uid: str, accession: str | None,
                   series: Sequence[SeriesClassification], regions: Sequence[Region]) -> list[StudyPurpose]:
    item = from_worklist(session, study_uid, accession)
    headers = from_headers(series, regions)
    if item is None:
        return headers
    # The worklist item decides its own purpose; a second body part acquired in the same session is
    # checked too (a combined brain + spine session is two checks).
    return [item] + [p for p in headers if p.purpose not in (item.purpose, UNDETERMINED)]
