"""The whole loop on the real node: a monitoring plan is set, the study arrives with storescu, the SR
goes out to the PACS, and the scanner's worklist query returns the next exam with the window and
protocol the plan requires (natalizumab, JCV positive, >= 18 months: PML screening every 3-4 months)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_fixtures import generate_study
from msfollowup.site.profiles import get_profile
from nodeutil import DCMTK, RunningNode, free_port
from test_report_fixtures import StoreSCP

pytestmark = pytest.mark.skipif(not (DCMTK / "findscu").exists(), reason="DCMTK not installed (apt-get install dcmtk)")

PATIENT = "MSF-E2E-7"


def _cli(node: RunningNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "msfollowup", *args, "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=120)


def _findscu(node: RunningNode, tmp: Path) -> list[Dataset]:
    """What a modality asks: its station, MR, any date; patient ID and protocol as return keys."""
    dump = (
        "(0008,0050) SH []\n(0010,0010) PN []\n(0010,0020) LO [" + PATIENT + "]\n(0020,000d) UI []\n"
        "(0032,1060) LO []\n(0040,0100) SQ\n(fffe,e000) -\n(0040,0001) AE [MRSCANNER]\n(0040,0002) DA []\n"
        "(0008,0060) CS [MR]\n(0040,0007) LO []\n(0040,0008) SQ\n(fffe,e000) -\n(0008,0100) SH []\n"
        "(0008,0102) SH []\n(0008,0104) LO []\n(fffe,e00d) -\n(fffe,e0dd) -\n(fffe,e00d) -\n(fffe,e0dd) -\n"
    )
    (tmp / "q.dump").write_text(dump)
    subprocess.run([str(DCMTK / "dump2dcm"), str(tmp / "q.dump"), str(tmp / "q.dcm")], check=True)
    out = tmp / f"rsp{len(list(tmp.glob('rsp*')))}"
    out.mkdir()
    proc = subprocess.run(
        [str(DCMTK / "findscu"), "-W", "-aet", "FINDSCU", "-aec", node.ae_title, "-X", "-od", str(out),
         "127.0.0.1", str(node.port), str(tmp / "q.dcm")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [dcmread(p) for p in sorted(out.glob("*.dcm"))]


def test_plan_study_report_and_next_exam_on_the_worklist(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs", free_port())
    pacs.start()
    node = RunningNode(tmp_path, sections={}, extra=(
        f'[[report.destinations]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.port}\n'
    )).start()
    try:
        today = dt.date.today()
        started = today - dt.timedelta(days=730)  # two years on natalizumab
        res = _cli(node, "patient", "set", PATIENT, "--dmt", "natalizumab", "--dmt-start", started.isoformat(),
                   "--jcv", "positive", "--author", "e2e-test")
        assert res.returncode == 0, res.stderr

        # The patient's first exam here is the baseline: every applicable rule's series together (issue 10
        # item 4: PML screening + efficacy monitoring = FLAIR, T2, DWI, T1 pre/post, the PML-suspected set).
        study = generate_study(tmp_path / "gen", profile="ms-brain-pml-suspected", vendor="siemens", slices=4,
                               seed=77, patient_id=PATIENT, patient_name="TEST^E2E",
                               study_date=today.strftime("%Y%m%d"))
        assert node.storescu(study.files).returncode == 0
        node.wait_complete(study.study_uid)

        (sr_path,) = node.wait_for("no SR at the PACS", pacs.received, 60)
        sr = dcmread(sr_path)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
        assert sr.StudyInstanceUID == study.study_uid and sr.PatientID == PATIENT

        def next_exam() -> list[Dataset]:
            return [d for d in _findscu(node, tmp_path) if d.get("StudyInstanceUID") != study.study_uid]

        (item,) = node.wait_for("next exam not on the worklist", next_exam, 60)
        sps = item.ScheduledProcedureStepSequence[0]
        (protocol,) = sps.ScheduledProtocolCodeSequence
        assert protocol.CodeValue == get_profile("ms-brain-pml-screening").worklist_code
        assert sps.Modality == "MR" and sps.ScheduledStationAETitle == "MRSCANNER"
        start = dt.datetime.strptime(sps.ScheduledProcedureStepStartDate, "%Y%m%d").date()

        # The same answer as `msfollowup due`, and what the guideline asks: 3 to 4 months after this exam.
        due = json.loads(_cli(node, "due", "--json").stdout)
        (mine,) = [d for d in due if d["patient_id"] == PATIENT and d["purpose"] == "brain"]
        assert mine["profile_id"] == "ms-brain-pml-screening" and not mine["recall"]
        assert dt.date.fromisoformat(mine["target"]) == start
        assert 3 * 28 <= (start - today).days <= 4 * 31
        assert dt.date.fromisoformat(mine["earliest"]) <= start <= dt.date.fromisoformat(mine["latest"])
        assert "natalizumab-high-risk" in json.dumps(mine)
    finally:
        node.stop()
        pacs.stop()
    assert PATIENT not in node.log() and "E2E" not in node.log()
