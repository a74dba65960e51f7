"""Helpers for the hostile-peer tests: raw sockets from a chosen loopback address, a well-behaved sender."""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from nodeutil import RunningNode

GOOD_HOST = "127.0.0.2"  # the well-behaved sender
BAD_HOST = "127.0.0.3"  # the hostile peer: another host as far as the node can tell


def mr_dataset(study_uid: str | None = None, sop_uid: str | None = None, patient_id: str = "HOSTILE01",
               patient_name: str = "Ravenscroft^Philippa", birth_date: str = "19610417") -> Dataset:
    """A small but complete MR image (8x8 pixels) with the identity a real one carries."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_name, birth_date, "F"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, 1
    ds.StudyDate, ds.StudyTime = "20260101", "101010"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(128)
    return ds


def scu(calling: str = "PYNETDICOM", timeout: float = 10) -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def store(node: RunningNode, items: Sequence[Dataset], host: str = GOOD_HOST, timeout: float = 10) -> list[int | None]:
    """C-STORE each data set on one association from `host`; the status per item (None: none)."""
    assoc = scu(timeout=timeout).associate("127.0.0.1", node.port, ae_title=node.ae_title, bind_address=(host, 0))
    if not assoc.is_established:
        return [None] * len(items)
    out: list[int | None] = []
    try:
        for ds in items:
            rsp = assoc.send_c_store(ds)
            out.append(int(rsp.Status) if rsp and "Status" in rsp else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def store_answers(node: RunningNode, items: Sequence[Dataset], host: str = GOOD_HOST) -> list[Dataset]:
    """C-STORE each data set on one association; the full answers (Status, ErrorComment)."""
    assoc = scu().associate("127.0.0.1", node.port, ae_title=node.ae_title, bind_address=(host, 0))
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds) for ds in items]
    finally:
        assoc.release()


def raw(node: RunningNode, host: str = BAD_HOST) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", node.port), timeout=5, source_address=(host, 0))
    return s


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the node closes `sock` (EOF or reset) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (TimeoutError, socket.timeout):
            return False
        except OSError:
            return True
    return False


def healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def part10(path: Path, sop_class: str, sop: str, data: bytes) -> Path:
    """A Part 10 file: valid file meta (so a sender can send it), then `data` as it is (possibly malformed)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta)
    path.write_bytes(b"\x00" * 128 + b"DICM" + buf.getvalue() + data)
    return path
