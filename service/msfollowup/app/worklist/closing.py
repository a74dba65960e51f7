"""How an item leaves the worklist, and only these ways: performed (MPPS COMPLETED or its study
arrived), replaced by a plan change, or cancelled by a user. Every close is audited with its reason.

A study closes the item it fulfils, found by the exact identifiers a modality copies from the
worklist (Study Instance UID, then Accession Number, then Requested Procedure ID); only when the
caller knows the purposes the study serves does "the patient's open item of that purpose whose
window has begun" stand in for them. A study that already fulfilled an item (a later version of it,
or its images after the MPPS) closes nothing else: a brain exam never closes the spine item.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from msfollowup.db import audit
from msfollowup.db import utcnow
from msfollowup.app.worklist.export import queue_file
from msfollowup.core.dicomtime import parse_da
from msfollowup.db.worklist import (
    COMPLETED,
    DISCONTINUED,
    ScheduledStep,
    WorklistError,
    _open_steps,
    encode_identifier,
)

log = logging.getLogger(__name__)

# close_reason values (worklist_steps.close_reason, the audit's "reason").
BY_MPPS = "mpps-completed"
BY_STUDY_UID = "study-uid"
BY_ACCESSION = "study-accession"
BY_PROCEDURE_ID = "study-requested-procedure-id"
BY_WINDOW = "study-purpose-window"
REPLACED = "replaced"
CANCELLED = "cancelled"


class StudyLike(Protocol):
    """What closing needs of an arrived study (store.Study has these)."""

    @property
    def study_uid(self) -> str: ...
    @property
    def accession_number(self) -> str | None: ...
    @property
    def patient_id(self) -> str | None: ...
    @property
    def study_date(self) -> str | None: ...


def set_status(session: Session, step: ScheduledStep, sps_status: str) -> None:
    """The SPS status of the step, in its column, its stored identifier (what C-FIND answers) and its
    exported file alike."""
    if step.sps_status == sps_status:
        return
    step.sps_status = sps_status
    ds = step.dataset()
    for sps in ds.get("ScheduledProcedureStepSequence", None) or []:
        sps.ScheduledProcedureStepStatus = sps_status
    step.identifier = encode_identifier(ds)
    step.version = (step.version or 1) + 1
    queue_file(session, step)


def close(session: Session, step: ScheduledStep, sps_status: str, reason: str, *, study_uid: str | None = None,
          mpps_uid: str | None = None, user: str | None = None, note: str | None = None,
          host: str | None = None) -> None:
    """Take `step` off the worklist (its file too) and audit why."""
    step.open_key = None
    set_status(session, step, sps_status)
    step.closed_at = utcnow()
    step.close_reason = reason
    if study_uid and sps_status == COMPLETED:
        step.fulfilled_by_study = study_uid
    queue_file(session, step)
    detail = {"accession": step.accession_number, "purpose": step.purpose, "reason": reason, "status": sps_status}
    if study_uid:
        detail["study"] = study_uid
    if mpps_uid:
        detail["mpps"] = mpps_uid
    if note:
        detail["note"] = note
    audit.record(session, audit.WORKLIST_CLOSE, object_uid=step.study_uid, patient_id=step.patient_id,
                 actor_user=user, actor_host=host, detail=detail)
    log.info("worklist item %s closed: %s", step.accession_number, reason)


def close_for_study(
    session: Session,
    study: StudyLike | str | None,
    accession: str | None = None,
    patient_id: str | None = None,
    study_date: str | dt.date | None = None,
    *,
    purposes: frozenset[str] | None = None,
    requested_procedure_id: str | None = None,
) -> ScheduledStep | None:
    """A study (version) arrived: close the item it fulfils, if one is recognisable; returns it.

    `study` is the store's Study (or its UID with the other attributes given one by one).
    `purposes` are the purposes the study serves ({"brain"}, {"spine"}); None = unknown, and then only
    an exact identifier closes an item, never the window.
    """
    if study is not None and not isinstance(study, str):
        study_uid: str | None = study.study_uid
        accession, patient_id, study_date = study.accession_number, study.patient_id, study.study_date
    else:
        study_uid = study
    if study_uid:
        done = session.scalar(select(ScheduledStep.accession_number).where(
            ScheduledStep.fulfilled_by_study == study_uid).limit(1))
        if done is not None:
            log.info("study already fulfilled worklist item %s; nothing else closes", done)
            return None
    for reason, column, value in (
        (BY_STUDY_UID, ScheduledStep.study_uid, study_uid),
        (BY_ACCESSION, ScheduledStep.accession_number, accession),
        (BY_PROCEDURE_ID, ScheduledStep.requested_procedure_id, requested_procedure_id),
    ):
        if not value:
            continue
        step = session.scalar(select(ScheduledStep).where(column == value).order_by(ScheduledStep.id).limit(1))
        if step is None:
            continue
        if not step.is_open:  # performed (MPPS came first), replaced or cancelled: nothing else closes
            if step.close_reason == BY_MPPS and step.fulfilled_by_study is None and study_uid:
                step.fulfilled_by_study = study_uid
            log.info("study names worklist item %s, closed before (%s)", step.accession_number, step.close_reason)
            return None
        close(session, step, COMPLETED, reason, study_uid=study_uid)
        return step
    day = parse_da(study_date)
    if purposes is None or not patient_id or day is None:
        return None
    first = None
    for purpose in sorted(purposes):
        # The window's start counts, its end does not: an overdue item stays open until performed.
        candidates = session.scalars(_open_steps().where(
            ScheduledStep.patient_id == patient_id, ScheduledStep.purpose == purpose, ScheduledStep.earliest <= day,
        )).all()
        if len(candidates) == 1:
            close(session, candidates[0], COMPLETED, BY_WINDOW, study_uid=study_uid)
            first = first or candidates[0]
    return first


def cancel(session: Session, accession: str, reason: str, user: str | None = None) -> ScheduledStep:
    """A user takes an item off the worklist (patient moved away, exam done elsewhere)."""
    if not reason.strip():
        raise WorklistError("a cancellation needs a reason")
    step = session.scalar(select(ScheduledStep).where(ScheduledStep.accession_number == accession))
    if step is None:
        raise WorklistError(f"no worklist item with accession number {accession!r}")
    if not step.is_open:
        raise WorklistError(f"worklist item {accession} is already closed ({step.close_reason})")
    close(session, step, DISCONTINUED, CANCELLED, user=user, note=reason.strip())
    return step
