"""Schema versions (Alembic): a fresh index is created at the head revision and equals the models; a
database built by release 0.1.0 (its create_all, commit 9b0320c), with data in it, is refused by
`serve` with a message naming `msfollowup db upgrade`, upgraded by that command (or by the node when
`storage.auto_upgrade = true`) without losing a row; a database newer than the node is refused.
SQLite file and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, Table, insert, select, text

from msfollowup import cli

from msfollowup.db import migrate as dbmigrate
from msfollowup.site.config import Config
from msfollowup.db import Database, make_engine
from msfollowup.runtime.jobs import SchedulerJob
from msfollowup.runtime.service import Service

DATA = Path(__file__).resolve().parent / "data"
T0 = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.timezone.utc)
STUDY = "1.2.826.0.1.3680043.8.498.1001"
SERIES = "1.2.826.0.1.3680043.8.498.1002"
SOP = "1.2.826.0.1.3680043.8.498.1003"
SR = "1.2.826.0.1.3680043.8.498.1004"
APS_NEXT_RUN = dt.datetime(2026, 1, 5, 15, 30, tzinfo=dt.timezone.utc)


def _model_diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, dbmigrate.metadata()))


def _legacy_database(url: str) -> Engine:
    """A 0.1.0 index: its DDL (frozen in tests/data) and one row in the tables a study passes through."""
    engine = make_engine(url)
    ddl = (DATA / f"schema_0_1_0.{engine.dialect.name}.sql").read_text()
    with engine.begin() as conn:
        for stmt in (s.strip() for s in ddl.split(";")):
            body = "\n".join(line for line in stmt.splitlines() if not line.startswith("--")).strip()
            if body:
                conn.exec_driver_sql(body)
    md = MetaData()
    t = {name: Table(name, md, autoload_with=engine) for name in (
        "studies", "series", "instances", "study_checks", "reports", "report_deliveries",
        "monitoring_plans", "audit_events", "scheduler_jobs")}
    with engine.begin() as conn:
        conn.execute(insert(t["studies"]).values(
            study_uid=STUDY, state="complete", version=1, patient_id="MIG1", first_received=T0, last_received=T0,
            completed_at=T0, complete_requested=False))
        conn.execute(insert(t["series"]).values(series_uid=SERIES, study_uid=STUDY, first_received=T0))
        conn.execute(insert(t["instances"]).values(
            sop_instance_uid=SOP, series_uid=SERIES, study_uid=STUDY, sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
            transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"{STUDY}/{SERIES}/{SOP}.dcm", size=1234, received_at=T0))
        conn.execute(insert(t["study_checks"]).values(
            study_uid=STUDY, version=1, profile_id="ms-brain-routine", profile_version="1", verdict="compliant",
            result_json="{}", created_at=T0, followup_done=True))
        report_id = conn.execute(insert(t["reports"]).values(
            study_uid=STUDY, version=1, sr_sop_instance_uid=SR, sr_series_instance_uid=SR + ".1", verdict="compliant",
            sr_path=f"reports/{STUDY}/v1.dcm", created_at=T0, written_at=T0)).inserted_primary_key[0]
        conn.execute(insert(t["report_deliveries"]).values(
            report_id=report_id, study_uid=STUDY, version=1, sr_sop_instance_uid=SR, sr_path=f"reports/{STUDY}/v1.dcm",
            destination="PACS@127.0.0.1:104", ae_title="PACS", host="127.0.0.1", port=104, calling_ae_title="MSF",
            state="delivered", attempts=1, next_attempt_at=T0, created_at=T0, delivered_at=T0))
        conn.execute(insert(t["monitoring_plans"]).values(
            patient_id="MIG1", jcv="negative", flags_json="{}", created_at=T0, updated_at=T0, updated_by="test"))
        conn.execute(insert(t["audit_events"]).values(time=T0, action="store", object_uid=STUDY, detail="{}"))
        conn.execute(insert(t["scheduler_jobs"]).values(
            id="retention", next_run_time=APS_NEXT_RUN.timestamp(), job_state=b"\x80\x04pickled"))
    return engine


def _assert_data_kept(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(text("SELECT patient_id, version FROM studies")).all() == [("MIG1", 1)]
        assert conn.execute(text("SELECT sop_instance_uid, size FROM instances")).all() == [(SOP, 1234)]
        assert conn.execute(text("SELECT verdict FROM study_checks")).scalars().all() == ["compliant"]
        assert conn.execute(text("SELECT sr_sop_instance_uid FROM reports")).scalars().all() == [SR]
        assert conn.execute(text("SELECT state FROM report_deliveries")).scalars().all() == ["delivered"]
        assert conn.execute(text("SELECT jcv FROM monitoring_plans")).scalars().all() == ["negative"]
        assert conn.execute(text("SELECT action FROM audit_events")).scalars().all() == ["store"]
    db = Database(str(engine.url.render_as_string(hide_password=False)))
    try:
        with db.session() as s:  # the schedule of the 0.1.0 node carries over: the upgrade postpones nothing
            (job,) = s.scalars(select(SchedulerJob)).all()
        assert (job.id, job.next_run_at) == ("retention", APS_NEXT_RUN)
    finally:
        db.dispose()


def test_the_fast_path_revision_is_the_head_of_the_migrations() -> None:
    """db.HEAD_REVISION lets an up-to-date database skip Alembic; a new migration must move it too."""
    from msfollowup.db import HEAD_REVISION

    assert HEAD_REVISION == dbmigrate.head_revision()


def test_fresh_database_is_created_at_head_and_equals_the_models(db_url: str) -> None:
    db = Database(db_url)
    try:
        state = dbmigrate.schema_state(db.engine)
        assert state.up_to_date and state.current == dbmigrate.head_revision()
        assert _model_diff(db.engine) == []  # a model change without its migration fails here
    finally:
        db.dispose()


def test_database_of_release_0_1_0_is_refused_until_db_upgrade(db_url: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    engine = _legacy_database(db_url)
    with pytest.raises(dbmigrate.SchemaError, match="msfollowup db upgrade"):
        Database(db_url)
    config = tmp_path / "msfollowup.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "var"}"\ndatabase = "{db_url}"\n')
    assert cli.main(["db", "status", "--config", str(config)]) == 1
    assert "needs `msfollowup db upgrade`" in capsys.readouterr().out
    assert cli.main(["db", "upgrade", "--config", str(config)]) == 0
    assert f"-> {dbmigrate.head_revision()}" in capsys.readouterr().out
    assert dbmigrate.schema_state(engine).up_to_date
    assert _model_diff(engine) == []
    _assert_data_kept(engine)
    assert cli.main(["db", "upgrade", "--config", str(config)]) == 0
    assert "already at" in capsys.readouterr().out
    engine.dispose()


def test_serve_refuses_an_old_database_and_names_the_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    _legacy_database(url).dispose()
    config = tmp_path / "msfollowup.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "var"}"\ndatabase = "{url}"\n[node]\nport = 0\n')
    res = subprocess.run([sys.executable, "-m", "msfollowup", "serve", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "msfollowup db upgrade" in res.stderr and "Traceback" not in res.stderr
    assert "MIG1" not in res.stderr


def test_node_upgrades_an_old_database_itself_when_configured(db_url: str, tmp_path: Path) -> None:
    engine = _legacy_database(db_url)
    cfg = Config.model_validate({"storage": {"data_dir": str(tmp_path / "var"), "database": db_url,
                                             "auto_upgrade": True}})
    svc = Service(cfg)
    svc.db.dispose()
    assert dbmigrate.schema_state(engine).up_to_date
    _assert_data_kept(engine)
    engine.dispose()


def test_a_database_newer_than_the_node_is_refused(db_url: str) -> None:
    Database(db_url).dispose()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    for auto_upgrade in (False, True):
        with pytest.raises(dbmigrate.SchemaError, match="newer than this msfollowup"):
            Database(db_url, auto_upgrade=auto_upgrade)
    engine.dispose()
