"""What classification produces: the facts of a series and its label, with the evidence for it.

CONTRACT (shared with validate.py, report.py, pipeline.py): the dataclasses here.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["T2_FLAIR", "T2", "PD", "T1", "DWI", "ADC", "TRACE", "STIR", "SWI", "LOCALIZER", "OTHER"]
KINDS: tuple[str, ...] = ("T2_FLAIR", "T2", "PD", "T1", "DWI", "ADC", "TRACE", "STIR", "SWI", "LOCALIZER", "OTHER")
Basis = Literal["physics", "vendor", "description"]
Orientation = Literal["AX", "SAG", "COR", "OBL"]


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
    # Added (defaults keep the contract): every distinct plane met in the series (a 3-plane localizer
    # has three), the protocol name, and whether the field strength was computed from ImagingFrequency.
    orientations: tuple[str, ...] = ()
    protocol_name: str | None = None
    field_strength_from_frequency: bool = False
    # Study-level words (contrast "without contrast", anatomy): evidence of last resort.
    study_description: str | None = None
    requested_procedure_description: str | None = None


@dataclass(frozen=True)
class SeriesClassification:
    facts: SeriesFacts
    kind: Kind
    acquisition: Literal["2D", "3D"] | None
    derived: bool
    # "unknown": nothing decides (never "pre" from silence); None: not applicable (localizer, non-image).
    contrast: Literal["pre", "post", "unknown"] | None
    contrast_basis: str | None
    evidence: dict[str, Any] = field(default_factory=dict)
    confidence: float = 0.0
    basis: Literal["physics", "vendor", "description"] = "physics"
    # Body region (classify.anatomy.ANATOMIES; None: not recorded) and the evidence for it.
    anatomy: str | None = None
    anatomy_basis: str | None = None

    @property
    def counts(self) -> bool:
        """May this series satisfy a requirement for an acquired series?"""
        return not self.derived and self.kind not in ("LOCALIZER", "OTHER")

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable view. Patient name and ID are left out: the study record carries them."""
        f = self.facts
        facts = {
            "study_instance_uid": f.study_instance_uid,
            "series_instance_uid": f.series_instance_uid,
            "series_number": f.series_number,
            "description": f.description,
            "protocol_name": f.protocol_name,
            "modality": f.modality,
            "sop_class_uids": list(f.sop_class_uids),
            "sop_instance_uids": list(f.sop_instance_uids),
            "instance_count": f.instance_count,
            "frame_count": f.frame_count,
            "manufacturer": f.manufacturer,
            "model": f.model,
            "device_serial_number": f.device_serial_number,
            "station_name": f.station_name,
            "field_strength_t": f.field_strength_t,
            "field_strength_from_frequency": f.field_strength_from_frequency,
            "imaging_frequency_mhz": f.imaging_frequency_mhz,
            "mr_acquisition_type": f.mr_acquisition_type,
            "slice_thickness_mm": f.slice_thickness_mm,
            "spacing_between_slices_mm": f.spacing_between_slices_mm,
            "pixel_spacing_mm": list(f.pixel_spacing_mm) if f.pixel_spacing_mm else None,
            "orientation": f.orientation,
            "orientations": list(f.orientations),
            "body_part": f.body_part,
            "acquisition_datetime": f.acquisition_datetime.isoformat() if f.acquisition_datetime else None,
            "contrast_bolus_agent": f.contrast_bolus_agent,
            "contrast_bolus_start": f.contrast_bolus_start.isoformat() if f.contrast_bolus_start else None,
            "study_description": f.study_description,
            "requested_procedure_description": f.requested_procedure_description,
        }
        return {
            "series_instance_uid": f.series_instance_uid,
            "series_number": f.series_number,
            "description": f.description,
            "kind": self.kind,
            "acquisition": self.acquisition,
            "derived": self.derived,
            "counts": self.counts,
            "contrast": self.contrast,
            "contrast_basis": self.contrast_basis,
            "evidence": _jsonable(self.evidence),
            "confidence": round(self.confidence, 3),
            "basis": self.basis,
            "anatomy": self.anatomy,
            "anatomy_basis": self.anatomy_basis,
            "facts": facts,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)

