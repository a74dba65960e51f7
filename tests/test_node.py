"""The DICOM node end to end: DCMTK and pynetdicom peers against the real service on loopback."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from dicom_fixtures import generate_study
from nodeutil import DCMTK, RunningNode, dataset_bytes, spool_left

pytestmark = pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed (apt-get install dcmtk)")


def _stored_files(node: RunningNode) -> list[Path]:
    return sorted(p for p in (node.data_dir / "store").rglob("*") if p.is_file())


def _scu(calling: str = "PYNETDICOM", contexts: list[tuple[str, list[str] | None]] | None = None) -> AE:
    ae = AE(ae_title=calling)
    for sop, ts in contexts or [(MRImageStorage, None)]:
        if ts:
            ae.add_requested_context(sop, ts)
        else:
            ae.add_requested_context(sop)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def test_storescu_study_of_200_plus_instances_is_stored_byte_identical_and_completes(node: RunningNode, tmp_path: Path) -> None:
    study = generate_study(tmp_path / "gen", profile="ms-brain-routine", vendor="siemens", slices=50, seed=11)
    assert len(study.files) >= 200
    res = node.storescu(study.files)
    assert res.returncode == 0, res.stderr

    rows = node.instances(study.study_uid)
    assert len(rows) == len(study.files)
    by_sop = {r.sop_instance_uid: r for r in rows}
    for sent in study.files:
        ds = pydicom.dcmread(sent, stop_before_pixels=True)
        row = by_sop[ds.SOPInstanceUID]
        stored = node.data_dir / "store" / row.path
        assert row.path == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert row.series_uid == ds.SeriesInstanceUID and row.sop_class_uid == ds.SOPClassUID
        assert row.size == stored.stat().st_size
        assert dataset_bytes(stored) == dataset_bytes(sent), f"{sent.name} differs on disk"
    assert {r.series_uid for r in rows} == {s.series_uid for s in study.series}

    st = node.wait_complete(study.study_uid)
    assert st.version == 1 and st.completed_at is not None
    assert (st.last_received - st.first_received).total_seconds() >= 0
    assert not spool_left(node.data_dir), "temporary files left behind"

    out = subprocess.run(
        ["msfollowup", "studies", "--json", "--config", str(node.config_path)], capture_output=True, text=True, check=True
    )
    import json

    listed = {r["study_instance_uid"]: r for r in json.loads(out.stdout)}
    assert listed[study.study_uid]["state"] == "complete"
    assert listed[study.study_uid]["instances"] == len(study.files)
    assert listed[study.study_uid]["series"] == len(study.series)
    # No patient name or ID in the log, ever.
    log = node.log()
    assert "DOE" not in log and "MSF0001" not in log
    assert "study complete" in log and "association released" in log


def test_kill9_mid_transfer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    study = generate_study(tmp_path / "gen", vendor="ge", slices=30, seed=12)
    node = RunningNode(tmp_path, stable_seconds=1.5).start()
    acknowledged: list[Path] = []
    killed = threading.Event()

    def killer() -> None:
        while len(acknowledged) < 60:
            time.sleep(0.01)
        node.kill9()
        killed.set()

    t = threading.Thread(target=killer)
    t.start()
    ae = _scu()
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    for path in study.files:
        try:
            status = assoc.send_c_store(path)
        except Exception:  # the connection dies with the server
            break
        if not status or status.Status != 0:
            break
        acknowledged.append(path)
    if assoc.is_established:
        assoc.abort()
    t.join(20)
    assert killed.is_set() and 60 <= len(acknowledged) < len(study.files)

    node2 = RunningNode(tmp_path, stable_seconds=1.5, port=node.port).start()
    try:
        stored = {p.stem: p for p in _stored_files(node2)}
        rows = {r.sop_instance_uid for r in node2.instances(study.study_uid)}
        for sent in acknowledged:
            sop = pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID
            assert sop in stored, "an acknowledged instance is missing after kill -9"
            assert sop in rows, "an acknowledged instance is not indexed after restart"
            assert dataset_bytes(stored[sop]) == dataset_bytes(sent)
        # No partial file anywhere under store/: every file there is complete and equal to what was sent.
        sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in study.files}
        for sop, path in stored.items():
            assert dataset_bytes(path) == dataset_bytes(sources[sop])
        assert set(stored) == rows
        assert not spool_left(node2.data_dir)
        # The interrupted study completes exactly once after the restart (its timer was not lost).
        node2.wait_complete(study.study_uid)
        time.sleep(2.5)
        st = node2.study(study.study_uid)
        assert st is not None and st.state == "complete" and st.version == 1
        assert node2.log().count(f"study complete study={study.study_uid}") == 1
    finally:
        node2.stop()


def test_completion_timer_survives_restart_and_late_instance_reopens(tmp_path: Path) -> None:
    study = generate_study(tmp_path / "gen", vendor="philips", slices=3, seed=13)
    node = RunningNode(tmp_path, stable_seconds=3).start()
    first, late = study.files[:-1], study.files[-1:]
    assert node.storescu(first).returncode == 0
    assert node.stop() == 0  # SIGTERM before the study was quiet long enough
    st = node.study(study.study_uid)
    assert st is not None and st.state == "receiving"

    node = RunningNode(tmp_path, stable_seconds=3, port=node.port).start()
    try:
        assert node.wait_complete(study.study_uid).version == 1
        assert node.storescu(late).returncode == 0
        st = node.study(study.study_uid)
        assert st is not None and st.state == "receiving"  # reopened by the late series
        assert node.wait_complete(study.study_uid, version=2).version == 2
        assert "study reopened" in node.log()
    finally:
        assert node.stop() == 0


def test_duplicates_same_bytes_success_different_bytes_warning_first_kept(node: RunningNode, tmp_path: Path) -> None:
    study = generate_study(tmp_path / "gen", slices=2, seed=14)
    path = study.files[3]
    assert node.storescu([path]).returncode == 0
    assert node.storescu([path]).returncode == 0  # identical resend: plain success
    ds = pydicom.dcmread(path)
    sop = ds.SOPInstanceUID
    stored = [p for p in _stored_files(node) if p.stem == sop]
    assert len(stored) == 1
    original = stored[0].read_bytes()

    ds.SeriesDescription = "CHANGED"  # same SOP Instance UID, different content
    assoc = _scu().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xB006
    assert "duplicate" in str(status.get("ErrorComment", "")).lower()
    assert stored[0].read_bytes() == original
    assert len(node.instances(study.study_uid)) == 1


def test_bad_uid_gets_failure_status_and_nothing_is_written(node: RunningNode) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.SeriesInstanceUID = "1.2.3.../../../etc"
    assoc = _scu().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    status = assoc.send_c_store(ds)
    too_long = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    too_long.StudyInstanceUID = "1." + "2" * 70
    status2 = assoc.send_c_store(too_long)
    assoc.release()
    assert status.Status == 0xC000 and "SeriesInstanceUID" in status.ErrorComment
    assert status2.Status == 0xC000 and "StudyInstanceUID" in status2.ErrorComment
    assert _stored_files(node) == []
    assert not spool_left(node.data_dir)


def test_access_control_rejects_unknown_calling_ae_wrong_called_ae_and_wrong_host(tmp_path: Path) -> None:
    node = RunningNode(tmp_path, allow=[("ECHOSCU", None), ("STORESCU", "127.0.0.1"), ("HOSTBOUND", "127.0.0.2")]).start()
    try:
        stranger = _scu("STRANGER").associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert stranger.is_rejected
        wrong_called = _scu("STORESCU").associate("127.0.0.1", node.port, ae_title="OTHERNODE")
        assert wrong_called.is_rejected
        from_wrong_host = _scu("HOSTBOUND").associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert from_wrong_host.is_rejected
        from_right_host = _scu("HOSTBOUND").associate(
            "127.0.0.1", node.port, ae_title=node.ae_title, bind_address=("127.0.0.2", 0)
        )
        assert from_right_host.is_established
        from_right_host.release()
        res = subprocess.run([str(DCMTK / "echoscu"), "-aet", "NOPE", "-aec", node.ae_title, "127.0.0.1", str(node.port)],
                             capture_output=True, text=True)
        assert res.returncode != 0 and "Calling AE Title Not Recognized" in res.stderr
        assert node.log().count("association rejected") == 4
    finally:
        node.stop()


def _garbage_clients(port: int) -> None:
    """Random bytes, a truncated A-ASSOCIATE-RQ, and a PDU announcing more bytes than it sends."""
    payloads = [
        os.urandom(4096),
        b"\x01\x00\x00\x00\x00\xcd\x00\x01",  # A-ASSOCIATE-RQ header, then nothing
        struct.pack(">BBI", 0x04, 0, 10_000_000) + b"\x00" * 100,  # P-DATA-TF claiming 10 MB
        b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00" * 3,
    ]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(payload)
            time.sleep(0.2)


def test_garbage_on_the_port_does_not_disturb_a_well_behaved_client(tmp_path: Path) -> None:
    node = RunningNode(tmp_path, sections={"node": {"network_timeout": 3, "acse_timeout": 3}}).start()
    try:
        study = generate_study(tmp_path / "gen", slices=5, seed=15)
        result: dict[str, subprocess.CompletedProcess[str]] = {}
        sender = threading.Thread(target=lambda: result.setdefault("r", node.storescu(study.files)))
        sender.start()
        for _ in range(3):
            _garbage_clients(node.port)
        sender.join(120)
        assert result["r"].returncode == 0, result["r"].stderr
        assert len(node.instances(study.study_uid)) == len(study.files)
        assert node.echo()
        assert node.proc is not None and node.proc.poll() is None
    finally:
        assert node.stop() == 0


@pytest.mark.parametrize(
    "name, scu_option",
    [("MR_small_jpeg_ls_lossless.dcm", "-xt"), ("SC_rgb_jpeg_dcmtk.dcm", "-xy")],
)
def test_compressed_transfer_syntax_from_storescu_stored_as_received(
    node: RunningNode, tmp_path: Path, name: str, scu_option: str
) -> None:
    # pydicom's sample encodes encapsulated pixel data as OW, which DCMTK corrects to OB while
    # sending (and drops trailing padding); write a correctly encoded copy so the comparison is about the node, not the sender.
    ds = pydicom.dcmread(get_testdata_file(name))
    ds["PixelData"].VR = "OB"
    if 0xFFFCFFFC in ds:  # trailing padding, which DCMTK does not send
        del ds[0xFFFCFFFC]
    src = tmp_path / name
    ds.save_as(src, enforce_file_format=True)
    res = node.storescu([src], scu_option)
    assert res.returncode == 0, res.stderr
    sent = pydicom.dcmread(src, stop_before_pixels=True)
    stored = [p for p in _stored_files(node) if p.stem == sent.SOPInstanceUID]
    assert len(stored) == 1
    got = pydicom.dcmread(stored[0], stop_before_pixels=True)
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert dataset_bytes(stored[0]) == dataset_bytes(src)


def test_rle_from_pynetdicom_stored_as_received(node: RunningNode) -> None:
    src = Path(get_testdata_file("MR_small_RLE.dcm"))
    ae = _scu(contexts=[(MRImageStorage, [RLELossless])])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.accepted_contexts[0].transfer_syntax[0] == RLELossless
    status = assoc.send_c_store(src)
    assoc.release()
    assert status.Status == 0
    sop = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
    (stored,) = [p for p in _stored_files(node) if p.stem == sop]
    assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == RLELossless
    assert dataset_bytes(stored) == dataset_bytes(src)


def test_sigterm_is_graceful_and_exits_zero(node: RunningNode) -> None:
    assert node.stop() == 0
    assert "stopped" in node.log()


def test_bad_config_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nport = "eleven"\nae_titel = "X"\n')
    res = subprocess.run(["msfollowup", "studies", "--config", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert str(bad) in res.stderr and "node.port" in res.stderr and "node.ae_titel: unknown key" in res.stderr
    env = {**os.environ, "MSFOLLOWUP_CONFIG": str(tmp_path / "missing.toml")}
    res = subprocess.run(["msfollowup", "studies"], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "missing.toml" in res.stderr


def test_large_multiframe_object_streams_to_disk_with_bounded_memory(node: RunningNode, tmp_path: Path) -> None:
    from dicom_fixtures import write_large_multiframe

    big = write_large_multiframe(tmp_path / "big.dcm", 300 * 1024 * 1024)
    before = node.peak_rss_mb()
    res = node.storescu([big], "-xe")
    assert res.returncode == 0, res.stderr
    grown = node.peak_rss_mb() - before
    assert grown < 100, f"receiving a 300 MiB object raised peak RSS by {grown:.0f} MB"
    sop = pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID
    (stored,) = [p for p in _stored_files(node) if p.stem == sop]
    assert stored.stat().st_size >= 300 * 1024 * 1024
    assert dataset_bytes(stored) == dataset_bytes(big)
