"""Anatomy per series and per study: brain, cervical, thoracic, lumbar spine (or another body part).

Evidence in order: BodyPartExamined (defined terms), the series' own descriptions, the study's
descriptions, then geometry (patient position, orientation, field of view), which alone only says
"brain" for a head-first axial or coronal field of view of head size, or "spine" for a sagittal field
of view longer than a head. A study's regions feed the purpose of the exam (clinical rules).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from msfollowup.dicom.classify.access import _float, _floats, _private_num, _str, _tokens
from msfollowup.dicom.classify.header import Header
from msfollowup.dicom.classify.model import SeriesClassification, SeriesFacts
from msfollowup.dicom.classify.tokens import anatomy_said, tokens

Region = Literal["brain", "cervical", "thoracic", "lumbar"]
REGIONS: tuple[Region, ...] = ("brain", "cervical", "thoracic", "lumbar")
# Series anatomy values: one of these, or None when nothing in the headers says it.
ANATOMIES: tuple[str, ...] = ("brain", "cervical", "thoracic", "lumbar", "cervical+thoracic", "thoracic+lumbar",
                              "whole-spine", "spine", "other")

_COVERS: dict[str, frozenset[Region]] = {
    "brain": frozenset({"brain"}), "cervical": frozenset({"cervical"}), "thoracic": frozenset({"thoracic"}),
    "lumbar": frozenset({"lumbar"}), "cervical+thoracic": frozenset({"cervical", "thoracic"}),
    "thoracic+lumbar": frozenset({"thoracic", "lumbar"}),
    "whole-spine": frozenset({"cervical", "thoracic", "lumbar"}),
}


def regions_of(anatomy: str | None) -> frozenset[Region]:
    """The study purposes a series anatomy covers ("spine" without level and "other" cover none)."""
    return _COVERS.get(anatomy or "", frozenset())


def _field_of_view(first: Header, facts: SeriesFacts) -> float | None:
    """Largest in-plane extent in mm; a Siemens mosaic is divided by its tiles per side."""
    ds = first.dataset
    diameter = _float(ds, "ReconstructionDiameter")
    rows, cols = _float(ds, "Rows"), _float(ds, "Columns")
    spacing = facts.pixel_spacing_mm
    fov = None
    if rows and cols and spacing:
        fov = max(rows * spacing[0], cols * spacing[1])
        if "MOSAIC" in _tokens(ds, "ImageType"):
            n = _private_num(ds, 0x0019, 0x0A, ("SIEMENS MR HEADER",))
            matrix = max((m for m in _floats(ds, "AcquisitionMatrix") if m > 0), default=0)
            if n and n > 1:
                fov = fov / math.ceil(math.sqrt(n))
            elif matrix and rows >= matrix:  # tiles per side from the acquired matrix
                fov = fov / round(rows / matrix)
            else:
                fov = None
    return diameter if diameter and diameter > 0 else fov


def series_anatomy(headers: Sequence[Header], facts: SeriesFacts) -> tuple[str | None, str]:
    """(anatomy or None, the evidence) of one series."""
    ds = headers[0].dataset
    body = (facts.body_part or "").upper().replace(" ", "").replace("-", "")
    if body:
        known = tokens().body_parts.get(body)
        if known:
            return known, f"BodyPartExamined {facts.body_part}"
    for source, text in (("SeriesDescription", facts.description), ("ProtocolName", facts.protocol_name),
                         ("StudyDescription", facts.study_description),
                         ("RequestedProcedureDescription", facts.requested_procedure_description),
                         ("PerformedProcedureStepDescription", _str(ds, "PerformedProcedureStepDescription"))):
        said = anatomy_said(text) if text else None
        if said:
            return said[0], f"{source} says {said[1]!r}"
    if body:  # a defined term that is neither brain nor spine (KNEE, PROSTATE ...)
        return "other", f"BodyPartExamined {facts.body_part}"
    position = (_str(ds, "PatientPosition") or "").upper()
    fov = _field_of_view(headers[0], facts)
    if position.startswith("FF"):
        return None, f"feet first ({position}): not a head examination, region not recorded"
    if fov is None:
        return None, "no BodyPartExamined, description or field of view"
    if facts.orientation == "SAG" and fov >= 320:
        return "spine", f"sagittal field of view {fov:.0f} mm (longer than a head)"
    if position.startswith("HF") and facts.orientation in ("AX", "COR", "OBL") and 190 <= fov <= 270:
        return "brain", f"head first, {facts.orientation} field of view {fov:.0f} mm (head size)"
    return None, f"geometry does not tell ({position or 'position unknown'}, field of view {fov:.0f} mm)"


@dataclass(frozen=True)
class StudyAnatomy:
    """What a study covers: region -> series (UIDs) showing it, and series whose region is unknown."""

    regions: dict[Region, tuple[str, ...]] = field(default_factory=dict)
    spine_level_unknown: tuple[str, ...] = ()  # spine series without a level
    other: tuple[str, ...] = ()  # series of another body part
    unknown: tuple[str, ...] = ()

    @property
    def purposes(self) -> tuple[Region, ...]:
        """The regions covered, in the fixed order brain, cervical, thoracic, lumbar."""
        return tuple(r for r in REGIONS if r in self.regions)


def study_anatomy(series: Sequence[SeriesClassification]) -> StudyAnatomy:
    """Regions of a study from its classified series (localizers and non-images do not count)."""
    regions: dict[Region, list[str]] = {}
    level_unknown: list[str] = []
    other: list[str] = []
    unknown: list[str] = []
    for c in series:
        if c.kind in ("LOCALIZER", "OTHER"):
            continue
        uid = c.facts.series_instance_uid
        if c.anatomy == "spine":
            level_unknown.append(uid)
        elif c.anatomy == "other":
            other.append(uid)
        elif c.anatomy is None:
            unknown.append(uid)
        for r in regions_of(c.anatomy):
            regions.setdefault(r, []).append(uid)
    return StudyAnatomy({r: tuple(v) for r, v in regions.items()}, tuple(level_unknown), tuple(other),
                        tuple(unknown))


def inherit_anatomy(results: list[SeriesClassification]) -> list[SeriesClassification]:
    """A series with no anatomy of its own takes the study's when every series that has one agrees."""
    known = {c.anatomy for c in results if c.anatomy is not None}
    if len(known) != 1:
        return results
    (only,) = known
    return [c if c.anatomy is not None else replace(
        c, anatomy=only, anatomy_basis=f"every other series of the study is {only} ({c.anatomy_basis})")
        for c in results]
