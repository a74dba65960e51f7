"""Series classification from DICOM headers: what each series is, and the evidence for it.

CONTRACT (shared with validate.py, report.py, pipeline.py): the dataclasses below and the
functions `summarize`, `classify_series`, `classify_study`, `read_headers`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydicom.dataset import Dataset

Kind = Literal["T2_FLAIR", "T2", "PD", "T1", "DWI", "ADC", "TRACE", "STIR", "SWI", "LOCALIZER", "OTHER"]
KINDS: tuple[str, ...] = ("T2_FLAIR", "T2", "PD", "T1", "DWI", "ADC", "TRACE", "STIR", "SWI", "LOCALIZER", "OTHER")


@dataclass(frozen=True)
class SeriesFacts:
    """Technical facts of one series, read from its headers (all instances)."""

    study_instance_uid: str
    series_instance_uid: str
    series_number: int | None = None
    description: str | None = None
    modality: str | None = None
    sop_class_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()  # every instance: SR evidence references them
    instance_count: int = 0
    frame_count: int = 0
    manufacturer: str | None = None
    model: str | None = None
    device_serial_number: str | None = None
    station_name: str | None = None
    field_strength_t: float | None = None
    imaging_frequency_mhz: float | None = None
    mr_acquisition_type: str | None = None  # as written: "2D" / "3D"
    slice_thickness_mm: float | None = None
    spacing_between_slices_mm: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None  # (row, column) spacing
    orientation: Literal["AX", "SAG", "COR", "OBL"] | None = None
    body_part: str | None = None
    acquisition_datetime: dt.datetime | None = None  # earliest in the series, scanner local time
    contrast_bolus_agent: str | None = None
    contrast_bolus_start: dt.datetime | None = None  # study date + ContrastBolusStartTime
    patient_id: str | None = None
    patient_name: str | None = None


@dataclass(frozen=True)
class SeriesClassification:
    facts: SeriesFacts
    kind: Kind
    acquisition: Literal["2D", "3D"] | None
    derived: bool
    contrast: Literal["pre", "post"] | None
    contrast_basis: str | None
    evidence: dict[str, Any] = field(default_factory=dict)
    confidence: float = 0.0
    basis: Literal["physics", "vendor", "description"] = "physics"

    @property
    def counts(self) -> bool:
        """May this series satisfy a requirement for an acquired series?"""
        return not self.derived and self.kind not in ("LOCALIZER", "OTHER")

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


def read_headers(paths: Iterable[Path]) -> tuple[dict[str, list[Dataset]], list[str], int]:
    """Read headers (no pixels) grouped by SeriesInstanceUID.

    Returns (series_uid -> datasets, unreadable DICOM files as messages, count of non-DICOM files skipped).
    """
    raise NotImplementedError


def summarize(datasets: Sequence[Dataset]) -> SeriesFacts:
    raise NotImplementedError


def classify_series(datasets: Sequence[Dataset]) -> SeriesClassification:
    raise NotImplementedError


def classify_study(series: Sequence[Sequence[Dataset]]) -> list[SeriesClassification]:
    """Classify every series of a study; post-contrast status carries forward in time."""
    raise NotImplementedError
