"""Helpers for the report and outbox tests: a small real study on disk, in the index, and its result.

Files are real MR Image Storage instances (tiny 8x8 pixel data) written with pydicom under
`<data_dir>/store`, indexed with the store's own tables, and described by a validation result in the
documented JSON shape (ValidationResult.to_json()). Also the DCMTK storescp destination used by the
outbox tests.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from msfollowup.site.config import Config, Destination, ReportConfig, StorageConfig
from msfollowup.db import Database
from msfollowup.files.store import Instance, InstanceStore

PATIENT_NAME = "Testperson^Hildegard"
PATIENT_ID = "MSFU-PID-4711"


@dataclass(frozen=True)
class SeriesSpec:
    kind: str
    description: str
    n: int = 3
    derived: bool = False
    contrast: str | None = None
    acquisition: str | None = "2D"
    thickness: float = 3.0
    spacing: tuple[float, float] = (0.9, 0.9)
    field: float | None = 3.0


ROUTINE: tuple[SeriesSpec, ...] = (
    SeriesSpec("LOCALIZER", "3-plane loc", n=3, acquisition=None, thickness=8.0),
    SeriesSpec("T2", "t2_tse_tra", n=4),
    SeriesSpec("T2_FLAIR", "t2_flair_3d_sag", n=4, acquisition="3D", thickness=1.0),
    SeriesSpec("T1", "t1_se_tra pre", n=3, contrast="pre"),
    SeriesSpec("T1", "t1_se_tra post", n=3, contrast="post"),
)


def make_config(tmp: Path, destinations: Sequence[Destination] = (), database: str | None = None,
                **report: Any) -> Config:
    return Config(
        storage=StorageConfig(data_dir=tmp / "data", fsync=False, database=database),
        report=ReportConfig(destinations=list(destinations), **report),
    )


def make_db(cfg: Config) -> Database:
    Path(cfg.storage.data_dir).mkdir(parents=True, exist_ok=True)
    return Database(cfg.storage.database_url)


def _instance(study_uid: str, series_uid: str, number: int, idx: int, spec: SeriesSpec,
              patient_name: str = PATIENT_NAME) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.ImageType = ["DERIVED" if spec.derived else "ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.StudyDate, ds.StudyTime = "20261120", "081500"
    ds.ContentDate, ds.ContentTime = "20261120", "082000"
    ds.AccessionNumber = "ACC0815"
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MRT Schaedel"
    ds.SeriesDescription = spec.description
    ds.PatientName = patient_name
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = number
    ds.InstanceNumber = idx + 1
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "for"])
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [0.0, 0.0, float(idx) * spec.thickness]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness = spec.thickness
    ds.PixelSpacing = list(spec.spacing)
    if spec.field is not None:
        ds.MagneticFieldStrength = spec.field
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "SK", ""
    ds.MRAcquisitionType = spec.acquisition or "2D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 5000.0, 90.0, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(64, dtype=np.uint16) * (idx + 1)).tobytes()
    return ds


def make_study(
    cfg: Config, db: Database, specs: Sequence[SeriesSpec] = ROUTINE, study_uid: str | None = None,
    patient_name: str = PATIENT_NAME,
) -> tuple[str, list[dict[str, Any]]]:
    """Write and index a study; returns (study_uid, series entries of a result, in result JSON shape)."""
    study_uid = study_uid or str(generate_uid())
    store = InstanceStore(Path(cfg.storage.data_dir), db, fsync=False)
    series_json: list[dict[str, Any]] = []
    for number, spec in enumerate(specs, start=1):
        series_uid = str(generate_uid())
        uids = []
        for i in range(spec.n):
            ds = _instance(study_uid, series_uid, number, i, spec, patient_name)
            with store.temp_file() as fh:
                ds.save_as(fh, enforce_file_format=True)
            store.ingest_file(Path(fh.name), calling_ae="MODALITY")
            Path(fh.name).unlink()
            uids.append(str(ds.SOPInstanceUID))
        series_json.append(series_entry(study_uid, series_uid, number, spec, uids))
    return study_uid, series_json


def series_entry(study_uid: str, series_uid: str, number: int, spec: SeriesSpec, uids: list[str]) -> dict[str, Any]:
    return {
        "series_instance_uid": series_uid,
        "series_number": number,
        "description": spec.description,
        "kind": spec.kind,
        "acquisition": spec.acquisition,
        "derived": spec.derived,
        "contrast": spec.contrast,
        "contrast_basis": "series order after contrast start" if spec.contrast else None,
        "evidence": {"scanning_sequence": "SE", "tr_ms": 5000.0, "te_ms": 90.0, "description": spec.description},
        "confidence": 0.9,
        "basis": "physics",
        "facts": {
            "study_instance_uid": study_uid,
            "series_instance_uid": series_uid,
            "series_number": number,
            "description": spec.description,
            "modality": "MR",
            "sop_class_uids": [MRImageStorage],
            "sop_instance_uids": uids,
            "instance_count": len(uids),
            "frame_count": len(uids),
            "field_strength_t": spec.field,
            "slice_thickness_mm": spec.thickness,
            "pixel_spacing_mm": list(spec.spacing),
            "mr_acquisition_type": spec.acquisition,
        },
    }


def make_result(study_uid: str, series: list[dict[str, Any]], verdict: str = "compliant",
                failures: Sequence[tuple[str, str, str]] = ()) -> dict[str, Any]:
    """A result in ValidationResult.to_json() shape; failures = (id, status, message)."""
    by_kind: dict[str, list[str]] = {}
    for s in series:
        by_kind.setdefault(s["kind"], []).append(s["series_instance_uid"])
    reqs: list[dict[str, Any]] = [
        {"id": "sequence.t2", "status": "pass", "measured": 1, "limit": ">= 1", "series": by_kind.get("T2", []),
         "message": "A T2-weighted series is present."},
        {"id": "field_strength", "status": "pass", "measured": 3.0, "limit": 1.5,
         "series": [s["series_instance_uid"] for s in series if s["kind"] != "LOCALIZER"],
         "message": "Every series was acquired at 1.5 T or more."},
    ]
    for rid, status, message in failures:
        reqs.append({"id": rid, "status": status, "measured": None, "limit": "5 min", "series": by_kind.get("T1", []),
                     "message": message})
    return {
        "study_instance_uid": study_uid,
        "profile": {"id": "ms-brain-routine", "version": "1", "title": "MS brain routine follow-up",
                    "loinc": [{"code": "24587-8", "meaning": "MR Brain WO and W contrast IV"}]},
        "verdict": verdict,
        "series": series,
        "requirements": reqs,
        "reference_study_uid": None,
        "checked_at": dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.timezone.utc).isoformat(),
    }


# --- a real DCMTK destination ------------------------------------------------------------------------


def free_port() -> int:
    from nodeutil import free_port as _free_port  # the one way the suite picks ports (see there)

    return _free_port()


class StoreSCP:
    """`/usr/bin/storescp` on loopback writing every received object to `folder`."""

    def __init__(self, folder: Path, port: int, ae_title: str = "PACS") -> None:
        self.folder, self.port, self.ae_title = folder, port, ae_title
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen(
            ["/usr/bin/storescp", "--aetitle", self.ae_title, "--output-directory", str(self.folder),
             "--log-level", "warn", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"storescp did not listen on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file()) if self.folder.exists() else []


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    if not Path("/usr/bin/storescp").exists():
        pytest.skip("DCMTK /usr/bin/storescp is not installed")
    scp = StoreSCP(tmp_path / "received", free_port())
    yield scp
    scp.stop()


def test_fixture_study_is_real_and_indexed(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    db = make_db(cfg)
    study_uid, series = make_study(cfg, db)
    with db.session() as s:
        n = len(list(s.query(Instance).filter(Instance.study_uid == study_uid)))
    assert n == sum(spec.n for spec in ROUTINE) == sum(len(x["facts"]["sop_instance_uids"]) for x in series)
    assert shutil.which("/usr/bin/dciodvfy") is not None
