"""`study_checks`: one row per (study, version, purpose), the hand-over record between the pipeline's stages
(the validation result as JSON). Written by msfollowup.app.pipeline; read by plans, reviews, reports, the web."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from msfollowup.db import Base, UTCDateTime


class StudyCheck(Base):
    __tablename__ = "study_checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))  # DICOM DA of the study
    # What this check was for (issue 10 item 1): brain / spine / undetermined; one row per purpose.
    purpose: Mapped[str] = mapped_column(String(16), default="brain")
    profile_id: Mapped[str] = mapped_column(String(64))
    profile_version: Mapped[str] = mapped_column(String(32))
    verdict: Mapped[str] = mapped_column(String(16))  # compliant / non-compliant / unverifiable
    result_json: Mapped[str] = mapped_column(Text)  # ValidationResult.to_json()
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("study_uid", "version", "purpose", name="uq_study_checks_version"),)
    # False until reports are written and the patient's next exam is scheduled for this version.
    followup_done: Mapped[bool] = mapped_column(default=False)
