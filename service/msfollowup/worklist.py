"""Modality Worklist: the next due exam as a Scheduled Procedure Step, served by C-FIND, closed by MPPS.

One open step per patient and purpose (brain / spine). The full MWL identifier of a step is stored as
DICOM JSON; the keys modalities really query (station AE, date, patient name/ID, accession) are columns,
so the SQL narrows the candidates and Python applies the exact PS3.4 C.2.2.2 matching to the few left.

MPPS (N-CREATE / N-SET) tracks what the modality performed: COMPLETED closes the step and asks the
completion loop to finish the referenced study now instead of waiting for `stable_seconds`.

Departments with their own worklist server get every open step as a DCMTK/Orthanc `.wl` file.
"""

from __future__ import annotations

import codecs
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
from io import BytesIO
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from pydicom import dcmwrite
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)
from sqlalchemy import (
    ColumnElement,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SQLColumnExpression,
    String,
    Text,
    UniqueConstraint,
    and_,
    event,
    exists,
    or_,
    select,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Mapped, Session, mapped_column

from msfollowup.config import Config
from msfollowup.db import Base, Database, UTCDateTime, utcnow
from msfollowup.plans import DueExam
from msfollowup.profiles import Profile, get_profile
from msfollowup.store import Instance, Study

log = logging.getLogger(__name__)

SUPPORTED_CONTEXTS: list[str] = [ModalityWorklistInformationFind, ModalityPerformedProcedureStep]

LOCAL_SCHEME = "99MSFU"  # coding scheme designator of our protocol codes (profile ids)
LOINC_SCHEME = "LN"
MODALITY = "MR"
# The plan gives a day, not a slot; midnight means "from the start of that day". The time is a
# required (type 1) return key, so it cannot be left empty.
DEFAULT_START_TIME = "000000"
CONTRAST_AGENT = "Gadolinium-based contrast agent"
EXPORT_PREFIX = "MSFU-"  # only files with this prefix are ours to replace or remove in export_dir
NAME_KEY_CHARS = 32  # characters of the folded patient name kept in the prefix-search key
LOCKFILE = "lockfile"  # DCMTK wlmscpfs: a file of this name in each AE folder, locked while in use

# Step states (SPS Status defined terms, PS3.3 C.4.10) and why a step was closed.
SCHEDULED, STARTED, COMPLETED, DISCONTINUED = "SCHEDULED", "STARTED", "COMPLETED", "DISCONTINUED"
# MPPS states (PS3.3 C.4.14).
PPS_IN_PROGRESS, PPS_COMPLETED, PPS_DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"

# DIMSE statuses (PS3.4 K.4.1.1.4 for C-FIND, F.7.2 for MPPS, PS3.7 C for the general ones).
ST_SUCCESS = 0x0000
ST_PENDING = 0xFF00
ST_PENDING_WARNING = 0xFF01  # an optional key we do not hold was ignored for matching
ST_CANCEL = 0xFE00
ST_IDENTIFIER_MISMATCH = 0xA900
ST_UNABLE_TO_PROCESS = 0xC000
ST_SOP_CLASS_NOT_SUPPORTED = 0x0122
ST_INVALID_ATTRIBUTE_VALUE = 0x0106
ST_PROCESSING_FAILURE = 0x0110
ST_DUPLICATE_INSTANCE = 0x0111
ST_NO_SUCH_INSTANCE = 0x0112
ST_MISSING_ATTRIBUTE = 0x0120
ERROR_ID_NO_LONGER_UPDATABLE = 0xA710  # PS3.4 Table F.7.2-2


# --- what the neighbours hand over -----------------------------------------------------------


class DemographicsLike(Protocol):
    """Patient attributes of the last study: store.Study and Demographics both have these."""

    @property
    def patient_id(self) -> str | None: ...
    @property
    def patient_name(self) -> str | None: ...
    @property
    def patient_birth_date(self) -> str | None: ...
    @property
    def patient_sex(self) -> str | None: ...
    @property
    def specific_character_set(self) -> str | None: ...


@dataclass(frozen=True)
class Demographics:
    """For callers without a Study row at hand."""

    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    specific_character_set: str | None = None


@dataclass(frozen=True)
class Code:
    value: str
    scheme: str
    meaning: str


class WorklistError(ValueError):
    """Input that cannot become a worklist item; the message never holds patient data."""


# --- tables ----------------------------------------------------------------------------------


class ScheduledStep(Base):
    """One Requested Procedure with its single Scheduled Procedure Step."""

    __tablename__ = "worklist_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # "<patient>|<purpose>" while open, NULL once closed: the unique index makes a second open item
    # for the same patient and purpose impossible on every backend (NULLs never collide).
    open_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    purpose: Mapped[str] = mapped_column(String(16))
    profile_id: Mapped[str] = mapped_column(String(64))
    profile_version: Mapped[str | None] = mapped_column(String(32))
    recall: Mapped[bool] = mapped_column(default=False)
    based_on_study: Mapped[str | None] = mapped_column(String(64))
    earliest: Mapped[dt.date] = mapped_column(Date)
    target: Mapped[dt.date] = mapped_column(Date)
    latest: Mapped[dt.date] = mapped_column(Date, index=True)
    # Matching keys, as they appear in the identifier.
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str] = mapped_column(String(16), unique=True)
    requested_procedure_id: Mapped[str] = mapped_column(String(16))
    sps_id: Mapped[str] = mapped_column(String(16), index=True)
    station_ae: Mapped[str] = mapped_column(String(16))
    modality: Mapped[str] = mapped_column(String(16))
    start_date: Mapped[str] = mapped_column(String(8))  # DICOM DA
    start_time: Mapped[str] = mapped_column(String(16))  # DICOM TM
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))  # as received (decoded)
    patient_name_fold: Mapped[str | None] = mapped_column(String(324))  # fold_name(): what PN matching sees
    patient_name_key: Mapped[str | None] = mapped_column(String(2 * 4 * NAME_KEY_CHARS), index=True)
    specific_character_set: Mapped[str | None] = mapped_column(String(128))
    sps_status: Mapped[str] = mapped_column(String(16), default=SCHEDULED)
    identifier: Mapped[bytes] = mapped_column(LargeBinary)  # full MWL identifier, see encode_identifier
    export_file: Mapped[str | None] = mapped_column(Text)  # the .wl file written for it, if any
    mpps_uid: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    close_reason: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (Index("ix_worklist_steps_station_date", "station_ae", "start_date"),)

    @property
    def is_open(self) -> bool:
        return self.open_key is not None

    def dataset(self) -> Dataset:
        return decode_identifier(self.identifier)

    def to_json(self) -> dict[str, Any]:
        """Operator view (CLI): identifiers and dates, no patient name."""
        return {
            "accession_number": self.accession_number,
            "patient_id": self.patient_id,
            "purpose": self.purpose,
            "profile_id": self.profile_id,
            "recall": self.recall,
            "station_ae": self.station_ae,
            "start_date": self.start_date,
            "window": [self.earliest.isoformat(), self.target.isoformat(), self.latest.isoformat()],
            "sps_status": self.sps_status,
            "study_uid": self.study_uid,
            "open": self.is_open,
            "close_reason": self.close_reason,
        }


