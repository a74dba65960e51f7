"""Report files and the `reports` table: `<data_dir>/reports/<StudyInstanceUID>/v<version>.{dcm,json,html}`.

Files are never overwritten by a later version: a re-validated study gets a new SR that names its
predecessor. `write_reports` is the pipeline's entry point. It reserves the SR's UIDs in the
`reports` table before writing anything, so a crash-and-retry rebuilds the *same* SR (same SOP
Instance UID) instead of a second one, and it enqueues the SR for every configured destination
(see outbox.py). Each file is written with core.files.atomic_write (fsync file and folder).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage
from sqlalchemy import Integer, String, Text, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from msfollowup.site.config import Config
from msfollowup.core.files import atomic_write
from msfollowup.db import Base, Database, UTCDateTime, utcnow
from msfollowup.db.deliveries import enqueue
from msfollowup.reports.content import Reservation, ReportError, UnknownStudyReport, result_dict
from msfollowup.reports.evidence import evidence_datasets, evidence_refs, identity_header, instance_index
from msfollowup.reports.html import build_html
from msfollowup.reports.model import build_json
from msfollowup.reports.sr import build_sr, sr_bytes
from msfollowup.check.validate import ValidationResult

log = logging.getLogger("msfollowup.reports")


class Report(Base):
    """One row per (study, version): the SR's reserved UIDs and where the three files are."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # No foreign key to studies: reports are clinical documents kept after the images are purged.
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sr_series_instance_uid: Mapped[str] = mapped_column(String(64))
    predecessor_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    verdict: Mapped[str | None] = mapped_column(String(16))
    sr_path: Mapped[str | None] = mapped_column(Text)  # relative to <data_dir>
    json_path: Mapped[str | None] = mapped_column(Text)
    html_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    written_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # None: reserved, not yet written

    __table_args__ = (UniqueConstraint("study_uid", "version", name="uq_reports_version"),)


@dataclass(frozen=True)
class ReportRecord:
    study_uid: str
    version: int
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    predecessor_sop_instance_uid: str | None
    verdict: str
    sr_path: Path
    json_path: Path
    html_path: Path
    created_at: dt.datetime


def report_dir(cfg: Config, study_uid: str) -> Path:
    if not study_uid or not all(c.isdigit() or c == "." for c in study_uid) or len(study_uid) > 64:
        raise ReportError(f"not a valid Study Instance UID: {study_uid!r}")
    return Path(cfg.storage.data_dir) / "reports" / study_uid


def _reserve(db: Database, study_uid: str, version: int) -> Reservation:
    """The report row of (study, version), created with fresh UIDs if missing (race-safe)."""
    for _ in range(2):
        with db.session() as s:
            row = s.scalars(select(Report).where(Report.study_uid == study_uid, Report.version == version)).first()
            if row is None:
                prev = s.scalars(
                    select(Report)
                    .where(Report.study_uid == study_uid, Report.version < version, Report.written_at.is_not(None))
                    .order_by(Report.version.desc())
                ).first()
                row = Report(
                    study_uid=study_uid,
                    version=version,
                    sr_sop_instance_uid=str(hd.UID()),
                    # All versions of a study's report live in one SR series, instance number = version.
                    sr_series_instance_uid=prev.sr_series_instance_uid if prev else str(hd.UID()),
                    predecessor_sop_instance_uid=prev.sr_sop_instance_uid if prev else None,
                    created_at=utcnow(),
                )
                try:
                    with s.begin_nested():
                        s.add(row)
                except IntegrityError:
                    continue  # another worker reserved it first: read theirs
            prev_series = None
            if row.predecessor_sop_instance_uid:
                prev_series = s.scalars(
                    select(Report.sr_series_instance_uid).where(
                        Report.sr_sop_instance_uid == row.predecessor_sop_instance_uid
                    )
                ).first()
            return Reservation(
                report_id=row.id,
                sop_instance_uid=row.sr_sop_instance_uid,
                series_instance_uid=row.sr_series_instance_uid,
                predecessor_sop_instance_uid=row.predecessor_sop_instance_uid,
                predecessor_series_instance_uid=prev_series,
                created_at=row.created_at,
            )
    raise ReportError(f"study {study_uid}: cannot reserve report version {version}")


