"""Issue 11, end to end on loopback: the worklist handlers on a real pynetdicom AE queried with DCMTK
findscu, MPPS from a pynetdicom SCU, the `.wl` export served by DCMTK wlmscpfs.

Overdue patients stay on today's list; a brain exam (with or without MPPS) never closes the spine
item; the SPS status is served as the step has it; an item without a name is not served until one is
known; the export is idempotent and every file it writes is loaded by wlmscpfs."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]
from sqlalchemy import select

from msfollowup.app import worklist
from msfollowup.site.config import Config, WorklistConfig
from msfollowup.db import Database, utcnow
from msfollowup.site.profiles import get_profile
from msfollowup.app.worklist import Demographics, ScheduledStep
from nodeutil import due_exam, free_port, worklist_scp

TODAY = dt.date.today()
STATION = "MRSCANNER1"


@pytest.fixture(autouse=True)
def _today_at_test_start() -> None:
    """Read "today" when each test starts, not at import: a run that crossed midnight UTC left TODAY a day behind
    the node's own today and the overdue test failed."""
    global TODAY
    TODAY = utcnow().date()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    yield database
    database.dispose()


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(worklist=WorklistConfig(station_ae_title=STATION, export_dir=tmp_path / "wlexport"))


def _schedule(db: Database, cfg: Config, patient: str, target: dt.date, name: str | None, purpose: str = "brain",
              plan: Demographics | None = None) -> ScheduledStep:
    profile_id = "ms-brain-routine" if purpose == "brain" else "ms-spine-new-deficit"
    with db.session() as s:
        return worklist.schedule_due(s, due_exam(patient, target, purpose=purpose, profile_id=profile_id),
                                     Demographics(patient, name, "19800101", "F", None) if name else None, cfg,
                                     profile=get_profile(profile_id), plan_demographics=plan)


