"""generate_study: a whole synthetic MR exam on disk, with the truth about every series."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dicom_fixtures import vendors
from dicom_fixtures.classic import write_classic_series
from dicom_fixtures.common import StudyContext, safe_name, uid
from dicom_fixtures.exam import DEFECTS, PROFILES, PlannedSeries, plan_exam


@dataclass
class GeneratedSeries:
    """One written series and what a correct classifier must say about it."""

    series_uid: str
    series_number: int
    description: str
    expected_kind: str  # one of msfollowup.dicom.classify.KINDS
    expected_acquisition: str | None  # "2D" / "3D"; None when the headers cannot say (enhanced derived)
    expected_derived: bool
    expected_contrast: str | None  # "pre" / "post" relative to gadolinium; None for the localizer
    files: list[Path] = field(default_factory=list)
    key: str = ""  # role in the profile ("t1_post", "t2_sag_c" ...), stable across vendors
    body_part: str = "BRAIN"
    acquisition_datetime: dt.datetime | None = None
    contrast_bolus_start: dt.datetime | None = None  # as written in the header (None: absent)


@dataclass
class GeneratedStudy:
    study_uid: str
    patient_id: str
    files: list[Path]
    series: list[GeneratedSeries]
    profile: str = ""
    vendor: str = ""
    enhanced: bool = False
    defects: tuple[str, ...] = ()
    out_dir: Path | None = None

    def by_key(self, key: str) -> GeneratedSeries:
        """The series playing `key` in the profile (e.g. "flair", "t1_post")."""
        for s in self.series:
            if s.key == key:
                return s
        raise KeyError(f"no series {key!r} in this study; have {[s.key for s in self.series]}")


def _check_args(profile: str, vendor: str, defects: Sequence[str], slices: int, rows: int, columns: int) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    if vendor not in vendors.VENDORS:
        raise ValueError(f"unknown vendor {vendor!r}; known: {', '.join(vendors.VENDORS)}")
    bad = [d for d in defects if d not in DEFECTS]
    if bad:
        raise ValueError(f"unknown defect(s) {bad}; known: {', '.join(DEFECTS)}")
    if slices < 1 or rows < 8 or columns < 8:
        raise ValueError(f"need slices >= 1 and rows/columns >= 8, got slices={slices} rows={rows} "
                         f"columns={columns}")


def _study_start(study_date: str, seed: int) -> dt.datetime:
    try:
        day = dt.datetime.strptime(study_date, "%Y%m%d")
    except ValueError:
        raise ValueError(f"study_date must be YYYYMMDD, got {study_date!r}") from None
    return day + dt.timedelta(hours=7, minutes=30 + (seed % 20) * 23, seconds=seed % 60)


def _expected_acquisition(p: PlannedSeries, enhanced: bool) -> str | None:
    """Classic derived files keep MRAcquisitionType of their source (scanners do); an Enhanced MR derived
    object may not carry the MR Pulse Sequence module, so its headers cannot say: None."""
    if p.derived and enhanced:
        return None
    return p.technique.acquisition


def generate_study(out_dir: Path, *, profile: str = "ms-brain-routine", vendor: str = "siemens",
                   enhanced: bool = False, defects: Sequence[str] = (), slices: int = 12,
                   rows: int = 64, columns: int = 64, patient_id: str = "MSF0001",
                   patient_name: str = "DOE^JANE", study_uid: str | None = None,
                   study_date: str = "20260115", accession: str = "", seed: int = 0,
                   character_set: str | None = None) -> GeneratedStudy:
    """Write one exam to out_dir/<series_number>_<description>/<n>.dcm and return what was written."""
    _check_args(profile, vendor, defects, slices, rows, columns)
    defects = tuple(defects)
    out_dir = Path(out_dir)
    start = _study_start(study_date, seed)
    timeline = plan_exam(profile, defects, start)
    ident = ("study", seed, profile, vendor, enhanced, ",".join(sorted(defects)), patient_id, study_date)
    study_uid = study_uid or uid(*ident)
    ctx = StudyContext(study_uid=study_uid, frame_of_reference_uid=uid(study_uid, "for"), patient_id=patient_id,
                       patient_name=patient_name, study_date=start.date(), study_start=start,
                       accession=accession, vendor=vendor, profile=profile, defects=defects,
                       character_set=character_set or "ISO_IR 100", rows=rows, columns=columns, seed=seed,
                       bolus=timeline.bolus)
    written: list[GeneratedSeries] = []
    numbers: dict[str, int] = {}
    series_uids: dict[str, str] = {}
    derived_count: dict[str, int] = {}
    ordinal = 0
    for p in timeline.series:
        if p.source_key and p.source_key in numbers:
            derived_count[p.source_key] = derived_count.get(p.source_key, 0) + 1
            number = vendors.series_number(vendor, 0, numbers[p.source_key], derived_count[p.source_key])
        else:
            ordinal += 1
            number = vendors.series_number(vendor, ordinal, None, 0)
        numbers[p.key] = number
        desc = vendors.description(vendor, p)
        series_uid = uid(study_uid, "series", number, p.key)
        series_uids[p.key] = series_uid
        folder = out_dir / f"{number}_{safe_name(desc)}"
        if enhanced:
            from dicom_fixtures.enhanced import write_enhanced_series

            source = series_uids.get(p.source_key or "")
            files = write_enhanced_series(ctx, p, series_uid, number, desc, folder, slices, source)
        else:
            files = write_classic_series(ctx, p, series_uid, number, desc, folder, slices)
        written.append(GeneratedSeries(
            series_uid=series_uid, series_number=number, description=desc, expected_kind=p.kind,
            expected_acquisition=_expected_acquisition(p, enhanced), expected_derived=p.derived,
            expected_contrast=None if p.kind == "LOCALIZER" else p.contrast_phase, files=files, key=p.key,
            body_part=p.body_part, acquisition_datetime=p.start, contrast_bolus_start=p.bolus_start))
    all_files = [f for s in written for f in s.files]
    return GeneratedStudy(study_uid=study_uid, patient_id=patient_id, files=all_files, series=written,
                          profile=profile, vendor=vendor, enhanced=enhanced, defects=defects, out_dir=out_dir)
