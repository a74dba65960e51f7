"""Modality Worklist: scheduling rules in a real SQLite index, C-FIND over loopback with DCMTK findscu,
and the .wl export served by DCMTK wlmscpfs."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import warnings
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from msfollowup.net import worklist_scp as mwl_scp
from msfollowup.app import worklist
from msfollowup.db.audit import AuditEvent
from msfollowup.site.config import Config, WorklistConfig
from msfollowup.db import Database, utcnow
from msfollowup.app.plans import DueExam
from msfollowup.site.profiles import Profile, get_profile
from msfollowup.app.worklist import Demographics, QueryError, ScheduledStep
from nodeutil import due_exam, free_port, worklist_scp

TODAY = dt.date(2026, 11, 1)
FINDSCU = "/usr/bin/findscu"


def profile(profile_id: str) -> Profile:
    return get_profile(profile_id)  # the shipped protocol profile


def demo(patient_id: str, name: str, charset: str | None = "ISO_IR 192") -> Demographics:
    return Demographics(patient_id, name, "19800101", "F", charset)


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(worklist=WorklistConfig(station_ae_title="MRSCANNER1", expire_days=30))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def schedule(db: Database, cfg: Config, d: DueExam, dem: Demographics) -> ScheduledStep:
    with db.session() as s:
        return worklist.schedule_due(s, d, dem, cfg, profile=profile(d.profile_id), today=TODAY)


@pytest.fixture
def mwl_port(db: Database, cfg: Config) -> Iterator[int]:
    """A real pynetdicom AE with the worklist handlers on a free loopback port."""
    with worklist_scp(db, cfg) as port:
        yield port


# --- scheduling ------------------------------------------------------------------------------


def test_schedule_builds_a_complete_worklist_item(db: Database, cfg: Config) -> None:
    step = schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20)), demo("P1", "Müller^Zoë"))
    assert len(step.accession_number) <= 16 and len(step.sps_id) <= 16
    ds = step.dataset()
    assert ds.PatientName == "Müller^Zoë" and ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.AccessionNumber == step.accession_number and ds.StudyInstanceUID == step.study_uid
    assert ds.RequestedProcedureCodeSequence[0].CodeValue == "24587-8"
    assert ds.RequestedProcedureCodeSequence[0].CodingSchemeDesignator == "LN"
    sps = ds.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledStationAETitle == "MRSCANNER1" and sps.Modality == "MR"
    assert sps.ScheduledProcedureStepStartDate == "20261120"
    protocol = sps.ScheduledProtocolCodeSequence[0]
    assert protocol.CodingSchemeDesignator == "99MSFU"
    assert protocol.CodeValue == "MSBR-ROUTINE"
    assert "RequestedContrastAgent" in sps  # routine needs gadolinium


def test_no_contrast_profile_and_short_protocol_code(db: Database, cfg: Config) -> None:
    step = schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20), profile_id="ms-brain-pml-screening"), demo("P1", "A^B"))
    sps = step.dataset().ScheduledProcedureStepSequence[0]
    assert "RequestedContrastAgent" not in sps
    code = sps.ScheduledProtocolCodeSequence[0]
    # The id is 22 characters; Code Value (SH, what modalities read) gets the profile's protocol_code.
    assert code.CodeValue == "MSBR-PMLSCREEN" and "LongCodeValue" not in code


def test_overdue_target_is_scheduled_today(db: Database, cfg: Config) -> None:
    step = schedule(db, cfg, due_exam("P1", dt.date(2026, 10, 1)), demo("P1", "A^B"))
    assert step.start_date == "20261101" and step.target == dt.date(2026, 10, 1)


def test_replan_replaces_and_never_two_open_items(db: Database, cfg: Config) -> None:
    first = schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20)), demo("P1", "A^B"))
    again = schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20)), demo("P1", "A^B"))
    assert again.id == first.id  # unchanged plan keeps the item and its accession number
    moved = schedule(db, cfg, due_exam("P1", dt.date(2026, 12, 20)), demo("P1", "A^B"))
    spine = schedule(db, cfg, due_exam("P1", dt.date(2026, 12, 20), purpose="spine", profile_id="ms-spine-new-deficit"), demo("P1", "A^B"))
    with db.session() as s:
        old = s.get(ScheduledStep, first.id)
        assert old is not None and not old.is_open and old.close_reason == "replaced"
        assert {x.id for x in worklist.open_items(s)} == {moved.id, spine.id}
    # the database itself refuses a second open item for the same patient and purpose
    with pytest.raises(IntegrityError):
        with db.session() as s:
            clone = s.get(ScheduledStep, moved.id)
            assert clone is not None
            s.add(
                ScheduledStep(
                    **{c.key: getattr(clone, c.key) for c in ScheduledStep.__table__.columns if c.key != "id"}
                    | {"study_uid": "1.2.3", "accession_number": "X1", "created_at": utcnow()}
                )
            )


def test_close_for_study_by_uid_accession_and_window(db: Database, cfg: Config) -> None:
    a = schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20)), demo("P1", "A^B"))
    b = schedule(db, cfg, due_exam("P2", dt.date(2026, 11, 20)), demo("P2", "C^D"))
    c = schedule(db, cfg, due_exam("P3", dt.date(2026, 11, 20)), demo("P3", "E^F"))
    d1 = schedule(db, cfg, due_exam("P4", dt.date(2026, 11, 20)), demo("P4", "G^H"))
    d2 = schedule(db, cfg, due_exam("P4", dt.date(2026, 11, 20), "spine", "ms-spine-new-deficit"), demo("P4", "G^H"))
    with db.session() as s:
        assert worklist.close_for_study(s, a.study_uid, None, "P1", "20261120").id == a.id  # type: ignore[union-attr]
        assert worklist.close_for_study(s, "9.9", b.accession_number, None, None).id == b.id  # type: ignore[union-attr]
        brain = frozenset({"brain"})
        assert worklist.close_for_study(s, "9.8", None, "P3", "20261010", purposes=brain) is None  # before the window
        # purposes unknown: only exact identifiers close an item, never the window (issue 11)
        assert worklist.close_for_study(s, "9.8", None, "P3", "20261115") is None
        assert worklist.close_for_study(s, "9.8", None, "P3", "20261115", purposes=brain).id == c.id  # type: ignore[union-attr]
        assert worklist.close_for_study(s, "9.7", None, "P4", "20261115") is None  # brain or spine?
        assert {x.id for x in worklist.open_items(s)} == {d1.id, d2.id}
        # a brain study closes the brain item and never the spine one
        assert worklist.close_for_study(s, "9.6", None, "P4", "20261115", purposes=brain).id == d1.id  # type: ignore[union-attr]
        assert {x.id for x in worklist.open_items(s)} == {d2.id}
        # a later version of the same study closes nothing else
        assert worklist.close_for_study(s, "9.6", None, "P4", "20261116", purposes=frozenset({"spine"})) is None
        assert {x.id for x in worklist.open_items(s)} == {d2.id}
        closes = s.scalars(select(AuditEvent).where(AuditEvent.action == "worklist.close")).all()
        assert sorted(json.loads(e.detail)["reason"] for e in closes) == [
            "study-accession", "study-purpose-window", "study-purpose-window", "study-uid"]


def test_expire_keeps_overdue_items_and_moves_them_to_today(db: Database, cfg: Config) -> None:
    """Issue 11: overdue items stay (the patients who most need the scan); they start today."""
    old = schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20)), demo("P1", "A^B"))  # latest 2027-01-19
    new = schedule(db, cfg, due_exam("P2", dt.date(2027, 3, 20)), demo("P2", "C^D"))
    with db.session() as s:
        now = dt.datetime(2027, 2, 19, 12, tzinfo=dt.timezone.utc)  # 31 days after old's window
        assert [x.id for x in worklist.expire(s, now, cfg)] == [old.id]
        assert [x.id for x in worklist.open_items(s)] == [old.id, new.id]
        kept = s.get(ScheduledStep, old.id)
        assert kept is not None and kept.start_date == "20270219" and kept.latest == dt.date(2027, 1, 19)
        assert kept.dataset().ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate == "20270219"
        assert worklist.expire(s, now, cfg) == []


def test_cancel_needs_a_reason_and_is_audited(db: Database, cfg: Config) -> None:
    step = schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20)), demo("P1", "A^B"))
    with db.session() as s:
        with pytest.raises(worklist.WorklistError, match="reason"):
            worklist.cancel(s, step.accession_number, "  ")
        with pytest.raises(worklist.WorklistError, match="no worklist item"):
            worklist.cancel(s, "NOSUCH", "moved away")
        worklist.cancel(s, step.accession_number, "moved to another centre", user="dr.who")
    with db.session() as s:
        assert worklist.open_items(s) == []
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "worklist.close")).all()
        assert event.actor_user == "dr.who" and event.object_uid == step.study_uid
        assert json.loads(event.detail)["note"] == "moved to another centre"
        with pytest.raises(worklist.WorklistError, match="already closed"):
            worklist.cancel(s, step.accession_number, "again")


# --- matching --------------------------------------------------------------------------------


def _query(**keys: Any) -> Dataset:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    "keyword,query,stored,expected",
    [
        ("PatientName", "Mül*", "Müller^Zoë", True),
        ("PatientName", "MÜLLER^ZOË", "Müller^Zoë", True),
        ("PatientName", "M?ller*", "Müller^Zoë", True),
        ("PatientName", "Mu*", "Müller^Zoë", False),
        ("PatientName", "100%*", "100_x", False),  # % is literal, not a wildcard
        ("PatientID", "p1", "P1", False),  # only PN is case-insensitive
        ("ScheduledProcedureStepStartDate", "20261101-20261130", "20261120", True),
        ("ScheduledProcedureStepStartDate", "-20261119", "20261120", False),
        ("ScheduledProcedureStepStartDate", "20261120-", "20261120", True),
        ("ScheduledProcedureStepStartTime", "08-12", "120000", True),
        ("ScheduledProcedureStepStartTime", "1201-", "120000", False),
        ("StudyInstanceUID", ["1.2", "1.3"], "1.3", True),
    ],
)
def test_single_wildcard_range_and_list_matching(keyword: str, query: Any, stored: str, expected: bool) -> None:
    record = _query(**{keyword: stored})
    assert (worklist.compile_query(_query(**{keyword: query})).apply(record) is not None) is expected


def test_malformed_values_are_query_errors() -> None:
    for keyword, value in (
        ("ScheduledProcedureStepStartDate", "2026-11"),
        ("ScheduledProcedureStepStartDate", "20261301x"),
        ("ScheduledProcedureStepStartTime", "8h"),
    ):
        with pytest.raises(QueryError):
            worklist.parse_condition(_query(**{keyword: value})[keyword])


def test_sequence_matching_and_return_keys(db: Database, cfg: Config) -> None:
    step = schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20)), demo("P1", "A^B"))
    record = step.dataset()
    item = _query(ScheduledStationAETitle="MRSCANNER1", Modality="")
    q = _query(PatientID="", ScheduledProcedureStepSequence=[item])
    got = worklist.compile_query(q).apply(record)
    assert got is not None
    assert set(got.dataset.dir()) == {"PatientID", "ScheduledProcedureStepSequence"}
    assert set(got.dataset.ScheduledProcedureStepSequence[0].dir()) == {"ScheduledStationAETitle", "Modality"}
    assert worklist.compile_query(_query(ScheduledProcedureStepSequence=[_query(Modality="CT")])).apply(record) is None
    whole = worklist.compile_query(_query(ScheduledProcedureStepSequence=[])).apply(record)
    assert whole is not None and "ScheduledProcedureStepID" in whole.dataset.ScheduledProcedureStepSequence[0]
    with pytest.raises(QueryError):
        worklist.compile_query(_query(ScheduledProcedureStepSequence=[item, item]))


# --- C-FIND over the network with DCMTK findscu ----------------------------------------------


def _dump_to_dcm(tmp: Path, name: str, dump: str, encoding: str) -> Path:
    (tmp / f"{name}.dump").write_bytes(dump.encode(encoding))
    out = tmp / f"{name}.dcm"
    subprocess.run(["/usr/bin/dump2dcm", str(tmp / f"{name}.dump"), str(out)], check=True, capture_output=True)
    return out


def _findscu(port: int, query: Path, out: Path, *extra: str, aec: str = "MSFOLLOWUP") -> list[Dataset]:
    out.mkdir()
    proc = subprocess.run(
        [FINDSCU, "-W", "-aet", "MRSCANNER1", "-aec", aec, *extra, "-X", "-od", str(out), "127.0.0.1", str(port), str(query)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


QUERY_TEMPLATE = """
(0008,0005) CS [{charset}]
(0008,0050) SH [{accession}]
(0010,0010) PN [{name}]
(0010,0020) LO []
(0020,000d) UI []
(0040,0100) SQ (Sequence with undefined length)
  (fffe,e000) na (Item with undefined length)
    (0008,0060) CS [MR]
    (0040,0001) AE [{station}]
    (0040,0002) DA [{date}]
    (0040,0003) TM []
    (0040,0009) SH []
  (fffe,e00d) na
