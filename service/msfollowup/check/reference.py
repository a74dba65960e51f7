"""Consistency with the reference study (002 "Standardized follow-up"): same scanner, same field strength,
same sequences and spatial resolution as the study this one is compared with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from msfollowup.dicom.classify import SeriesClassification
from msfollowup.site.profiles import Limits


from msfollowup.check.results import RequirementResult, _acquisition, _Instance, _n, _name, field_strength_t


# --- consistency with the reference study ------------------------------------------------------------


def _scanner_ids(series: Sequence[SeriesClassification]) -> dict[str, list[str]]:
    return {key: sorted({v for s in series if (v := getattr(s.facts, key))})
            for key in ("device_serial_number", "station_name", "manufacturer", "model")}


def _describe_scanner(ids: dict[str, list[str]]) -> str:
    parts = []
    if ids["device_serial_number"]:
        parts.append("serial " + "/".join(ids["device_serial_number"]))
    if ids["station_name"]:
        parts.append("station " + "/".join(ids["station_name"]))
    return ", ".join(parts) or "unknown"


def _reference_scanner(cur: Sequence[SeriesClassification], ref: Sequence[SeriesClassification]
                       ) -> RequirementResult:
    a, b = _scanner_ids(cur), _scanner_ids(ref)
    uids = tuple(s.facts.series_instance_uid for s in cur)
    for key, what in (("device_serial_number", "DeviceSerialNumber"), ("station_name", "StationName")):
        if a[key] and b[key]:
            same = set(a[key]) == set(b[key])
            msg = (f"Same scanner as the reference study ({what} {'/'.join(a[key])})" if same else
                   f"Different scanner from the reference study: {_describe_scanner(a)} here, "
                   f"{_describe_scanner(b)} in the reference")
            return RequirementResult("reference.scanner", "pass" if same else "fail", a, b, uids, msg,
                                     label="Same scanner as reference")
    return RequirementResult("reference.scanner", "unverifiable", a, b, uids, "Scanner identity cannot be compared: "
                             "DeviceSerialNumber and StationName are not recorded in both studies",
                             label="Same scanner as reference")


def _study_field(series: Sequence[SeriesClassification]) -> float | None:
    values = [v for s in series if (v := field_strength_t(s.facts)[0]) is not None]
    return max(set(round(v, 2) for v in values), key=lambda v: sum(1 for x in values if round(x, 2) == v)) \
        if values else None


def _reference_field(limits: Limits, cur: Sequence[SeriesClassification], ref: Sequence[SeriesClassification]
                     ) -> RequirementResult:
    a, b = _study_field(cur), _study_field(ref)
    tol = limits.reference_field_strength_tolerance_t
    uids = tuple(s.facts.series_instance_uid for s in cur)
    label = "Same field strength as reference"
    if a is None or b is None:
        return RequirementResult("reference.field_strength", "unverifiable", a, {"reference_t": b, "tolerance_t": tol},
                                 uids, f"Field strength cannot be compared with the reference study: not recorded "
                                 f"in {'this study' if a is None else 'the reference'}", label=label)
    same = abs(a - b) <= tol + 1e-9
    msg = (f"Field strength {_n(a)} T, as in the reference study" if same else
           f"Field strength {_n(a)} T differs from the reference study ({_n(b)} T)")
    return RequirementResult("reference.field_strength", "pass" if same else "fail", a,
                             {"reference_t": b, "tolerance_t": tol}, uids, msg, label=label)


def _geometry(s: SeriesClassification) -> dict[str, Any]:
    f = s.facts
    return {"series_instance_uid": f.series_instance_uid, "kind": s.kind, "acquisition": _acquisition(s),
            "slice_thickness_mm": f.slice_thickness_mm or f.spacing_between_slices_mm,
            "pixel_spacing_mm": list(f.pixel_spacing_mm) if f.pixel_spacing_mm else None}


def _reference_sequence(limits: Limits, inst: _Instance, cur: SeriesClassification,
                        ref: SeriesClassification | None) -> RequirementResult:
    rid, label = f"reference.{inst.key}", f"{inst.label} as in reference"
    a = _geometry(cur)
    if ref is None:
        return RequirementResult(rid, "unverifiable", a, None, (cur.facts.series_instance_uid,),
                                 f"{inst.label}: the reference study has no such series to compare with", label=label)
    b = _geometry(ref)
    tol = limits.reference_voxel_tolerance_mm
    diffs, unknown = [], []
    if a["kind"] != b["kind"]:
        diffs.append(f"{a['kind']} here, {b['kind']} in the reference")
    for key, what in (("acquisition", "2D/3D"),):
        if a[key] is None or b[key] is None:
            unknown.append(what)
        elif a[key] != b[key]:
            diffs.append(f"{a[key]} here, {b[key]} in the reference")
    for key, what in (("slice_thickness_mm", "slice thickness"), ("pixel_spacing_mm", "pixel spacing")):
        x, y = a[key], b[key]
        if x is None or y is None:
            unknown.append(what)
            continue
        xs, ys = (x, y) if isinstance(x, list) else ([x], [y])
        if any(abs(p - q) > tol + 1e-9 for p, q in zip(xs, ys)):
            diffs.append(f"{what} {' x '.join(_n(p) for p in xs)} mm here, {' x '.join(_n(q) for q in ys)} mm "
                         "in the reference")
    limit = {"reference": b, "tolerance_mm": tol}
    series = (cur.facts.series_instance_uid,)
    if diffs:
        return RequirementResult(rid, "fail", a, limit, series, f"{inst.label} differs from the reference study "
                                 f"({_name(cur)} vs {_name(ref)}): {'; '.join(diffs)}", label=label)
    if unknown:
        return RequirementResult(rid, "unverifiable", a, limit, series, f"{inst.label} cannot be compared with the "
                                 f"reference study: {', '.join(unknown)} not recorded", label=label)
    return RequirementResult(rid, "pass", a, limit, series, f"{inst.label} matches the reference study "
                             f"({_name(cur)} vs {_name(ref)})", label=label)
