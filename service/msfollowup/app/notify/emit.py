"""Enqueue notifications: called inside the transaction that records what happened.

One short call at each source (pipeline: a study check recorded; jobs: overdue patients found; the
notification worker: a report delivery failing for good, a dead part of the node). Enqueueing is
idempotent per (occurrence, destination): a pass that is retried enqueues nothing twice.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from msfollowup.site.config import Config
from msfollowup.db import Database, utcnow
from msfollowup.app.notify import events
from msfollowup.db.notifications import PENDING, NotificationDelivery


def enqueue(session: Session, cfg: Config, occ: events.Occurrence, now: dt.datetime | None = None) -> int:
    """A pending delivery per destination that wants this occurrence; returns how many were created."""
    wanted = [d for d in cfg.notify.destinations if occ.wanted_by(d)]
    if not wanted:
        return 0
    now = now or utcnow()
    existing = set(session.scalars(select(NotificationDelivery.destination)
                                   .where(NotificationDelivery.dedup_key == occ.dedup_key)))
    created = 0
    for dest in wanted:
        if dest.key in existing:
            continue
        existing.add(dest.key)
        session.add(NotificationDelivery(
            event=occ.event, dedup_key=occ.dedup_key[:255], destination=dest.key, kind=dest.kind,
            study_uid=occ.study_uid, payload_json=json.dumps(occ.payload(dest, now), default=str),
            state=PENDING, attempts=0, next_attempt_at=now, created_at=now,
        ))
        created += 1
    return created


def on_study_checked(session: Session, cfg: Config, study_uid: str, version: int, result: dict[str, Any]) -> int:
    """Hook (pipeline.check): the final verdict of one study version was recorded in this session."""
    if not cfg.notify.destinations:
        return 0
    from msfollowup.files.store import Instance, Study

    study = session.get(Study, study_uid)
    if study is None:
        return 0
    calling_ae = session.scalars(select(Instance.calling_ae).where(
        Instance.study_uid == study_uid, Instance.calling_ae.is_not(None)).limit(1)).first()
    info = {"study_instance_uid": study_uid, "accession_number": study.accession_number,
            "study_date": study.study_date, "scanner": calling_ae, "station_name": study.station_name}
    patient = {"id": study.patient_id, "name": study.patient_name, "birth_date": study.patient_birth_date}
    occ = events.study_checked(cfg.notify, result, info, version, patient)
    return enqueue(session, cfg, occ) if occ is not None else 0


def on_overdue(session: Session, cfg: Config, overdue: Iterable[Any], today: dt.date) -> int:
    """Hook (jobs.overdue_job): `overdue` are plans.DueExam past their latest date."""
    if not cfg.notify.destinations:
        return 0
    return sum(enqueue(session, cfg, events.patient_overdue(
        cfg.notify, d.patient_id, d.purpose, d.profile_id, d.target, d.latest, today)) for d in overdue)


def report_deliveries_failed(db: Database, cfg: Config) -> int:
    """Report (SR) deliveries still failing after `delivery_failed_attempts`: delivery.failed, once each."""
    if not any("delivery.failed" in d.events for d in cfg.notify.destinations):
        return 0
    from msfollowup.db.deliveries import DELIVERED, Delivery

    created = 0
    with db.session() as s:
        rows = s.execute(select(Delivery.id, Delivery.study_uid, Delivery.version, Delivery.destination,
                                Delivery.attempts, Delivery.last_error)
                         .where(Delivery.state != DELIVERED,
                                Delivery.attempts >= cfg.notify.delivery_failed_attempts)).all()
        for row in rows:
            created += enqueue(s, cfg, events.delivery_failed(*row, cfg=cfg.notify))
    return created


def on_unhealthy(db: Database, cfg: Config, parts: list[str], since: dt.datetime) -> int:
    if not any("node.unhealthy" in d.events for d in cfg.notify.destinations):
        return 0
    with db.session() as s:
        return enqueue(s, cfg, events.node_unhealthy(parts, since, cfg.node.ae_title))
