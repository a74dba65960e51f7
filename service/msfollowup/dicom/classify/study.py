"""Classification of a series (rule chain + derived / acquisition / contrast) and of a study
(contrast carried forward in time)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydicom.dataset import Dataset

from msfollowup.dicom.classify.anatomy import inherit_anatomy, series_anatomy
from msfollowup.dicom.classify.contrast import Contrast, series_contrast, study_contrast
from msfollowup.dicom.classify.facts import summarize_headers
from msfollowup.dicom.classify.features import _MR_IMAGE_CLASSES, _SECONDARY_CAPTURE_PREFIX, _Features, _features, _is_se
from msfollowup.dicom.classify.header import Header, as_header
from msfollowup.dicom.classify.model import Kind, SeriesClassification
from msfollowup.dicom.classify.rules import _DERIVED_TOKENS, _decide, _description_kind


def _derived(f: _Features, kind: Kind) -> tuple[bool, str | None]:
    if f.sop_class and f.sop_class.startswith(_SECONDARY_CAPTURE_PREFIX):
        return True, "secondary capture"
    names = " ".join(filter(None, (f.facts.manufacturer, f.facts.model))).lower()
    if "nifti2dicom" in names or "nifti" in (f.facts.model or "").lower():
        return True, "re-encoded from NIfTI (not scanner output)"
    it = f.image_type
    hits = sorted(set(it) & _DERIVED_TOKENS)
    if hits:
        return True, "ImageType " + "\\".join(hits)
    if it[:1] == ("DERIVED",) and (len(it) > 1 and it[1] == "SECONDARY"):
        return True, "ImageType DERIVED\\SECONDARY"
    if kind in ("ADC", "TRACE") and it[:1] != ("ORIGINAL",):
        return True, "computed from the diffusion acquisition"
    if f.pixel_presentation in ("COLOR", "TRUE_COLOR") and it[:1] == ("DERIVED",):
        return True, "colour map"
    return False, None


def _acquisition(f: _Features, kind: Kind) -> tuple[Literal["2D", "3D"] | None, str | None]:
    """2D/3D and, when not written as MRAcquisitionType, how it was inferred."""
    if f.acq_type in ("2D", "3D"):
        return f.acq_type, None  # type: ignore[return-value]
    if f.out_of_plane_steps is not None and f.out_of_plane_steps > 1:
        return "3D", "phase encoding across slices (MRAcquisitionPhaseEncodingStepsOutOfPlane)"
    m = re.search(r"([23])d", f.seq_name) or re.search(r"([23])d", f.ge_psd) or re.search(r"([23])D", f.philips_tech)
    if m:
        return ("3D" if m.group(1) == "3" else "2D"), "sequence name"
    if kind in ("DWI", "ADC", "TRACE"):
        return "2D", "diffusion EPI is acquired slice by slice"
    if (f.volume_technique and f.volume_technique != "NONE") or set(f.image_type) & {"MPR", "MIP", "CSA MPR"}:
        return "3D", "reformatted or projected from a volume"
    if _is_se(f) and f.te is not None and f.te >= 200:
        return "3D", "spin echo with TE >= 200 ms (variable flip angle 3D train)"
    return None, None


def _family(kind: str) -> str:
    """Descriptions name a DWI series 'trace' and its maps 'diff': no conflict within the family."""
    return "DIFFUSION" if kind in ("DWI", "TRACE", "ADC") else kind


def classify_series(datasets: Sequence[Dataset | Header]) -> SeriesClassification:
    """Classify one series from its headers (contrast from its own attributes; see classify_study)."""
    headers = [as_header(d) for d in datasets]
    if not headers:
        raise ValueError("classify_series needs at least one header of the series")
    facts = summarize_headers(headers)
    f = _features(headers, facts)
    d = _decide(f)
    evidence = dict(d.evidence)
    evidence["rule"] = d.rule
    confidence = d.confidence
    if d.basis != "description" and d.kind not in ("OTHER",):
        text = f.description or f.protocol
        said = _description_kind(text) if text else None
        if said is not None and _family(said) == _family(d.kind):
            confidence = min(0.99, confidence + 0.02)
        elif said is not None and d.kind not in ("LOCALIZER",):
            evidence["description_conflict"] = f"description suggests {said}; physics decided"
            confidence = max(0.3, confidence - 0.1)
    derived, why = _derived(f, d.kind)
    if why:
        evidence["derived"] = why
    # A derived object (enhanced MPR, ADC map) that does not write MRAcquisitionType does not say how
    # its source was acquired; inference is kept for acquired series, where a requirement may need it.
    acquisition, inferred = _acquisition(f, d.kind) if not derived or f.acq_type else (None, None)
    if inferred:
        evidence["acquisition"] = inferred
    contrast: Contrast | None
    if d.kind == "LOCALIZER" or (d.kind == "OTHER" and f.sop_class and f.sop_class not in _MR_IMAGE_CLASSES):
        contrast, basis, source = None, "not applicable (localizer or non-image object)", "none"
    else:
        contrast, basis, source = series_contrast(headers, facts)
    evidence["contrast_source"] = source
    if headers[0].synthetic_series_key:
        evidence["identity"] = "no SeriesInstanceUID: synthetic series key"
    anatomy, anatomy_basis = series_anatomy(headers, facts)
    return SeriesClassification(
        facts=facts, kind=d.kind, acquisition=acquisition, derived=derived, contrast=contrast,
        contrast_basis=basis, evidence=evidence, confidence=round(confidence, 3), basis=d.basis,
        anatomy=anatomy, anatomy_basis=anatomy_basis)


def classify_study(series: Sequence[Sequence[Dataset | Header]]) -> list[SeriesClassification]:
    """Classify every series of a study; contrast and anatomy are then inferred across the study
    (see classify.contrast.study_contrast and classify.anatomy.inherit_anatomy)."""
    return infer_study([classify_series(s) for s in series if s])


def infer_study(series: Sequence[SeriesClassification]) -> list[SeriesClassification]:
    """The study-level inference over series classified one by one: classify_study's second half, for
    a caller that keeps each series' classify_series result while its instances do not change (the live
    check). The inputs are frozen; changed series come back as new objects."""
    return inherit_anatomy(study_contrast(list(series)))