def _record(cfg: Config, row: Report) -> ReportRecord:
    base = Path(cfg.storage.data_dir)
    return ReportRecord(
        study_uid=row.study_uid,
        version=row.version,
        sr_sop_instance_uid=row.sr_sop_instance_uid,
        sr_series_instance_uid=row.sr_series_instance_uid,
        predecessor_sop_instance_uid=row.predecessor_sop_instance_uid,
        verdict=row.verdict or "",
        sr_path=base / (row.sr_path or ""),
        json_path=base / (row.json_path or ""),
        html_path=base / (row.html_path or ""),
        created_at=row.created_at,
    )


def _files_present(cfg: Config, row: Report) -> bool:
    base = Path(cfg.storage.data_dir)
    return all(p is not None and (base / p).is_file() for p in (row.sr_path, row.json_path, row.html_path))


def write_reports(
    db: Database, cfg: Config, study_uid: str, version: int, result: ValidationResult | Mapping[str, Any]
) -> ReportRecord:
    """SR + JSON + HTML of one study version, recorded and queued for delivery. Idempotent."""
    if version < 1:
        raise ReportError(f"study {study_uid}: report version must be >= 1, got {version}")
    data = result_dict(result)
    if data["study_instance_uid"] != study_uid:
        raise ReportError(f"study {study_uid}: validation result is for study {data['study_instance_uid']}")
    folder = report_dir(cfg, study_uid)
    with db.session() as s:
        done = s.scalars(select(Report).where(Report.study_uid == study_uid, Report.version == version)).first()
        if done is not None and done.written_at is not None and _files_present(cfg, done):
            enqueue(s, cfg, done.id, study_uid, version, done.sr_sop_instance_uid, str(done.sr_path))
            return _record(cfg, done)

    res = _reserve(db, study_uid, version)
    index = instance_index(db, study_uid)
    refs = evidence_refs(data, index)
    identity = identity_header(cfg, study_uid, refs, index)
    predecessor = None
    if res.predecessor_sop_instance_uid and res.predecessor_series_instance_uid:
        predecessor = Dataset()
        predecessor.StudyInstanceUID = study_uid
        predecessor.SeriesInstanceUID = res.predecessor_series_instance_uid
        predecessor.SOPClassUID = ComprehensiveSRStorage
        predecessor.SOPInstanceUID = res.predecessor_sop_instance_uid
    sr = build_sr(cfg, data, evidence_datasets(identity, study_uid, refs), refs,
                  res.sop_instance_uid, res.series_instance_uid, version, predecessor)
    doc = build_json(data, res, version, identity, utcnow())
    fsync = cfg.storage.fsync
    paths = {ext: folder / f"v{version}.{ext}" for ext in ("dcm", "json", "html")}
    atomic_write(paths["dcm"], sr_bytes(sr), fsync)
    atomic_write(paths["json"], json.dumps(doc, indent=2, ensure_ascii=False, default=str).encode("utf-8"), fsync)
    atomic_write(paths["html"], build_html(doc).encode("utf-8"), fsync)

    base = Path(cfg.storage.data_dir)
    rel = {ext: str(p.relative_to(base)) for ext, p in paths.items()}
    with db.session() as s:
        row = s.get(Report, res.report_id)
        if row is None:
            raise ReportError(f"study {study_uid}: report row of version {version} vanished")
        row.sr_path, row.json_path, row.html_path = rel["dcm"], rel["json"], rel["html"]
        row.verdict = data["verdict"]
        row.written_at = utcnow()
        enqueue(s, cfg, row.id, study_uid, version, row.sr_sop_instance_uid, rel["dcm"])
        record = _record(cfg, row)
    log.info("report written: study %s v%d verdict %s, SR %s", study_uid, version, data["verdict"],
             res.sop_instance_uid)
    return record


def latest_report(db: Database, cfg: Config, study_uid: str) -> ReportRecord:
    with db.session() as s:
        row = s.scalars(
            select(Report)
            .where(Report.study_uid == study_uid, Report.written_at.is_not(None))
            .order_by(Report.version.desc())
        ).first()
        if row is None:
            raise UnknownStudyReport(f"no report for study {study_uid}")
        return _record(cfg, row)


def list_reports(db: Database, cfg: Config, study_uid: str) -> list[ReportRecord]:
    with db.session() as s:
        rows: Iterable[Report] = s.scalars(
            select(Report)
            .where(Report.study_uid == study_uid, Report.written_at.is_not(None))
            .order_by(Report.version)
        )
        return [_record(cfg, r) for r in rows]
