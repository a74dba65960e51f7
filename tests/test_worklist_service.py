"""The worklist in the real service: storescu -> `msfollowup serve` schedules the next exam -> findscu -W
finds it (accented Latin-1 name) -> MPPS COMPLETED before the images -> the study completes at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodeutil import RunningNode, performed_series  # noqa: E402

from dicom_fixtures import generate_study  # noqa: E402
from msfollowup.app.worklist import ScheduledStep  # noqa: E402

pytestmark = pytest.mark.slow
NAME = "MÜLLER^ZOË"


def _findscu(node: RunningNode, tmp: Path, name: str, pn: str) -> list[Dataset]:
    dump = (
        "(0008,0005) CS [ISO_IR 100]\n(0008,0050) SH []\n(0010,0010) PN [" + pn + "]\n(0010,0020) LO []\n"
        "(0020,000d) UI []\n(0040,0100) SQ\n(fffe,e000) -\n(0040,0001) AE [MRSCANNER]\n(0040,0002) DA []\n"
        "(0040,0009) SH []\n(fffe,e00d) -\n(fffe,e0dd) -\n"
    )
    (tmp / f"{name}.dump").write_bytes(dump.encode("latin-1"))
    subprocess.run(["/usr/bin/dump2dcm", str(tmp / f"{name}.dump"), str(tmp / f"{name}.dcm")], check=True)
    out = tmp / name
    out.mkdir()
    proc = subprocess.run(
        ["/usr/bin/findscu", "-W", "-aet", "FINDSCU", "-aec", node.ae_title, "-X", "-od", str(out),
         "127.0.0.1", str(node.port), str(tmp / f"{name}.dcm")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _mpps(node: RunningNode, study_uid: str, files: list[Path], item: Dataset | None = None) -> None:
    """N-CREATE IN PROGRESS, N-SET COMPLETED listing `files`; scheduled (item) or unscheduled."""
    ae = AE(ae_title="MPPSSCU")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        ref = Dataset()
        ref.StudyInstanceUID = study_uid
        ref.AccessionNumber = item.AccessionNumber if item else ""
        ref.ScheduledProcedureStepID = item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID if item else ""
        create = Dataset()
        create.SpecificCharacterSet = "ISO_IR 100"
        create.ScheduledStepAttributesSequence = [ref]
        create.PatientName = NAME
        create.PatientID = "MSW0001"
        create.PerformedProcedureStepStatus = "IN PROGRESS"
        create.Modality = "MR"
        create.PerformedSeriesSequence = []
        uid = generate_uid()
        status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        done.PerformedSeriesSequence = performed_series(files)
        status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
    finally:
        assoc.release()


def test_scheduled_found_performed_and_completed_without_waiting(tmp_path: Path) -> None:
    """stable_seconds is 300 throughout: every completion here comes from an MPPS."""
    export = tmp_path / "wlexport"
    node = RunningNode(tmp_path / "node", stable_seconds=300, sections={"worklist": {"export_dir": str(export)}})
    first = generate_study(tmp_path / "first", patient_id="MSW0001", patient_name=NAME, character_set="ISO_IR 100",
                           study_date="20260115", slices=4, rows=32, columns=32)
    node.start()
    try:
        # 1. an unscheduled exam: MPPS first, then the images; complete once the last listed one is in
        _mpps(node, first.study_uid, first.files)
        assert node.storescu(first.files).returncode == 0
        done = node.wait_complete(first.study_uid, timeout=60)
        assert done.version == 1 and len(node.instances(first.study_uid)) == len(first.files)
        # 2. the pipeline put the next exam on the worklist; a modality finds it by name wildcard
        found = node.wait_for("no worklist item", lambda: _findscu(node, tmp_path, f"q{time.monotonic_ns()}", "MÜLL*"))
        (item,) = found
        assert str(item.PatientName) == NAME and item.PatientID == "MSW0001"
        assert item.SpecificCharacterSet == "ISO_IR 100"
        wl = export / "MRSCANNER" / f"MSFU-{item.AccessionNumber}.wl"
        assert str(dcmread(wl).PatientName) == NAME
        # 3. the modality performs it: MPPS COMPLETED arrives before the images
        second = generate_study(tmp_path / "second", patient_id="MSW0001", patient_name=NAME,
                                character_set="ISO_IR 100", study_uid=str(item.StudyInstanceUID),
                                accession=str(item.AccessionNumber), study_date="20270115", slices=4, rows=32,
                                columns=32, seed=1)
        _mpps(node, second.study_uid, second.files, item)
        assert node.storescu(second.files).returncode == 0
        done = node.wait_complete(second.study_uid, timeout=60)
        assert done.version == 1 and len(node.instances(second.study_uid)) == len(second.files)
        with node.db.session() as s:
            step = s.query(ScheduledStep).filter(ScheduledStep.study_uid == item.StudyInstanceUID).one()
            assert not step.is_open and step.close_reason == "mpps-completed"
        node.wait_for("export file not removed", lambda: not wl.exists())
    finally:
        assert node.stop() == 0
    log = node.log()
    assert "reopened" not in log  # no study completed before its last image
    assert "MSW0001" not in log and "MÜLLER" not in log and "MULLER" not in log