(fffe,e0dd) na
"""


def _q(tmp: Path, name: str, *, charset: str = "ISO_IR 192", accession: str = "", pn: str = "",
       station: str = "", date: str = "", encoding: str = "utf-8") -> Path:
    dump = QUERY_TEMPLATE.format(charset=charset, accession=accession, name=pn, station=station, date=date)
    return _dump_to_dcm(tmp, name, dump, encoding)


@pytest.fixture
def populated(db: Database, cfg: Config) -> dict[str, ScheduledStep]:
    steps = {
        "zoe": schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20)), demo("P1", "Müller^Zoë")),
        "latin": schedule(db, cfg, due_exam("P2", dt.date(2026, 11, 25)), demo("P2", "Dvořák^Antonín")),
        "later": schedule(db, cfg, due_exam("P3", dt.date(2027, 3, 1)), demo("P3", "Mueller^Hans", None)),
        "iso100": schedule(db, cfg, due_exam("P4", dt.date(2026, 11, 21)), demo("P4", "Gérard^Noël", "ISO_IR 100")),
    }
    other = cfg.model_copy(update={"worklist": WorklistConfig(station_ae_title="MRSCANNER2")})
    steps["other"] = schedule(db, other, due_exam("P5", dt.date(2026, 11, 20)), demo("P5", "Müller^Anna"))
    return steps


def test_findscu_station_and_date_range(tmp_path: Path, mwl_port: int, populated: dict[str, ScheduledStep]) -> None:
    query = _q(tmp_path, "q", station="MRSCANNER1", date="20261101-20261130")
    found = _findscu(mwl_port, query, tmp_path / "out")
    assert sorted(str(r.AccessionNumber) for r in found) == sorted(
        populated[k].accession_number for k in ("zoe", "latin", "iso100")
    )
    assert {str(r.ScheduledProcedureStepSequence[0].ScheduledStationAETitle) for r in found} == {"MRSCANNER1"}


def test_findscu_patient_name_wildcard_and_accession(
    tmp_path: Path, mwl_port: int, populated: dict[str, ScheduledStep]
) -> None:
    by_name = _findscu(mwl_port, _q(tmp_path, "n", pn="MÜLLER*"), tmp_path / "n")
    assert sorted(str(r.PatientName) for r in by_name) == ["Müller^Anna", "Müller^Zoë"]
    acc = populated["later"].accession_number
    by_acc = _findscu(mwl_port, _q(tmp_path, "a", accession=acc), tmp_path / "a")
    assert [str(r.AccessionNumber) for r in by_acc] == [acc]
    assert by_acc[0].StudyInstanceUID == populated["later"].study_uid


@pytest.mark.parametrize("charset,encoding", [("ISO_IR 192", "utf-8"), ("ISO_IR 100", "latin-1")])
def test_findscu_accented_name_round_trip(
    tmp_path: Path, mwl_port: int, populated: dict[str, ScheduledStep], charset: str, encoding: str
) -> None:
    query = _q(tmp_path, "c", charset=charset, pn="Gérard^Noël", encoding=encoding)
    found = _findscu(mwl_port, query, tmp_path / "out")
    assert len(found) == 1
    assert found[0].SpecificCharacterSet == charset  # answered in the repertoire the modality asked in
    assert str(found[0].PatientName) == "Gérard^Noël"
    raw = Path(found[0].filename).read_bytes()
    assert "Gérard^Noël".encode(encoding) in raw


def test_name_outside_query_charset_answers_in_record_charset(
    tmp_path: Path, mwl_port: int, populated: dict[str, ScheduledStep]
) -> None:
    query = _q(tmp_path, "c", charset="ISO_IR 100", pn="Dvo*", encoding="latin-1")
    found = _findscu(mwl_port, query, tmp_path / "out")
    assert len(found) == 1
    assert found[0].SpecificCharacterSet == "ISO_IR 192"  # ř is not in Latin-1
    assert str(found[0].PatientName) == "Dvořák^Antonín"


def test_findscu_cancel(tmp_path: Path, db: Database, cfg: Config, populated: dict[str, ScheduledStep]) -> None:
    """findscu --cancel 1 after the first match: the SCP stops and answers Cancel (0xFE00)."""
    scp = mwl_scp.WorklistSCP(db, cfg)

    def wait_for_cancel(event: Any) -> Iterator[Any]:
        # Hold the real handler after its first match until the C-CANCEL is in, so the test does
        # not race pynetdicom sending all five matches first.
        answers = scp.on_find(event)
        yield next(answers)
        deadline = time.monotonic() + 10
        # peek: event.is_cancelled is one-shot (it consumes the C-CANCEL); the handler must see it
        while event.request.MessageID not in event.assoc.dimse.cancel_req and time.monotonic() < deadline:
            time.sleep(0.01)
        yield from answers

    ae = AE(ae_title="MSFOLLOWUP")
    ae.add_supported_context(ModalityWorklistInformationFind, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, wait_for_cancel)])
    assert server is not None
    out = tmp_path / "out"
    out.mkdir()
    try:
        proc = subprocess.run(
            [FINDSCU, "-W", "-v", "-aec", "MSFOLLOWUP", "--cancel", "1", "-X", "-od", str(out), "127.0.0.1",
             str(server.server_address[1]), str(_q(tmp_path, "q"))],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("rsp*.dcm"))) == 1  # five match; one was sent before the cancel
    assert "Received Final Find Response (Cancel: MatchingTerminatedDueToCancelRequest)" in proc.stderr


def _scu_find(port: int, query: Dataset) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="MRSCANNER1")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="MSFOLLOWUP")
    assert assoc.is_established
    try:
        return [(int(st.Status), ident) for st, ident in assoc.send_c_find(query, ModalityWorklistInformationFind) if st]
    finally:
        assoc.release()


def test_malformed_identifier_gets_failure_status(mwl_port: int, populated: dict[str, ScheduledStep]) -> None:
    bad_date = _query(PatientName="", ScheduledProcedureStepSequence=[_query(ScheduledProcedureStepStartDate="2026-11")])
    (status, _), = _scu_find(mwl_port, bad_date)
    assert status == worklist.ST_IDENTIFIER_MISMATCH
    two_items = _query(ScheduledProcedureStepSequence=[_query(Modality="MR"), _query(Modality="MR")])
    (status, _), = _scu_find(mwl_port, two_items)
    assert status == worklist.ST_IDENTIFIER_MISMATCH
    # the association survives and still answers
    ok = _scu_find(mwl_port, _query(PatientID="P1"))
    assert [s for s, _ in ok] == [0xFF00, 0x0000]


def test_unknown_optional_key_is_ignored_with_warning(mwl_port: int, populated: dict[str, ScheduledStep]) -> None:
    got = _scu_find(mwl_port, _query(PatientID="P1", PatientWeight="70"))
    assert [s for s, _ in got] == [0xFF01, 0x0000]


# --- export for a department worklist server (DCMTK wlmscpfs) ----------------------------------




def test_export_follows_commits_and_wlmscpfs_serves_it(tmp_path: Path, db: Database) -> None:
    export = tmp_path / "wlist"
    cfg = Config(worklist=WorklistConfig(station_ae_title="MRSCANNER1", export_dir=export))
    a = schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20)), demo("P1", "Müller^Zoë"))
    b = schedule(db, cfg, due_exam("P2", dt.date(2026, 11, 22)), demo("P2", "Gérard^Noël", "ISO_IR 100"))
    folder = export / "MRSCANNER1"
    assert (folder / "lockfile").exists()
    assert sorted(p.name for p in folder.glob("*.wl")) == sorted(f"MSFU-{s.accession_number}.wl" for s in (a, b))
    with pytest.raises(RuntimeError):  # rolled back: nothing written
        with db.session() as s:
            worklist.schedule_due(s, due_exam("P9", TODAY), demo("P9", "X^Y"), cfg, profile=profile("ms-brain-routine"), today=TODAY)
            raise RuntimeError("abort")
    assert len(list(folder.glob("*.wl"))) == 2
    with db.session() as s:
        worklist.close_for_study(s, a.study_uid, None, None, None)
    assert [p.name for p in folder.glob("*.wl")] == [f"MSFU-{b.accession_number}.wl"]

    port = free_port()
    server = subprocess.Popen(["/usr/bin/wlmscpfs", "-dfp", str(export), str(port)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        query = _q(tmp_path, "q", charset="ISO_IR 100", station="MRSCANNER1", date="20261101-20261130", encoding="latin-1")
        found = _findscu(port, query, tmp_path / "out", aec="MRSCANNER1")
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert [str(r.AccessionNumber) for r in found] == [b.accession_number]
    assert str(found[0].PatientName) == "Gérard^Noël"


def test_sync_export_repairs_the_folder(tmp_path: Path, db: Database) -> None:
    export = tmp_path / "wlist"
    cfg = Config(worklist=WorklistConfig(station_ae_title="MRSCANNER1", export_dir=export))
    a = schedule(db, cfg, due_exam("P1", dt.date(2026, 11, 20)), demo("P1", "A^B"))
    folder = export / "MRSCANNER1"
    (folder / f"MSFU-{a.accession_number}.wl").unlink()
    (folder / "MSFU-STALE.wl").write_bytes(b"old")
    (folder / "department.wl").write_bytes(b"not ours")
    with db.session() as s:
        assert worklist.sync_export(s, cfg) == (1, 1)
    assert sorted(p.name for p in folder.glob("*.wl")) == sorted(["department.wl", f"MSFU-{a.accession_number}.wl"])
    assert dcmread(folder / f"MSFU-{a.accession_number}.wl").AccessionNumber == a.accession_number
    with db.session() as s:
        assert s.scalar(select(ScheduledStep.export_file)) == str(folder / f"MSFU-{a.accession_number}.wl")


def test_export_waits_for_a_reader_holding_the_dcmtk_lockfile(tmp_path: Path) -> None:
    """wlmscpfs holds a POSIX read lock on `lockfile` while it reads; a writer must wait for it."""
    folder = tmp_path / "AE"
    folder.mkdir()
    (folder / "lockfile").touch()
    reader = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.lockf(fd, fcntl.LOCK_SH);"
         " print('locked', flush=True); sys.stdin.read()", str(folder / "lockfile")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "locked"
        writer = threading.Thread(target=worklist.write_wl, args=(folder / "MSFU-X.wl", b"data"))
        writer.start()
        writer.join(timeout=0.5)
        assert writer.is_alive() and not (folder / "MSFU-X.wl").exists()
    finally:
        assert reader.stdin is not None
        reader.stdin.close()
        reader.wait(timeout=10)
    writer.join(timeout=10)
    assert (folder / "MSFU-X.wl").read_bytes() == b"data"


def test_cli_lists_exports_and_expires(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from msfollowup.cli import main

    export = tmp_path / "wl"
    conf = tmp_path / "msfollowup.toml"
    conf.write_text(f'[storage]\ndata_dir = "{tmp_path / "var"}"\n[worklist]\nstation_ae_title = "MRSCANNER1"\n'
                    f'export_dir = "{export}"\nexpire_days = 30\n')
    cfg = Config.model_validate({"storage": {"data_dir": str(tmp_path / "var")},
                                 "worklist": {"station_ae_title": "MRSCANNER1", "export_dir": str(export)}})
    (tmp_path / "var").mkdir()
    database = Database(cfg.storage.database_url)
    try:
        step = schedule(database, cfg, due_exam("P1", dt.date(2020, 1, 10)), demo("P1", "Müller^Zoë"))
    finally:
        database.dispose()
    (export / "MRSCANNER1" / f"MSFU-{step.accession_number}.wl").unlink()

    assert main(["worklist", "--json", "--config", str(conf)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["accession_number"] == step.accession_number and row["patient_id"] == "P1"
    assert "Müller" not in json.dumps(row, ensure_ascii=False)  # no names on the operator listing
    assert main(["worklist", "export", "--config", str(conf)]) == 0
    assert "1 file(s) written" in capsys.readouterr().out
    assert (export / "MRSCANNER1" / f"MSFU-{step.accession_number}.wl").exists()
    assert main(["worklist", "expire", "--config", str(conf)]) == 0  # window ended in 2020: overdue, kept
    assert "1 overdue item(s) now start today" in capsys.readouterr().out
    assert dcmread(export / "MRSCANNER1" / f"MSFU-{step.accession_number}.wl").ScheduledProcedureStepSequence[
        0].ScheduledProcedureStepStartDate == dt.date.today().strftime("%Y%m%d")
    assert main(["worklist", "cancel", step.accession_number, "--config", str(conf)]) == 2  # no reason
    assert "--reason" in capsys.readouterr().err
    assert main(["worklist", "cancel", step.accession_number, "--reason", "exam done elsewhere",
                 "--config", str(conf)]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert not list(export.glob("*/*.wl"))
    assert main(["worklist", "--json", "--config", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out) == []


# --- the SQL prefilter never loses a match the exact matcher would return --------------------------

NAMES = ["Müller^Zoë", "MUELLER^HANS", "Ößter^Jürgen", "Lee_Ann^Mary", "Pct%Name^Z", "O'Brien^Ann",
         "İstanbul^Ali", "Dvořák^Antonín", "Żółć^Ą", "Nguyễn^Văn", "Smith", "Smith^John^^Dr", "smithers^Waylon"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def name_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """The names on both backends: LIKE and collations differ (PostgreSQL is case-sensitive, locale-sorted)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('names') / 'index.sqlite3'}"
    else:
        url = request.getfixturevalue("pg").new_database(f"names{os.getpid()}")
    database = Database(url)
    cfg = Config(worklist=WorklistConfig(station_ae_title="MRSCANNER1"))
    for i, name in enumerate(NAMES):
        schedule(database, cfg, due_exam(f"N{i}", dt.date(2026, 11, 1) + dt.timedelta(days=i)), demo(f"N{i}", name))
    yield database
    database.dispose()


