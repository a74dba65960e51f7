"""Monitoring plans in the index database, and the next due exam(s) of each patient.

A plan (diagnosis, therapy, JCV status, flags, manual override) lives in the index database with every
change kept. The rules and the computation are pure (`msfollowup.followup`); the functions here only
gather their inputs and persist plan changes. Nothing here logs or raises with a patient identifier.
The names of the pure layer are re-exported so callers keep one import.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Date, Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from msfollowup.db import audit

from msfollowup.core import clock

from msfollowup.app import study_review
from msfollowup.db import Base, UTCDateTime, utcnow
from msfollowup.followup.due import safety_rules_applying
from msfollowup.core.dates import DAYS_PER_MONTH, add_months, add_offset, months_between
from msfollowup.followup.due import compute_due, counts_as_compliant, rule_applies
from msfollowup.followup.model import (
    CHANGE_KEYS,
    ClinicalEvent,
    JCV_VALUES,
    DueExam,
    ExamRecord,
    PlanData,
    PlanError,
    apply_changes,
    iso,
    parse_date,
)
from msfollowup.site.rules import (
    INTERVALS_FILE,
    Condition,
    IntervalRules,
    IntervalRulesError,
    Rule,
    Substitution,
    Window,
    load_interval_rules,
    parse_interval_rules,
)

__all__ = [
    "CHANGE_KEYS", "DAYS_PER_MONTH", "INTERVALS_FILE", "JCV_VALUES", "Condition", "DueExam", "ExamRecord",
    "IntervalRules", "IntervalRulesError", "MonitoringPlan", "MonitoringPlanChange", "PlanChange", "PlanData",
    "PlanError", "Rule", "Substitution", "Window", "add_months", "add_offset", "apply_changes",
    "compute_due", "counts_as_compliant", "default_author", "due_for_all", "exam_history", "get_plan",
    "load_interval_rules", "months_between", "parse_date", "parse_interval_rules",
    "plan_history", "profile_for_patient", "refresh_patient", "rule_applies", "set_plan",
]  # fmt: skip


UNDETERMINED = "undetermined"  # StudyCheck.purpose of a study no purpose could be decided for


class MonitoringPlan(Base):
    __tablename__ = "monitoring_plans"

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    diagnosed: Mapped[dt.date | None] = mapped_column(Date)
    dmt: Mapped[str | None] = mapped_column(String(64))
    dmt_start: Mapped[dt.date | None] = mapped_column(Date)
    previous_dmt: Mapped[str | None] = mapped_column(String(64))
    switch_date: Mapped[dt.date | None] = mapped_column(Date)
    jcv: Mapped[str] = mapped_column(String(16), default="unknown")
    flags_json: Mapped[str] = mapped_column(Text, default="{}")  # {"flag": "YYYY-MM-DD" set on}
    override_interval_months: Mapped[float | None] = mapped_column(Float)
    override_protocol: Mapped[str | None] = mapped_column(String(64))
    dmt_stop: Mapped[dt.date | None] = mapped_column(Date)  # current drug stopped, no successor yet
    jcv_date: Mapped[dt.date | None] = mapped_column(Date)  # day of the JCV serostatus test
    events_json: Mapped[str] = mapped_column(Text, default="[]")  # dated clinical events, oldest first
    # Demographics a user gave (issue 11); the worklist prefers them over the last study's.
    patient_name: Mapped[str | None] = mapped_column(String(200))  # DICOM PN, up to 3 groups of 64
    birth_date: Mapped[dt.date | None] = mapped_column(Date)
    sex: Mapped[str | None] = mapped_column(String(1))  # M, F, O
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(128))


class MonitoringPlanChange(Base):
    __tablename__ = "monitoring_plan_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    author: Mapped[str] = mapped_column(String(128))
    changes_json: Mapped[str] = mapped_column(Text)  # {"field": {"old": ..., "new": ...}}


@dataclass(frozen=True)
class PlanChange:
    changed_at: dt.datetime
    author: str
    changes: Mapping[str, Mapping[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"changed_at": self.changed_at.isoformat(), "author": self.author, "changes": dict(self.changes)}


def default_author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def _row_to_plan(row: MonitoringPlan) -> PlanData:
    flags = {k: (dt.date.fromisoformat(v) if v else None) for k, v in json.loads(row.flags_json or "{}").items()}
    return PlanData(
        patient_id=row.patient_id,
        diagnosed=row.diagnosed,
        dmt=row.dmt,
        dmt_start=row.dmt_start,
        previous_dmt=row.previous_dmt,
        switch_date=row.switch_date,
        jcv=row.jcv,
        flags=flags,
        override_interval_months=row.override_interval_months,
        override_protocol=row.override_protocol,
        dmt_stop=row.dmt_stop,
        jcv_date=row.jcv_date,
        events=tuple(ClinicalEvent(e["kind"], dt.date.fromisoformat(e["date"]), e.get("note", ""))
                     for e in json.loads(row.events_json or "[]")),
        patient_name=row.patient_name,
        birth_date=row.birth_date,
        sex=row.sex,
    )


def get_plan(session: Session, patient_id: str) -> PlanData | None:
    row = session.get(MonitoringPlan, patient_id)
    return _row_to_plan(row) if row is not None else None


def _diff(old: PlanData, new: PlanData) -> dict[str, dict[str, Any]]:
    a, b = old.to_json(), new.to_json()
    return {k: {"old": a[k], "new": b[k]} for k in a if k != "patient_id" and a[k] != b[k]}


def set_plan(
    session: Session,
    patient_id: str,
    changes: Mapping[str, Any],
    author: str,
    rules: IntervalRules | None = None,
    today: dt.date | None = None,
) -> PlanData:
    """Create or change a plan; every changed field is written to the history (old/new, author, time)."""
    if not isinstance(patient_id, str) or not patient_id.strip() or len(patient_id) > 64:
        raise PlanError("patient id: must be 1-64 characters")
    if not author or len(author) > 128:
        raise PlanError("author: must be 1-128 characters")
    rules = rules or load_interval_rules()
    now = utcnow()
    row = session.get(MonitoringPlan, patient_id)
    old = _row_to_plan(row) if row is not None else PlanData(patient_id=patient_id)
    day = today or clock.today()  # the clinic's day
    new = apply_changes(old, changes, rules, day)
    _refuse_relaxing_override(session, old, new, rules, day)
    diff = _diff(old, new)
    if row is None:
        diff = {"plan": {"old": None, "new": "created"}, **diff}
        row = MonitoringPlan(patient_id=patient_id, created_at=now)
        session.add(row)
    elif not diff:
        return old
    row.diagnosed, row.dmt, row.dmt_start = new.diagnosed, new.dmt, new.dmt_start
    row.previous_dmt, row.switch_date, row.jcv = new.previous_dmt, new.switch_date, new.jcv
    row.flags_json = json.dumps({k: iso(v) for k, v in sorted(new.flags.items())})
    row.override_interval_months, row.override_protocol = new.override_interval_months, new.override_protocol
    row.dmt_stop, row.jcv_date = new.dmt_stop, new.jcv_date
    row.events_json = json.dumps([e.to_json() for e in new.events])
    row.patient_name, row.birth_date, row.sex = new.patient_name, new.birth_date, new.sex
    row.updated_at, row.updated_by = now, author
    session.add(MonitoringPlanChange(patient_id=patient_id, changed_at=now, author=author, changes_json=json.dumps(diff)))
    audit.record(session, audit.PLAN_CHANGE, actor_user=author, patient_id=patient_id, detail={"fields": sorted(diff)})
    session.flush()
    return new


def _refuse_relaxing_override(session: Session, old: PlanData, new: PlanData, rules: IntervalRules,
                              today: dt.date) -> None:
    """Issue 10 item 6: an override is refused while a safety rule (PML surveillance, new deficit, switch
    vigilance) applies, naming the rule; a safety rule that starts later still counts (due.py)."""
    affected: set[str] = set()
    if new.override_interval_months is not None and new.override_interval_months != old.override_interval_months:
        affected.add("brain")  # the interval override applies to the brain item
    if new.override_protocol is not None and new.override_protocol != old.override_protocol:
        affected.add(rules.purpose_of(new.override_protocol))
    if not affected:
        return
    blocking = [r for r in safety_rules_applying(new, exam_history(session, new.patient_id, rules), today, rules)
                if r.purpose in affected]
    if blocking:
        names = ", ".join(f"{r.id} ({r.source.split(' (')[0]})" for r in blocking)
        raise PlanError(f"override: refused, safety rule(s) apply: {names}; an override may not relax them")


def plan_history(session: Session, patient_id: str) -> list[PlanChange]:
    rows = session.scalars(
        select(MonitoringPlanChange)
        .where(MonitoringPlanChange.patient_id == patient_id)
        .order_by(MonitoringPlanChange.changed_at, MonitoringPlanChange.id)
    )
    return [PlanChange(r.changed_at, r.author, json.loads(r.changes_json)) for r in rows]


def _study_date(value: str | None, fallback: dt.datetime) -> dt.date:
    if value and len(value.strip()) == 8 and value.strip().isdigit():
        try:
            return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
        except ValueError:
            pass
    return fallback.date()  # no usable StudyDate: the day it was checked is the best we know


def _failed_ids(result_json: str) -> tuple[str, ...]:
    """Requirement ids not passed; a result we cannot read is itself a failure, not a pass."""
    try:
        reqs = json.loads(result_json).get("requirements", [])
        return tuple(str(r["id"]) for r in reqs if r.get("status") != "pass")
    except (ValueError, AttributeError, TypeError, KeyError):
        return ("result.unreadable",)


def exam_history(session: Session, patient_id: str, rules: IntervalRules | None = None) -> list[ExamRecord]:
    """The patient's checked studies (latest check version per study), oldest first."""
    from msfollowup.db.checks import StudyCheck

    rules = rules or load_interval_rules()
    latest: dict[tuple[str, str], StudyCheck] = {}
    top: dict[str, int] = {}
    rows = list(session.scalars(select(StudyCheck).where(StudyCheck.patient_id == patient_id)))
    for row in rows:
        top[row.study_uid] = max(top.get(row.study_uid, 0), row.version)
    for row in rows:
        if row.version == top[row.study_uid]:
            latest[(row.study_uid, row.purpose)] = row
    ok = study_review.accepted(session, sorted(top))
    exams = [
        ExamRecord(
            study_uid=r.study_uid,
            date=_study_date(r.study_date, r.created_at),
            profile_id=r.profile_id,
            verdict=r.verdict,
            failed=_failed_ids(r.result_json) if r.verdict != "compliant" else (),
            purpose=r.purpose,
            accepted=(r.study_uid, r.purpose) in ok,
        )
        # A study whose purpose could not be decided is for review: never a failed brain exam.
        for r in latest.values() if r.purpose != UNDETERMINED
    ]
    return sorted(exams, key=lambda e: (e.date, e.study_uid))


