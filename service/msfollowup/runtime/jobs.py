"""Periodic jobs of `serve`: overdue detection, worklist expiry and export repair, retention clean-up
of received instances (reports are kept).

The schedule lives in the index database (`scheduler_jobs`: one row per job with its next run), and
a start only *adds* missing rows: it never moves an existing job's next run, so a node restarted
more often than a job's interval still runs it on time (APScheduler's `replace_existing=True` reset
every schedule at each start, and a frequently restarted node never ran its 6-hourly retention).
A due job is claimed with a compare-and-set UPDATE that moves its next run one interval on: several
nodes sharing one database run each occurrence once, and missed occurrences (node down) are run
once, not once per missed interval. The loop is the same PollingWorker as the pipeline's and the
outbox's.

Jobs are plain functions of a `JobContext` (what they need of the running service, passed in, no
module-global service locator, no import of `msfollowup.runtime.service`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Float, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from msfollowup.site.config import Config
from msfollowup.db import Base, Database, UTCDateTime, utcnow
from msfollowup.core.worker import PollingWorker

log = logging.getLogger(__name__)
ERROR_MAX = 500


class InstanceFiles(Protocol):
    def delete_study_files(self, study_uid: str, cutoff: dt.datetime | None = None) -> int: ...


class JobContext(Protocol):
    """The parts of a running node a job may use (Service provides them)."""

    @property
    def cfg(self) -> Config: ...

    @property
    def db(self) -> Database: ...

    @property
    def store(self) -> InstanceFiles: ...


class SchedulerJob(Base):
    """One periodic job's schedule; `next_run_at` only ever moves forward, by a claim."""

    __tablename__ = "scheduler_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    interval_seconds: Mapped[float] = mapped_column(Float)
    next_run_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    last_run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_duration_seconds: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    runs: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(64))  # the node that ran it last


# --- the jobs ------------------------------------------------------------------------------------


def overdue_job(ctx: JobContext) -> int:
    """Count patients past the latest date of their window (a log line; the web page will list them)."""
    from msfollowup.core import clock
    from msfollowup.app import plans

    rules = plans.load_interval_rules(ctx.cfg.validation.protocols_dir)
    today = clock.today()  # the one clock (MSFOLLOWUP_TODAY in tests)
    with ctx.db.session() as s:
        overdue = [d for d in plans.due_for_all(s, today, rules) if d.overdue(today)]
        from msfollowup.app.notify.emit import on_overdue  # issue 15

        on_overdue(s, ctx.cfg, overdue, today)
    if overdue:
        log.warning("overdue follow-up exams: %d", len(overdue))
    return len(overdue)


def worklist_job(ctx: JobContext) -> int:
    """Overdue worklist items start today (they stay until performed); the export folder matches."""
    from msfollowup.app import worklist

    with ctx.db.session() as s:
        moved = worklist.expire(s, utcnow(), ctx.cfg)
        worklist.sync_export(s, ctx.cfg)
    return len(moved)


def retention_job(ctx: JobContext) -> int:
    """Remove received instances of studies older than `retention_days` whose reports are written.

    Rows first, then files (msfollowup.files.retention): an old study whose files outlived a crash after its
    rows were deleted is selected again and its files removed by this run."""
    from msfollowup.reports.files import Report
    from msfollowup.files.store import Study, StudyState

    days = ctx.cfg.scheduler.retention_days
    if days is None:
        return 0
    cutoff = utcnow() - dt.timedelta(days=days)
    with ctx.db.session() as s:
        uids = list(s.scalars(
            select(Study.study_uid).where(
                Study.state == StudyState.COMPLETE.value,
                Study.last_received < cutoff,
                select(Report.id).where(Report.study_uid == Study.study_uid, Report.version == Study.version,
                                        Report.written_at.is_not(None)).exists(),
            )
        ))
    removed = sum(ctx.store.delete_study_files(uid, cutoff) for uid in uids)
    if removed:
        log.info("retention removed %d instance(s) of %d studies", removed, len(uids))
    return removed


@dataclass(frozen=True)
class PeriodicJob:
    id: str
    interval: dt.timedelta
    run: Callable[[JobContext], object]
    run_at_first_start: bool = False  # first run when the job is new (else one interval later)


