"""Worklist items (list, cancel with a reason), deliveries and the audit trail, as the web shows them."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from msfollowup.db import audit

from msfollowup.app import worklist
from msfollowup.app.results import PatientRef, patient_refs
from msfollowup.app.worklist.closing import CANCELLED, close
from msfollowup.db.worklist import DISCONTINUED
from msfollowup.db.deliveries import Delivery


class OperationError(ValueError):
    """A request that cannot be done (unknown item, closed item, no reason)."""


def worklist_items(session: Session, page: int = 1, per_page: int = 100) -> dict[str, Any]:
    page, per_page = max(1, page), min(max(1, per_page), 5000)
    open_ = worklist.ScheduledStep.open_key.is_not(None)
    total = session.scalar(select(func.count()).select_from(worklist.ScheduledStep).where(open_)) or 0
    steps = session.scalars(select(worklist.ScheduledStep).where(open_)
                            .order_by(worklist.ScheduledStep.start_date, worklist.ScheduledStep.id)
                            .limit(per_page).offset((page - 1) * per_page)).all()
    refs = patient_refs(session, [s.patient_id for s in steps])
    return {"total": total, "page": page, "per_page": per_page, "items": [
        {"id": s.id, "patient": refs[s.patient_id], "patient_id": s.patient_id, "accession_number": s.accession_number,
         "purpose": s.purpose, "profile": s.profile_id, "recall": s.recall, "station_ae": s.station_ae,
         "start_date": s.start_date, "earliest": s.earliest.isoformat(), "latest": s.latest.isoformat(),
         "sps_status": s.sps_status} for s in steps]}


def cancel_item(session: Session, item_id: int, reason: str, author: str, host: str | None = None) -> None:
    step = session.get(worklist.ScheduledStep, item_id)
    if step is None:
        raise OperationError(f"no worklist item {item_id}")
    if not step.is_open:
        raise OperationError(f"worklist item {item_id} is already closed ({step.close_reason})")
    reason = (reason or "").strip()
    if len(reason) < 3:
        raise OperationError("reason: say why (at least 3 characters)")
    # The worklist's own close keeps the export folder in step (the .wl file is removed on commit) and
    # writes the one audit row of every close, here with the signed-in user and the reason as its note.
    close(session, step, DISCONTINUED, CANCELLED, user=author, note=reason[:500], host=host)


def deliveries(session: Session, state: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    stmt = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if state:
        stmt = stmt.where(Delivery.state == state)
    return [{"id": d.id, "study_instance_uid": d.study_uid, "version": d.version, "destination": d.destination,
             "state": d.state, "attempts": d.attempts, "last_error": d.last_error,
             "next_attempt_at": d.next_attempt_at.isoformat() if d.state != "delivered" else None,
             "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None}
            for d in session.scalars(stmt)]


def audit_events(session: Session, action: str | None = None, user: str | None = None,
                 since: dt.datetime | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """The newest events first; plan changes link to the patient by internal number."""
    ev = audit.AuditEvent
    stmt = select(ev, PatientRef.id).outerjoin(PatientRef, PatientRef.patient_id == ev.patient_id) \
        .order_by(ev.time.desc(), ev.id.desc()).limit(limit)
    if action:
        stmt = stmt.where(ev.action == action)
    if user:
        stmt = stmt.where(ev.actor_user == user)
    if since:
        stmt = stmt.where(ev.time >= since)
    return [{"id": r.id, "time": r.time.isoformat(), "action": r.action, "actor_user": r.actor_user,
             "actor_ae": r.actor_ae, "actor_host": r.actor_host, "object_uid": r.object_uid,
             "patient": ref, "detail": json.loads(r.detail or "{}")} for r, ref in session.execute(stmt)]