def refresh_patient(session: Session, patient_id: str, today: dt.date, rules: IntervalRules) -> list[DueExam]:
    """Recompute from the current plan and checks; the caller hands the result to the worklist."""
    plan = get_plan(session, patient_id)
    return compute_due(plan, exam_history(session, patient_id, rules), today, rules, patient_id=patient_id)


def due_for_all(session: Session, today: dt.date, rules: IntervalRules) -> list[DueExam]:
    """Every patient with a plan or a checked study, ordered by latest date (most urgent first)."""
    from msfollowup.db.checks import StudyCheck

    ids = set(session.scalars(select(MonitoringPlan.patient_id)))
    ids |= {p for p in session.scalars(select(StudyCheck.patient_id).distinct()) if p}
    out = [d for pid in sorted(ids) for d in refresh_patient(session, pid, today, rules)]
    return sorted(out, key=lambda d: (d.latest, d.target, d.patient_id, d.purpose))


def profile_for_patient(session: Session, patient_id: str, today: dt.date, rules: IntervalRules,
                        purpose: str = "brain", exclude_study: str | None = None) -> str:
    """Profile a newly arrived study of this purpose is checked against: what the plan asked for on the
    study's date (`today`), the study itself left out of the history."""
    plan = get_plan(session, patient_id)
    exams = [e for e in exam_history(session, patient_id, rules) if e.study_uid != exclude_study]
    for due in compute_due(plan, exams, today, rules, patient_id=patient_id):
        if due.purpose == purpose:
            return due.profile_id
    return _site_default_profile(rules, purpose)


def _site_default_profile(rules: IntervalRules, purpose: str = "brain") -> str:
    for rule in rules.rules:
        if rule.id in rules.site_default and rule.purpose == purpose:
            return rule.profile
    return next((p for p in rules.richness if rules.purpose_of(p) == purpose), rules.richness[0])

