"""/metrics and /healthz of the real `msfollowup serve`: storescu, a rejected association and a C-FIND
move the counters; nothing from a data set (names, IDs, UIDs) or an AE title ever shows up."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from dicom_fixtures import generate_study
from msfollowup.app.metrics import LATENCY_BUCKETS, HealthProbe, Metrics
from msfollowup.app.worklist import ScheduledStep
from nodeutil import DCMTK, RunningNode, dataset_bytes, free_port

pytestmark = pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed (apt-get install dcmtk)")

PATIENT_ID = "PIDSECRET42"
PATIENT_NAME = "SECRETNAME^ZOE"
_SAMPLE = re.compile(r'^([a-z_][a-z0-9_]*)(\{([a-z_]+="[^"\\]*"(,[a-z_]+="[^"\\]*")*)\})? (\S+)$')


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as rsp:
            return rsp.status, rsp.headers["Content-Type"], rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def _parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Exposition text -> {name: {labels: value}}; fails on any line that is not valid 0.0.4 syntax."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("# HELP "):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not an exposition line: {line!r}"
        name, labels = m.group(1), tuple(re.findall(r'([a-z_]+)="([^"]*)"', m.group(3) or ""))
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, f"{name} sampled before its # TYPE line"
        samples.setdefault(name, {})[labels] = float(m.group(5))
    return samples


class _Node(RunningNode):
    def __init__(self, tmp: Path) -> None:
        self.http_port = free_port()
        super().__init__(tmp, sections={"http": {"port": self.http_port}})

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def scrape(self) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
        status, ctype, text = _get(self.url("/metrics"))
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        return text, _parse(text)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[_Node]:
    n = _Node(tmp_path / "node")
    n.start()
    yield n
    if n.proc is not None and n.proc.poll() is None:
        assert n.stop() == 0


def _mwl_find(node: RunningNode, patient_id: str, sps_items: int = 1) -> tuple[int, int]:
    """(pending responses, final status) of one MWL C-FIND by patient ID."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    query = Dataset()
    query.PatientID = patient_id
    query.PatientName = ""
    sps = Dataset()
    sps.Modality = "MR"
    sps.ScheduledProcedureStepStartDate = ""
    query.ScheduledProcedureStepSequence = [sps] * sps_items
    pending, final = 0, -1
    try:
        for status, _identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            if status and status.Status in (0xFF00, 0xFF01):
                pending += 1
            elif status:
                final = int(status.Status)
    finally:
        assoc.release()
    return pending, final


def _open_items(node: RunningNode) -> int:
    with node.db.session() as s:
        return s.scalar(select(func.count()).select_from(ScheduledStep).where(ScheduledStep.open_key.is_not(None))) or 0


