"""The store's index rows, in-process on a real SQLite file and real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom

from dicom_fixtures import generate_study
from msfollowup.db import Database
from msfollowup.store import InstanceStore, Study


def test_multi_valued_character_set_is_indexed_in_dicom_backslash_form(tmp_path: Path) -> None:
    study = generate_study(tmp_path / "gen", slices=1, seed=41)
    ds = pydicom.dcmread(study.files[0])
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    source = tmp_path / "one.dcm"
    ds.save_as(source)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "var", db)
    temp = store.tmp / "one.part"
    shutil.copyfile(source, temp)
    store.ingest_file(temp)
    with db.session() as s:
        row = s.get(Study, study.study_uid)
        assert row is not None and row.specific_character_set == "ISO 2022 IR 6\\ISO 2022 IR 87"


def test_group_commit_shares_one_commit_and_isolates_a_failing_instance(tmp_path: Path) -> None:
    """Work queued while another commit runs goes into one transaction; a failure undoes only its rows."""
    import threading
    import time

    from sqlalchemy import event, text

    from msfollowup.groupcommit import GroupCommit

    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    with db.engine.begin() as c:
        c.execute(text("CREATE TABLE gc (k TEXT PRIMARY KEY)"))
    commits: list[int] = []
    event.listen(db.engine, "commit", lambda _conn: commits.append(1))
    gc = GroupCommit(lambda: db.engine)
    first_running = threading.Event()

    def slow(c: object) -> str:
        first_running.set()
        time.sleep(0.5)  # the others queue meanwhile
        c.execute(text("INSERT INTO gc VALUES ('first')"))  # type: ignore[attr-defined]
        return "first"

    def insert(key: str) -> object:
        def fn(c: object) -> str:
            c.execute(text("INSERT INTO gc VALUES (:k)"), {"k": key})  # type: ignore[attr-defined]
            if key == "bad":
                raise ValueError("refused")
            return key
        return fn

    results: dict[str, object] = {}

    def run(key: str, fn: object) -> None:
        try:
            results[key] = gc.run(fn)  # type: ignore[arg-type]
        except ValueError as exc:
            results[key] = exc

    threads = [threading.Thread(target=run, args=("first", slow))]
    threads[0].start()
    assert first_running.wait(5)
    commits.clear()
    for key in ("a", "bad", "b"):
        t = threading.Thread(target=run, args=(key, insert(key)))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(10)
    assert results["first"] == "first" and results["a"] == "a" and results["b"] == "b"
    assert isinstance(results["bad"], ValueError)
    with db.engine.connect() as c:
        keys = sorted(r[0] for r in c.execute(text("SELECT k FROM gc")))
    assert keys == ["a", "b", "first"]  # the failing work's row was rolled back, its batch mates kept
    assert len(commits) == 2  # the first alone, then a, bad and b together
