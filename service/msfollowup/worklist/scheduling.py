"""Scheduling: the next due exam becomes (or replaces) the open item of its patient and purpose; closing."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from sqlalchemy import (
    exists,
    select,
)
from sqlalchemy.orm import Session

from msfollowup.config import Config
from msfollowup.db import utcnow
from msfollowup.plans import DueExam
from msfollowup.profiles import Profile, get_profile
from msfollowup.worklist.export import _export_path, _queue_export, _wl_bytes
from msfollowup.worklist.matching import fold_name
from msfollowup.worklist.model import (
    COMPLETED,
    CONTRAST_AGENT,
    DEFAULT_START_TIME,
    DISCONTINUED,
    LOCAL_SCHEME,
    LOINC_SCHEME,
    MODALITY,
    SCHEDULED,
    Code,
    DemographicsLike,
    ScheduledStep,
    WorklistError,
    _da,
    _open_steps,
    _parse_da,
    encode_identifier,
    name_key,
)

log = logging.getLogger(__name__)


def _loinc_codes(profile: Profile) -> list[Code]:
    return [Code(item.code, LOINC_SCHEME, item.meaning) for item in profile.loinc]


def _new_ids(session: Session, today: dt.date) -> tuple[str, str, str]:
    """(accession, requested procedure id, SPS id): 16 characters, unique, never reused."""
    for _ in range(8):
        token = secrets.token_hex(4).upper()  # 32 random bits per day
        accession = f"MF{today:%y%m%d}{token}"
        taken = session.scalar(select(exists().where(ScheduledStep.accession_number == accession)))
        if not taken:
            return accession, accession, f"SP{today:%y%m%d}{token}"
    raise WorklistError("could not allocate a unique accession number")


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    if len(code.value) <= 16:
        item.CodeValue = code.value
    else:  # SH holds 16 characters; PS3.3 8.8 moves longer codes to Long Code Value
        item.LongCodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning[:64]
    return item


def build_identifier(
    *,
    demographics: DemographicsLike,
    profile: Profile,
    study_uid: str,
    accession: str,
    requested_procedure_id: str,
    sps_id: str,
    station_ae: str,
    start_date: str,
    reason: str,
    recall: bool,
) -> Dataset:
    """The full MWL identifier of one step (every key DCMTK's wlmscpfs requires to be complete)."""
    ds = Dataset()
    charset = demographics.specific_character_set
    if not charset and not (demographics.patient_name or "").isascii():
        charset = "ISO_IR 192"  # a decoded name needs some declared repertoire to be written again
    if charset:
        ds.SpecificCharacterSet = charset.split("\\")
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.PatientName = demographics.patient_name or ""
    ds.PatientID = demographics.patient_id or ""
    ds.PatientBirthDate = demographics.patient_birth_date or ""
    ds.PatientSex = demographics.patient_sex or ""
    ds.StudyInstanceUID = study_uid
    ds.ReferencedStudySequence = DicomSequence()
    ds.ReferencedPatientSequence = DicomSequence()
    ds.RequestedProcedureID = requested_procedure_id
    ds.RequestedProcedureDescription = profile.title[:64]
    ds.RequestedProcedureCodeSequence = DicomSequence([_code_item(c) for c in _loinc_codes(profile)])
    ds.RequestedProcedurePriority = "HIGH" if recall else "ROUTINE"
    ds.ReasonForTheRequestedProcedure = reason[:64]
    sps = Dataset()
    sps.ScheduledStationAETitle = station_ae
    sps.ScheduledProcedureStepStartDate = start_date
    sps.ScheduledProcedureStepStartTime = DEFAULT_START_TIME
    sps.Modality = MODALITY
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepDescription = (("RECALL " if recall else "") + profile.title)[:64]
    sps.ScheduledProtocolCodeSequence = DicomSequence(
        [_code_item(Code(profile.worklist_code, LOCAL_SCHEME, profile.title))]
    )
    sps.ScheduledProcedureStepID = sps_id
    sps.ScheduledProcedureStepStatus = SCHEDULED
    if profile.needs_contrast:
        sps.RequestedContrastAgent = CONTRAST_AGENT
    ds.ScheduledProcedureStepSequence = DicomSequence([sps])
    return ds


def _same_request(step: ScheduledStep, due: DueExam, profile: Profile, demo: DemographicsLike) -> bool:
    """Re-running the plan with nothing changed must keep the item (and its accession number)."""
    stored = step.dataset()
    return (
        step.profile_id == profile.id
        and step.profile_version == profile.version
        and (step.earliest, step.target, step.latest) == (due.earliest, due.target, due.latest)
        and step.recall == bool(due.recall)
        and step.patient_name == (demo.patient_name or "")
        and step.specific_character_set == demo.specific_character_set
        and stored.get("PatientBirthDate", "") == (demo.patient_birth_date or "")
        and stored.get("PatientSex", "") == (demo.patient_sex or "")
    )


def schedule_due(
    session: Session,
    due: DueExam,
    demographics: DemographicsLike,
    cfg: Config,
    *,
    profile: Profile | None = None,
    today: dt.date | None = None,
) -> ScheduledStep:
    """Make `due` the patient's open item for its purpose, replacing an outdated one.

    The start date is the window target; a target already past would hide the item from every
    "today" query of a modality, so it becomes today.
    """
    if not due.patient_id:
        raise WorklistError("due exam without patient id")
    if due.purpose not in ("brain", "spine"):
        raise WorklistError(f"unknown purpose {due.purpose!r}")
    profile = profile or get_profile(due.profile_id, cfg.validation.protocols_dir)
    today = today or dt.date.today()
    key = f"{due.patient_id}|{due.purpose}"
    current = session.scalar(select(ScheduledStep).where(ScheduledStep.open_key == key))
    if current is not None:
        if _same_request(current, due, profile, demographics):
            return current
        _close(session, current, DISCONTINUED, "replaced")
        session.flush()  # the old open_key must be gone before the new row claims it
    accession, rp_id, sps_id = _new_ids(session, today)
    study_uid = generate_uid(prefix=None)
    start = _da(max(due.target, today))
    station = cfg.worklist.station_ae_title
    identifier = build_identifier(
        demographics=demographics,
        profile=profile,
        study_uid=study_uid,
        accession=accession,
        requested_procedure_id=rp_id,
        sps_id=sps_id,
        station_ae=station,
        start_date=start,
        reason=due.reason or "",
        recall=bool(due.recall),
    )
    step = ScheduledStep(
        open_key=key,
        purpose=due.purpose,
        profile_id=profile.id,
        profile_version=profile.version,
        recall=bool(due.recall),
        based_on_study=due.based_on_study,
        earliest=due.earliest,
        target=due.target,
        latest=due.latest,
        study_uid=study_uid,
        accession_number=accession,
        requested_procedure_id=rp_id,
        sps_id=sps_id,
        station_ae=station,
        modality=MODALITY,
        start_date=start,
        start_time=DEFAULT_START_TIME,
        patient_id=due.patient_id,
        patient_name=demographics.patient_name or "",
        patient_name_fold=fold_name(demographics.patient_name or ""),
        patient_name_key=name_key(fold_name(demographics.patient_name or "") or ""),
        specific_character_set=demographics.specific_character_set,
        sps_status=SCHEDULED,
        identifier=encode_identifier(identifier),
        created_at=utcnow(),
    )
    session.add(step)
    session.flush()
    if cfg.worklist.export_dir is not None:
        step.export_file = str(_export_path(cfg.worklist.export_dir, step))
        _queue_export(session, ("write", Path(step.export_file), _wl_bytes(step)))
    log.info("worklist item %s scheduled (%s, %s)", step.accession_number, step.purpose, step.profile_id)
    return step


def _close(session: Session, step: ScheduledStep, sps_status: str, reason: str) -> None:
    step.open_key = None
    step.sps_status = sps_status
    step.closed_at = utcnow()
    step.close_reason = reason
    if step.export_file:
        _queue_export(session, ("remove", Path(step.export_file), None))
    log.info("worklist item %s closed: %s", step.accession_number, reason)



def close_for_study(
    session: Session,
    study_uid: str | None,
    accession: str | None,
    patient_id: str | None,
    study_date: str | dt.date | None,
) -> ScheduledStep | None:
    """A study arrived (with or without MPPS): close the step it fulfils, if one is recognisable.

    StudyInstanceUID or AccessionNumber identify the step; otherwise the patient's single open item
    whose window contains the study date. Two candidates (brain and spine) are ambiguous: none closes.
    """
    step = None
    if study_uid:
        step = session.scalar(_open_steps().where(ScheduledStep.study_uid == study_uid))
    if step is None and accession:
        step = session.scalar(_open_steps().where(ScheduledStep.accession_number == accession))
    day = _parse_da(study_date)
    if step is None and patient_id and day is not None:
        candidates = session.scalars(
            _open_steps().where(
                ScheduledStep.patient_id == patient_id,
                ScheduledStep.earliest <= day,
                ScheduledStep.latest >= day,
            )
        ).all()
        if len(candidates) == 1:
            step = candidates[0]
        elif candidates:
            log.info("study matches %d open worklist items by window; none closed", len(candidates))
    if step is not None:
        _close(session, step, COMPLETED, "study")
    return step


def expire(session: Session, now: dt.datetime, cfg: Config) -> list[ScheduledStep]:
    """Close items whose window ended more than `expire_days` ago."""
    cutoff = now.date() - dt.timedelta(days=cfg.worklist.expire_days)
    stale = session.scalars(_open_steps().where(ScheduledStep.latest < cutoff)).all()
    for step in stale:
        _close(session, step, DISCONTINUED, "expired")
    return list(stale)