class PerformedStep(Base):
    """One MPPS instance as created (N-CREATE) and updated (N-SET) by a modality."""

    __tablename__ = "worklist_mpps"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    step_id: Mapped[int | None] = mapped_column(ForeignKey("worklist_steps.id"), index=True)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    attributes_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class PerformedStepStudy(Base):
    """Studies an MPPS refers to; kept even when the study has not arrived yet."""

    __tablename__ = "worklist_mpps_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mpps_uid: Mapped[str] = mapped_column(ForeignKey("worklist_mpps.sop_instance_uid"))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)

    __table_args__ = (UniqueConstraint("mpps_uid", "study_uid", name="uq_worklist_mpps_study"),)


class PerformedStepInstance(Base):
    """Instances a COMPLETED MPPS lists (Performed Series Sequence): the study is whole once all arrived."""

    __tablename__ = "worklist_mpps_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mpps_uid: Mapped[str] = mapped_column(ForeignKey("worklist_mpps.sop_instance_uid"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))

    __table_args__ = (UniqueConstraint("mpps_uid", "sop_instance_uid", name="uq_worklist_mpps_instance"),)


# --- scheduling ------------------------------------------------------------------------------


def encode_identifier(ds: Dataset) -> bytes:
    """Explicit VR little endian, no file meta. Binary, not JSON: pydicom reads it lazily, so
    matching converts only the elements a query asks for (about 4x faster than from_json)."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def decode_identifier(data: bytes) -> Dataset:
    return read_dataset(BytesIO(data), is_implicit_VR=False, is_little_endian=True)


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _parse_da(value: str | dt.date | None) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def fold_name(name: str | None) -> str | None:
    """The form PN matching compares: case-insensitive, without empty trailing components."""
    if name is None:
        return None
    return name.rstrip("^= ").casefold()


def name_key(folded: str) -> str:
    """Hex of the first characters of a folded name, for prefix searches through an index.

    A name prefix becomes the key range [hex(prefix), hex(prefix) + "g"). Hex digits sort the same
    under every collation, so the range is exact on PostgreSQL's locale collations too, where
    neither LIKE nor a plain text range on the name itself may use (or trust) the index.
    """
    return folded[:NAME_KEY_CHARS].encode("utf-8").hex()


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


def _open_steps() -> Any:
    return select(ScheduledStep).where(ScheduledStep.open_key.is_not(None))


def close_for_study(
    session: Session,
    study_uid: str | None,
    accession: str | None,
    patient_id: str | None,
    study_date: str | dt.date | None,
    purposes: frozenset[str] | None = None,
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


def open_items(session: Session) -> list[ScheduledStep]:
    return list(session.scalars(_open_steps().order_by(ScheduledStep.start_date, ScheduledStep.id)))


def mpps_completed(study_uid: SQLColumnExpression[str] | str) -> ColumnElement[bool]:
    """SQL EXISTS: a modality reported (MPPS COMPLETED) this study done, and every instance it lists
    has arrived. MPPS often comes before the images; completing on its word alone would check a
    study with one image. An MPPS listing no instances is taken at its word.

    Takes a column (correlated, e.g. `Study.study_uid` in the completion sweep) or a UID.
    """
    missing = exists().where(
        PerformedStepInstance.mpps_uid == PerformedStep.sop_instance_uid,
        ~exists().where(Instance.sop_instance_uid == PerformedStepInstance.sop_instance_uid),
    )
    return exists().where(
        PerformedStepStudy.study_uid == study_uid,
        PerformedStepStudy.mpps_uid == PerformedStep.sop_instance_uid,
        PerformedStep.status == PPS_COMPLETED,
        ~missing,
    )


def completion_requested(session: Session, study_uid: str) -> bool:
    """Did a modality report (MPPS COMPLETED) that this study is finished?"""
    return bool(session.scalar(select(mpps_completed(study_uid))))


# --- matching (PS3.4 C.2.2.2) -----------------------------------------------------------------

_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "DA", "TM", "DT"})
_DA_RE = re.compile(r"^\d{8}$")
_TM_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DT_RE = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_SPS_SEQ = Tag("ScheduledProcedureStepSequence")
_CHARSET = Tag("SpecificCharacterSet")


class QueryError(ValueError):
    """An identifier we cannot match against (answered with 0xA900); never holds its values."""


def _values(elem: DataElement | None) -> list[str]:
    """An element's values as strings ([] = empty)."""
    if elem is None or elem.value is None or elem.value == "":
        return []
    raw = elem.value
    items = list(raw) if isinstance(raw, (MultiValue, list, tuple)) else [raw]
    return [str(v) for v in items if v is not None and str(v) != ""]


