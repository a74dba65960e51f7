"""Periodic jobs: persistent APScheduler store in the index database, retention keeps reports,
worklist expiry. In-process Service (no network) on a real SQLite file and on PostgreSQL, real files."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from dicom_fixtures import generate_study
from msfollowup.runtime import jobs
from msfollowup.files import retention
from msfollowup.app.completion import complete_due
from msfollowup.site.config import Config
from msfollowup.reports.files import Report  # noqa: E402
from msfollowup.runtime.service import Service
from msfollowup.files.store import Instance, Study
from msfollowup.app.worklist import ScheduledStep, open_items


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
    svc.db.dispose()


def test_scheduler_keeps_its_jobs_in_the_index_database(service: Service) -> None:
    scheduler = jobs.start_scheduler(service)
    try:
        assert set(scheduler.jobs) == {"overdue", "worklist", "retention"}
    finally:
        scheduler.stop()
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
    removed = jobs.retention_job(service)
    assert removed == len(old.files)
    assert not (service.store.root / old.study_uid).exists()
    assert (service.store.root / new.study_uid).is_dir()
    with service.db.session() as s:
        assert s.scalar(select(Instance).where(Instance.study_uid == old.study_uid).limit(1)) is None
        report = s.scalars(select(Report).where(Report.study_uid == old.study_uid)).one()
    assert (service.cfg.storage.data_dir / report.sr_path).is_file()
    assert jobs.retention_job(service) == 0  # nothing left to remove


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
    assert jobs.worklist_job(service) == 1  # one item moved
    with service.db.session() as s:
        (kept,) = open_items(s)
        assert kept.id == item.id and kept.latest == long_ago
        assert kept.start_date == dt.date.today().strftime("%Y%m%d")
        sps = kept.dataset().ScheduledProcedureStepSequence[0]
        assert sps.ScheduledProcedureStepStartDate == kept.start_date
    assert jobs.worklist_job(service) == 0  # nothing left to move


def _overdue_row(service: Service) -> jobs.SchedulerJob:
    with service.db.session() as s:
        row = s.get(jobs.SchedulerJob, "overdue")
        assert row is not None
        s.expunge(row)
        return row


def test_periodic_job_runs_on_time_once_although_the_node_restarts_more_often_than_its_interval(
    tmp_path: Path, db_url: str
) -> None:
    """APScheduler's replace_existing=True reset each schedule at every start: a node restarted more
    often than a job's interval never ran it. The schedule must survive restarts unchanged."""
    interval = 6.0
    cfg = Config.model_validate({
        "storage": {"data_dir": str(tmp_path / "var"), "database": db_url},
        "node": {"port": 0},
        "scheduler": {"overdue_check_minutes": interval / 60},
    })
    svc = Service(cfg)
    svc.start()
    scheduled = _overdue_row(svc).next_run_at
    restarts = 0
    try:
        while (scheduled - dt.datetime.now(dt.timezone.utc)).total_seconds() > 2.0:  # restarts inside the interval
            svc.stop()
            svc = Service(cfg)
            svc.start()
            restarts += 1
            assert _overdue_row(svc).next_run_at == scheduled  # a start never moves a schedule
            time.sleep(0.3)
        assert restarts >= 2
        deadline = scheduled + dt.timedelta(seconds=interval - 1.0)  # well before the next occurrence
        while dt.datetime.now(dt.timezone.utc) < deadline:
            time.sleep(0.2)
        row = _overdue_row(svc)
    finally:
        svc.stop()
    assert row.runs == 1 and row.last_error is None
    assert row.last_run_at is not None
    lateness = (row.last_run_at - scheduled).total_seconds()
    assert 0 <= lateness < 3.0, lateness  # on time (the scheduler polls every second), not one interval late
    assert row.next_run_at == scheduled + dt.timedelta(seconds=interval)


def test_two_schedulers_on_one_database_run_each_occurrence_once(service: Service) -> None:
    """Several nodes may share one database: the compare-and-set claim lets one of them run a job."""
    a = jobs.Scheduler(service, jobs.default_jobs(service.cfg))
    b = jobs.Scheduler(service, jobs.default_jobs(service.cfg))
    a.sync()
    b.sync()
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=7)  # every job due, retention once although
    ran = a.run_due(later) + b.run_due(later)                           # more than one interval was missed
    assert sorted(ran) == ["overdue", "retention", "worklist"]
    with service.db.session() as s:
        rows = {r.id: r for r in s.scalars(select(jobs.SchedulerJob))}
    assert {k: r.runs for k, r in rows.items()} == {"overdue": 1, "retention": 1, "worklist": 1}
    assert all(r.next_run_at > later for r in rows.values())


