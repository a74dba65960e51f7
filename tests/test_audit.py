"""The audit trail of the real `msfollowup serve`: stores, a rejection, an MWL query, MPPS, a delivered
SR and a plan change from the CLI, read back with `msfollowup audit`; rows cannot be changed."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)
from sqlalchemy import delete, select, update

from dicom_fixtures import generate_study
from msfollowup.db import audit
from msfollowup.db.audit import AuditError, AuditEvent
from msfollowup.db import Database
from nodeutil import DCMTK, RunningNode, free_port
from test_report_fixtures import StoreSCP

pytestmark = pytest.mark.skipif(not (DCMTK / "storescp").exists(), reason="DCMTK not installed (apt-get install dcmtk)")

PATIENT_ID = "PIDAUDIT7"
PATIENT_NAME = "SECRETNAME^AUDIT"
QUERY_VALUE = "QUERYVALUE"


def _cli(node: RunningNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "msfollowup", *args, "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=60)


def _audit(node: RunningNode, *args: str) -> list[dict[str, Any]]:
    out = _cli(node, "audit", "--json", *args)
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def _one(rows: list[dict[str, Any]], action: str, **match: Any) -> dict[str, Any]:
    found = [r for r in rows if r["action"] == action and all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, f"{action} {match}: {found or rows}"
    return found[0]


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "pacs", free_port(), ae_title="PACS")
    scp.start()
    yield scp
    scp.stop()


@pytest.fixture
def node(tmp_path: Path, destination: StoreSCP) -> Iterator[RunningNode]:
    extra = f'[[report.destinations]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {destination.port}\n'
    n = RunningNode(tmp_path / "node", extra=extra).start()
    yield n
    if n.proc is not None and n.proc.poll() is None:
        assert n.stop() == 0


def _query(node: RunningNode) -> None:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    query = Dataset()
    query.PatientName = QUERY_VALUE + "*"
    query.PatientID = ""
    sps = Dataset()
    sps.Modality = "MR"
    sps.ScheduledStationAETitle = ""
    query.ScheduledProcedureStepSequence = [sps]
    statuses = [int(st.Status) for st, _ in assoc.send_c_find(query, ModalityWorklistInformationFind) if st]
    assoc.release()
    assert statuses == [0]


def _mpps(node: RunningNode, study_uid: str) -> str:
    ae = AE(ae_title="MPPSSCU")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    ref = Dataset()
    ref.StudyInstanceUID = study_uid
    create = Dataset()
    create.ScheduledStepAttributesSequence = [ref]
    create.PatientName = PATIENT_NAME
    create.PatientID = PATIENT_ID
    create.PerformedProcedureStepStatus = "IN PROGRESS"
    create.Modality = "MR"
    uid = generate_uid()
    status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, uid)
    assert status.Status == 0
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
    assert status.Status == 0
    assoc.release()
    return uid


def test_audit_trail_of_stores_rejection_query_mpps_delivery_and_plan_change(node: RunningNode, tmp_path: Path) -> None:
    study = generate_study(tmp_path / "gen", patient_id=PATIENT_ID, patient_name=PATIENT_NAME, slices=4, rows=32, columns=32)
    assert node.storescu(study.files).returncode == 0
    intruder = AE(ae_title="INTRUDERAE")
    intruder.add_requested_context(Verification)
    assert intruder.associate("127.0.0.1", node.port, ae_title=node.ae_title).is_rejected
    node.wait_complete(study.study_uid)
    _query(node)
    mpps_uid = _mpps(node, study.study_uid)
    changed = _cli(node, "patient", "set", PATIENT_ID, "--dmt", "natalizumab", "--jcv", "positive", "--author", "dr.house")
    assert changed.returncode == 0, changed.stderr
    def with_delivery() -> list[dict[str, Any]] | None:
        r = _audit(node)
        return r if any(e["action"] == audit.REPORT_DELIVERED for e in r) else None

    rows = node.wait_for("no report.delivered audit row", with_delivery)

    # C-STORE: one row per study per association, counts instead of one row per instance
    store = _one(rows, audit.STORE, object_uid=study.study_uid)
    assert (store["actor_ae"], store["actor_host"]) == ("STORESCU", "127.0.0.1")
    assert store["detail"] == {"instances": len(study.files)}
    assoc = _one(rows, audit.ASSOCIATION_RELEASED, actor_ae="STORESCU")
    assert assoc["detail"]["stored"] == len(study.files) and assoc["detail"]["studies"] == 1
    rejected = _one(rows, audit.ASSOCIATION_REJECTED)
    assert (rejected["actor_ae"], rejected["actor_host"]) == ("INTRUDERAE", "127.0.0.1")
    assert rejected["detail"] == {"called_ae": node.ae_title, "reason": "calling AE title/host not on the allow-list"}
    # C-FIND: the keys, never their values
    query = _one(rows, audit.QUERY_MWL, actor_ae="FINDSCU")
    assert query["detail"]["matching_keys"] == ["PatientName", "ScheduledProcedureStepSequence>Modality"]
    assert query["detail"]["return_keys"] == ["PatientID", "ScheduledProcedureStepSequence>ScheduledStationAETitle"]
    assert query["detail"]["matches"] == 0 and query["detail"]["status"] == "0x0000"
    # MPPS: instance UID and the status it reported
    create = _one(rows, audit.MPPS_CREATE, object_uid=mpps_uid)
    assert create["actor_ae"] == "MPPSSCU" and create["detail"] == {"pps_status": "IN PROGRESS", "status": "0x0000"}
    assert _one(rows, audit.MPPS_SET, object_uid=mpps_uid)["detail"]["pps_status"] == "COMPLETED"
    # the SR sent to the destination
    delivered = _one(rows, audit.REPORT_DELIVERED)
    assert (delivered["actor_ae"], delivered["actor_host"]) == ("PACS", "127.0.0.1")
    assert delivered["detail"]["study_uid"] == study.study_uid and delivered["detail"]["status"] == "0x0000"
    assert delivered["object_uid"] and delivered["object_uid"] != study.study_uid
    # the plan change: author and patient ID (the database may hold the ID), fields but not values
    plan = _one(rows, audit.PLAN_CHANGE, patient_id=PATIENT_ID)
    assert plan["actor_user"] == "dr.house" and {"dmt", "jcv", "plan"} <= set(plan["detail"]["fields"])

    everything = json.dumps(rows)
    assert "SECRETNAME" not in everything and QUERY_VALUE not in everything and "natalizumab" not in everything
    times = [r["time"] for r in rows]
    assert times == sorted(times)

    text = _cli(node, "audit")
    assert text.returncode == 0 and f"patient={PATIENT_ID}" in text.stdout and "dr.house" in text.stdout
    assert len(text.stdout.splitlines()) == len(rows)
    tomorrow = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).date().isoformat()
    assert _audit(node, "--since", tomorrow) == []
    assert [r["id"] for r in _audit(node, "--action", audit.PLAN_CHANGE)] == [plan["id"]]
    bad = _cli(node, "audit", "--since", "last tuesday")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_audit_rows_cannot_be_changed_or_deleted(db_url: str) -> None:
    db = Database(db_url)
    audit.record(db, audit.PLAN_CHANGE, actor_user="someone", patient_id="P1", detail={"fields": ["dmt"]})
    with pytest.raises(AuditError, match="append-only"):
        with db.session() as s:
            row = s.scalars(select(AuditEvent)).one()
            row.actor_user = "someone else"
    with pytest.raises(AuditError, match="append-only"):
        with db.session() as s:
            s.delete(s.scalars(select(AuditEvent)).one())
    with pytest.raises(AuditError, match="append-only"):
        with db.session() as s:
            s.execute(update(AuditEvent).values(actor_user="someone else"))
    with pytest.raises(AuditError, match="append-only"):
        with db.session() as s:
            s.execute(delete(AuditEvent))
    with pytest.raises(AuditError, match="unknown audit action"):
        audit.record(db, "made.up")
    (kept,) = list(audit.events(db))
    assert kept["actor_user"] == "someone" and kept["detail"] == {"fields": ["dmt"]}
    db.dispose()


def test_query_keys_name_keys_never_values() -> None:
    ds = Dataset()
    ds.PatientName = "DOE^J*"
    ds.PatientID = ""
    ds.AccessionNumber = "*"
    ds.add_new(0x00091010, "LO", "private")
    sps = Dataset()
    sps.ScheduledProcedureStepStartDate = "20260101-20260131"
    sps.ScheduledProtocolCodeSequence = []
    ds.ScheduledProcedureStepSequence = [sps]
    matching, returned = audit.query_keys(ds)
    assert matching == ["(0009,1010)", "PatientName", "ScheduledProcedureStepSequence>ScheduledProcedureStepStartDate"]
    assert returned == ["AccessionNumber", "PatientID", "ScheduledProcedureStepSequence>ScheduledProtocolCodeSequence"]
    assert "DOE" not in json.dumps([matching, returned])
