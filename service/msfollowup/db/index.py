"""The index of received instances: studies, series, instances (the tables the store writes and every
later stage reads). The files themselves and the ingest path are in msfollowup.files.store."""

from __future__ import annotations

import datetime as dt
from enum import Enum

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from msfollowup.db import Base, UTCDateTime


class StudyState(str, Enum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    FAILED = "failed"  # a later stage could not process this version: not retried until the study changes


class Study(Base):
    __tablename__ = "studies"

    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING.value, index=True)
    # Completed versions so far; a late instance reopens the study and the next completion is version+1.
    version: Mapped[int] = mapped_column(Integer, default=0)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    specific_character_set: Mapped[str | None] = mapped_column(String(128))
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    station_name: Mapped[str | None] = mapped_column(String(16))
    first_received: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_received: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Set by MPPS COMPLETED: the study may complete without waiting for stable_seconds.
    complete_requested: Mapped[bool] = mapped_column(default=False)
    # Why the state is failed: the stage and the exception type (never a value from the data).
    failure_reason: Mapped[str | None] = mapped_column(String(200))


class Series(Base):
    __tablename__ = "series"

    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    modality: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(64))
    first_received: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Instance(Base):
    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_uid: Mapped[str] = mapped_column(ForeignKey("series.series_uid"), index=True)
    # No index of its own: ix_instances_study_series below serves lookups by study (migration 0012).
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # relative to the store root
    size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    calling_ae: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (Index("ix_instances_study_series", "study_uid", "series_uid"),)