def _is_wildcard_only(value: str) -> bool:
    return value != "" and set(value) == {"*"}


def _check_format(vr: str, value: str, keyword: str) -> None:
    pattern = {"DA": _DA_RE, "TM": _TM_RE, "DT": _DT_RE}.get(vr)
    if pattern is not None and value and not pattern.match(value):
        raise QueryError(f"{keyword}: not a valid {vr} matching value")


@dataclass(frozen=True)
class Condition:
    """One matching key of a query, parsed once (SQL filter and Python check share it)."""

    vr: str
    kind: str  # "single" | "wildcard" | "range" | "list"
    values: tuple[str, ...]  # single/wildcard/list: candidates; range: (low, high), "" = open

    def matches(self, stored: Sequence[str]) -> bool:
        return any(self._one(v) for v in stored)

    def _one(self, value: str) -> bool:
        if self.vr == "PN":
            value = fold_name(value) or ""
        if self.kind == "range":
            low, high = self.values
            v = value.replace(":", "")
            return (not low or v >= low) and (not high or v <= high)
        if self.kind == "wildcard":
            return any(_wildcard_regex(p).fullmatch(value) for p in self.values)
        return value in self.values


_regex_cache: dict[str, re.Pattern[str]] = {}


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    rx = _regex_cache.get(pattern)
    if rx is None:
        body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        rx = re.compile(body, re.DOTALL)
        if len(_regex_cache) < 4096:
            _regex_cache[pattern] = rx
    return rx


