"""End to end: storescu -> msfollowup serve -> SR arrives at a DCMTK storescp destination."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodeutil import RunningNode  # noqa: E402
from test_report import _check_dicom_tools, _evaluations, _findings, _study_group  # noqa: E402
from test_report_fixtures import StoreSCP, free_port  # noqa: E402

from dicom_fixtures import generate_study  # noqa: E402

pytestmark = pytest.mark.slow




def _srs(scp: StoreSCP) -> list[Any]:
    out = []
    for p in scp.received():
        try:
            ds = dcmread(p, stop_before_pixels=True)
        except Exception:  # a file storescp is still writing
            continue
        if ds.get("Modality") == "SR":
            out.append((p, ds))
    return out


def _cli(node: RunningNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "msfollowup", *args, "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def destination(tmp_path: Path) -> Any:
    if not Path("/usr/bin/storescp").exists():
        pytest.skip("DCMTK /usr/bin/storescp is not installed")
    scp = StoreSCP(tmp_path / "pacs", free_port(), ae_title="PACS")
    yield scp
    scp.stop()


def _node(tmp_path: Path, scp: StoreSCP) -> RunningNode:
    extra = (f'[[report.destinations]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {scp.port}\n')
    node = RunningNode(tmp_path / "node", sections={"report": {"retry_initial_seconds": 0.5,
                                                               "retry_max_seconds": 2}}, extra=extra)
    return node.start()


def test_sr_reaches_a_destination_that_comes_up_late(tmp_path: Path, destination: StoreSCP) -> None:
    gen = generate_study(tmp_path / "gen", defects=["missing_flair"], slices=4, rows=32, columns=32)
    node = _node(tmp_path, destination)
    try:
        sent = node.storescu(gen.files)
        assert sent.returncode == 0, sent.stderr
        node.wait_complete(gen.study_uid, timeout=60)
        report = node.data_dir / "reports" / gen.study_uid / "v1.dcm"
        node.wait_for("no report written", report.exists, 60)
        # The destination was down so far: the job waits with an error, then goes once it is up.
        jobs = node.wait_for(
            "no delivery attempt",
            lambda: [j for j in json.loads(_cli(node, "outbox", "--json").stdout) if j["attempts"]], 30)
        assert jobs[0]["state"] == "pending" and jobs[0]["last_error"]
        destination.start()
        (got,) = node.wait_for("SR not delivered", lambda: _srs(destination), 60)
        path, _ = got
        _check_dicom_tools(path)
        sr = hd.sr.srread(path)
        assert sr.StudyInstanceUID == gen.study_uid and str(sr.PatientName) == "DOE^JANE"
        assert sr.SOPInstanceUID == dcmread(report).SOPInstanceUID
        study = _study_group(sr)
        assert _evaluations(study)[("VERDICT", "99MSFU")] == ("NONCOMPLIANT", "99MSFU")
        assert any(rid.startswith("sequence.") for rid, _ in _findings(study))
        (job,) = json.loads(_cli(node, "outbox", "--json").stdout)
        assert job["state"] == "delivered"
        out = _cli(node, "report", gen.study_uid)
        assert out.returncode == 0 and json.loads(out.stdout)["result"]["verdict"] == "non-compliant"
    finally:
        assert node.stop() == 0
    assert len(_srs(destination)) == 1  # exactly once
    log = node.log()
    assert "report delivered" in log
    assert "DOE" not in log and gen.patient_id not in log  # never a patient name or ID in the log


def test_late_images_give_a_second_sr_with_predecessor(tmp_path: Path, destination: StoreSCP) -> None:
    destination.start()
    first = generate_study(tmp_path / "a", defects=["missing_flair"], slices=4, rows=32, columns=32)
    full = generate_study(tmp_path / "b", study_uid=first.study_uid, slices=4, rows=32, columns=32)
    flair = [s for s in full.series if s.expected_kind == "T2_FLAIR"]
    assert flair
    node = _node(tmp_path, destination)
    try:
        assert node.storescu(first.files).returncode == 0
        node.wait_complete(first.study_uid, timeout=60)
        (v1,) = node.wait_for("first SR not delivered", lambda: _srs(destination), 60)
        assert node.storescu([f for s in flair for f in s.files]).returncode == 0
        node.wait_complete(first.study_uid, version=2, timeout=60)
        both = node.wait_for("second SR not delivered",
                             lambda: _srs(destination) if len(_srs(destination)) == 2 else None, 60)
    finally:
        assert node.stop() == 0
    v1_uid = v1[1].SOPInstanceUID
    (v2_path,) = [p for p, ds in both if ds.SOPInstanceUID != v1_uid]
    _check_dicom_tools(v2_path)
    v2 = dcmread(v2_path)
    refs = v2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [v1_uid]
    assert v2.InstanceNumber == 2 and v2.SeriesInstanceUID == v1[1].SeriesInstanceUID
    assert (node.data_dir / "reports" / first.study_uid / "v1.dcm").exists()  # the old file is kept
    assert len(_srs(destination)) == 2
