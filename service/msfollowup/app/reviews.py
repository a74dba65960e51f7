"""QA decisions on a checked study: "accept as compliant" (an unverifiable result a person verified)
and "use as reference" (the patient's baseline for consistency checks). Kept as rows of their own,
with author, reason and time; the check itself is never rewritten."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from msfollowup import audit
from msfollowup.app.results import StudyResult
from msfollowup.db import Base, UTCDateTime, utcnow

ACCEPT = "accept"
REFERENCE = "reference"


class ReviewError(ValueError):
    """A review that cannot be done (unknown study, not unverifiable, no reason)."""


class StudyReview(Base):
    __tablename__ = "study_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    check_id: Mapped[int] = mapped_column(ForeignKey("study_checks.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


def _result(session: Session, check_id: int) -> StudyResult:
    row = session.get(StudyResult, check_id)
    if row is None:
        raise ReviewError(f"no checked study {check_id}")
    return row


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if len(reason) < 3:
        raise ReviewError("reason: say why (at least 3 characters)")
    return reason[:2000]


def accept_as_compliant(session: Session, check_id: int, reason: str, author: str, host: str | None = None) -> None:
    row = _result(session, check_id)
    if row.verdict != "unverifiable":
        raise ReviewError(f"only an unverifiable result can be accepted (this one is {row.verdict})")
    if row.reviewed_verdict == "compliant":
        raise ReviewError("already accepted as compliant")
    text = _reason(reason)
    row.reviewed_verdict = "compliant"
    session.add(StudyReview(check_id=check_id, study_uid=row.study_uid, action=ACCEPT, reason=text, author=author,
                            created_at=utcnow()))
    audit.record(session, audit.STUDY_REVIEW, actor_user=author, actor_host=host, object_uid=row.study_uid,
                 detail={"action": ACCEPT, "version": row.version})


def use_as_reference(session: Session, check_id: int, reason: str, author: str, host: str | None = None) -> None:
    row = _result(session, check_id)
    if (row.reviewed_verdict or row.verdict) != "compliant":
        raise ReviewError("only a compliant (or accepted) study can be the reference")
    text = _reason(reason)
    session.add(StudyReview(check_id=check_id, study_uid=row.study_uid, action=REFERENCE, reason=text, author=author,
                            created_at=utcnow()))
    audit.record(session, audit.STUDY_REVIEW, actor_user=author, actor_host=host, object_uid=row.study_uid,
                 detail={"action": REFERENCE, "version": row.version})


def reviews_of(session: Session, study_uid: str) -> list[dict[str, object]]:
    return [{"action": r.action, "reason": r.reason, "author": r.author, "at": r.created_at.isoformat(),
             "check_id": r.check_id}
            for r in session.scalars(select(StudyReview).where(StudyReview.study_uid == study_uid)
                                     .order_by(StudyReview.created_at))]


def reference_study(session: Session, patient_ref: int) -> str | None:
    """The study QA chose as this patient's reference, if any (latest choice wins)."""
    return session.scalar(
        select(StudyReview.study_uid).join(StudyResult, StudyResult.check_id == StudyReview.check_id)
        .where(StudyResult.patient_ref == patient_ref, StudyReview.action == REFERENCE)
        .order_by(StudyReview.created_at.desc()).limit(1)
    )