def _old_study(service: Service, tmp_path: Path, seed: int, patient_id: str) -> Any:
    study = generate_study(tmp_path / f"s{seed}", slices=3, seed=seed, patient_id=patient_id)
    _ingest(service, study.files)
    assert len(complete_due(service.db, 0)) == 1
    service.pipeline.run_pending()  # check and report written: the study may be retired
    with service.db.session() as s:
        s.execute(update(Study).where(Study.study_uid == study.study_uid)
                  .values(last_received=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=31)))
    return study


def _missing_files(service: Service) -> list[str]:
    """Index rows whose file is gone: must never exist."""
    with service.db.session() as s:
        return [p for p in s.scalars(select(Instance.path)) if not service.store.absolute(p).is_file()]


def test_retention_crash_between_rows_and_files_is_finished_by_the_next_run(
        service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows go first (one transaction), files second: a crash in between leaves files without rows,
    never rows without files, and the next run removes those files."""
    study = _old_study(service, tmp_path, 41, "RETCRASH")

    def crash(*_args: Any) -> int:
        raise RuntimeError("simulated crash between the row and the file step")

    with monkeypatch.context() as m:
        m.setattr(retention, "remove_unindexed_files", crash)
        with pytest.raises(RuntimeError):
            jobs.retention_job(service)
    with service.db.session() as s:
        assert s.scalar(select(Instance).where(Instance.study_uid == study.study_uid).limit(1)) is None
    assert len(list((service.store.root / study.study_uid).rglob("*.dcm"))) == len(study.files)  # orphans for now
    assert _missing_files(service) == []
    assert jobs.retention_job(service) == 0  # no rows left to delete ...
    assert not (service.store.root / study.study_uid).exists()  # ... but the orphan files are gone


def test_retention_keeps_an_instance_indexed_again_between_its_steps(service: Service, tmp_path: Path) -> None:
    """A re-send of a retired instance between the row and the file step is indexed again (it was
    acknowledged): its file stays; a study received since the selection is not retired at all."""
    study = _old_study(service, tmp_path, 42, "RETRESEND")
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    assert retention.delete_rows(service.store, study.study_uid, cutoff) == len(study.files)
    _ingest(service, study.files[:1])  # re-sent: the old file is still there (duplicate), a row again
    assert retention.remove_unindexed_files(service.store, study.study_uid) == len(study.files) - 1
    assert _missing_files(service) == []
    with service.db.session() as s:
        (kept,) = s.scalars(select(Instance.path).where(Instance.study_uid == study.study_uid)).all()
    assert service.store.absolute(kept).is_file()
    # The study was reopened by the re-send: a run with the same cutoff deletes nothing.
    assert retention.delete_rows(service.store, study.study_uid, cutoff) == 0
    assert jobs.retention_job(service) == 0 and service.store.absolute(kept).is_file()


def test_a_file_removed_by_retention_before_its_index_commit_is_linked_again(
        service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The remaining interleaving: ingest links, retention (holding the study lock) removes the then
    unindexed file, ingest indexes: the ingest puts the file back from its temp copy."""
    study = generate_study(tmp_path / "race", slices=1, seed=43, patient_id="RETRACE")
    original = service.store._index

    def index_after_retention(ds: Any, uids: tuple[str, str, str], rel: str, *args: Any, **kwargs: Any) -> bool:
        service.store.absolute(rel).unlink()  # what remove_unindexed_files does to an unindexed file
        return original(ds, uids, rel, *args, **kwargs)

    monkeypatch.setattr(service.store, "_index", index_after_retention)
    _ingest(service, study.files)
    assert _missing_files(service) == []
    with service.db.session() as s:
        assert len(s.scalars(select(Instance.path).where(Instance.study_uid == study.study_uid)).all()) == len(study.files)


def test_a_file_and_its_emptied_folders_removed_by_retention_before_its_index_commit_come_back(
        service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, and retention also removed the folders it emptied (`remove_unindexed_files`): the
    ingest makes them again although its store remembered them as made (files/store.py _make_dirs)."""
    study = generate_study(tmp_path / "race", slices=1, seed=44, patient_id="RETRACE2")
    original = service.store._index
    removed: list[Path] = []

    def index_after_retention(ds: Any, uids: tuple[str, str, str], rel: str, *args: Any, **kwargs: Any) -> bool:
        path = service.store.absolute(rel)
        path.unlink()
        for folder in (path.parent, path.parent.parent):  # as retention does: a folder it emptied
            if not any(folder.iterdir()):
                folder.rmdir()
                removed.append(folder)
        return original(ds, uids, rel, *args, **kwargs)

    monkeypatch.setattr(service.store, "_index", index_after_retention)
    _ingest(service, study.files)
    assert removed, "no folder was emptied: the test lost its point"
    assert _missing_files(service) == []
    with service.db.session() as s:
        assert len(s.scalars(select(Instance.path).where(Instance.study_uid == study.study_uid)).all()) == len(study.files)
