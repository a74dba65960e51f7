"""Periodic jobs: persistent APScheduler store in the index database, retention keeps reports,
worklist expiry. In-process Service (no network) on a real SQLite file and on PostgreSQL, real files."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from dicom_fixtures import generate_study
from msfollowup import jobs
from msfollowup.completion import complete_due
from msfollowup.config import Config
from msfollowup.report import Report
from msfollowup.service import Service
from msfollowup.store import Instance, Study
from msfollowup.worklist import ScheduledStep, open_items


def _ingest(service: Service, files: list[Path]) -> None:
    """What the node does for each received file: a temp copy in tmp/, then ingest."""
    for f in files:
        tmp = service.store.tmp / f"{f.name}.part"
        shutil.copyfile(f, tmp)
        service.store.ingest_file(tmp)
        tmp.unlink()


@pytest.fixture
def service(tmp_path: Path, db_url: str) -> Iterator[Service]:
    cfg = Config.model_validate({
        "storage": {"data_dir": str(tmp_path / "var"), "database": db_url},
        "scheduler": {"retention_days": 30},
        "completion": {"stable_seconds": 0},
    })
    svc = Service(cfg)
    yield svc
    jobs.bind(None)
    svc.db.dispose()


def test_scheduler_keeps_its_jobs_in_the_index_database(service: Service) -> None:
    scheduler = jobs.start_scheduler(service)
    try:
        assert {j.id for j in scheduler.get_jobs()} == {"overdue", "worklist", "retention"}
    finally:
        scheduler.shutdown(wait=False)
    with service.db.session() as s:
        stored = set(s.execute(text("SELECT id FROM scheduler_jobs")).scalars())
    assert stored == {"overdue", "worklist", "retention"}


def test_retention_removes_old_instances_but_keeps_reports(service: Service, tmp_path: Path) -> None:
    old = generate_study(tmp_path / "old", slices=2, seed=31, patient_id="RET1")
    new = generate_study(tmp_path / "new", slices=2, seed=32, patient_id="RET2")
    _ingest(service, old.files + new.files)
    assert len(complete_due(service.db, 0)) == 2
    service.pipeline.run_pending()  # checks, reports, worklist
    with service.db.session() as s:
        s.execute(update(Study).where(Study.study_uid == old.study_uid)
                  .values(last_received=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=31)))
    jobs.bind(service)
    removed = jobs.retention_job()
    assert removed == len(old.files)
    assert not (service.store.root / old.study_uid).exists()
    assert (service.store.root / new.study_uid).is_dir()
    with service.db.session() as s:
        assert s.scalar(select(Instance).where(Instance.study_uid == old.study_uid).limit(1)) is None
        report = s.scalars(select(Report).where(Report.study_uid == old.study_uid)).one()
    assert (service.cfg.storage.data_dir / report.sr_path).is_file()
    assert jobs.retention_job() == 0  # nothing left to remove


def test_worklist_job_keeps_overdue_items_and_moves_them_to_today(service: Service, tmp_path: Path) -> None:
    """Issue 11: an overdue item stays on the worklist (window kept), starting today."""
    study = generate_study(tmp_path / "s", slices=2, seed=33, patient_id="EXP1")
    _ingest(service, study.files)
    complete_due(service.db, 0)
    service.pipeline.run_pending()
    long_ago = dt.date.today() - dt.timedelta(days=service.cfg.worklist.expire_days + 200)
    with service.db.session() as s:
        (item,) = open_items(s)
        s.execute(update(ScheduledStep).where(ScheduledStep.id == item.id)
                  .values(latest=long_ago, start_date=long_ago.strftime("%Y%m%d")))
    jobs.bind(service)
    assert jobs.worklist_job() == 1  # one item moved
    with service.db.session() as s:
        (kept,) = open_items(s)
        assert kept.id == item.id and kept.latest == long_ago
        assert kept.start_date == dt.date.today().strftime("%Y%m%d")
        sps = kept.dataset().ScheduledProcedureStepSequence[0]
        assert sps.ScheduledProcedureStepStartDate == kept.start_date
    assert jobs.worklist_job() == 0  # nothing left to move
