"""Periodic jobs run by APScheduler inside `serve`: overdue detection, worklist expiry and export
repair, retention clean-up of received instances (reports are kept).

The job store is the index database, so schedules survive restarts. APScheduler 3 job stores must not
be shared by two schedulers: in a multi-node deployment exactly one node sets `[scheduler] enabled`.
Jobs are module-level functions (a persistent store keeps them by name); they reach the running
service through `bind`, which `serve` calls once.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select

from msfollowup.db import utcnow

if TYPE_CHECKING:
    from msfollowup.service import Service

log = logging.getLogger(__name__)
_service: Service | None = None


def bind(service: Service | None) -> None:
    global _service
    _service = service


def _svc() -> Service:
    if _service is None:
        raise RuntimeError("jobs run only inside `msfollowup serve`")
    return _service


def overdue_job() -> int:
    """Count patients past the latest date of their window (a log line; the web page will list them)."""
    from msfollowup import clock, plans

    svc = _svc()
    rules = plans.load_interval_rules(svc.cfg.validation.protocols_dir)
    today = clock.today()  # the one clock (MSFOLLOWUP_TODAY in tests)
    with svc.db.session() as s:
        overdue = [d for d in plans.due_for_all(s, today, rules) if d.overdue(today)]
    if overdue:
        log.warning("overdue follow-up exams: %d", len(overdue))
    return len(overdue)


def worklist_job() -> int:
    """Expire stale worklist items and make the export folder match the open items."""
    from msfollowup import worklist

    svc = _svc()
    with svc.db.session() as s:
        expired = worklist.expire(s, utcnow(), svc.cfg)
        worklist.sync_export(s, svc.cfg)
    if expired:
        log.info("worklist items expired: %d", len(expired))
    return len(expired)


def retention_job() -> int:
    """Remove received instances of studies older than `retention_days` whose reports are written."""
    from msfollowup.report import Report
    from msfollowup.store import Study, StudyState

    svc = _svc()
    days = svc.cfg.scheduler.retention_days
    if days is None:
        return 0
    cutoff = utcnow() - dt.timedelta(days=days)
    with svc.db.session() as s:
        uids = list(s.scalars(
            select(Study.study_uid).where(
                Study.state == StudyState.COMPLETE.value,
                Study.last_received < cutoff,
                select(Report.id).where(Report.study_uid == Study.study_uid, Report.version == Study.version,
                                        Report.written_at.is_not(None)).exists(),
            )
        ))
    removed = sum(svc.store.delete_study_files(uid) for uid in uids)
    if removed:
        log.info("retention removed %d instance(s) of %d studies", removed, len(uids))
    return removed


def start_scheduler(service: Service) -> BackgroundScheduler:
    bind(service)
    cfg = service.cfg.scheduler
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=service.db.engine, tablename="scheduler_jobs")},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        timezone="UTC",
    )
    common: dict[str, Any] = {"replace_existing": True}
    scheduler.add_job(overdue_job, "interval", minutes=cfg.overdue_check_minutes, id="overdue", **common)
    scheduler.add_job(worklist_job, "interval", minutes=10, id="worklist", next_run_time=utcnow(), **common)
    scheduler.add_job(retention_job, "interval", hours=6, id="retention", **common)
    scheduler.start()
    return scheduler
