"""The same code on PostgreSQL: the node receives, completes, checks, reports and schedules with its
index in a real PostgreSQL server (what several nodes of one department will share)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest

from dicom_fixtures import generate_study
from msfollowup.app.completion import complete_due
from msfollowup.site.config import Config
from msfollowup.db import Database
from msfollowup.runtime.service import Service
from msfollowup.files.store import InstanceStore, Outcome, study_summaries
from conftest import PG_MISSING
from nodeutil import DCMTK, RunningNode

pytestmark = pytest.mark.skipif(PG_MISSING is not None, reason=str(PG_MISSING))


def test_node_on_postgresql_end_to_end(tmp_path: Path, pg_url: str) -> None:
    node = RunningNode(tmp_path, sections={"storage": {"database": pg_url}}).start()
    try:
        study = generate_study(tmp_path / "gen", vendor="ge", slices=3, seed=91, patient_id="PG1")
        res = node.storescu(study.files)
        assert res.returncode == 0, res.stderr
        assert len(node.instances(study.study_uid)) == len(study.files)
        st = node.wait_complete(study.study_uid)
        assert st.version == 1
        out = node.wait_for("no report on PostgreSQL", lambda: subprocess.run(
            [sys.executable, "-m", "msfollowup", "report", study.study_uid, "--format", "json",
             "--config", str(node.config_path)], capture_output=True, text=True).stdout)
        assert json.loads(out)["result"]["verdict"] == "compliant"
        due = json.loads(subprocess.run([sys.executable, "-m", "msfollowup", "due", "--json", "--config",
                                         str(node.config_path)], capture_output=True, text=True, check=True).stdout)
        assert [d["profile_id"] for d in due if d["patient_id"] == "PG1"] == ["ms-brain-routine"]
    finally:
        assert node.stop() == 0
    assert "ERROR" not in node.log() and "Traceback" not in node.log()


@pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed")
def test_two_nodes_sharing_one_database_complete_each_study_once(tmp_path: Path, pg_url: str) -> None:
    """Two services on one PostgreSQL index race for the same completions: every study completes
    exactly once (the compare-and-set), whoever wins."""
    services = []
    for name in ("a", "b"):
        cfg = Config.model_validate({"storage": {"data_dir": str(tmp_path / name), "database": pg_url},
                                     "completion": {"stable_seconds": 0}, "scheduler": {"enabled": False}})
        services.append(Service(cfg))
    a, b = services
    try:
        for i in range(5):
            study = generate_study(tmp_path / f"gen{i}", slices=1, seed=200 + i, patient_id=f"PG{i}")
            for f in study.files[:3]:
                tmp = a.store.tmp / f"{f.name}.part"
                tmp.write_bytes(f.read_bytes())
                a.store.ingest_file(tmp)
                tmp.unlink()
        won_a = complete_due(a.db, 0)
        won_b = complete_due(b.db, 0)
        assert len(won_a) + len(won_b) == 5
        assert not set(won_a) & set(won_b)
        rows = study_summaries(Database(pg_url))
        assert sorted((r["state"], r["version"]) for r in rows) == [("complete", 1)] * 5
    finally:
        for svc in services:
            svc.db.dispose()


def test_concurrent_first_instances_of_a_new_study_are_all_stored(tmp_path: Path, pg_url: str) -> None:
    """Senders (or nodes) that deliver the first instances of one new study at the same moment all find
    the study and series rows missing; every instance must still be stored and indexed, under one study
    row and one row per series (SQLite serialises writers; PostgreSQL does not)."""
    db = Database(pg_url)
    store = InstanceStore(tmp_path / "var", db)
    try:
        for round_ in range(4):
            study = generate_study(tmp_path / f"gen{round_}", slices=4, seed=300 + round_, patient_id=f"PR{round_}")
            files = study.files[:8]
            temps = []
            for i, f in enumerate(files):
                temps.append(store.tmp / f"r{round_}-{i}.part")
                temps[-1].write_bytes(f.read_bytes())
            barrier = threading.Barrier(len(temps))

            def ingest(temp: Path) -> Outcome:
                barrier.wait()
                return store.ingest_file(temp).outcome

            with ThreadPoolExecutor(len(temps)) as pool:
                outcomes = list(pool.map(ingest, temps))
            assert outcomes == [Outcome.STORED] * len(temps)
            [summary] = [r for r in study_summaries(db) if r["study_instance_uid"] == study.study_uid]
            assert summary["instances"] == len(files)
            assert summary["series"] == len({pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID
                                             for f in files})
    finally:
        db.dispose()
