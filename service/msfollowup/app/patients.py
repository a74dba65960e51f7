"""Patients: the due / overdue / recall lists, one patient's page, and plan changes from the web.

The due list is read from the open worklist items: every check and every plan change schedules the
patient's next exam(s) there (pipeline.schedule_patient), so the list is one indexed query instead of
recomputing 20,000 plans per request. The patient page recomputes that patient's due exams live, with
the rules and sources that decided.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from msfollowup.app import plans
from msfollowup.app.compliance import exam_timeline
from msfollowup.app.results import PatientRef, patient_ref, patient_refs
from msfollowup.site.config import Config
from msfollowup.app.worklist import ScheduledStep

STATUSES = ("due", "overdue", "recall")
# Text fields of the web plan form, named as the plan change keys (`patient set` takes the same).
PLAN_FORM_FIELDS = ("dmt", "dmt_start", "previous_dmt", "switch_date", "jcv", "diagnosed", "override_interval",
                    "override_protocol", "patient_name", "birth_date", "sex")
SORTS = {"latest": ScheduledStep.latest, "target": ScheduledStep.target, "profile": ScheduledStep.profile_id}


class PatientError(ValueError):
    """Unknown patient or bad list parameter (the message names it)."""


@dataclass(frozen=True)
class DueFilters:
    profile: str | None = None
    purpose: str | None = None
    status: str | None = None  # due / overdue / recall
    sort: str = "latest"

    @classmethod
    def parse(cls, q: dict[str, str]) -> DueFilters:
        status, sort = q.get("status") or None, q.get("sort") or "latest"
        if status not in (None, *STATUSES):
            raise PatientError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
        if sort not in SORTS:
            raise PatientError(f"sort: {sort!r} is not one of {', '.join(SORTS)}")
        return cls(profile=q.get("profile") or None, purpose=q.get("purpose") or None, status=status, sort=sort)


def due_list(session: Session, f: DueFilters, today: dt.date, page: int = 1, per_page: int = 100) -> dict[str, Any]:
    page, per_page = max(1, page), min(max(1, per_page), 5000)
    where: list[ColumnElement[bool]] = [ScheduledStep.open_key.is_not(None)]
    if f.profile:
        where.append(ScheduledStep.profile_id == f.profile)
    if f.purpose:
        where.append(ScheduledStep.purpose == f.purpose)
    if f.status == "overdue":
        where.append(ScheduledStep.latest < today)
    elif f.status == "recall":
        where.append(ScheduledStep.recall.is_(True))
    elif f.status == "due":
        where += [ScheduledStep.latest >= today, ScheduledStep.recall.is_(False)]
    total = session.scalar(select(func.count()).select_from(ScheduledStep).where(*where)) or 0
    rows = session.execute(
        select(ScheduledStep, PatientRef.id).outerjoin(PatientRef, PatientRef.patient_id == ScheduledStep.patient_id)
        .where(*where).order_by(SORTS[f.sort], ScheduledStep.id).limit(per_page).offset((page - 1) * per_page)
    ).all()
    missing = [s.patient_id for s, ref in rows if ref is None]
    refs = patient_refs(session, missing) if missing else {}
    items = []
    for step, ref in rows:
        items.append({
            "patient": ref or refs[step.patient_id], "patient_id": step.patient_id, "purpose": step.purpose,
            "profile": step.profile_id, "earliest": step.earliest.isoformat(), "target": step.target.isoformat(),
            "latest": step.latest.isoformat(),
            "status": "overdue" if step.latest < today else ("recall" if step.recall else "due"),
            "recall": step.recall, "worklist_item": step.id, "sps_status": step.sps_status,
        })
    return {"total": total, "page": page, "per_page": per_page, "items": items}


def _patient_id(session: Session, ref: int) -> str:
    pid = session.scalar(select(PatientRef.patient_id).where(PatientRef.id == ref))
    if pid is None:
        raise PatientError(f"no patient {ref}")
    return pid


def patient_page(session: Session, ref: int, today: dt.date, rules: plans.IntervalRules) -> dict[str, Any]:
    """Timeline of exams, plan with history and authors, next due exam(s) with rules, worklist items."""
    from msfollowup.app.reviews import reference_study

    pid = _patient_id(session, ref)
    plan = plans.get_plan(session, pid)
    due = plans.refresh_patient(session, pid, today, rules)
    by_id = {r.id: r for r in rules.rules}
    steps = session.scalars(select(ScheduledStep).where(ScheduledStep.patient_id == pid)
                            .order_by(ScheduledStep.created_at.desc(), ScheduledStep.id.desc()).limit(20)).all()
    return {
        "patient": ref, "patient_id": pid,
        "plan": plan.to_json() if plan else None,
        "history": [h.to_json() for h in plans.plan_history(session, pid)],
        "due": [d.to_json() | {"overdue": d.overdue(today),
                               "rules": [{"id": r, "source": by_id[r].source if r in by_id else None,
                                          "description": by_id[r].description if r in by_id else None}
                                         for r in d.rule_ids]} for d in due],
        "exams": exam_timeline(session, ref),
        "reference_study": reference_study(session, ref),
        "worklist": [{"id": s.id, "purpose": s.purpose, "profile": s.profile_id, "sps_status": s.sps_status,
                      "open": s.is_open, "close_reason": s.close_reason, "accession_number": s.accession_number,
                      "window": [s.earliest.isoformat(), s.target.isoformat(), s.latest.isoformat()],
                      "start_date": s.start_date} for s in steps],
        "rules_version": rules.version,
    }


def update_plan(session: Session, ref: int, changes: dict[str, Any], author: str, cfg: Config, today: dt.date,
                rules: plans.IntervalRules) -> dict[str, Any]:
    """The CLI's `patient set` for one patient: same validation (plans.set_plan), then reschedule."""
    from msfollowup.app.pipeline import schedule_patient

    pid = _patient_id(session, ref)
    plan = plans.set_plan(session, pid, changes, author, rules=rules, today=today)
    schedule_patient(session, cfg, pid, today)
    return {"plan": plan.to_json(), "due": [d.to_json() for d in plans.refresh_patient(session, pid, today, rules)]}


def ref_of(session: Session, patient_id: str) -> int:
    return patient_ref(session, patient_id)


def drug_names(protocols_dir: Path | None = None) -> list[str]:
    """Generic and brand names of the site's drug vocabulary (protocols/drugs.toml), offered in the plan
    form; the form refuses any other name as the CLI does (`unlisted:NAME` for a drug not in the list)."""
    from msfollowup.site.drugs import load_vocabulary

    return sorted({n for d in load_vocabulary(protocols_dir).drug for n in (d.name, *d.brands)}, key=str.lower)
