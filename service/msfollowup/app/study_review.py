"""QA decisions on received studies: accept an unverifiable study, designate a reference study.

Use cases, one transaction each (the caller's session), audited. An accepted unverifiable study counts as
a compliant exam for the clock of its purpose; a designated reference replaces "the most recent compliant
study of the same purpose" as what later studies are compared with (e.g. after a scanner change).
Nothing here logs a patient identifier.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from msfollowup.db import audit
from msfollowup.db import Base, Database, UTCDateTime, utcnow

ACCEPT = "accept"
REFERENCE = "reference"


class ReviewError(ValueError):
    """A decision that cannot be recorded; the message names the study and the reason."""


class StudyDecision(Base):
    """Append-only: the latest row of a kind for a study (accept) or patient+purpose (reference) wins."""

    __tablename__ = "study_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))  # accept / reference
    reason: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(128))
    decided_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class Decision:
    study_uid: str
    purpose: str
    kind: str
    reason: str
    author: str
    decided_at: dt.datetime


def _checks(session: Session, study_uid: str) -> list[tuple[str, str | None, str, int]]:
    """(purpose, patient id, verdict, version) of the latest check version of the study, per purpose."""
    from msfollowup.db.checks import StudyCheck

    rows = session.scalars(select(StudyCheck).where(StudyCheck.study_uid == study_uid)).all()
    if not rows:
        return []
    top = max(r.version for r in rows)
    return [(r.purpose, r.patient_id, r.verdict, r.version) for r in rows if r.version == top]


def accept_study(session: Session, study_uid: str, reason: str, author: str,
                 host: str | None = None) -> list[Decision]:
    """Accept every unverifiable purpose check of the study's latest version (QA lead decision)."""
    reason = (reason or "").strip()
    if not reason:
        raise ReviewError("--reason: a reason is required to accept a study")
    if len(reason) > 500:
        raise ReviewError("--reason: at most 500 characters")
    checks = _checks(session, study_uid)
    if not checks:
        raise ReviewError(f"study {study_uid}: not checked (unknown study, or not yet complete)")
    targets = [c for c in checks if c[2] == "unverifiable"]
    if not targets:
        verdicts = ", ".join(f"{p}: {v}" for p, _, v, _ in checks)
        raise ReviewError(f"study {study_uid}: nothing to accept, no unverifiable check ({verdicts}); a "
                          "non-compliant study needs a recall, not an acceptance")
    out = []
    now = utcnow()
    for purpose, patient_id, _, version in targets:
        session.add(StudyDecision(study_uid=study_uid, patient_id=patient_id, purpose=purpose, kind=ACCEPT,
                                  reason=reason, author=author, decided_at=now))
        audit.record(session, audit.STUDY_ACCEPT, actor_user=author, actor_host=host, patient_id=patient_id,
                     object_uid=study_uid,
                     detail={"purpose": purpose, "version": version, "reason": reason})
        out.append(Decision(study_uid, purpose, ACCEPT, reason, author, now))
    session.flush()
    return out


def designate_reference(session: Session, study_uid: str, author: str, reason: str = "",
                        host: str | None = None) -> list[Decision]:
    """Make this study the reference later studies of its purpose(s) are compared with."""
    checks = _checks(session, study_uid)
    if not checks:
        raise ReviewError(f"study {study_uid}: not checked (unknown study, or not yet complete)")
    now = utcnow()
    out = []
    for purpose, patient_id, _, version in checks:
        if purpose == "undetermined":
            continue
        session.add(StudyDecision(study_uid=study_uid, patient_id=patient_id, purpose=purpose, kind=REFERENCE,
                                  reason=reason, author=author, decided_at=now))
        audit.record(session, audit.STUDY_REFERENCE, actor_user=author, actor_host=host, patient_id=patient_id,
                     object_uid=study_uid, detail={"purpose": purpose, "version": version})
        out.append(Decision(study_uid, purpose, REFERENCE, reason, author, now))
    if not out:
        raise ReviewError(f"study {study_uid}: its purpose is undetermined; it cannot be a reference")
    session.flush()
    return out


def accepted(session: Session, study_uids: list[str]) -> set[tuple[str, str]]:
    """(study uid, purpose) pairs a QA lead accepted."""
    if not study_uids:
        return set()
    rows = session.execute(select(StudyDecision.study_uid, StudyDecision.purpose).where(
        StudyDecision.kind == ACCEPT, StudyDecision.study_uid.in_(study_uids))).all()
    return {(u, p) for u, p in rows}


def designated_reference(session: Session, patient_id: str, purpose: str) -> str | None:
    row = session.scalars(select(StudyDecision.study_uid).where(
        StudyDecision.kind == REFERENCE, StudyDecision.patient_id == patient_id, StudyDecision.purpose == purpose
    ).order_by(StudyDecision.decided_at.desc(), StudyDecision.id.desc()).limit(1)).first()
    return row


def purposes_and_verdicts(db: Database, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`studies --json`: each study summary with the purposes of its latest checked version and their
    verdicts, profile, evidence, and whether a QA lead accepted or designated it."""
    import json

    from msfollowup.db.checks import StudyCheck

    with db.session() as s:
        checks = list(s.scalars(select(StudyCheck)))
        decisions = list(s.scalars(select(StudyDecision)))
    top: dict[str, int] = {}
    for c in checks:
        top[c.study_uid] = max(top.get(c.study_uid, 0), c.version)
    by_study: dict[str, list[dict[str, Any]]] = {}
    for c in sorted(checks, key=lambda c: c.id):
        if c.version != top[c.study_uid]:
            continue
        try:
            evidence = json.loads(c.result_json).get("purpose", {}).get("evidence")
        except (ValueError, AttributeError):
            evidence = None
        kinds = sorted({d.kind for d in decisions if d.study_uid == c.study_uid and d.purpose == c.purpose})
        by_study.setdefault(c.study_uid, []).append({
            "purpose": c.purpose, "verdict": c.verdict, "profile_id": c.profile_id, "version": c.version,
            "evidence": evidence, "accepted": ACCEPT in kinds, "reference": REFERENCE in kinds,
            "review": c.purpose == "undetermined" or (c.verdict == "unverifiable" and ACCEPT not in kinds),
        })
    return [r | {"purposes": by_study.get(str(r.get("study_instance_uid")), [])} for r in rows]