def default_jobs(cfg: Config) -> list[PeriodicJob]:
    return [
        PeriodicJob("overdue", dt.timedelta(minutes=cfg.scheduler.overdue_check_minutes), overdue_job),
        PeriodicJob("worklist", dt.timedelta(minutes=10), worklist_job, run_at_first_start=True),
        PeriodicJob("retention", dt.timedelta(hours=6), retention_job),
    ]


# --- the scheduler -------------------------------------------------------------------------------


def next_after(scheduled: dt.datetime, interval: dt.timedelta, now: dt.datetime) -> dt.datetime:
    """The first occurrence of the job's grid after `now`: missed occurrences collapse into one run."""
    if now < scheduled:
        return scheduled
    missed = math.floor((now - scheduled) / interval) + 1
    return scheduled + missed * interval


class Scheduler:
    """Runs due periodic jobs from the database schedule; `run_due` for tests and tools."""

    def __init__(self, ctx: JobContext, jobs: Sequence[PeriodicJob], poll_seconds: float = 1.0) -> None:
        self.ctx = ctx
        self.jobs = {j.id: j for j in jobs}
        self.node_id = f"node-{uuid.uuid4().hex[:16]}"
        self._worker = PollingWorker("scheduler", poll_seconds, self.run_due)

    @property
    def running(self) -> bool:
        return self._worker.is_alive()

    def start(self) -> None:
        self.sync()
        self._worker.start()

    def stop(self, timeout: float = 30) -> None:
        self._worker.stop(timeout)

    def sync(self, now: dt.datetime | None = None) -> None:
        """Add the rows of new jobs; follow a changed interval without postponing a due run."""
        now = now or utcnow()
        with self.ctx.db.session() as s:
            rows = {r.id: r for r in s.scalars(select(SchedulerJob).where(SchedulerJob.id.in_(self.jobs)))}
            for job in self.jobs.values():
                seconds = job.interval.total_seconds()
                row = rows.get(job.id)
                if row is None:
                    first = now if job.run_at_first_start else now + job.interval
                    s.add(SchedulerJob(id=job.id, interval_seconds=seconds, next_run_at=first, runs=0))
                elif row.interval_seconds != seconds:
                    row.interval_seconds = seconds
                    row.next_run_at = min(row.next_run_at, now + job.interval)

    def run_due(self, now: dt.datetime | None = None) -> list[str]:
        """Claim and run every due job; returns the ids this node ran."""
        now = now or utcnow()
        with self.ctx.db.session() as s:
            due = s.execute(
                select(SchedulerJob.id, SchedulerJob.next_run_at)
                .where(SchedulerJob.id.in_(self.jobs), SchedulerJob.next_run_at <= now)
                .order_by(SchedulerJob.next_run_at)
            ).all()
        ran = []
        for job_id, scheduled in due:
            job = self.jobs[job_id]
            if self._claim(job, scheduled, now):
                self._run(job)
                ran.append(job_id)
        return ran

    def _claim(self, job: PeriodicJob, scheduled: dt.datetime, now: dt.datetime) -> bool:
        """Compare-and-set: only the node that moves `next_run_at` from what it saw runs it."""
        with self.ctx.db.session() as s:
            res = s.execute(
                update(SchedulerJob)
                .where(SchedulerJob.id == job.id, SchedulerJob.next_run_at == scheduled)
                .values(next_run_at=next_after(scheduled, job.interval, now), claimed_by=self.node_id)
            )
        return cast(CursorResult[Any], res).rowcount == 1

    def _run(self, job: PeriodicJob) -> None:
        started, t0 = utcnow(), time.monotonic()
        error: str | None = None
        try:
            job.run(self.ctx)
        except Exception as exc:  # noqa: BLE001 - a failed run is recorded and retried at the next occurrence
            log.exception("periodic job %s failed", job.id)
            error = f"{type(exc).__name__}: {exc}"[:ERROR_MAX]
        with self.ctx.db.session() as s:
            s.execute(
                update(SchedulerJob)
                .where(SchedulerJob.id == job.id)
                .values(last_run_at=started, last_duration_seconds=time.monotonic() - t0, last_error=error,
                        runs=SchedulerJob.runs + 1)
            )


def start_scheduler(ctx: JobContext, poll_seconds: float = 1.0) -> Scheduler:
    scheduler = Scheduler(ctx, default_jobs(ctx.cfg), poll_seconds)
    scheduler.start()
    return scheduler
