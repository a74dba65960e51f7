"""Worklist vocabulary and tables: step states, DIMSE statuses, the stored identifier."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
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
    exists,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from msfollowup.db import Base, UTCDateTime
from msfollowup.db.index import Instance

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
    # The study that performed this item (matched by UID, accession, procedure ID, window or MPPS):
    # a later version of that study finds the item here and closes nothing else.
    fulfilled_by_study: Mapped[str | None] = mapped_column(String(64), index=True)
    # Bumped whenever the identifier changes (status, start date, demographics): the exported file's
    # Media Storage SOP Instance UID derives from (study UID, version), so an unchanged item keeps
    # byte-identical files and the export rewrites nothing.
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (Index("ix_worklist_steps_station_date", "station_ae", "start_date"),)

    @property
    def is_open(self) -> bool:
        return self.open_key is not None

    @property
    def incomplete(self) -> str | None:
        """Why the item cannot be served (PS3.4 Table K.6-1 requires Patient's Name), else None."""
        if not (self.patient_name or "").strip("^= "):
            return "no patient name (set it with the patient's plan, or it comes with the first study)"
        return None

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
            "complete": self.incomplete is None,
            "incomplete_reason": self.incomplete,
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
    """Instances an MPPS lists (Performed Series Sequence), as of its latest N-CREATE/N-SET. Once a
    COMPLETED MPPS's instances have all arrived the study is whole; once one listed series' instances
    have all arrived, that series is settled for the live check (a modality that reports each series as
    it finishes lets the scanner-room page judge it at once, not after the settle time)."""

    __tablename__ = "worklist_mpps_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mpps_uid: Mapped[str] = mapped_column(ForeignKey("worklist_mpps.sop_instance_uid"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str | None] = mapped_column(String(64))  # None: linked before revision 0010

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


def name_key(folded: str) -> str:
    """Hex of the first characters of a folded name, for prefix searches through an index.

    A name prefix becomes the key range [hex(prefix), hex(prefix) + "g"). Hex digits sort the same
    under every collation, so the range is exact on PostgreSQL's locale collations too, where
    neither LIKE nor a plain text range on the name itself may use (or trust) the index.
    """
    return folded[:NAME_KEY_CHARS].encode("utf-8").hex()


def _open_steps() -> Any:
    return select(ScheduledStep).where(ScheduledStep.open_key.is_not(None))


def servable() -> ColumnElement[bool]:
    """SQL: open and complete (a patient name): what C-FIND answers and the export writes."""
    return and_(
        ScheduledStep.open_key.is_not(None),
        ScheduledStep.patient_name_fold.is_not(None),
        ScheduledStep.patient_name_fold != "",
    )


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


def mpps_settled_series(session: Session, study_uids: list[str]) -> dict[str, set[str]]:
    """Study uid -> the series an MPPS of the study lists whose listed instances have all arrived:
    the modality said the series is done and it is here."""
    arrived = func.count(Instance.sop_instance_uid)
    listed = func.count(PerformedStepInstance.id)
    query = (
        select(PerformedStepStudy.study_uid, PerformedStepInstance.series_uid)
        .join(PerformedStepInstance, PerformedStepInstance.mpps_uid == PerformedStepStudy.mpps_uid)
        .outerjoin(Instance, (Instance.sop_instance_uid == PerformedStepInstance.sop_instance_uid)
                   & (Instance.study_uid == PerformedStepStudy.study_uid))
        .where(PerformedStepStudy.study_uid.in_(study_uids), PerformedStepInstance.series_uid.is_not(None))
        .group_by(PerformedStepStudy.study_uid, PerformedStepInstance.mpps_uid, PerformedStepInstance.series_uid)
        .having(listed == arrived)
    )
    settled: dict[str, set[str]] = {}
    for study_uid, series_uid in session.execute(query).all():
        if series_uid is not None:
            settled.setdefault(study_uid, set()).add(series_uid)
    return settled


def completion_requested(session: Session, study_uid: str) -> bool:
    """Did a modality report (MPPS COMPLETED) that this study is finished?"""
    return bool(session.scalar(select(mpps_completed(study_uid))))