def _findscu(tmp: Path, port: int, *, date: str = "", status: str = "", pid: str = "", aec: str = "MSFOLLOWUP"
             ) -> list[Dataset]:
    """findscu -W with a modality's query (station, date, status as given), parsed answers."""
    tag = f"q{time.monotonic_ns()}"
    dump = (
        "(0008,0005) CS [ISO_IR 192]\n(0008,0050) SH []\n(0010,0010) PN []\n(0010,0020) LO [" + pid + "]\n"
        "(0010,0030) DA []\n(0010,0040) CS []\n"
        "(0020,000d) UI []\n(0032,1060) LO []\n(0040,0100) SQ\n(fffe,e000) -\n(0008,0060) CS [MR]\n"
        "(0040,0001) AE [" + STATION + "]\n(0040,0002) DA [" + date + "]\n(0040,0009) SH []\n"
        "(0040,0020) CS [" + status + "]\n(fffe,e00d) -\n(fffe,e0dd) -\n"
    )
    (tmp / f"{tag}.dump").write_text(dump)
    subprocess.run(["/usr/bin/dump2dcm", str(tmp / f"{tag}.dump"), str(tmp / f"{tag}.dcm")], check=True)
    out = tmp / tag
    out.mkdir()
    proc = subprocess.run(["/usr/bin/findscu", "-W", "-aet", STATION, "-aec", aec, "-X", "-od", str(out),
                           "127.0.0.1", str(port), str(tmp / f"{tag}.dcm")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _accessions(found: list[Dataset]) -> list[str]:
    return sorted(str(ds.AccessionNumber) for ds in found)


def _mpps(port: int, step: ScheduledStep, *, complete: bool, study_uid: str | None = None) -> str:
    """N-CREATE IN PROGRESS for the step (and N-SET COMPLETED if asked), as a modality sends them."""
    ae = AE(ae_title="MPPSSCU")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="MSFOLLOWUP")
    assert assoc.is_established
    uid = generate_uid()
    try:
        ref = Dataset()
        ref.StudyInstanceUID = study_uid or step.study_uid
        ref.AccessionNumber = step.accession_number
        ref.ScheduledProcedureStepID = step.sps_id
        create = Dataset()
        create.ScheduledStepAttributesSequence = [ref]
        create.PatientID = step.patient_id
        create.PerformedProcedureStepStatus = "IN PROGRESS"
        create.Modality = "MR"
        create.PerformedSeriesSequence = []
        status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        if complete:
            done = Dataset()
            done.PerformedProcedureStepStatus = "COMPLETED"
            status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
            assert status.Status == 0x0000
    finally:
        assoc.release()
    return uid


@dataclass(frozen=True)
class Arrived:
    """A stored study as the pipeline hands it to close_for_study (store.Study has these attributes)."""

    study_uid: str
    accession_number: str | None
    patient_id: str | None
    study_date: str | None


def _study(patient: str, study_uid: str, accession: str | None, date: dt.date) -> Arrived:
    return Arrived(study_uid, accession, patient, date.strftime("%Y%m%d"))


def _open(db: Database) -> dict[str, str]:
    with db.session() as s:
        return {step.purpose: step.accession_number for step in worklist.open_items(s)}


def test_overdue_patient_is_found_today_and_after_the_periodic_job(tmp_path: Path, db: Database, cfg: Config) -> None:
    long_ago = TODAY - dt.timedelta(days=200)  # window ended ~140 days ago: the old code expired it at once
    step = _schedule(db, cfg, "LATE0001", long_ago, "LATE^PATIENT")
    today = TODAY.strftime("%Y%m%d")
    with worklist_scp(db, cfg) as port:
        assert _accessions(_findscu(tmp_path, port, date=today)) == [step.accession_number]
        with db.session() as s:  # what jobs.worklist_job does, today and a week later
            worklist.expire(s, utcnow(), cfg)
            worklist.sync_export(s, cfg)
        assert _accessions(_findscu(tmp_path, port, date=today)) == [step.accession_number]
        with db.session() as s:
            worklist.expire(s, utcnow() + dt.timedelta(days=7), cfg)
            worklist.sync_export(s, cfg)
        later = (TODAY + dt.timedelta(days=7)).strftime("%Y%m%d")
        (found,) = _findscu(tmp_path, port, date=later)
        assert found.AccessionNumber == step.accession_number
    with db.session() as s:
        kept = s.get(ScheduledStep, step.id)
        assert kept is not None and kept.is_open and kept.latest == long_ago + dt.timedelta(days=60)
    wl = dcmread(cfg.worklist.export_dir / STATION / f"MSFU-{step.accession_number}.wl")  # type: ignore[operator]
    assert wl.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate == later


@pytest.mark.parametrize("scenario", ["mpps-then-images", "images-without-mpps"])
def test_brain_exam_never_closes_the_spine_item(tmp_path: Path, db: Database, cfg: Config, scenario: str) -> None:
    brain = _schedule(db, cfg, "TWO00001", TODAY, "TWO^ITEMS")
    spine = _schedule(db, cfg, "TWO00001", TODAY, "TWO^ITEMS", purpose="spine")
    scanner_uid = generate_uid()  # the modality made its own Study UID and sent no accession
    with worklist_scp(db, cfg) as port:
        assert _accessions(_findscu(tmp_path, port, pid="TWO00001")) == sorted([brain.accession_number,
                                                                                spine.accession_number])
        if scenario == "mpps-then-images":
            _mpps(port, brain, complete=True, study_uid=scanner_uid)
            images = _study("TWO00001", scanner_uid, None, TODAY)
        else:
            images = _study("TWO00001", scanner_uid, brain.accession_number, TODAY)
        with db.session() as s:  # the pipeline, twice: the study arrives, then a later version of it
            first = worklist.close_for_study(s, images, purposes=frozenset({"brain"}))
            assert worklist.close_for_study(s, images, purposes=frozenset({"brain"})) is None
            assert worklist.close_for_study(s, images, purposes=frozenset({"spine"})) is None
        assert (first is None) is (scenario == "mpps-then-images")  # closed by the MPPS already
        assert _accessions(_findscu(tmp_path, port, pid="TWO00001")) == [spine.accession_number]
    assert _open(db) == {"spine": spine.accession_number}
    with db.session() as s:
        closed = s.get(ScheduledStep, brain.id)
        assert closed is not None and closed.fulfilled_by_study == scanner_uid
        assert closed.close_reason == ("mpps-completed" if scenario == "mpps-then-images" else "study-accession")


def test_started_status_is_served_after_n_create(tmp_path: Path, db: Database, cfg: Config) -> None:
    step = _schedule(db, cfg, "STAT0001", TODAY, "STATUS^TEST")
    other = _schedule(db, cfg, "STAT0002", TODAY, "OTHER^TEST")
    with worklist_scp(db, cfg) as port:
        assert _accessions(_findscu(tmp_path, port, status="STARTED")) == []
        _mpps(port, step, complete=False)
        (started,) = _findscu(tmp_path, port, status="STARTED")
        assert started.AccessionNumber == step.accession_number
        assert started.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"
        assert _accessions(_findscu(tmp_path, port, status="SCHEDULED")) == [other.accession_number]
        assert len(_findscu(tmp_path, port)) == 2
    wl = dcmread(cfg.worklist.export_dir / STATION / f"MSFU-{step.accession_number}.wl")  # type: ignore[operator]
    assert wl.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"


@contextmanager
def _wlmscpfs(export: Path) -> Iterator[int]:
    port = free_port()
    server = subprocess.Popen(["/usr/bin/wlmscpfs", "-dfp", str(export), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_plan_without_study_is_served_once_a_name_is_given(tmp_path: Path, db: Database, cfg: Config,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from msfollowup.cli import main

    step = _schedule(db, cfg, "NEW00001", TODAY, None)  # a plan, no study yet: no name anywhere
    export = cfg.worklist.export_dir
    assert export is not None
    with db.session() as s:
        row = s.get(ScheduledStep, step.id)
        assert row is not None and row.incomplete and row.to_json()["complete"] is False
    conf = tmp_path / "msfollowup.toml"
    conf.write_text(f'[storage]\ndatabase = "sqlite:///{tmp_path / "index.sqlite3"}"\n'
                    f'data_dir = "{tmp_path / "var"}"\n[worklist]\nstation_ae_title = "{STATION}"\n')
    assert main(["worklist", "--config", str(conf)]) == 0
    assert "INCOMPLETE, not served: no patient name" in capsys.readouterr().out
    with worklist_scp(db, cfg) as port:
        assert _findscu(tmp_path, port, pid="NEW00001") == []
        assert not list(export.glob("*/*.wl"))
        plan = Demographics("NEW00001", "Ωμέγα^Νέος", "19900505", "M", None)  # the plan now has a name
        again = _schedule(db, cfg, "NEW00001", TODAY, None, plan=plan)
        assert again.accession_number == step.accession_number  # the same item, now complete
        (found,) = _findscu(tmp_path, port, pid="NEW00001")
        assert str(found.PatientName) == "Ωμέγα^Νέος" and found.PatientBirthDate == "19900505"
    with _wlmscpfs(export) as port:
        (served,) = _findscu(tmp_path, port, pid="NEW00001", aec=STATION)
    assert served.AccessionNumber == step.accession_number
    assert served.PatientName.original_string.decode("utf-8") == "Ωμέγα^Νέος"  # wlmscpfs 3.6.7 passes the UTF-8 bytes but drops (0008,0005)


def test_export_is_idempotent_and_wlmscpfs_loads_every_file(tmp_path: Path, db: Database, cfg: Config) -> None:
    export = cfg.worklist.export_dir
    assert export is not None
    steps = [_schedule(db, cfg, f"EXP{i:05d}", TODAY - dt.timedelta(days=100 * i), name, purpose)
             for i, (name, purpose) in enumerate([("Müller^Zoë", "brain"), ("Dvořák^Antonín", "spine"),
                                                  ("山田^太郎", "brain"), ("SMITH^JOHN", "brain")])]
    _schedule(db, cfg, "EXP99999", TODAY, None)  # incomplete: never exported
    with worklist_scp(db, cfg) as port:
        _mpps(port, steps[0], complete=False)  # one STARTED item among them
    with db.session() as s:
        worklist.sync_export(s, cfg)  # settles whatever the commits left
    files = sorted(export.glob("*/*.wl"))
    assert len(files) == len(steps)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in files}
    with db.session() as s:
        assert worklist.sync_export(s, cfg) == (0, 0)  # nothing changed: nothing written
        worklist.expire(s, utcnow(), cfg)  # nothing overdue any more: nothing changes
        assert worklist.sync_export(s, cfg) == (0, 0)
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in files} == before
    with db.session() as s:  # a changed item gets a new file UID, an unchanged one keeps its own
        uids = {st.accession_number: worklist.export_uid(st) for st in s.scalars(select(ScheduledStep))}
    assert len(set(uids.values())) == len(uids)
    with _wlmscpfs(export) as port:
        found = _findscu(tmp_path, port, aec=STATION)
    assert _accessions(found) == sorted(st.accession_number for st in steps)
    statuses = {str(ds.AccessionNumber): ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus
                for ds in found}
    assert statuses[steps[0].accession_number] == "STARTED"