@st.composite
def name_patterns(draw: st.DrawFn) -> str:
    """Patterns a modality might type: prefixes, '?' for a letter, case changes, stray wildcards."""
    name = draw(st.sampled_from(NAMES))
    chars = list(draw(st.sampled_from([name, name.upper(), name.lower(), name.casefold()])))
    for i in draw(st.lists(st.integers(0, max(len(chars) - 1, 0)), max_size=3)):
        chars[i] = draw(st.sampled_from(["?", "*", "%", "_", chars[i]]))
    cut = draw(st.integers(0, len(chars)))
    return "".join(chars[:cut]) + draw(st.sampled_from(["*", "", "?*", "*^*"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=name_patterns(), day=st.integers(0, 15))
def test_sql_prefilter_agrees_with_the_matcher(name_db: Database, pattern: str, day: int) -> None:
    sps = _query(ScheduledStationAETitle="MRSCANNER1", ScheduledProcedureStepStartDate=f"-202611{day + 1:02d}")
    query = _query(SpecificCharacterSet="ISO_IR 192", PatientName=pattern, AccessionNumber="",
                   ScheduledProcedureStepSequence=[sps])
    compiled = worklist.compile_query(query)
    with name_db.session() as s:
        via_sql = sorted(str(p.dataset.AccessionNumber) for p in worklist.find(s, compiled))
        brute = sorted(
            step.accession_number for step in worklist.open_items(s) if compiled.apply(step.dataset()) is not None
        )
    event("matches" if brute else "no match")
    assert via_sql == brute


def _find_event(identifier: bytes) -> Event:
    """A real pynetdicom C-FIND event carrying `identifier` as received bytes (no SCU re-encoding)."""
    req = C_FIND()
    req.MessageID = 1
    req.AffectedSOPClassUID = ModalityWorklistInformationFind
    req.Identifier = BytesIO(identifier)
    cx = PresentationContext()
    cx.context_id = 1
    cx.abstract_syntax = ModalityWorklistInformationFind
    cx.transfer_syntax = [ExplicitVRLittleEndian]
    attrs = {"request": req, "context": cx.as_tuple, "_is_cancelled": lambda msg_id: False}
    return Event(Association(AE(), "acceptor"), evt.EVT_C_FIND, attrs)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=64), prefix=st.sampled_from([b"", b"\x10\x00\x10\x00PN", b"\x40\x00\x00\x01SQ\x00\x00"]))
def test_any_identifier_bytes_get_a_final_status(db: Database, cfg: Config, garbage: bytes, prefix: bytes) -> None:
    """Whatever arrives, the handler answers with statuses and ends with a final one; it never raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values it tolerates
        answers = list(mwl_scp.WorklistSCP(db, cfg).on_find(_find_event(prefix + garbage)))
    codes = [int(s.Status) if isinstance(s, Dataset) else s for s, _ in answers]
    assert codes and all(c in (0xFF00, 0xFF01) for c in codes[:-1])
    event(f"final 0x{codes[-1]:04X}")
    assert codes[-1] in (0x0000, worklist.ST_IDENTIFIER_MISMATCH, worklist.ST_UNABLE_TO_PROCESS)
