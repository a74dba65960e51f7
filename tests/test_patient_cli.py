"""`msfollowup patient set/show/import` and `msfollowup due`, run as subprocesses on a real SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from msfollowup.site.config import load_config
from msfollowup.db import Database
from nodeutil import add_study_check

TODAY = "2026-06-15"


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "msfollowup.toml"
    path.write_text('[storage]\ndata_dir = "var"\n', encoding="utf-8")
    return path


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "msfollowup.cli", *args, "--config", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=config.parent)


def run_json(config: Path, *args: str) -> Any:
    proc = run(config, *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def add_check(config: Path, patient_id: str, uid: str, date: str, verdict: str) -> None:
    db = Database(load_config(config).storage.database_url)
    add_study_check(db, patient_id, uid, 1, date, verdict, [] if verdict == "compliant" else ["sequence.t2_flair"])
    db.dispose()


def test_patient_set_then_show_json_has_plan_history_and_due(config: Path) -> None:
    proc = run(
        config, "patient", "set", "PAT-CLI-1", "--dmt", "Natalizumab", "--dmt-start", "2024-01-01",
        "--jcv", "positive", "--diagnosed", "2019-04-02", "--flag", "spinal_symptoms=2026-01-01", "--author", "dr.one",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run(config, "patient", "set", "PAT-CLI-1", "--flag", "gadolinium_contraindicated", "--author", "dr.two")
    assert proc.returncode == 0, proc.stderr
    shown = run_json(config, "patient", "show", "PAT-CLI-1", "--json", "--today", TODAY)
    assert shown["plan"]["dmt"] == "natalizumab"
    assert shown["plan"]["dmt_start"] == "2024-01-01"
    assert set(shown["plan"]["flags"]) == {"spinal_symptoms", "gadolinium_contraindicated"}
    assert [h["author"] for h in shown["history"]] == ["dr.one", "dr.two"]
    assert shown["history"][0]["changes"]["jcv"] == {"old": "unknown", "new": "positive"}
    due = {d["purpose"]: d for d in shown["due"]}
    assert set(due) == {"brain", "spine"}
    assert due["brain"]["profile_id"] == "ms-brain-pml-screening"
    assert due["brain"]["target"] == TODAY  # no exam yet: baseline now
    text = run(config, "patient", "show", "PAT-CLI-1", "--today", TODAY)
    assert text.returncode == 0 and "ms-brain-pml-screening" in text.stdout and "dr.two" in text.stdout


def test_patient_set_rejects_bad_values_with_exit_2_and_no_patient_id(config: Path) -> None:
    proc = run(config, "patient", "set", "PAT-SECRET-9", "--dmt", "ocrelizumab", "--dmt-start", "15.01.2026")
    assert proc.returncode == 2
    assert "dmt_start" in proc.stderr and "YYYY-MM-DD" in proc.stderr
    assert "PAT-SECRET-9" not in proc.stderr
    proc = run(config, "patient", "set", "PAT-SECRET-9", "--flag", "pregnant")
    assert proc.returncode == 2 and "unknown flag 'pregnant'" in proc.stderr
    shown = run_json(config, "patient", "show", "PAT-SECRET-9", "--json", "--today", TODAY)
    assert shown["plan"] is None and shown["history"] == []
    assert shown["due"][0]["rule_ids"] == ["baseline", "routine-annual"]  # site default, nothing stored


def test_patient_import_reports_the_bad_line_and_applies_nothing(config: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "plans.csv"
    csv_path.write_text(
        "patient_id,dmt,dmt-start,jcv,flags\n"
        "PAT-I1,natalizumab,2024-01-01,positive,highly_active\n"
        "PAT-I2,ocrelizumab,2025-02-01,negative,\n"
        "PAT-I3,fingolimod,2025-02-01,sometimes,\n",
        encoding="utf-8",
    )
    proc = run(config, "patient", "import", str(csv_path), "--author", "importer")
    assert proc.returncode == 2
    assert "line 4" in proc.stderr and "jcv" in proc.stderr
    assert "PAT-I3" not in proc.stderr
    assert run_json(config, "patient", "show", "PAT-I1", "--json")["plan"] is None
    assert run_json(config, "due", "--json", "--today", TODAY) == []
    csv_path.write_text(csv_path.read_text(encoding="utf-8").replace("sometimes", "unknown"), encoding="utf-8")
    proc = run(config, "patient", "import", str(csv_path), "--author", "importer")
    assert proc.returncode == 0, proc.stderr
    assert "3" in proc.stdout
    shown = run_json(config, "patient", "show", "PAT-I1", "--json")
    assert shown["plan"]["flags"] and shown["history"][0]["author"] == "importer"


def test_due_json_lists_every_patient_and_overdue_filters(config: Path) -> None:
    proc = run(config, "patient", "set", "PAT-D1", "--dmt", "natalizumab", "--dmt-start", "2023-01-01", "--jcv", "positive")
    assert proc.returncode == 0, proc.stderr
    add_check(config, "PAT-D1", "1.2.3.10", "20260501", "compliant")
    add_check(config, "PAT-D2", "1.2.3.20", "20250101", "compliant")  # no plan: site default, overdue
    add_check(config, "PAT-D3", "1.2.3.30", "20260610", "non-compliant")
    due = {d["patient_id"]: d for d in run_json(config, "due", "--json", "--today", TODAY)}
    assert set(due) == {"PAT-D1", "PAT-D2", "PAT-D3"}
    assert due["PAT-D1"]["profile_id"] == "ms-brain-pml-screening"
    assert due["PAT-D1"]["target"] == "2026-08-16" and due["PAT-D1"]["rule_ids"][0] == "natalizumab-high-risk"
    assert due["PAT-D2"]["latest"] == "2026-02-01" and due["PAT-D2"]["overdue"]
    assert due["PAT-D3"]["recall"] and due["PAT-D3"]["recall_items"] == ["sequence.t2_flair"]
    overdue = run_json(config, "due", "--overdue", "--json", "--today", TODAY)
    assert [d["patient_id"] for d in overdue] == ["PAT-D2"]
    table = run(config, "due", "--today", TODAY)
    assert table.returncode == 0 and "OVERDUE" in table.stdout and "RECALL" in table.stdout


def _findscu_mwl(tmp: Path, port: int, patient_id: str) -> list[Any]:
    """DCMTK findscu -W with a modality's query keys for one patient; the parsed answers."""
    from pydicom import dcmread

    dump = tmp / "q.dump"
    dump.write_text("(0008,0005) CS [ISO_IR 192]\n(0008,0050) SH []\n(0010,0010) PN []\n"
                    f"(0010,0020) LO [{patient_id}]\n(0010,0030) DA []\n(0010,0040) CS []\n(0020,000d) UI []\n"
                    "(0040,0100) SQ\n(fffe,e000) -\n(0008,0060) CS [MR]\n(0040,0001) AE []\n(0040,0002) DA []\n"
                    "(0040,0020) CS []\n(fffe,e00d) -\n(fffe,e0dd) -\n", encoding="utf-8")
    subprocess.run(["/usr/bin/dump2dcm", str(dump), str(tmp / "q.dcm")], check=True)
    out = tmp / f"answers{len(list(tmp.glob('answers*')))}"
    out.mkdir()
    proc = subprocess.run(["/usr/bin/findscu", "-W", "-aet", "FINDSCU", "-aec", "MSFOLLOWUP", "-X", "-od", str(out),
                           "127.0.0.1", str(port), str(tmp / "q.dcm")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_patient_set_name_makes_the_item_of_a_patient_without_study_complete_on_a_running_node(
        tmp_path: Path) -> None:
    """Issue 11 item 4 end to end: a plan without a study gives an item nobody can serve (no name);
    `patient set --name/--birth-date/--sex` completes it, and DCMTK findscu on the running node gets
    the same item with the plan's demographics."""
    from nodeutil import RunningNode

    node = RunningNode(tmp_path / "node").start()
    try:
        config = node.config_path
        proc = run(config, "patient", "set", "PAT-NEW-7", "--dmt", "ocrelizumab", "--dmt-start", "2026-01-10")
        assert proc.returncode == 0, proc.stderr
        assert _findscu_mwl(tmp_path, node.port, "PAT-NEW-7") == []  # incomplete: not served
        listed = run(config, "worklist")
        assert "INCOMPLETE" in listed.stdout, listed.stdout
        proc = run(config, "patient", "set", "PAT-NEW-7", "--name", "Nováková^Jana", "--birth-date", "1984-02-29",
                   "--sex", "f")
        assert proc.returncode == 0, proc.stderr
        (item,) = _findscu_mwl(tmp_path, node.port, "PAT-NEW-7")
        assert str(item.PatientName) == "Nováková^Jana"
        assert (item.PatientBirthDate, item.PatientSex) == ("19840229", "F")
        assert item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "SCHEDULED"
        shown = run_json(config, "patient", "show", "PAT-NEW-7", "--json")
        assert shown["history"][-1]["changes"]["patient_name"] == {"old": None, "new": "Nováková^Jana"}
        proc = run(config, "patient", "set", "PAT-NEW-7", "--birth-date", "1984-02-30")
        assert proc.returncode == 2 and "birth_date" in proc.stderr and "1984-02-30" not in proc.stderr
    finally:
        node.stop()
    assert "Nováková" not in node.log() and "PAT-NEW-7" not in node.log()
