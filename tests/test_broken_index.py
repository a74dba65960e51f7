"""A broken index against the real node: failing writes, a deleted, replaced, read-only or foreign file.

Nothing acknowledged may be lost silently, health must tell the truth, and no database error may carry
the patient's values into the log.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostileutil import healthz, mr_dataset, store
from nodeutil import RunningNode, free_port

PATIENT = {"patient_id": "PHIPROBE77", "patient_name": "Wolstenholme^Araminta", "birth_date": "19540229"}


class _Node(RunningNode):
    def __init__(self, tmp: Path) -> None:
        self.http_port = free_port()
        super().__init__(tmp, sections={"http": {"port": self.http_port}})

    @property
    def index_file(self) -> Path:
        return self.data_dir / "index.sqlite3"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[_Node]:
    n = _Node(tmp_path / "node").start()
    try:
        yield n
    finally:
        n.stop()


def _refuse_writes(index: Path, tables: list[str], on: bool, how: str = "constraint") -> None:
    """Triggers that make every INSERT/UPDATE on `tables` fail, as a broken database would: with a
    constraint error, or ("operational") an operational error (a table the trigger needs is missing)."""
    body = "SELECT RAISE(ABORT, 'refused by the test')" if how == "constraint" else "INSERT INTO refused_by_the_test VALUES (1)"
    con = sqlite3.connect(index, timeout=30)
    try:
        for t in tables:
            for op in ("INSERT", "UPDATE"):
                name = f"refuse_{op.lower()}_{t}"
                con.execute(f"DROP TRIGGER IF EXISTS {name}")
                if on:
                    con.execute(f"CREATE TRIGGER {name} BEFORE {op} ON {t} BEGIN {body}; END")
        con.commit()
    finally:
        con.close()


def _assert_no_phi(log: str) -> None:
    for value in (PATIENT["patient_id"], "Wolstenholme", "Araminta", PATIENT["birth_date"]):
        assert value not in log, f"patient value {value!r} in the log:\n{log[-3000:]}"


def test_database_errors_on_every_write_path_never_log_patient_values(node: _Node) -> None:
    ingest = ["studies", "series", "instances"]
    for table in ingest:  # each ingest statement failing in turn
        _refuse_writes(node.index_file, [table], on=True)
        [status] = store(node, [mr_dataset(**PATIENT)])
        assert status not in (0, None), f"a failing {table} write was acknowledged ({status})"
        _refuse_writes(node.index_file, [table], on=False)
    # the later stages, one after the other: the study is stored, completes, and its check, report
    # and worklist writes fail (operational errors: the pipeline gives up the pass and logs it)
    _refuse_writes(node.index_file, ["audit_events"], on=True)
    assert store(node, [mr_dataset(**PATIENT)]) == [0]
    for table in ("study_checks", "reports", "worklist_steps"):
        _refuse_writes(node.index_file, [table], on=True, how="operational")
        failures = node.log().count("pass failed")
        node.wait_for(f"the pipeline to fail writing {table}",
                      lambda: node.log().count("pass failed") > failures or None, timeout=30)
        _refuse_writes(node.index_file, [table], on=False)
    _refuse_writes(node.index_file, ["audit_events"], on=False)
    log = node.log()
    assert "refused by the test" in log and "no such table: main.refused_by_the_test" in log
    _assert_no_phi(log)
