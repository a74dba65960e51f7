"""Issue 10 on the running node (storescu -> completion -> per-purpose check -> next due exam), with the
service's clock fixed by MSFOLLOWUP_TODAY and the CLI's by --today.

Scenarios: a spine study for a patient with brain and spine items; an unverifiable study accepted by QA;
a partial recall completed; a scanner change against the most recent compliant reference.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_fixtures import generate_study
from nodeutil import DCMTK, RunningNode

pytestmark = pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed (apt-get install dcmtk)")

TODAY = "2026-06-15"
SMALL: dict[str, Any] = {"slices": 2, "rows": 16, "columns": 16}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    mp = pytest.MonkeyPatch()
    mp.setenv("MSFOLLOWUP_TODAY", TODAY)  # the service's one clock
    n = RunningNode(tmp_path_factory.mktemp("clinical-node")).start()
    try:
        yield n
    finally:
        n.stop()
        mp.undo()


def cli(node: RunningNode, *args: str) -> Any:
    proc = subprocess.run([sys.executable, "-m", "msfollowup", *args, "--config", str(node.config_path),
                           "--today", TODAY], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip().startswith(("[", "{")) else proc.stdout


def send(node: RunningNode, tmp: Path, name: str, patient: str, date: str, **kw: Any) -> str:
    study = generate_study(tmp / name, patient_id=patient, patient_name="TEST^CLINICAL", study_date=date, **SMALL, **kw)
    assert node.storescu(study.files).returncode == 0
    node.wait_complete(study.study_uid)
    return study.study_uid


def purposes(node: RunningNode, uid: str) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        rows = [r for r in cli(node, "studies", "--json") if r["study_instance_uid"] == uid]
        return rows[0]["purposes"] if rows and rows[0]["purposes"] else None

    return node.wait_for(f"study {uid} not checked", probe, 90)


def due(node: RunningNode, patient: str) -> dict[str, dict[str, Any]]:
    return {d["purpose"]: d for d in cli(node, "due", "--json") if d["patient_id"] == patient}


def test_spine_study_is_checked_against_the_spine_profile_and_moves_only_the_spine_clock(
        node: RunningNode, tmp_path: Path) -> None:
    """001: "spinal cord MRI once yearly" for spinal symptoms; 004: "MRI cervical and thoracic spine".
    A compliant cervical + thoracic study satisfies the spine item and is not a failed brain exam."""
    pid = "CLIN-SPINE"
    cli(node, "patient", "set", pid, "--flag", "spinal_symptoms", "--dmt", "ocrelizumab", "--dmt-start", "2018-01-01")
    uid = send(node, tmp_path, "spine", pid, "20260610", profile="ms-spine-new-deficit", seed=11)
    (check,) = purposes(node, uid)
    assert check["purpose"] == "spine" and check["profile_id"] == "ms-spine-new-deficit"
    assert check["verdict"] == "compliant", check
    items = node.wait_for("spine clock not moved", lambda: (d := due(node, pid)) and
                          d.get("spine", {}).get("target") == "2027-06-10" and d, 60)
    assert not items["spine"]["recall"]
    assert not items["brain"]["recall"] and items["brain"]["based_on_study"] is None  # brain still owed


def test_unverifiable_study_does_not_count_until_accepted(node: RunningNode, tmp_path: Path) -> None:
    """002: post-contrast T1 "a minimum of 5 min" after contrast; unknown start time is unverifiable
    (GUIDELINES.md section 2) and, issue 10 item 5, does not reset the clock until a QA lead accepts it."""
    pid = "CLIN-UNVERIFIABLE"
    cli(node, "patient", "set", pid, "--dmt", "ocrelizumab", "--dmt-start", "2018-01-01")
    uid = send(node, tmp_path, "unverifiable", pid, "20260610", defects=["no_contrast_start"], seed=12)
    (check,) = purposes(node, uid)
    assert check["verdict"] == "unverifiable" and check["review"]
    brain = node.wait_for("not listed for review", lambda: (b := due(node, pid).get("brain")) and b["review"] and b, 60)
    assert brain["review"] == [uid] and not brain["recall"] and brain["target"] <= TODAY
    done = cli(node, "study", "accept", uid, "--reason", "contrast given at 09:02 per the nurse's sheet")
    assert done[0]["decision"] == "accept"
    brain = due(node, pid)["brain"]
    assert brain["target"] == "2027-06-10" and not brain["review"]  # 002 Box 2: annual, from the accepted study
    audit = cli(node, "audit", "--action", "study.accept", "--json")
    assert any(a.get("object_uid") == uid for a in audit)
    # The dashboard counts it as accepted too (the same use case as the web's "accept as compliant").
    from msfollowup.app.results import StudyResult
    from msfollowup.app.rollup import ComplianceCell

    with node.db.session() as s:
        reviewed = s.query(StudyResult.reviewed_verdict).filter_by(study_uid=uid, latest=True).all()
        rows = s.query(StudyResult.verdict, StudyResult.reviewed_verdict).filter_by(latest=True).all()
        cells: dict[tuple[str, str], int] = {}
        for c in s.query(ComplianceCell).all():
            cells[(c.verdict, c.reviewed)] = cells.get((c.verdict, c.reviewed), 0) + c.studies
    assert reviewed == [("compliant",)]
    accepted = sum(1 for v, r in rows if (v, r) == ("unverifiable", "compliant"))
    waiting = sum(1 for v, r in rows if v == "unverifiable" and r is None)
    assert accepted >= 1 and cells.get(("unverifiable", "compliant"), 0) == accepted
    assert cells.get(("unverifiable", ""), 0) == waiting


def test_partial_recall_is_completed_by_the_missing_series(node: RunningNode, tmp_path: Path) -> None:
    """GUIDELINES.md section 3: "A study that misses a required series should produce a recall item for the
    missing part, not reset the clock"; issue 10 item 5: the recall asks only for what was missing and a
    study that supplies it completes the earlier exam (the clock counts from that exam)."""
    pid = "CLIN-RECALL"
    cli(node, "patient", "set", pid, "--dmt", "ocrelizumab", "--dmt-start", "2018-01-01")
    first = send(node, tmp_path, "missing", pid, "20260601", defects=["missing_t1_post"], seed=13)
    (check,) = purposes(node, first)
    assert check["verdict"] == "non-compliant"
    brain = node.wait_for("no recall", lambda: (b := due(node, pid).get("brain")) and b["recall"] and b, 60)
    # The lone T1 has no contrast evidence (issue 13): the post-contrast T1 is surely missing and the pre-contrast
    # one unverifiable, so the recall asks for both T1s (enhancement is judged against a T1 of the same session).
    assert brain["profile_id"] == "ms-brain-routine@t1_pre,t1_post"
    assert brain["required_series"] == ["Pre-contrast T1", "Post-contrast T1"]
    second = send(node, tmp_path, "repeat", pid, "20260608", seed=14)
    (check,) = purposes(node, second)
    assert check["profile_id"] == "ms-brain-routine@t1_pre,t1_post" and check["verdict"] == "compliant", check
    brain = node.wait_for("recall not completed", lambda: (b := due(node, pid).get("brain")) and not b["recall"] and b, 60)
    assert brain["target"] == "2027-06-01"  # a year after the completed exam


def test_scanner_change_warns_and_later_studies_compare_with_the_most_recent(node: RunningNode, tmp_path: Path) -> None:
    """002 "Standardized follow-up": scans "ideally" on the same scanner -- a scanner change is a
    recommended-severity warning, not a recall forever against the first-ever baseline."""
    pid = "CLIN-SCANNER"
    cli(node, "patient", "set", pid, "--dmt", "ocrelizumab", "--dmt-start", "2018-01-01")
    first = send(node, tmp_path, "old-scanner", pid, "20250110", seed=15)
    assert purposes(node, first)[0]["verdict"] == "compliant"
    second = send(node, tmp_path, "new-scanner", pid, "20260110", defects=["different_scanner"], seed=16)
    (check,) = purposes(node, second)
    assert check["verdict"] == "compliant", check
    report = cli(node, "report", second, "--format", "json")
    reqs = {r["id"]: r for r in report["result"]["requirements"]}
    assert reqs["reference.scanner"]["status"] == "fail" and reqs["reference.scanner"]["severity"] == "recommended"
    third = send(node, tmp_path, "new-scanner-again", pid, "20260610", defects=["different_scanner"], seed=17)
    assert purposes(node, third)[0]["verdict"] == "compliant"
    report = cli(node, "report", third, "--format", "json")
    assert report["result"]["reference_study_uid"] == second  # the most recent compliant study, not the first
    reqs = {r["id"]: r for r in report["result"]["requirements"]}
    assert reqs["reference.scanner"]["status"] == "pass"
    assert due(node, pid)["brain"]["target"] == "2027-06-10"


def test_worklist_item_names_the_deciding_rules_and_asks_no_contrast_when_contraindicated(node: RunningNode) -> None:
    """004 FAQ: a patient who cannot receive gadolinium is imaged without contrast; 004: a new myelopathic
    deficit -> "MRI cervical and thoracic spine". The worklist item names the deciding rule and its source
    and carries no Requested Contrast Agent."""
    from sqlalchemy import select

    from msfollowup.app.worklist import ScheduledStep, decode_identifier

    pid = "CLIN-NOGD"
    cli(node, "patient", "set", pid, "--flag", "gadolinium_contraindicated", "--flag", "spinal_symptoms")
    cli(node, "patient", "event", pid, "relapse-spinal", "--date", "2026-06-14")
    with node.db.session() as s:
        step = s.scalars(select(ScheduledStep).where(ScheduledStep.patient_id == pid, ScheduledStep.purpose == "spine",
                                                     ScheduledStep.open_key.is_not(None))).one()
        ds = decode_identifier(step.identifier)
    sps = ds.ScheduledProcedureStepSequence[0]
    assert "RequestedContrastAgent" not in sps or not sps.RequestedContrastAgent
    assert "new-deficit-spine [004]" in str(ds.ReasonForTheRequestedProcedure)
    assert step.profile_id == "ms-spine-new-deficit~nogd"


def test_study_of_undetermined_purpose_is_for_review_not_a_failed_brain_exam(node: RunningNode, tmp_path: Path) -> None:
    """Issue 10 item 1: "A study whose purpose cannot be decided is marked for review, never recalled as a
    failed brain exam" (no BodyPartExamined, no anatomy in the descriptions, no worklist item)."""
    import pydicom

    pid = "CLIN-UNDETERMINED"
    cli(node, "patient", "set", pid, "--dmt", "ocrelizumab", "--dmt-start", "2018-01-01")
    study = generate_study(tmp_path / "nobody", patient_id=pid, patient_name="TEST^CLINICAL", study_date="20260610",
                           seed=18, defects=["missing_t1_post"], **SMALL)
    for f in study.files:
        ds = pydicom.dcmread(f)
        if "BodyPartExamined" in ds:
            del ds.BodyPartExamined
        ds.save_as(f)
    assert node.storescu(study.files).returncode == 0
    node.wait_complete(study.study_uid)
    (check,) = purposes(node, study.study_uid)
    assert check["purpose"] == "undetermined" and check["review"]
    brain = due(node, pid)["brain"]
    assert not brain["recall"] and not brain["recall_items"]