def _pad_high(vr: str, value: str) -> str:
    """Upper range bound as the largest value it stands for ("12" -> any time in hour 12)."""
    if vr == "TM":
        return value + "999999.999999"[len(value) :] if len(value) < 13 else value
    if vr == "DT":
        return value + "99999999999999.999999"[len(value) :] if len(value) < 21 else value
    return value


def parse_condition(elem: DataElement) -> Condition | None:
    """The matching condition of a query element; None for universal matching (return key only)."""
    vr, keyword = str(elem.VR), elem.keyword or str(elem.tag)
    values = _values(elem)
    if vr == "PN":
        values = [fold_name(v) or "" for v in values]
    if not values or any(_is_wildcard_only(v) for v in values):
        return None
    if vr == "UI":
        return Condition(vr, "list", tuple(values))
    if vr in _RANGE_VRS and len(values) == 1 and "-" in values[0]:
        low, _, high = values[0].replace(":", "").partition("-")
        if vr == "DT" and (low.startswith("-") or high.startswith("-")):
            raise QueryError(f"{keyword}: ambiguous date-time range")
        _check_format(vr, low, keyword)
        _check_format(vr, high, keyword)
        if not low and not high:
            return None
        return Condition(vr, "range", (low, _pad_high(vr, high)))
    if vr in _RANGE_VRS:
        for v in values:
            _check_format(vr, v.replace(":", ""), keyword)
        if vr == "DA":
            return Condition(vr, "single", tuple(values))
        # a single TM/DT value matches the moment it names at its own precision
        return Condition(vr, "range", (values[0].replace(":", ""), _pad_high(vr, values[0].replace(":", ""))))
    if vr in _WILDCARD_VRS and any("*" in v or "?" in v for v in values):
        return Condition(vr, "wildcard", tuple(values))
    if vr == "SQ":
        raise QueryError(f"{keyword}: unexpected value")
    return Condition(vr, "single", tuple(values))


def _like_pattern(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _sql_for(column: InstrumentedAttribute[Any], cond: Condition) -> ColumnElement[bool]:
    if cond.kind == "range":
        low, high = cond.values
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high)
        return and_(*parts)
    if cond.kind == "wildcard":
        return or_(*(column.like(_like_pattern(p), escape="\\") for p in cond.values))
    if len(cond.values) == 1:
        return column == cond.values[0]
    return column.in_(cond.values)


# Keys answered by a column: SQL narrows on them (Python still checks every key afterwards).
_TOP_COLUMNS: dict[BaseTag, InstrumentedAttribute[Any]] = {
    Tag("PatientName"): ScheduledStep.patient_name_fold,
    Tag("PatientID"): ScheduledStep.patient_id,
    Tag("AccessionNumber"): ScheduledStep.accession_number,
    Tag("StudyInstanceUID"): ScheduledStep.study_uid,
    Tag("RequestedProcedureID"): ScheduledStep.requested_procedure_id,
}
_SPS_COLUMNS: dict[BaseTag, InstrumentedAttribute[Any]] = {
    Tag("ScheduledStationAETitle"): ScheduledStep.station_ae,
    Tag("Modality"): ScheduledStep.modality,
    Tag("ScheduledProcedureStepStartDate"): ScheduledStep.start_date,
    Tag("ScheduledProcedureStepID"): ScheduledStep.sps_id,
    Tag("ScheduledProcedureStepStatus"): ScheduledStep.sps_status,
}


def _name_prefix_clause(cond: Condition) -> ColumnElement[bool] | None:
    """Index range on patient_name_key for the literal prefixes of PN patterns (None: no prefix)."""
    ranges = []
    for pattern in cond.values:
        prefix = re.split(r"[*?]", pattern, maxsplit=1)[0] if cond.kind == "wildcard" else pattern
        if not prefix:
            return None  # "*Müller": nothing to narrow on
        low = name_key(prefix)
        ranges.append(and_(ScheduledStep.patient_name_key >= low, ScheduledStep.patient_name_key < low + "g"))
    return or_(*ranges)


