"""QA decisions from the web: "accept as compliant" (an unverifiable result a person verified) and "use as
reference" (what later studies of the same purpose are compared with).

One record and one meaning for the web and the CLI: both go through `study_review` (the StudyDecision
rows that the due-exam computation and the pipeline read), so an acceptance made on the study page
resets the clock exactly as `msfollowup study accept` does. The dashboard's copy of the verdict
(`study_results.reviewed_verdict`) is updated in the same transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, true, update
from sqlalchemy.orm import Session

from msfollowup.app import study_review
from msfollowup.app import rollup
from msfollowup.app.results import FACTS, PatientRef, StudyResult
from msfollowup.app.study_review import ACCEPT, REFERENCE, ReviewError, StudyDecision

__all__ = ["ACCEPT", "REFERENCE", "ReviewError", "accept_as_compliant", "accept_study", "reference_study", "reviews_of",
           "use_as_reference"]


def _result(session: Session, check_id: int) -> StudyResult:
    row = session.get(StudyResult, check_id)
    if row is None:
        raise ReviewError(f"no checked study {check_id}")
    return row


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if len(reason) < 3:
        raise ReviewError("reason: say why (at least 3 characters)")
    return reason


def accept_as_compliant(session: Session, check_id: int, reason: str, author: str, host: str | None = None) -> None:
    row = _result(session, check_id)
    if row.verdict != "unverifiable":
        raise ReviewError(f"only an unverifiable result can be accepted (this one is {row.verdict})")
    if row.reviewed_verdict == "compliant":
        raise ReviewError("already accepted as compliant")
    decided = study_review.accept_study(session, row.study_uid, _reason(reason), author, host=host)
    _mark_accepted(session, (StudyResult.study_uid == row.study_uid, StudyResult.version == row.version,
                             StudyResult.purpose.in_([d.purpose for d in decided])))


def accept_study(session: Session, study_uid: str, reason: str, author: str,
                 host: str | None = None) -> list[study_review.Decision]:
    """`msfollowup study accept`: the same decision as the study page's, and the dashboard's verdict
    (reviewed_verdict and its rollup) moved with it, for the latest version's unverifiable checks."""
    decided = study_review.accept_study(session, study_uid, reason, author, host=host)
    _mark_accepted(session, (StudyResult.study_uid == study_uid, StudyResult.latest == true(),
                             StudyResult.purpose.in_([d.purpose for d in decided])))
    return decided


def _mark_accepted(session: Session, which: tuple[Any, ...]) -> None:
    """Accepted unverifiable result rows (selected by `which`) count as compliant on the dashboard."""
    which = (*which, StudyResult.verdict == "unverifiable")
    # The dashboard's rollup moves each latest row from its old review to "compliant". FOR UPDATE: on
    # PostgreSQL the old value read is the one this transaction replaces (a concurrent acceptance or new
    # version waits for, or is waited on by, these row locks); SQLite has a single writer anyway.
    deltas = rollup.Deltas()
    for *facts, verdict, reviewed in session.execute(
            select(*FACTS, StudyResult.verdict, StudyResult.reviewed_verdict)
            .where(*which, StudyResult.latest == true()).with_for_update()):
        deltas.study(tuple(facts), verdict, reviewed, -1)
        deltas.study(tuple(facts), verdict, "compliant", +1)
    session.execute(update(StudyResult).where(*which).values(reviewed_verdict="compliant"))
    rollup.apply(session, deltas)


def use_as_reference(session: Session, check_id: int, reason: str, author: str, host: str | None = None) -> None:
    row = _result(session, check_id)
    if (row.reviewed_verdict or row.verdict) != "compliant":
        raise ReviewError("only a compliant (or accepted) study can be the reference")
    study_review.designate_reference(session, row.study_uid, author, _reason(reason), host=host)


def reviews_of(session: Session, study_uid: str) -> list[dict[str, object]]:
    return [{"action": r.kind, "purpose": r.purpose, "reason": r.reason, "author": r.author,
             "at": r.decided_at.isoformat()}
            for r in session.scalars(select(StudyDecision).where(StudyDecision.study_uid == study_uid)
                                     .order_by(StudyDecision.decided_at, StudyDecision.id))]


def reference_study(session: Session, patient_ref: int) -> str | None:
    """The study a user chose as this patient's reference, if any (latest choice wins)."""
    return session.scalar(
        select(StudyDecision.study_uid).join(PatientRef, PatientRef.patient_id == StudyDecision.patient_id)
        .where(PatientRef.id == patient_ref, StudyDecision.kind == REFERENCE)
        .order_by(StudyDecision.decided_at.desc(), StudyDecision.id.desc()).limit(1)
    )
