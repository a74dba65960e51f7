"""Malformed data sets against the real node: checked before Success, a failing study marked once.

The data sets travel as raw bytes (pynetdicom sends a Part 10 file's data set unparsed in chunked
mode), so the node sees exactly what a broken modality would send.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import _config
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from hostileutil import mr_dataset, part10, scu, store
from nodeutil import RunningNode, spool_left

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    n = RunningNode(tmp_path / "node", stable_seconds=2).start()
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send a file's data set bytes as they are, unparsed
    try:
        yield n
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        n.stop()


def _encode(ds: Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()



def _send_raw(node: RunningNode, path: Path) -> Dataset:
    assoc = scu().associate("127.0.0.1", node.port, ae_title=node.ae_title, bind_address=("127.0.0.2", 0))
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()
    assert rsp is not None and "Status" in rsp, "no C-STORE answer"
    return rsp


def _without_pixels() -> Dataset:
    ds = mr_dataset()
    del ds.PixelData
    return ds


def _lying_pixel_data(ds: Dataset) -> bytes:
    return _encode(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 0x7FFFFFF0) + bytes(64)


def _unclosed_sequence(ds: Dataset) -> bytes:
    item = struct.pack("<HH2sH", 0x0040, 0x0009, b"SH", 4) + b"SPS1"  # Scheduled Procedure Step ID
    return (_encode(ds) + struct.pack("<HH2sHI", 0x0040, 0x0275, b"SQ", 0, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item)  # neither item nor sequence closed


def _unclosed_sequence_in_a_large_file(ds: Dataset) -> bytes:
    """The same, behind 300 kB of private bytes: a file above SMALL_FILE (files/syncio.py) is walked mapped,
    not read whole."""
    padding = struct.pack("<HH2sHI", 0x0029, 0x1010, b"OB", 0, 300_000) + bytes(300_000)
    return _unclosed_sequence(ds).replace(b"\x40\x00\x75\x02SQ", padding + b"\x40\x00\x75\x02SQ", 1)


def _nothing_stored(node: RunningNode, sop: str) -> None:
    assert not list((node.data_dir / "store").rglob(f"{sop}.dcm")), "a refused instance left a file in store/"
    assert not spool_left(node.data_dir), "a temporary file was left behind"


@pytest.mark.parametrize("build,expect", [
    (_lying_pixel_data, "(7FE0,0010) of 2147483632 bytes runs past the end"),
    (_unclosed_sequence, "never closed"),
    (_unclosed_sequence_in_a_large_file, "never closed"),
], ids=["pixel-length-past-the-end", "unclosed-sequence", "unclosed-sequence-large-file"])
def test_broken_structure_gets_0xC000_naming_the_problem_and_nothing_is_stored(
        node: RunningNode, tmp_path: Path, build: object, expect: str) -> None:
    ds = _without_pixels()
    sop = str(ds.SOPInstanceUID)
    data = build(ds)  # type: ignore[operator]
    rsp = _send_raw(node, part10(tmp_path / "broken.dcm", MRImageStorage, sop, data))
    assert int(rsp.Status) == 0xC000, f"0x{int(rsp.Status):04X} {rsp.get('ErrorComment')}"
    assert expect in str(rsp.ErrorComment) or expect in node.log(), rsp.ErrorComment
    _nothing_stored(node, sop)
    assert node.study(str(ds.StudyInstanceUID)) is None
    good = mr_dataset()
    assert store(node, [good]) == [0], "the well-behaved sender was not served"
    assert node.instances(str(good.StudyInstanceUID)), "an acknowledged instance is not indexed"


def test_sop_class_of_the_data_set_must_match_the_c_store_request(node: RunningNode, tmp_path: Path) -> None:
    ds = mr_dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE  # the data set says CT; the request (and file meta) say MR
    sop = str(ds.SOPInstanceUID)
    rsp = _send_raw(node, part10(tmp_path / "ct-as-mr.dcm", MRImageStorage, sop, _encode(ds)))
    assert int(rsp.Status) == 0xA900, f"0x{int(rsp.Status):04X}"
    assert "SOPClassUID in the data set differs" in str(rsp.ErrorComment)
    _nothing_stored(node, sop)
    good = mr_dataset()
    assert store(node, [good]) == [0]


def _studies(node: RunningNode) -> dict[str, dict[str, object]]:
    out = subprocess.run([sys.executable, "-m", "msfollowup", "studies", "--json", "--config", str(node.config_path)],
                         capture_output=True, text=True, check=True)
    return {r["study_instance_uid"]: r for r in json.loads(out.stdout)}


def test_a_study_a_later_stage_cannot_process_is_marked_failed_once_with_the_reason(node: RunningNode) -> None:
    """A stored file damaged after its acknowledgement (a disk fault): the pipeline fails on it once,
    marks the study failed with the reason, and does not retry it every pass."""
    ds = mr_dataset()
    study = str(ds.StudyInstanceUID)
    assert store(node, [ds]) == [0]
    [row] = node.instances(study)
    stored = node.data_dir / "store" / row.path
    stored.write_bytes(stored.read_bytes()[:200])  # the header cut off mid-element
    node.wait_for("the study to be marked failed", lambda: _studies(node)[study]["state"] == "failed" or None, timeout=40)
    listed = _studies(node)[study]
    assert str(listed["failure_reason"]).split(":")[0] in ("check failed", "follow-up failed"), listed
    failures = node.log().count(f"study failed study={study}")
    time.sleep(12)  # two more pipeline passes
    assert node.log().count(f"study failed study={study}") == failures == 1
    assert node.log().count("failed: ") <= 3, "the failing study is retried every pass"
    text = subprocess.run([sys.executable, "-m", "msfollowup", "studies", "--config", str(node.config_path)],
                          capture_output=True, text=True, check=True).stdout
    assert "failed" in text and str(listed["failure_reason"]) in text
    good = mr_dataset()
    assert store(node, [good]) == [0]
    node.wait_complete(str(good.StudyInstanceUID))
