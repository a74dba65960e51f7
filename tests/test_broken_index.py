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


# --- item 6: index deleted or replaced under the running node; start-up against store/ ------------------


def _msfollowup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "msfollowup", *args], capture_output=True, text=True, timeout=300)


def _start_fails(node: _Node) -> str:
    """Start the node expecting a refusal; returns its log (the message)."""
    before = len(node.log())
    with pytest.raises(RuntimeError, match="exited with 2"):
        node.start(timeout=30)
    return node.log()[before:]


def _indexed_sops(node: _Node) -> set[str]:
    con = sqlite3.connect(node.index_file)
    try:
        return {r[0] for r in con.execute("SELECT sop_instance_uid FROM instances")}
    finally:
        con.close()


def test_index_deleted_while_running_fails_health_refuses_stores_and_start_until_rebuilt(tmp_path: Path) -> None:
    node = _Node(tmp_path / "node").start()
    try:
        acknowledged = [mr_dataset() for _ in range(3)]
        assert store(node, acknowledged) == [0, 0, 0]
        assert healthz(node.http_port)[0] == 200
        for part in node.data_dir.glob("index.sqlite3*"):
            part.unlink()
        status, body = healthz(node.http_port)
        assert status == 503 and "was removed while in use" in str(body["checks"]["database"]), body
        [answer] = store(node, [mr_dataset()])
        assert answer is not None and 0xA700 <= answer <= 0xA7FF, f"a C-STORE into a deleted index got 0x{answer or 0:04X}"
    finally:
        node.stop()
    log = _start_fails(node)
    assert "has no instances but" in log and "msfollowup index rebuild" in log and "Traceback" not in log
    out = _msfollowup("index", "rebuild", "--config", str(node.config_path))
    assert out.returncode == 0, out.stderr
    assert "3 instances indexed" in out.stdout
    assert _indexed_sops(node) == {str(ds.SOPInstanceUID) for ds in acknowledged}
    node.start()
    try:
        assert healthz(node.http_port)[0] == 200
        assert store(node, [mr_dataset()]) == [0]
    finally:
        node.stop()


def test_index_rebuild_refuses_while_a_node_holds_the_data_folder(node: _Node) -> None:
    """The rebuild takes the data folder's lock that `serve` holds: with the node running it refuses,
    naming the folder and what to do, and touches nothing (no index moved aside, no file indexed)."""
    assert store(node, [mr_dataset()]) == [0]
    # reports/ may appear meanwhile: the running node checks and reports the stored study on its own
    before = sorted(p.name for p in node.data_dir.iterdir() if p.name != "reports")
    out = _msfollowup("index", "rebuild", "--config", str(node.config_path))
    assert out.returncode == 2, out.stdout
    assert "index rebuild refused: a node is running on the data folder" in out.stderr
    assert str(node.data_dir) in out.stderr and "stop it first" in out.stderr and "Traceback" not in out.stderr
    assert "indexed" not in out.stdout
    assert sorted(p.name for p in node.data_dir.iterdir() if p.name != "reports") == before  # nothing moved aside
    assert node.echo() and store(node, [mr_dataset()]) == [0]  # the node goes on, its lock untouched
    node.stop()
    out = _msfollowup("index", "rebuild", "--config", str(node.config_path))
    assert out.returncode == 0 and "0 instances indexed, 2 already indexed" in out.stdout, out.stderr
    node.start()  # the rebuild released the lock


def test_index_replaced_while_running_fails_health(node: _Node) -> None:
    assert store(node, [mr_dataset()]) == [0]
    copy = node.index_file.with_name("copy.sqlite3")
    con = sqlite3.connect(node.index_file)
    con.execute(f"VACUUM INTO '{copy}'")
    con.close()
    copy.replace(node.index_file)
    status, body = healthz(node.http_port)
    assert status == 503 and "was replaced while in use" in str(body["checks"]["database"]), body


# --- item 9: a corrupted or foreign index file ---------------------------------------------------


@pytest.mark.parametrize("content", [b"\x00garbage" * 4096, b"SQLite format 3\x00" + b"\xff" * 5000],
                         ids=["foreign", "corrupted"])
def test_unusable_index_file_gives_one_message_naming_it_and_the_rebuild_command(tmp_path: Path, content: bytes) -> None:
    node = _Node(tmp_path / "node").start()
    acknowledged = [mr_dataset() for _ in range(2)]
    try:
        assert store(node, acknowledged) == [0, 0]
    finally:
        node.stop()
    for part in node.data_dir.glob("index.sqlite3-*"):
        part.unlink()
    node.index_file.write_bytes(content)
    for args in (["serve"], ["studies"]):
        out = _msfollowup(*args, "--config", str(node.config_path))
        assert out.returncode == 2, (args, out.returncode, out.stderr[-2000:])
        assert "Traceback" not in out.stderr
        assert f"{node.index_file}: not a usable index database" in out.stderr
        assert "msfollowup index rebuild" in out.stderr
    out = _msfollowup("index", "rebuild", "--config", str(node.config_path))
    assert out.returncode == 0, out.stderr
    assert "moved aside to" in out.stderr and "2 instances indexed" in out.stdout
    assert list(node.data_dir.glob("index.sqlite3.unusable-*")), "the unusable file was not kept"
    assert _indexed_sops(node) == {str(ds.SOPInstanceUID) for ds in acknowledged}


# --- item 7: health commits a real write -----------------------------------------------------------


def test_healthz_fails_the_database_check_when_the_index_cannot_take_writes(tmp_path: Path) -> None:
    """The index on its own small disk fills up: C-STOREs fail 0xA7xx, and /healthz must say so (a
    rolled-back probe never reached the disk and passed)."""
    from test_faults import _fill, _tmpfs

    with _tmpfs(tmp_path / "db", "2m") as db_fs:
        http_port = free_port()
        node = RunningNode(tmp_path / "node", stable_seconds=30, sections={
            "storage": {"database": f"sqlite:///{db_fs / 'index.sqlite3'}"}, "http": {"port": http_port}}).start()
        try:
            acknowledged = [mr_dataset() for _ in range(2)]
            assert store(node, acknowledged) == [0, 0]
            assert healthz(http_port)[0] == 200
            (db_fs / "fill").mkdir()
            _fill(db_fs / "fill")
            statuses = store(node, [mr_dataset() for _ in range(3)])
            assert all(s is not None and 0xA700 <= s <= 0xA7FF for s in statuses), statuses
            status, body = healthz(http_port)
            assert status == 503 and body["checks"]["database"] != "ok", body  # type: ignore[index]
            assert "full" in str(body["checks"]), body
            for f in (db_fs / "fill").iterdir():
                f.unlink()
            assert healthz(http_port)[0] == 200
            assert store(node, [mr_dataset()]) == [0]
        finally:
            node.stop()
