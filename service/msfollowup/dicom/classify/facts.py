"""Facts of one series: the technical values a requirement is checked against, read from all its
instances (identity, geometry, field strength, time, contrast attributes)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from msfollowup.dicom.classify.access import (_dt, _float, _floats, _group, _instance_datetime, _item, _plane, _str,
                                        study_uid)
from msfollowup.dicom.classify.header import Header, as_header
from msfollowup.dicom.classify.model import SeriesFacts


_NO_AGENT = frozenset({"", "NONE", "NO", "N/A", "NA", "0", "-", "NIL", "WITHOUT", "NO CONTRAST"})


def _agent(ds: Dataset) -> str | None:
    a = _str(ds, "ContrastBolusAgent")
    if a is None:
        item = _item(ds, "ContrastBolusAgentSequence")
        a = _str(item, "CodeMeaning") if item is not None else None
    return a


@dataclass
class _Instances:
    """What summarize needs from every instance (the rest comes from the first one)."""

    sop_uids: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    planes: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    earliest: dt.datetime | None = None
    agent: str | None = None
    bolus_start: dt.datetime | None = None


def _bolus_start(h: Header) -> dt.datetime | None:
    """Date of the acquisition (or study) + ContrastBolusStartTime, classic or enhanced."""
    ds = h.dataset
    time = _str(ds, "ContrastBolusStartTime") or _str(_group(h, "ContrastBolusUsageSequence"),
                                                       "ContrastBolusStartTime")
    if not time:
        return None
    day = _str(ds, "AcquisitionDate") or _str(ds, "StudyDate") or _str(ds, "SeriesDate")
    if not day:
        adt = _str(ds, "AcquisitionDateTime")
        day = adt[:8] if adt else None
    return _dt(day, time)


def _walk_instances(headers: Sequence[Header]) -> _Instances:
    out = _Instances()
    for h in headers:
        ds = h.dataset
        uid = _str(ds, "SOPInstanceUID")
        if uid:
            out.sop_uids.append(uid)
        cls = _str(ds, "SOPClassUID")
        if cls and cls not in out.classes:
            out.classes.append(cls)
        n = _float(ds, "NumberOfFrames")
        out.frames += int(n) if n and n > 0 else 1
        t = _instance_datetime(ds)
        if t and (out.earliest is None or t < out.earliest):
            out.earliest = t
        iop = _floats(ds, "ImageOrientationPatient") or _floats(_group(h, "PlaneOrientationSequence"),
                                                                 "ImageOrientationPatient")
        plane = _plane(iop)
        if plane:
            out.planes[plane] += 1
        if out.agent is None:
            a = _agent(ds)
            if a and a.upper() not in _NO_AGENT:
                out.agent = a
        if out.bolus_start is None:
            out.bolus_start = _bolus_start(h)
    return out


def _geometry(h: Header) -> tuple[float | None, float | None, tuple[float, ...]]:
    """Slice thickness, spacing between slices and pixel spacing: classic attributes, else the enhanced
    PixelMeasuresSequence (shared, else first frame). An empty or zero thickness means unknown."""
    first = h.dataset
    measures = _group(h, "PixelMeasuresSequence")
    thick = _float(first, "SliceThickness")
    if thick is None or thick <= 0:
        thick = _float(measures, "SliceThickness")
    spacing = _float(first, "SpacingBetweenSlices")
    if spacing is None:
        spacing = _float(measures, "SpacingBetweenSlices")
    pixel = _floats(first, "PixelSpacing")
    if len(pixel) != 2:
        pixel = _floats(measures, "PixelSpacing")
    return (thick if thick and thick > 0 else None), spacing, pixel


def _field_strength(h: Header) -> tuple[float | None, float | None, bool]:
    """(tesla as written, imaging frequency MHz, computed from frequency?). 1.494 stays 1.494: rounding
    to a nominal field is the validator's business. A value over 100 is not tesla: old GE software
    writes gauss (15000 = 1.5 T) and GE Genesis writes millitesla-like values (2000 at 85.26 MHz = 2 T),
    so the frequency, when known, chooses; otherwise gauss is assumed."""
    first = h.dataset
    field_t = _float(first, "MagneticFieldStrength")
    freq = _float(first, "ImagingFrequency")
    if freq is None:
        freq = _float(_group(h, "MRImagingModifierSequence"), "TransmitterFrequency")
    if freq is not None and freq > 10_000:  # written in Hz
        freq = freq / 1e6
    if field_t is not None and field_t > 100:
        choices = (field_t / 10000, field_t / 1000)
        field_t = min(choices, key=lambda t: abs(t * 42.577 - freq)) if freq else choices[0]
    if (field_t is None or field_t <= 0) and freq:
        return round(freq / 42.577, 2), freq, True  # proton gyromagnetic ratio, MHz/T
    return field_t, freq, False


def summarize(datasets: Sequence[Dataset | Header]) -> SeriesFacts:
    """Facts of one series (all instances of one SeriesInstanceUID)."""
    if not datasets:
        raise ValueError("summarize needs at least one dataset of the series")
    return summarize_headers([as_header(d) for d in datasets])


def summarize_headers(headers: Sequence[Header]) -> SeriesFacts:
    """summarize for headers already in the record form."""
    first = headers[0].dataset
    inst = _walk_instances(headers)
    thick, spacing, pixel = _geometry(headers[0])
    field_t, freq, from_freq = _field_strength(headers[0])
    number = _float(first, "SeriesNumber")
    return SeriesFacts(
        study_instance_uid=study_uid(first),
        series_instance_uid=_str(first, "SeriesInstanceUID") or headers[0].synthetic_series_key or "",
        series_number=int(number) if number is not None else None,
        description=_str(first, "SeriesDescription"),
        modality=_str(first, "Modality"),
        sop_class_uids=tuple(inst.classes),
        sop_instance_uids=tuple(inst.sop_uids),
        instance_count=len(headers),
        frame_count=inst.frames,
        manufacturer=_str(first, "Manufacturer"),
        model=_str(first, "ManufacturerModelName"),
        device_serial_number=_str(first, "DeviceSerialNumber"),
        station_name=_str(first, "StationName"),
        field_strength_t=field_t,
        imaging_frequency_mhz=freq,
        mr_acquisition_type=_str(first, "MRAcquisitionType"),
        slice_thickness_mm=thick,
        spacing_between_slices_mm=spacing,
        pixel_spacing_mm=(pixel[0], pixel[1]) if len(pixel) == 2 else None,
        orientation=inst.planes.most_common(1)[0][0] if inst.planes else None,  # type: ignore[arg-type]
        body_part=_str(first, "BodyPartExamined"),
        acquisition_datetime=inst.earliest,
        contrast_bolus_agent=inst.agent,
        contrast_bolus_start=inst.bolus_start,
        patient_id=_str(first, "PatientID"),
        patient_name=_str(first, "PatientName"),
        orientations=tuple(sorted(inst.planes)),
        protocol_name=_str(first, "ProtocolName"),
        field_strength_from_frequency=from_freq,
        study_description=_str(first, "StudyDescription"),
        requested_procedure_description=_str(first, "RequestedProcedureDescription"),
    )