def sql_filter(compiled: CompiledQuery) -> list[ColumnElement[bool]]:
    """WHERE clauses for the column-backed keys of a query (a superset of the real matches)."""
    clauses: list[ColumnElement[bool]] = []

    def add(keys: Iterable[_Key], columns: dict[BaseTag, InstrumentedAttribute[Any]]) -> None:
        for key in keys:
            column = columns.get(key.tag)
            if column is None or key.cond is None:
                continue
            if key.vr == "PN" and (prefix := _name_prefix_clause(key.cond)) is not None:
                clauses.append(prefix)
            clauses.append(_sql_for(column, key.cond))

    add(compiled.keys, _TOP_COLUMNS)
    for key in compiled.keys:
        if key.tag == _SPS_SEQ and key.sub is not None:
            add(key.sub.keys, _SPS_COLUMNS)
    return clauses


@dataclass
class Projection:
    dataset: Dataset
    unsupported: bool  # a matching key we do not hold was ignored


@dataclass(frozen=True)
class _Key:
    """One key of a compiled query: a condition (None = return key only) or a sequence sub-query."""

    tag: BaseTag
    vr: str
    cond: Condition | None = None
    sub: CompiledQuery | None = None  # SQ with one non-empty item
    sub_has_keys: bool = False


@dataclass(frozen=True)
class CompiledQuery:
    """An MWL identifier parsed once per C-FIND, applied to every candidate record."""

    keys: tuple[_Key, ...]
    charset: tuple[str, ...] = ()  # the query's SpecificCharacterSet; () when it sent none
    asks_charset: bool = False  # SpecificCharacterSet present (possibly empty): return it

    def apply(self, record: Dataset) -> Projection | None:
        """PS3.4 C.2.2.2 matching of `record`; the requested keys of a match, else None."""
        out = Dataset()
        unsupported = False
        for key in self.keys:
            relem = record.get(key.tag)
            if key.vr == "SQ":
                result = self._sequence(key, relem)
                if result is None:
                    return None
                out[key.tag], flag = result
                unsupported |= flag
                continue
            if key.cond is not None:
                if relem is None:
                    unsupported = True  # an optional key we do not hold: ignored, PS3.4 C.4.1.1.3.2
                elif not key.cond.matches(_values(relem)):
                    return None
            out.add(relem if relem is not None else DataElement(key.tag, key.vr, None))
        return Projection(out, unsupported)

    @staticmethod
    def _sequence(key: _Key, relem: DataElement | None) -> tuple[DataElement, bool] | None:
        stored = list(relem.value) if relem is not None and relem.VR == "SQ" and relem.value else []
        if key.sub is None:  # universal: the whole stored sequence
            return DataElement(key.tag, "SQ", DicomSequence(stored)), False
        matched, unsupported = [], False
        for ritem in stored:
            projected = key.sub.apply(ritem)
            if projected is not None:
                matched.append(projected.dataset)
                unsupported |= projected.unsupported
        if not matched:
            if stored or (relem is not None and key.sub_has_keys):
                return None
            unsupported = relem is None and key.sub_has_keys
        return DataElement(key.tag, "SQ", DicomSequence(matched)), unsupported


def _check_vr(elem: DataElement) -> None:
    """A key in a VR its tag does not have (a sequence for a name, text for a date) cannot be matched."""
    if elem.tag.is_private or elem.VR == "UN":
        return
    try:
        allowed = {vr.strip() for vr in dictionary_VR(elem.tag).split(" or ")}
    except KeyError:
        return
    if elem.VR not in allowed:
        raise QueryError(f"{elem.keyword or elem.tag}: VR {elem.VR}, the dictionary says {'/'.join(sorted(allowed))}")


def check_lengths(data: bytes, transfer_syntax: str) -> None:
    """pydicom silently shortens a value whose declared length runs past the end of the identifier;
    such an identifier was cut off or lies about its lengths: refuse it (top-level elements; a cut
    inside an undefined-length sequence makes the sequence itself unreadable)."""
    ts = UID(transfer_syntax)
    if ts.is_deflated:
        return
    for raw in data_element_generator(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian):
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF and len(raw.value or b"") < raw.length:
            raise QueryError(f"{Tag(raw.tag)}: value length runs past the end of the identifier")


