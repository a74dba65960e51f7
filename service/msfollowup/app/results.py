"""One row per checked study version and one per requirement result, fed when a check is recorded.

`study_checks.result_json` keeps the whole result for reports; these rows exist so that compliance
(rate per scanner, per profile, per week or month; the requirements that fail most) aggregates in SQL
over indexed columns instead of parsing 100,000 JSON blobs. Week and month are stored as text keys
("2024-05-06" = the Monday of the ISO week, "2024-05") because grouping by a date function is not
portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, select, true, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from msfollowup.app import rollup
from msfollowup.db import Base, UTCDateTime, utcnow

OTHER = "(unknown)"  # scanner key when the headers name no station or serial


class StudyResult(Base):
    """The compliance-relevant facts of one checked study version (one row per study_checks row)."""

    __tablename__ = "study_results"

    check_id: Mapped[int] = mapped_column(ForeignKey("study_checks.id"), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    latest: Mapped[bool] = mapped_column(Boolean, default=True)  # False once a later version is checked
    patient_ref: Mapped[int | None] = mapped_column(ForeignKey("patient_refs.id"), index=True)
    profile_id: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(16), default="brain")
    verdict: Mapped[str] = mapped_column(String(16))
    # A QA decision ("accept as compliant") overrides the computed verdict for compliance figures.
    reviewed_verdict: Mapped[str | None] = mapped_column(String(16))
    scanner: Mapped[str] = mapped_column(String(64))  # "<station> / <device serial>", see scanner_key
    study_date: Mapped[dt.date | None] = mapped_column()
    week: Mapped[str | None] = mapped_column(String(10))
    month: Mapped[str | None] = mapped_column(String(7))
    checked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    # Covering indexes for the dashboard's GROUP BYs (scanner or profile, then week or month): the
    # database reads the index in group order and never touches the table or sorts.
    __table_args__ = (
        Index("ix_study_results_latest_date", "latest", "study_date"),
        Index("ix_study_results_latest_verdict", "latest", "verdict", "reviewed_verdict"),
        *(Index(f"ix_study_results_{period}", "latest", "scanner", "profile_id", period, "verdict", "reviewed_verdict",
                "study_date") for period in ("week", "month")),
        Index("ix_study_results_profile", "latest", "profile_id", "study_date"),
        Index("ix_study_results_scanner", "latest", "scanner", "study_date", "verdict", "reviewed_verdict"),
    )


class RequirementRow(Base):
    """One requirement result of one checked study version."""

    __tablename__ = "requirement_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    check_id: Mapped[int] = mapped_column(ForeignKey("study_checks.id"), index=True)
    latest: Mapped[bool] = mapped_column(Boolean, default=True)  # as StudyResult.latest (the unfiltered dashboard reads this table alone)
    requirement_id: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # pass / fail / unverifiable / info
    informational: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_requirement_results_status", "status", "informational", "requirement_id", "check_id"),
        Index("ix_requirement_results_latest", "latest", "status", "informational", "requirement_id", "label"),
    )


class PatientRef(Base):
    """An internal number for a patient ID: web addresses name patients by it, never by their ID."""

    __tablename__ = "patient_refs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(64), unique=True)


def patient_ref(session: Session, patient_id: str) -> int:
    found = session.scalar(select(PatientRef.id).where(PatientRef.patient_id == patient_id))
    if found is not None:
        return found
    row = PatientRef(patient_id=patient_id)
    session.add(row)
    session.flush()
    return row.id


def patient_refs(session: Session, patient_ids: Iterable[str]) -> dict[str, int]:
    """Internal numbers of many patients at once (missing ones created)."""
    wanted = sorted(set(patient_ids))
    found: dict[str, int] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        found.update({p: n for p, n in session.execute(
            select(PatientRef.patient_id, PatientRef.id).where(PatientRef.patient_id.in_(chunk)))})
    for pid in wanted:
        if pid not in found:
            found[pid] = patient_ref(session, pid)
    return found


def week_key(day: dt.date) -> str:
    return (day - dt.timedelta(days=day.weekday())).isoformat()


def month_key(day: dt.date) -> str:
    return day.strftime("%Y-%m")


def _date(value: str | None) -> dt.date | None:
    try:
        return dt.datetime.strptime(value or "", "%Y%m%d").date()
    except ValueError:
        return None


def scanner_key(series: Iterable[dict[str, Any]]) -> str:
    """Station name and device serial of the study's first series that names them."""
    for s in series:
        facts = s.get("facts") or s  # ClassifiedSeries.to_json nests the header facts
        station, serial = facts.get("station_name"), facts.get("device_serial_number")
        if station or serial:
            return f"{station or '-'} / {serial or '-'}"[:64]
    return OTHER