def _rejected_association(node: RunningNode) -> None:
    ae = AE(ae_title="INTRUDERAE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 5
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_rejected


def test_metrics_move_with_traffic_and_carry_no_patient_data(node: _Node, tmp_path: Path) -> None:
    _, before = node.scrape()
    assert before["msfollowup_instances_total"][(("outcome", "stored"),)] == 0  # declared series start at zero
    study = generate_study(tmp_path / "gen", patient_id=PATIENT_ID, patient_name=PATIENT_NAME, slices=4, rows=32, columns=32)
    sent = node.storescu(study.files)
    assert sent.returncode == 0, sent.stderr
    _rejected_association(node)
    node.wait_complete(study.study_uid)
    # the pipeline checks the study and puts the patient's next exam on the worklist
    node.wait_for("no verdict in /metrics", lambda: node.scrape()[1].get("msfollowup_study_checks"))
    open_items = node.wait_for("no worklist item", lambda: _open_items(node))
    pending, final = _mwl_find(node, PATIENT_ID)
    assert final == 0 and pending == 1
    assert _mwl_find(node, PATIENT_ID, sps_items=2) == (0, 0xA900)  # a query sequence holds one item

    text, m = node.scrape()
    assert m["msfollowup_instances_total"][(("outcome", "stored"),)] == len(study.files)
    assert m["msfollowup_instances_total"][(("outcome", "failed"),)] == 0
    on_wire = sum(len(dataset_bytes(f)) for f in study.files)
    assert on_wire <= m["msfollowup_received_bytes_total"][()] <= on_wire + 2048 * len(study.files)
    # accepted: the start-up echo, storescu, the C-FIND (the scrape itself is not DICOM)
    assert m["msfollowup_associations_total"][(("result", "accepted"),)] >= 3
    assert m["msfollowup_associations_total"][(("result", "rejected"),)] == 1
    assert m["msfollowup_associations_rejected_total"][(("reason", "not_allowed"),)] == 1
    assert m["msfollowup_associations_ended_total"][(("outcome", "released"),)] >= 3
    assert m["msfollowup_studies_completed_total"][()] == 1
    (verdicts,) = [m["msfollowup_study_checks"]]
    assert sum(verdicts.values()) == 1
    ((labels, _),) = verdicts.items()
    assert dict(labels)["profile"] == "ms-brain-routine" and dict(labels)["verdict"] in ("compliant", "non-compliant", "unverifiable")
    assert m["msfollowup_studies"][(("state", "complete"),)] == 1
    assert m["msfollowup_worklist_open_items"][()] == open_items
    assert m["msfollowup_outbox_backlog"][()] == 0
    # C-FIND: one request, matches as the client saw them, a consistent histogram
    assert m["msfollowup_cfind_requests_total"][(("status", "success"),)] == 1
    assert m["msfollowup_cfind_requests_total"][(("status", "failure"),)] == 1
    assert m["msfollowup_cfind_matches_total"][()] == pending
    assert m["msfollowup_cfind_duration_seconds_count"][()] == 2
    assert m["msfollowup_cfind_duration_seconds_sum"][()] > 0
    buckets = m["msfollowup_cfind_duration_seconds_bucket"]
    counts = [buckets[(("le", b),)] for b in [*(repr(x) for x in LATENCY_BUCKETS), "+Inf"]]
    assert counts == sorted(counts) and counts[-1] == 2
    assert m["msfollowup_uptime_seconds"][()] > 0
    assert m["msfollowup_database_up"][()] == 1
    # no patient data, no UIDs, no AE titles or hosts anywhere in a scrape
    for secret in (PATIENT_ID, "SECRETNAME", "ZOE", study.study_uid, "STORESCU", "INTRUDERAE", "FINDSCU", "127.0.0.1"):
        assert secret not in text, f"{secret} leaked into /metrics"
    assert PATIENT_ID not in node.log() and "SECRETNAME" not in node.log()


def test_healthz_ok_then_503_naming_storage_when_tmp_is_not_a_folder(node: _Node) -> None:
    status, ctype, body = _get(node.url("/healthz"))
    assert status == 200 and ctype == "application/json", body
    report: dict[str, Any] = json.loads(body)
    assert report["status"] == "ok"
    assert report["checks"] == {"database": "ok", "storage": "ok", "node": "ok", "scheduler": "ok"}
    assert not [p for p in (node.data_dir / "tmp").iterdir() if p.name.startswith(".healthz")]

    # Root ignores permission bits, so make tmp/ unusable for real: a plain file in its place.
    tmp = node.data_dir / "tmp"
    shutil.move(str(tmp), str(node.data_dir / "tmp.moved"))
    tmp.write_bytes(b"not a folder")
    try:
        status, _, body = _get(node.url("/healthz"))
        report = json.loads(body)
        assert status == 503 and report["status"] == "failing"
        assert report["checks"]["storage"].startswith("NotADirectoryError")
        assert report["checks"]["database"] == "ok" and report["checks"]["scheduler"] == "ok"
    finally:
        tmp.unlink()
        shutil.move(str(node.data_dir / "tmp.moved"), str(tmp))
    assert _get(node.url("/healthz"))[0] == 200
    assert _get(node.url("/nothing-here"))[0] == 404


def test_healthz_503_naming_the_database_when_its_write_fails(node: _Node) -> None:
    """The probe table dropped behind the node's back: SELECT 1 still answers, the write does not."""
    HealthProbe.__table__.drop(node.db.engine)  # type: ignore[attr-defined]
    try:
        status, _, body = _get(node.url("/healthz"))
        report = json.loads(body)
        assert status == 503 and report["checks"]["database"].startswith("OperationalError"), body
        assert "health_probes" in report["checks"]["database"]
        assert report["checks"]["storage"] == "ok"
    finally:
        HealthProbe.__table__.create(node.db.engine)  # type: ignore[attr-defined]
    assert _get(node.url("/healthz"))[0] == 200


def test_registry_refuses_labels_outside_the_declared_sets() -> None:
    """The reason no AE title or patient ID can become a label: values come from fixed sets."""
    metrics = Metrics()
    metrics.inc("instances_total", {"outcome": "stored"})
    with pytest.raises(ValueError, match="no value"):
        metrics.inc("instances_total", {"outcome": PATIENT_ID})
    with pytest.raises(ValueError, match="takes labels"):
        metrics.inc("instances_total", {"outcome": "stored", "calling_ae": "STORESCU"})
    with pytest.raises(ValueError, match="not a declared"):
        metrics.inc("made_up_total")
    with pytest.raises(ValueError, match="not a declared"):
        metrics.observe("instances_total", 1.0)
    assert metrics.value("instances_total", {"outcome": "stored"}) == 1


def test_associations_beyond_the_limit_are_counted_and_audited(tmp_path: Path) -> None:
    """pynetdicom rejects these itself (max_associations), not our allow-list: still counted."""
    from msfollowup.db import audit

    http_port = free_port()
    node = RunningNode(tmp_path / "node", sections={"node": {"max_associations": 1}, "http": {"port": http_port}}).start()
    try:
        ae = AE(ae_title="ECHOSCU")
        ae.add_requested_context(Verification)
        held = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert held.is_established
        second = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert second.is_rejected
        held.release()
        _, _, text = _get(f"http://127.0.0.1:{http_port}/metrics")
        m = _parse(text)
        assert m["msfollowup_associations_rejected_total"][(("reason", "limit"),)] == 1
        assert m["msfollowup_associations_rejected_total"][(("reason", "not_allowed"),)] == 0
        rows = [r for r in audit.events(node.db) if r["action"] == audit.ASSOCIATION_REJECTED]
        assert [(r["actor_ae"], r["detail"]["reason"]) for r in rows] == [("ECHOSCU", "too many associations")]
    finally:
        assert node.stop() == 0


def test_an_http_port_in_use_stops_start_up_with_a_message_naming_it(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = RunningNode(tmp_path / "node", sections={"http": {"port": port}})
        with pytest.raises(RuntimeError, match=rf"http\.port: cannot listen on 127\.0\.0\.1:{port}: Address already in use"):
            node.start()
    assert node.proc is not None and node.proc.wait(10) == 2


def test_healthz_503_when_the_index_is_locked_longer_than_a_probe_may_wait(node: _Node) -> None:
    """Another writer holds the SQLite write lock: the probe's write waits, /healthz answers in time."""
    import sqlite3

    from msfollowup.app.metrics import CHECK_TIMEOUT

    locker = sqlite3.connect(node.data_dir / "index.sqlite3", timeout=5, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        status, _, body = _get(node.url("/healthz"))
        report = json.loads(body)
        assert status == 503 and report["checks"]["database"] == f"no answer within {CHECK_TIMEOUT:g} s", body
        assert report["checks"]["storage"] == "ok" and report["checks"]["node"] == "ok"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    node.wait_for("healthz not back to 200", lambda: _get(node.url("/healthz"))[0] == 200)
