"""Coded concepts of the report SR: standard DICOM/UCUM codes where DICOM has one, the local scheme
(core.vocabulary.LOCAL_CODING_SCHEME, declared in the SR header) for the rest, so that every coded
value in the SR maps back to exactly one value of the JSON report."""

from __future__ import annotations

from pydicom.sr.coding import Code

from msfollowup.core.vocabulary import LOCAL_CODING_SCHEME as LOCAL
from msfollowup.core.vocabulary import LOCAL_CODING_SCHEME_NAME as LOCAL_SCHEME_NAME

__all__ = ["LOCAL", "LOCAL_SCHEME_NAME"]

def _local(value: str, meaning: str) -> Code:
    return Code(value, LOCAL, meaning)


KIND_CODES: dict[str, Code] = {
    "T2_FLAIR": _local("T2FLAIR", "T2-weighted FLAIR"),
    "T2": Code("110805", "DCM", "T2 Weighted MR Signal Intensity"),
    "PD": Code("110803", "DCM", "Proton Density Weighted MR Signal Intensity"),
    "T1": Code("110804", "DCM", "T1 Weighted MR Signal Intensity"),
    "DWI": Code("113043", "DCM", "Diffusion weighted"),
    "ADC": Code("113041", "DCM", "Apparent Diffusion Coefficient"),
    "TRACE": _local("DWTRACE", "Diffusion-weighted trace image"),
    "STIR": _local("STIR", "Short tau inversion recovery"),
    "SWI": _local("SWI", "Susceptibility-weighted imaging"),
    "LOCALIZER": Code("121311", "DCM", "Localizer"),
    "OTHER": _local("OTHERSERIES", "Other series"),
}
QUALITY_ASSESSMENT = Code("111050", "DCM", "Quality Assessment")
QUALITY_FINDING = Code("111052", "DCM", "Quality Finding")
PROTOCOL_NOT_FOLLOWED = Code("130570", "DCM", "Protocol not followed")
USABLE_MEETS = Code("111237", "DCM", "Usable - Meets the quality control standard")
USABLE_DOES_NOT_MEET = Code("111236", "DCM", "Usable - Does not meet the quality control standard")
UNUSABLE = Code("111235", "DCM", "Unusable - Quality renders image unusable")
VERDICT_NAME = _local("VERDICT", "Protocol compliance verdict")
VERDICT_CODES: dict[str, Code] = {
    "compliant": _local("COMPLIANT", "Compliant with protocol"),
    "non-compliant": _local("NONCOMPLIANT", "Not compliant with protocol"),
    "unverifiable": _local("UNVERIFIABLE", "Protocol compliance could not be verified"),
}
REQUIREMENT_STATUS = _local("REQSTATUS", "Requirement status")
REQUIREMENT_ID = _local("REQID", "Requirement identifier")
STATUS_CODES: dict[str, Code] = {
    "fail": _local("REQFAIL", "Requirement not met"),
    "unverifiable": _local("REQUNVERIFIABLE", "Requirement could not be verified"),
}
CONTRAST_PHASE = _local("CONTRASTPHASE", "Contrast phase")
CONTRAST_CODES: dict[str, Code] = {
    "pre": _local("PRECONTRAST", "Before contrast administration"),
    "post": _local("POSTCONTRAST", "After contrast administration"),
}
ACQUISITION_DIM = _local("ACQDIM", "Acquisition dimensionality")
ACQUISITION_CODES: dict[str, Code] = {"2D": _local("2D", "2D acquisition"), "3D": _local("3D", "3D acquisition")}
SLICE_THICKNESS = Code("112225", "DCM", "Slice Thickness")
ROW_SPACING = Code("111066", "DCM", "Vertical Pixel Spacing")  # PixelSpacing[0]: between rows
COLUMN_SPACING = Code("111026", "DCM", "Horizontal Pixel Spacing")  # PixelSpacing[1]
FIELD_STRENGTH = Code("130542", "DCM", "Magnetic field strength")
MM = Code("mm", "UCUM", "millimeter")
TESLA = Code("T", "UCUM", "Tesla")