def record_check(session: Session, check_id: int, study_uid: str, version: int, patient_id: str | None,
                 study_date: str | None, result: dict[str, Any], purpose: str = "brain",
                 deltas: rollup.Deltas | None = None) -> None:
    """Store the rows of one recorded check (in the caller's transaction, beside the study_checks row),
    and move the dashboard's rollup from the versions it replaces to this one.

    `deltas`: a caller recording several checks in one transaction (one per purpose) collects them
    and calls `rollup.apply` once, so that all its cell locks are taken in one sorted order."""
    own = deltas is None
    deltas = rollup.Deltas() if deltas is None else deltas
    # RETURNING: exactly the rows this statement retired (on PostgreSQL a concurrent writer's UPDATE
    # waits for our row locks and then no longer matches `latest`), so each is subtracted once.
    retired = session.execute(
        update(StudyResult).where(StudyResult.study_uid == study_uid, StudyResult.version < version,
                                  StudyResult.latest == true())
        .values(latest=False).returning(StudyResult.check_id, *FACTS, StudyResult.verdict, StudyResult.reviewed_verdict)
    ).all()
    facts = {r[0]: tuple(r[1:6]) for r in retired}
    for r in retired:
        deltas.study(tuple(r[1:6]), r[6], r[7], -1)
    older = select(StudyResult.check_id).where(StudyResult.study_uid == study_uid, StudyResult.version < version)
    gone = session.execute(
        update(RequirementRow).where(RequirementRow.check_id.in_(older), RequirementRow.latest == true())
        .values(latest=False)
        .returning(RequirementRow.check_id, RequirementRow.requirement_id, RequirementRow.label,
                   RequirementRow.status, RequirementRow.informational)
    ).all()
    for cid, req, label, status, informational in gone:
        if status == "fail" and not informational:
            deltas.failure(req, label, facts[cid] if cid in facts else _facts_of(session, cid), -1)
    day = _date(study_date)
    row = StudyResult(
        check_id=check_id, study_uid=study_uid, version=version, latest=True,
        patient_ref=patient_ref(session, patient_id) if patient_id else None,
        profile_id=result["profile"]["id"], purpose=purpose, verdict=result["verdict"],
        scanner=scanner_key(result.get("series", [])), study_date=day,
        week=week_key(day) if day else None, month=month_key(day) if day else None,
        checked_at=utcnow(),
    )
    session.add(row)
    requirements = [
        RequirementRow(check_id=check_id, latest=True, requirement_id=r["id"][:64], label=(r.get("label") or None),
                       status=r["status"], informational=bool(r.get("informational")))
        for r in result.get("requirements", [])
    ]
    session.add_all(requirements)
    mine = (row.scanner, row.profile_id, row.purpose, row.week, row.month)
    deltas.study(mine, row.verdict, None, +1)
    for q in requirements:
        if q.status == "fail" and not q.informational:
            deltas.failure(q.requirement_id, q.label, mine, +1)
    if own:
        rollup.apply(session, deltas)


FACTS = (StudyResult.scanner, StudyResult.profile_id, StudyResult.purpose, StudyResult.week, StudyResult.month)


def _facts_of(session: Session, check_id: int) -> tuple[Any, ...]:
    """The rollup facts of a version whose requirement rows were still flagged latest after its study row
    was not (only after an interrupted repair or a race the raw rows share; counted where they are)."""
    return tuple(session.execute(select(*FACTS).where(StudyResult.check_id == check_id)).one())
