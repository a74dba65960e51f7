"""Scheduling: the next due exam becomes (or replaces) the open item of its patient and purpose; closing."""

from __future__ import annotations

import datetime as dt
import logging
import secrets

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from sqlalchemy import (
    exists,
    select,
)
from sqlalchemy.orm import Session

from msfollowup.site.config import Config
from msfollowup.db import utcnow
from msfollowup.followup.model import DueExam
from msfollowup.site.profiles import Profile, get_profile
from msfollowup.app.worklist.closing import REPLACED, close
from msfollowup.app.worklist.export import _export_path, queue_file
from msfollowup.followup.matching import fold_name
from msfollowup.core.dicomtime import format_da
from msfollowup.db.worklist import (
    CONTRAST_AGENT,
    DEFAULT_START_TIME,
    DISCONTINUED,
    LOCAL_SCHEME,
    LOINC_SCHEME,
    MODALITY,
    SCHEDULED,
    Code,
    Demographics,
    DemographicsLike,
    ScheduledStep,
    WorklistError,
    _open_steps,
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
    sps_status: str = SCHEDULED,
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
    sps.ScheduledProcedureStepStatus = sps_status
    if profile.needs_contrast:
        sps.RequestedContrastAgent = CONTRAST_AGENT
    ds.ScheduledProcedureStepSequence = DicomSequence([sps])
    return ds


def merge_demographics(patient_id: str, plan: DemographicsLike | None, study: DemographicsLike | None) -> Demographics:
    """The patient as the worklist shows them: what the plan says (a user typed it), else what the
    last study said. The character set goes with the name it describes."""
    def first(*values: str | None) -> str | None:
        return next((v for v in values if v), None)

    sources = [d for d in (plan, study) if d is not None]
    name_source = next((d for d in sources if d.patient_name), study)
    return Demographics(
        patient_id=patient_id,
        patient_name=first(*(d.patient_name for d in sources)),
        patient_birth_date=first(*(d.patient_birth_date for d in sources)),
        patient_sex=first(*(d.patient_sex for d in sources)),
        specific_character_set=name_source.specific_character_set if name_source is not None else None,
    )


def _same_request(step: ScheduledStep, due: DueExam, profile: Profile) -> bool:
    """Re-running the plan with nothing changed must keep the item (and its accession number)."""
    return (
        step.profile_id == profile.id
        and step.profile_version == profile.version
        and (step.earliest, step.target, step.latest) == (due.earliest, due.target, due.latest)
        and step.recall == bool(due.recall)
    )


def _same_patient(step: ScheduledStep, demo: DemographicsLike) -> bool:
    stored = step.dataset()
    return (
        step.patient_name == (demo.patient_name or "")
        and step.specific_character_set == demo.specific_character_set
        and stored.get("PatientBirthDate", "") == (demo.patient_birth_date or "")
        and stored.get("PatientSex", "") == (demo.patient_sex or "")
    )


def _set_patient_columns(step: ScheduledStep, demo: DemographicsLike) -> None:
    folded = fold_name(demo.patient_name or "") or ""
    step.patient_name = demo.patient_name or ""
    step.patient_name_fold = folded
    step.patient_name_key = name_key(folded)
    step.specific_character_set = demo.specific_character_set


def _rebuild(session: Session, step: ScheduledStep, demo: DemographicsLike, profile: Profile, reason: str,
             start_date: str) -> None:
    """The same item (accession, UIDs, status) with new demographics or start date: a new version."""
    identifier = build_identifier(
        demographics=demo, profile=profile, study_uid=step.study_uid, accession=step.accession_number,
        requested_procedure_id=step.requested_procedure_id, sps_id=step.sps_id, station_ae=step.station_ae,
        start_date=start_date, reason=reason, recall=step.recall, sps_status=step.sps_status,
    )
    _set_patient_columns(step, demo)
    step.start_date = start_date
    step.identifier = encode_identifier(identifier)
    step.version = (step.version or 1) + 1
    queue_file(session, step)


def schedule_due(
    session: Session,
    due: DueExam,
    demographics: DemographicsLike | None,
    cfg: Config,
    *,
    profile: Profile | None = None,
    today: dt.date | None = None,
    plan_demographics: DemographicsLike | None = None,
) -> ScheduledStep:
    """Make `due` the patient's open item for its purpose, replacing an outdated one.

    `demographics` are the last study's, `plan_demographics` what the patient's plan holds (it wins).
    An item without a patient name is kept but not served until one is known (see `incomplete`).
    The start date is the window target; a target already past would hide the item from every
    "today" query of a modality, so it becomes today (the window stays as the plan computed it).
    """
    if not due.patient_id:
        raise WorklistError("due exam without patient id")
    if due.purpose not in ("brain", "spine"):
        raise WorklistError(f"unknown purpose {due.purpose!r}")
    profile = profile or get_profile(due.profile_id, cfg.validation.protocols_dir)
    today = today or dt.date.today()
    demo = merge_demographics(due.patient_id, plan_demographics, demographics)
    start = format_da(max(due.target, today))
    key = f"{due.patient_id}|{due.purpose}"
    current = session.scalar(select(ScheduledStep).where(ScheduledStep.open_key == key))
    if current is not None:
        if _same_request(current, due, profile):
            if not _same_patient(current, demo) or current.start_date < start:
                _rebuild(session, current, demo, profile, due.reason or "", max(current.start_date, start))
            return current
        close(session, current, DISCONTINUED, REPLACED)
        session.flush()  # the old open_key must be gone before the new row claims it
    accession, rp_id, sps_id = _new_ids(session, today)
    study_uid = generate_uid(prefix=None)
    station = cfg.worklist.station_ae_title
    identifier = build_identifier(
        demographics=demo,
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
        sps_status=SCHEDULED,
        identifier=encode_identifier(identifier),
        version=1,
        created_at=utcnow(),
    )
    _set_patient_columns(step, demo)
    session.add(step)
    session.flush()
    if cfg.worklist.export_dir is not None:
        step.export_file = str(_export_path(cfg.worklist.export_dir, step))
        queue_file(session, step)
    if step.incomplete:
        log.warning("worklist item %s is incomplete and not served: no patient name", step.accession_number)
    log.info("worklist item %s scheduled (%s, %s)", step.accession_number, step.purpose, step.profile_id)
    return step


def move_overdue_to_today(session: Session, today: dt.date) -> list[ScheduledStep]:
    """Open items whose start date has passed start today: a modality asking for today's list must
    see the patients most in need of a scan. The window is kept; nothing is closed."""
    day = format_da(today)
    moved = list(session.scalars(_open_steps().where(ScheduledStep.start_date < day).order_by(ScheduledStep.id)))
    for step in moved:
        ds = step.dataset()
        for sps in ds.get("ScheduledProcedureStepSequence", None) or []:
            sps.ScheduledProcedureStepStartDate = day
        step.start_date = day
        step.identifier = encode_identifier(ds)
        step.version = (step.version or 1) + 1
        queue_file(session, step)
    if moved:
        log.info("worklist: %d overdue item(s) now start today", len(moved))
    return moved


def expire(session: Session, now: dt.datetime, cfg: Config) -> list[ScheduledStep]:
    """The periodic worklist upkeep. An item is never closed for being late (overdue patients are the
    ones who most need the scan): superseded items were closed when the plan change replaced them
    (schedule_due), performed ones by their study or MPPS, others only by a user (`cancel`). What is
    left to do is moving overdue start dates to today; returns the items moved."""
    return move_overdue_to_today(session, now.date())
