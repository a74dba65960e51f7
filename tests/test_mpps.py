"""MPPS (N-CREATE / N-SET) against a real pynetdicom AE on loopback, state kept in real SQLite."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]
from sqlalchemy import select

from msfollowup.app import worklist
from msfollowup.site.config import Config, WorklistConfig
from msfollowup.db import Database, utcnow
from msfollowup.files.store import Instance, Series, Study
from msfollowup.app.worklist import Demographics, PerformedStep, ScheduledStep
from nodeutil import due_exam, worklist_scp


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def cfg() -> Config:
    return Config(worklist=WorklistConfig(station_ae_title="MRSCANNER1"))


@pytest.fixture
def step(db: Database, cfg: Config) -> ScheduledStep:
    with db.session() as s:
        return worklist.schedule_due(
            s, due_exam("P1", dt.date(2026, 11, 20)), Demographics("P1", "Müller^Zoë", "19800101", "F", "ISO_IR 192"), cfg,
            today=dt.date(2026, 11, 1),  # profile: the shipped ms-brain-routine
        )


@pytest.fixture
def assoc(db: Database, cfg: Config) -> Iterator[Association]:
    with worklist_scp(db, cfg) as port:
        scu = AE(ae_title="MRSCANNER1")
        scu.add_requested_context(ModalityPerformedProcedureStep)
        association = scu.associate("127.0.0.1", port, ae_title="MSFOLLOWUP")
        assert association.is_established
        yield association
        association.release()


def in_progress(step: ScheduledStep | None, study_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ref = Dataset()
    ref.StudyInstanceUID = study_uid or (step.study_uid if step else generate_uid())
    ref.AccessionNumber = step.accession_number if step else ""
    ref.ScheduledProcedureStepID = step.sps_id if step else ""
    ref.RequestedProcedureID = step.requested_procedure_id if step else ""
    ds.ScheduledStepAttributesSequence = [ref]
    ds.PatientName = "Müller^Zoë"
    ds.PatientID = "P1"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "MRSCANNER1"
    ds.PerformedProcedureStepStartDate = "20261120"
    ds.PerformedProcedureStepStartTime = "091500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "MR"
    ds.PerformedSeriesSequence = []
    return ds


def final(status: str) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261120"
    ds.PerformedProcedureStepEndTime = "094000"
    series = Dataset()
    series.SeriesInstanceUID = generate_uid()
    series.SeriesDescription = "T2 FLAIR 3D"
    series.ReferencedImageSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


def create(assoc: Association, ds: Dataset, uid: str | None = None) -> tuple[int, str]:
    uid = uid or generate_uid()
    status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
    return int(status.Status), uid


def test_round_trip_completes_step_and_study(db: Database, step: ScheduledStep, assoc: Association) -> None:
    with db.session() as s:  # the study is already arriving
        s.add(Study(study_uid=step.study_uid, first_received=utcnow(), last_received=utcnow()))
    status, uid = create(assoc, in_progress(step))
    assert status == 0x0000
    with db.session() as s:
        started = s.get(ScheduledStep, step.id)
        assert started is not None and started.is_open and started.sps_status == "STARTED"
        assert not worklist.completion_requested(s, step.study_uid)
    rsp, _ = assoc.send_n_set(final("COMPLETED"), ModalityPerformedProcedureStep, uid)
    assert rsp.Status == 0x0000
    with db.session() as s:
        done = s.get(ScheduledStep, step.id)
        assert done is not None and not done.is_open and done.close_reason == "mpps-completed"
        study = s.get(Study, step.study_uid)
        assert study is not None and study.complete_requested
        assert worklist.completion_requested(s, step.study_uid)
        pps = s.get(PerformedStep, uid)
        assert pps is not None and pps.status == "COMPLETED" and pps.calling_ae == "MRSCANNER1"
        stored = Dataset.from_json(pps.attributes_json)
        assert stored.PatientName == "Müller^Zoë" and stored.PerformedProcedureStepEndTime == "094000"


def test_completion_remembered_for_a_study_not_yet_received(db: Database, assoc: Association) -> None:
    study_uid = generate_uid()  # unscheduled exam: no worklist item, no study row yet
    status, uid = create(assoc, in_progress(None, study_uid))
    assert status == 0x0000
    assert assoc.send_n_set(final("COMPLETED"), ModalityPerformedProcedureStep, uid)[0].Status == 0x0000
    with db.session() as s:
        assert worklist.completion_requested(s, study_uid)
        assert not worklist.completion_requested(s, generate_uid())


def test_set_after_completed_is_refused(db: Database, step: ScheduledStep, assoc: Association) -> None:
    _, uid = create(assoc, in_progress(step))
    assoc.send_n_set(final("COMPLETED"), ModalityPerformedProcedureStep, uid)
    rsp, _ = assoc.send_n_set(final("DISCONTINUED"), ModalityPerformedProcedureStep, uid)
    assert rsp.Status == 0x0110  # PS3.4 Table F.7.2-2
    assert rsp.ErrorID == 0xA710
    assert "no longer be updated" in rsp.ErrorComment
    with db.session() as s:
        pps = s.get(PerformedStep, uid)
        assert pps is not None and pps.status == "COMPLETED"


def test_unknown_instance_and_bad_create(db: Database, step: ScheduledStep, assoc: Association) -> None:
    rsp, _ = assoc.send_n_set(final("COMPLETED"), ModalityPerformedProcedureStep, generate_uid())
    assert rsp.Status == 0x0112
    completed_at_create = in_progress(step)
    completed_at_create.PerformedProcedureStepStatus = "COMPLETED"
    assert create(assoc, completed_at_create)[0] == 0x0106  # PS3.4 F.7.2.1.3
    no_status = in_progress(step)
    del no_status.PerformedProcedureStepStatus
    assert create(assoc, no_status)[0] == 0x0120
    status, uid = create(assoc, in_progress(step))
    assert status == 0x0000
    assert create(assoc, in_progress(step), uid)[0] == 0x0111  # duplicate SOP instance
    bad = Dataset()
    bad.PerformedProcedureStepStatus = "DONE"
    assert assoc.send_n_set(bad, ModalityPerformedProcedureStep, uid)[0].Status == 0x0106
    with db.session() as s:
        assert s.query(PerformedStep).count() == 1


def test_discontinued_keeps_the_item_on_the_worklist(db: Database, step: ScheduledStep, assoc: Association) -> None:
    _, uid = create(assoc, in_progress(step))
    assert assoc.send_n_set(final("DISCONTINUED"), ModalityPerformedProcedureStep, uid)[0].Status == 0x0000
    with db.session() as s:
        item = s.get(ScheduledStep, step.id)
        assert item is not None and item.is_open and item.sps_status == "SCHEDULED"
        assert not worklist.completion_requested(s, step.study_uid)


def test_scp_assigns_the_instance_uid_when_the_modality_does_not(db: Database, step: ScheduledStep, assoc: Association) -> None:
    status, _ = assoc.send_n_create(in_progress(step), ModalityPerformedProcedureStep, None)
    assert status.Status == 0x0000  # pynetdicom answers 0x0110 if the handler returned no UID
    with db.session() as s:
        (pps,) = s.query(PerformedStep).all()
        assert pps.sop_instance_uid.startswith("1.2.826.0.1.3680043.8.498.")
        assert pps.step_id == step.id


def _index_instances(db: Database, study_uid: str, series_uid: str, sops: Sequence[str]) -> None:
    """Rows as the store writes them when instances arrive (the files themselves do not matter here)."""
    with db.session() as s:
        if s.get(Study, study_uid) is None:
            s.add(Study(study_uid=study_uid, first_received=utcnow(), last_received=utcnow()))
            s.flush()
            s.add(Series(series_uid=series_uid, study_uid=study_uid, first_received=utcnow()))
            s.flush()
        for sop in sops:
            s.add(Instance(sop_instance_uid=sop, series_uid=series_uid, study_uid=study_uid, sop_class_uid="1.2",
                           transfer_syntax_uid="1.2.840.10008.1.2.1", path=sop, size=1,
                           received_at=utcnow()))


def test_mpps_before_images_waits_for_every_listed_instance(db: Database, step: ScheduledStep, assoc: Association) -> None:
    series_uid, sops = generate_uid(), [generate_uid() for _ in range(3)]
    _index_instances(db, step.study_uid, series_uid, sops[:1])  # the first image is in
    _, uid = create(assoc, in_progress(step))
    done = final("COMPLETED")
    done.PerformedSeriesSequence[0].SeriesInstanceUID = series_uid
    refs = []
    for sop in sops:
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ref.ReferencedSOPInstanceUID = sop
        refs.append(ref)
    done.PerformedSeriesSequence[0].ReferencedImageSequence = refs
    assert assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)[0].Status == 0x0000
    with db.session() as s:
        assert not worklist.completion_requested(s, step.study_uid)  # two images still on the way
        study = s.get(Study, step.study_uid)
        assert study is not None and not study.complete_requested
        item = s.get(ScheduledStep, step.id)
        assert item is not None and not item.is_open  # the exam itself is done
    _index_instances(db, step.study_uid, series_uid, sops[1:2])
    with db.session() as s:
        assert not worklist.completion_requested(s, step.study_uid)
    _index_instances(db, step.study_uid, series_uid, sops[2:])
    with db.session() as s:
        assert worklist.completion_requested(s, step.study_uid)
        # the condition the completion sweep runs over all receiving studies
        assert s.scalars(select(Study.study_uid).where(worklist.mpps_completed(Study.study_uid))).all() == [step.study_uid]