def compile_query(query: Dataset) -> CompiledQuery:
    """Parse every matching key once; raises QueryError for what cannot be matched."""
    keys = []
    for qelem in query:
        tag = qelem.tag
        if tag.group in (0x0000, 0x0002):
            continue
        _check_vr(qelem)
        if tag == _CHARSET:
            continue
        if qelem.VR != "SQ":
            keys.append(_Key(tag, str(qelem.VR), cond=parse_condition(qelem)))
            continue
        items = list(qelem.value or [])
        if len(items) > 1:
            raise QueryError(f"{qelem.keyword}: a query sequence holds at most one item")
        if not items or len(items[0]) == 0:
            keys.append(_Key(tag, "SQ"))
            continue
        sub = compile_query(items[0])
        has_keys = any(k.cond is not None for k in sub.keys)
        keys.append(_Key(tag, "SQ", sub=sub, sub_has_keys=has_keys))
    charset = tuple(_values(query.get(_CHARSET)))
    unknown = [term for term in charset if term.strip() and term.strip() not in python_encoding]
    if unknown:
        raise QueryError(f"SpecificCharacterSet: unknown term {unknown[0][:16]!r}")
    return CompiledQuery(tuple(keys), charset, _CHARSET in query)


def _texts(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _texts(item)
        elif elem.VR in _TEXT_VRS:
            yield from _values(elem)


def _encodable(texts: list[str], term: str) -> bool:
    codec = python_encoding.get(term)
    if codec is None:
        return False
    try:
        for text in texts:
            text.encode(codecs.lookup(codec).name)
    except UnicodeEncodeError:
        return False
    return True


def response_charset(query_cs: list[str], record_cs: str | None, ds: Dataset) -> list[str] | None:
    """The character set to answer in: the query's if it can carry the values, else the record's."""
    texts = list(_texts(ds))
    if all(t.isascii() for t in texts):
        return query_cs or None
    if len(query_cs) == 1 and _encodable(texts, query_cs[0]):
        return query_cs
    if record_cs:
        terms = record_cs.split("\\")
        if len(terms) > 1 or _encodable(texts, terms[0]):
            return terms
    return ["ISO_IR 192"]


def find(session: Session, query: CompiledQuery) -> Iterator[Projection]:
    """Open items matching a compiled MWL identifier, projected to its keys."""
    rows = session.execute(
        select(ScheduledStep.identifier, ScheduledStep.specific_character_set)
        .where(ScheduledStep.open_key.is_not(None), *sql_filter(query))
        .order_by(ScheduledStep.start_date, ScheduledStep.id)
    )
    for identifier, record_cs in rows:
        result = query.apply(decode_identifier(identifier))
        if result is None:
            continue
        charset = response_charset(list(query.charset), record_cs, result.dataset)
        if charset is not None or query.asks_charset:
            result.dataset.SpecificCharacterSet = charset or ""
        yield result


# --- DIMSE handlers ---------------------------------------------------------------------------


def _status(code: int, comment: str | None = None, error_id: int | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    if error_id is not None:
        ds.ErrorID = error_id
    return ds


class WorklistSCP:
    """C-FIND (MWL) and MPPS N-CREATE/N-SET on one database; thin: decode, hand over, map errors."""

    def __init__(self, db: Database, cfg: Config) -> None:
        self.db = db
        self.cfg = cfg

    # C-FIND -----------------------------------------------------------------------------------

    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        if event.context.abstract_syntax != ModalityWorklistInformationFind:
            yield _status(ST_SOP_CLASS_NOT_SUPPORTED, "only Modality Worklist FIND is served"), None
            return
        raw = event.request.Identifier.getvalue() if event.request.Identifier is not None else b""  # type: ignore[union-attr]
        if not raw:  # Command Data Set Type 0x0101: pynetdicom hands over an empty data set
            yield _status(ST_IDENTIFIER_MISMATCH, "C-FIND request without an identifier"), None
            return
        try:
            check_lengths(raw, event.context.transfer_syntax)
            query = compile_query(event.identifier)  # decodes and checks every key
        except QueryError as exc:
            yield _status(ST_IDENTIFIER_MISMATCH, str(exc)), None
            return
        except Exception as exc:  # bytes pydicom cannot decode: a failure status, never a crash
            log.warning("worklist C-FIND: undecodable identifier: %s", type(exc).__name__)
            yield _status(ST_UNABLE_TO_PROCESS, f"cannot decode identifier: {type(exc).__name__}"), None
            return
        with self.db.session() as session:  # a database failure is pynetdicom's 0xC311, logged there
            matches = list(find(session, query))
        for match in matches:
            if event.is_cancelled:
                yield ST_CANCEL, None
                return
            yield (ST_PENDING_WARNING if match.unsupported else ST_PENDING), match.dataset
        yield ST_SUCCESS, None

    # MPPS -------------------------------------------------------------------------------------

    def on_n_create(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        req = cast(N_CREATE, event.request)
        if req.AffectedSOPClassUID != ModalityPerformedProcedureStep:
            return _status(0x0118, "no such SOP class"), None
        try:
            attrs = event.attribute_list
        except Exception as exc:
            return _status(ST_PROCESSING_FAILURE, f"cannot decode attribute list: {type(exc).__name__}"), None
        if "PerformedProcedureStepStatus" not in attrs:
            return _status(ST_MISSING_ATTRIBUTE, "Performed Procedure Step Status missing"), None
        status = str(attrs.PerformedProcedureStepStatus or "")
        if status != PPS_IN_PROGRESS:  # PS3.4 F.7.2.1.3
            return _status(ST_INVALID_ATTRIBUTE_VALUE, "Performed Procedure Step Status must be IN PROGRESS"), None
        uid = str(req.AffectedSOPInstanceUID or generate_uid())
        with self.db.session() as session:
            if session.get(PerformedStep, uid) is not None:
                return _status(ST_DUPLICATE_INSTANCE, "duplicate SOP instance"), None
            create_mpps(session, uid, attrs, calling_ae=event.assoc.requestor.ae_title)
        reply = Dataset()
        if req.AffectedSOPInstanceUID is None:
            reply.AffectedSOPInstanceUID = uid  # pynetdicom moves it into the response command
        return ST_SUCCESS, reply

    def on_n_set(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        req = cast(N_SET, event.request)
        if req.RequestedSOPClassUID != ModalityPerformedProcedureStep:
            return _status(0x0118, "no such SOP class"), None
        try:
            mods = event.modification_list
        except Exception as exc:
            return _status(ST_PROCESSING_FAILURE, f"cannot decode modification list: {type(exc).__name__}"), None
        new_status = str(mods.get("PerformedProcedureStepStatus", "") or "") or None
        if new_status is not None and new_status not in (PPS_IN_PROGRESS, PPS_COMPLETED, PPS_DISCONTINUED):
            return _status(ST_INVALID_ATTRIBUTE_VALUE, "invalid Performed Procedure Step Status"), None
        uid = str(req.RequestedSOPInstanceUID)
        with self.db.session() as session:
            pps = session.get(PerformedStep, uid)
            if pps is None:
                return _status(ST_NO_SUCH_INSTANCE, "no such MPPS instance"), None
            if pps.status != PPS_IN_PROGRESS:  # PS3.4 Table F.7.2-2
                return (
                    _status(
                        ST_PROCESSING_FAILURE,
                        "Performed Procedure Step Object may no longer be updated",
                        ERROR_ID_NO_LONGER_UPDATABLE,
                    ),
                    None,
                )
            set_mpps(session, pps, mods)
        return ST_SUCCESS, None


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
    if step is not None:
        step.mpps_uid = uid
        if step.is_open:
            step.sps_status = STARTED
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
    if new_status == PPS_COMPLETED:
        _link_instances(session, pps.sop_instance_uid, attrs)
        if step is not None and step.is_open:
            _close(session, step, COMPLETED, "mpps-completed")
        _request_completion(session, studies)
    elif new_status == PPS_DISCONTINUED and step is not None and step.is_open:
        step.sps_status = SCHEDULED  # the exam was not done: the item stays on the worklist
    log.info("MPPS %s now %s", pps.sop_instance_uid, new_status)


def _link_instances(session: Session, uid: str, attrs: Dataset) -> None:
    """Remember the instances a (final) MPPS lists, from every Performed Series item."""
    listed = set()
    for series in attrs.get("PerformedSeriesSequence", None) or []:
        for key in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in series.get(key, None) or []:
                sop = str(ref.get("ReferencedSOPInstanceUID", "") or "")
                if sop:
                    listed.add(sop)
    known = set(session.scalars(select(PerformedStepInstance.sop_instance_uid).where(PerformedStepInstance.mpps_uid == uid)))
    session.add_all(PerformedStepInstance(mpps_uid=uid, sop_instance_uid=sop) for sop in sorted(listed - known))


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


def event_handlers(db: Database, cfg: Config) -> list[EventHandlerType]:
    """pynetdicom handlers for MWL C-FIND and MPPS; add SUPPORTED_CONTEXTS to the AE as well."""
    scp = WorklistSCP(db, cfg)
    return [
        (evt.EVT_C_FIND, scp.on_find),
        (evt.EVT_N_CREATE, scp.on_n_create),
        (evt.EVT_N_SET, scp.on_n_set),
    ]


# --- export for DCMTK wlmscpfs / Orthanc --------------------------------------------------------

ExportOp = tuple[str, Path, bytes | None]
_EXPORT_OPS = "msfollowup.worklist.export_ops"


def _safe_component(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", value.strip())
    if cleaned in ("", ".", ".."):
        raise WorklistError("AE title cannot name an export folder")
    return cleaned


def _export_path(export_dir: Path, step: ScheduledStep) -> Path:
    return export_dir / _safe_component(step.station_ae) / f"{EXPORT_PREFIX}{step.accession_number}.wl"


def _wl_bytes(step: ScheduledStep) -> bytes:
    """The step as a DICOM Part 10 file, the format wlmscpfs and Orthanc's worklist plugin read."""
    ds = step.dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ModalityWorklistInformationFind
    meta.MediaStorageSOPInstanceUID = generate_uid(prefix=None, entropy_srcs=[step.study_uid, "wl"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


@contextmanager
def locked_folder(folder: Path) -> Iterator[None]:
    """Hold DCMTK's `lockfile` of an AE folder exclusively while changing the folder.

    wlmscpfs takes a POSIX record lock (fcntl F_RDLCK) on it while it reads; on Linux flock() locks do
    not conflict with those, so this must be lockf (fcntl F_WRLCK) too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_wl(path: Path, data: bytes) -> None:
    """Atomic replace: a reader sees the old file or the new one, never half of one."""
    with locked_folder(path.parent):
        tmp = path.with_name(f".{path.name}.tmp")  # no .wl suffix: wlmscpfs ignores it
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def remove_wl(path: Path) -> None:
    with locked_folder(path.parent):
        path.unlink(missing_ok=True)
        _fsync_dir(path.parent)


def _apply(ops: Iterable[ExportOp]) -> None:
    for action, path, data in ops:
        try:
            if action == "write" and data is not None:
                write_wl(path, data)
            else:
                remove_wl(path)
        except OSError as exc:  # the index is the truth; `sync_export` repairs the folder later
            log.error("worklist export: cannot %s %s: %s", action, path.name, exc.strerror)


def _after_commit(session: Session) -> None:
    _apply(session.info.pop(_EXPORT_OPS, []))


def _after_rollback(session: Session) -> None:
    session.info.pop(_EXPORT_OPS, None)


def _queue_export(session: Session, op: ExportOp) -> None:
    """File changes follow the transaction: done after commit, dropped on rollback."""
    session.info.setdefault(_EXPORT_OPS, []).append(op)
    if not event.contains(session, "after_commit", _after_commit):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_rollback", _after_rollback)


def sync_export(session: Session, cfg: Config) -> tuple[int, int]:
    """Make export_dir hold exactly the open items (repairs missed writes); returns (written, removed)."""
    export_dir = cfg.worklist.export_dir
    if export_dir is None:
        return 0, 0
    wanted: dict[Path, ScheduledStep] = {}
    for step in open_items(session):
        path = _export_path(export_dir, step)
        step.export_file = str(path)
        wanted[path] = step
    written = 0
    for path, step in wanted.items():
        data = _wl_bytes(step)
        if not path.exists() or path.read_bytes() != data:
            write_wl(path, data)
            written += 1
    removed = 0
    if export_dir.is_dir():
        for path in export_dir.glob(f"*/{EXPORT_PREFIX}*.wl"):
            if path not in wanted:
                remove_wl(path)
                removed += 1
    return written, removed
