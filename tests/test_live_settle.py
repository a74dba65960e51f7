"""The settle detector on SQLite and PostgreSQL: a series is judged only once it has been quiet for
settle_seconds (or an MPPS completion covers the study), a result is recorded and published only when
it changed, and a restart does not duplicate the history."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from dicom_fixtures import generate_study
from msfollowup.site.config import Config
from msfollowup.db import Database, utcnow
from msfollowup.db import provisional as records
from msfollowup.app.live.broker import Broker
from msfollowup.app.live import settle
from msfollowup.app.live.settle import LiveChecker
from msfollowup.files.store import Instance, InstanceStore, Study


def _ingest(store: InstanceStore, files: list[Path]) -> None:
    for f in files:
        with store.temp_file() as t:
            t.write(f.read_bytes())
        store.ingest_file(Path(t.name), calling_ae="MR7")
        os.unlink(t.name)


def test_series_are_judged_once_settled_and_only_changes_are_recorded(db_url: str, tmp_path: Path) -> None:
    cfg = Config.model_validate({"storage": {"data_dir": str(tmp_path / "var"), "database": db_url},
                                 "live": {"settle_seconds": 5}})
    db = Database(db_url)
    store = InstanceStore(cfg.storage.data_dir, db, fsync=False)
    study = generate_study(tmp_path / "study", profile="ms-brain-routine", slices=3, accession="A9")
    broker = Broker()
    sub = broker.subscribe()
    checker = LiveChecker(db, cfg, store, broker)
    loc, t1_pre, flair, t2, t1_post = study.series
    _ingest(store, list(loc.files) + list(t1_pre.files))
    t0 = utcnow()
    assert checker.run_once(now=t0) == 1  # the study appears: both series still receiving
    (first,) = sub.drain()
    assert first["series"] == [] and {r["series_instance_uid"] for r in first["receiving"]} == {
        loc.series_uid, t1_pre.series_uid}
    assert checker.run_once(now=t0 + dt.timedelta(seconds=1)) == 0  # nothing changed
    later = t0 + dt.timedelta(seconds=6)
    assert checker.run_once(now=later) == 1
    (settled,) = sub.drain()
    assert {s["series_instance_uid"] for s in settled["series"]} == {loc.series_uid, t1_pre.series_uid}
    assert settled["scanner"] == "MR7" and settled["accession_number"] == "A9"
    # A lone T1 without contrast attributes is not yet known to be pre-contrast (issue 13: never guess
    # "pre" from silence): it is uncertain until the study pattern (a later T1, same geometry) decides.
    assert "sequence.t1_pre" in {m["id"] for m in settled["uncertain"]}
    assert "sequence.t1_pre" not in {m["id"] for m in settled["met"]}
    assert {"sequence.t2_flair", "sequence.t2"} <= {m["id"] for m in settled["missing"]}
    assert checker.run_once(now=later) == 0
    # An MPPS COMPLETED (complete_requested) settles everything at once, without waiting.
    _ingest(store, [f for s in (flair, t2, t1_post) for f in s.files])
    with db.session() as s:
        s.execute(update(Study).where(Study.study_uid == study.study_uid).values(complete_requested=True))
    now = utcnow()
    assert checker.run_once(now=now) == 1
    (whole,) = sub.drain()
    assert whole["missing"] == [] and whole["receiving"] == [] and len(whole["series"]) == 5
    assert {"sequence.t1_pre", "sequence.t1_post"} <= {m["id"] for m in whole["met"]}
    # A restarted worker (empty memory) finds the same state: no new row, nothing published.
    fresh = LiveChecker(db, cfg, store, broker)
    assert fresh.run_once(now=now) == 0
    with db.session() as s:
        history = records.history(s, study.study_uid)
    assert len(history) == 3
    db.dispose()
    shutil.rmtree(tmp_path / "var", ignore_errors=True)


def test_a_settled_series_is_classified_once_and_the_profile_looked_up_when_the_settled_set_changes(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: a check that only adds an arriving series reuses each settled series' classification
    and the study's expected profile; what it publishes is what a fresh checker computes from scratch."""
    cfg = Config.model_validate({"storage": {"data_dir": str(tmp_path / "var"), "database": db_url},
                                 "live": {"settle_seconds": 5}})
    db = Database(db_url)
    store = InstanceStore(cfg.storage.data_dir, db, fsync=False)
    study = generate_study(tmp_path / "study", profile="ms-brain-routine", slices=3, accession="A10")
    calls = {"classify": 0, "profile": 0}

    def counted(name: str, real: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            calls[name] += 1
            return real(*args)
        return wrapper

    monkeypatch.setattr(settle, "classify_series", counted("classify", settle.classify_series))
    monkeypatch.setattr(settle, "expected_profile", counted("profile", settle.expected_profile))
    checker = LiveChecker(db, cfg, store, Broker())
    loc, t1_pre, flair, t2, _t1_post = study.series
    t0 = utcnow()

    def quiet_since_a_minute() -> None:  # every instance so far arrived long ago: those series settle
        with db.session() as s:
            s.execute(update(Instance).where(Instance.study_uid == study.study_uid)
                      .values(received_at=t0 - dt.timedelta(minutes=1)))

    _ingest(store, list(loc.files) + list(t1_pre.files))
    quiet_since_a_minute()
    assert checker.run_once(now=t0) == 1 and calls == {"classify": 2, "profile": 1}
    _ingest(store, list(flair.files))  # one more series arriving: nothing settled changed
    assert checker.run_once(now=t0 + dt.timedelta(seconds=1)) == 1 and calls == {"classify": 2, "profile": 1}
    quiet_since_a_minute()
    assert checker.run_once(now=t0 + dt.timedelta(seconds=2)) == 1  # FLAIR settles: only it is classified
    assert calls == {"classify": 3, "profile": 2}
    _ingest(store, list(t2.files))
    assert checker.run_once(now=t0 + dt.timedelta(seconds=3)) == 1  # T2 arriving: listed, the rest reused
    assert calls == {"classify": 3, "profile": 2}
    quiet_since_a_minute()
    later = t0 + dt.timedelta(seconds=4)
    assert checker.run_once(now=later) == 1  # T2 settles
    assert calls == {"classify": 4, "profile": 3}
    fresh = LiveChecker(db, cfg, store, Broker())  # no caches: computes everything, finds the same result
    assert fresh.run_once(now=later) == 0
    db.dispose()
    shutil.rmtree(tmp_path / "var", ignore_errors=True)
