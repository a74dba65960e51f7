"""MPPS: what the modality performed; COMPLETED closes the step and asks for completion of the study."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from sqlalchemy import (
    select,
    update,
)
from sqlalchemy.orm import Session

from msfollowup.db import utcnow
from msfollowup.files.store import Study
from msfollowup.app.worklist.closing import BY_MPPS, close, set_status
from msfollowup.db.worklist import (
    COMPLETED,
    PPS_COMPLETED,
    PPS_DISCONTINUED,
    PPS_IN_PROGRESS,
    SCHEDULED,
    STARTED,
    PerformedStep,
    PerformedStepInstance,
    PerformedStepStudy,
    ScheduledStep,
    mpps_completed,
)

log = logging.getLogger(__name__)


def _scheduled_refs(attrs: Dataset) -> list[Dataset]:
    return list(attrs.get("ScheduledStepAttributesSequence", None) or [])


def _referenced_studies(attrs: Dataset) -> list[str]:
    uids = [str(item.get("StudyInstanceUID", "") or "") for item in _scheduled_refs(attrs)]
    return sorted({u for u in uids if u})


def _step_for(session: Session, attrs: Dataset) -> ScheduledStep | None:
    """Our step an MPPS performs: by StudyInstanceUID, AccessionNumber or SPS ID of its references."""
    for item in _scheduled_refs(attrs):
        for column, key in (
            (ScheduledStep.study_uid, "StudyInstanceUID"),
            (ScheduledStep.accession_number, "AccessionNumber"),
            (ScheduledStep.sps_id, "ScheduledProcedureStepID"),
        ):
            value = str(item.get(key, "") or "")
            if value:
                step = session.scalar(select(ScheduledStep).where(column == value))
                if step is not None:
                    return step
    return None


def create_mpps(session: Session, uid: str, attrs: Dataset, calling_ae: str | None = None) -> PerformedStep:
    """N-CREATE: record the MPPS IN PROGRESS and mark its scheduled step as started."""
    now = utcnow()
    step = _step_for(session, attrs)
    pps = PerformedStep(
        sop_instance_uid=uid,
        status=PPS_IN_PROGRESS,
        step_id=step.id if step is not None else None,
        calling_ae=(calling_ae or "").strip() or None,
        attributes_json=attrs.to_json(),
        created_at=now,
        updated_at=now,
    )
    session.add(pps)
    session.flush()
    _link_studies(session, uid, attrs)
    _link_instances(session, uid, attrs)
    if step is not None:
        step.mpps_uid = uid
        if step.is_open:
            set_status(session, step, STARTED)  # C-FIND answers and the export say so too
    log.info("MPPS %s in progress (scheduled: %s)", uid, step is not None)
    return pps


def _link_studies(session: Session, uid: str, attrs: Dataset) -> list[str]:
    studies = _referenced_studies(attrs)
    known = set(session.scalars(select(PerformedStepStudy.study_uid).where(PerformedStepStudy.mpps_uid == uid)))
    for study_uid in studies:
        if study_uid not in known:
            session.add(PerformedStepStudy(mpps_uid=uid, study_uid=study_uid))
    return studies


def set_mpps(session: Session, pps: PerformedStep, mods: Dataset) -> None:
    """N-SET on an IN PROGRESS instance: merge the modifications, act on COMPLETED/DISCONTINUED."""
    attrs = Dataset.from_json(pps.attributes_json)
    for elem in mods:
        if elem.tag.group not in (0x0000, 0x0002):
            attrs[elem.tag] = elem  # N-SET replaces whole attributes, sequences included
    pps.attributes_json = attrs.to_json()
    pps.updated_at = utcnow()
    new_status = str(attrs.get("PerformedProcedureStepStatus", "") or PPS_IN_PROGRESS)
    pps.status = new_status
    studies = _link_studies(session, pps.sop_instance_uid, attrs)
    step = session.get(ScheduledStep, pps.step_id) if pps.step_id is not None else None
    # Every N-SET, not only the final one: the series listed so far settle for the live check.
    _link_instances(session, pps.sop_instance_uid, attrs)
    if new_status == PPS_COMPLETED:
        if step is not None and step.is_open:
            # The study it names fulfilled the item: its images (any version) close nothing else.
            performed = step.study_uid if step.study_uid in studies or not studies else studies[0]
            close(session, step, COMPLETED, BY_MPPS, study_uid=performed, mpps_uid=pps.sop_instance_uid)
        _request_completion(session, studies)
    elif new_status == PPS_DISCONTINUED and step is not None and step.is_open:
        set_status(session, step, SCHEDULED)  # the exam was not done: the item stays on the worklist
    log.info("MPPS %s now %s", pps.sop_instance_uid, new_status)


def _link_instances(session: Session, uid: str, attrs: Dataset) -> None:
    """Remember the instances the MPPS lists now, with their series, from every Performed Series item.

    N-SET replaces the whole Performed Series Sequence, so the links follow its latest value: an
    instance no longer listed is unlinked (else it could hold the study open forever)."""
    listed: dict[str, str | None] = {}
    for series in attrs.get("PerformedSeriesSequence", None) or []:
        series_uid = str(series.get("SeriesInstanceUID", "") or "").strip() or None
        for key in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in series.get(key, None) or []:
                sop = str(ref.get("ReferencedSOPInstanceUID", "") or "").strip()
                if sop:
                    listed[sop] = series_uid
    known = {row.sop_instance_uid: row for row in
             session.scalars(select(PerformedStepInstance).where(PerformedStepInstance.mpps_uid == uid))}
    for sop, row in known.items():
        if sop not in listed:
            session.delete(row)
        elif row.series_uid != listed[sop]:
            row.series_uid = listed[sop]
    session.add_all(PerformedStepInstance(mpps_uid=uid, sop_instance_uid=sop, series_uid=listed[sop])
                    for sop in sorted(set(listed) - set(known)))


def _request_completion(session: Session, study_uids: list[str]) -> None:
    """Studies in the index whose listed instances are all there complete now; the others when the
    last one arrives (the completion sweep asks `mpps_completed`)."""
    if not study_uids:
        return
    session.flush()
    session.execute(
        update(Study)
        .where(Study.study_uid.in_(study_uids), mpps_completed(Study.study_uid))
        .values(complete_requested=True)
    )


