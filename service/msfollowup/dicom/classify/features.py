"""Features: the values the rules look at, gathered once per series from all its headers (classic
attributes first, else the enhanced functional groups: shared, then the first frame), plus the physics
predicates (inversion recovery, gradient echo, spin echo) the rules share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from msfollowup.dicom.classify.access import (_float, _floats, _group, _num, _private_num, _private_str, _str,
                                        _tokens, _vendor_from_creators)
from msfollowup.dicom.classify.header import Header
from msfollowup.dicom.classify.model import SeriesFacts


_MR_IMAGE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
})
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class _Features:
    facts: SeriesFacts
    image_type: tuple[str, ...]
    sop_class: str | None
    modality: str | None
    manufacturer: str
    scanning: frozenset[str]
    variant: frozenset[str]
    options: frozenset[str]
    seq_name: str  # Siemens/Canon style SequenceName or PulseSequenceName, lower case, no '*'
    ge_psd: str
    philips_tech: str
    tr: float | None
    te_values: tuple[float, ...]
    ti: float | None
    flip: float | None
    inversion_declared: bool
    echo_pulse: str | None
    epi: bool
    rf_etl: float | None
    grad_etl: float | None
    acq_contrast: str | None
    complex_component: str | None
    pixel_presentation: str | None
    tof: bool
    b_values: dict[str, tuple[float, ...]]
    diffusion_directionality: str | None
    anisotropy: str | None
    description: str
    protocol: str
    acq_type: str | None
    inversions: int = 0  # number of inversion times written (2: double inversion recovery)
    volume_technique: str | None = None  # enhanced VolumeBasedCalculationTechnique (MPR, MIP ...)
    out_of_plane_steps: float | None = None  # enhanced MRFOVGeometry: phase steps across slices (3D)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def te(self) -> float | None:
        return min(self.te_values) if self.te_values else None

    @property
    def b_max(self) -> float | None:
        values = [b for vs in self.b_values.values() for b in vs]
        return max(values) if values else None


def _ge_b(v: Any) -> float | None:
    """GE (0043,1039) first value; recent software adds 1e9 to it."""
    b = _num(v)
    if b is None:
        return None
    if b >= 1e9:
        b -= 1e9
    return b if 0 <= b < 1e6 else None


def _collect_b(headers: Sequence[Header], manufacturer: str) -> dict[str, tuple[float, ...]]:
    std: set[float] = set()
    siemens: set[float] = set()
    ge: set[float] = set()
    philips: set[float] = set()
    uih: set[float] = set()
    frame: set[float] = set()
    for h in headers:
        ds = h.dataset
        b = _float(ds, "DiffusionBValue")
        if b is not None:
            std.add(round(b, 3))
        if "SIEMENS" in manufacturer:
            b = _private_num(ds, 0x0019, 0x0C, ("SIEMENS MR HEADER",))
            if b is not None:
                siemens.add(b)
        elif manufacturer.startswith("GE"):
            b = _ge_b(_private_num(ds, 0x0043, 0x39, ("GEMS_PARM_01",)))  # first of 4 values
            if b is not None:
                ge.add(b)
        elif "PHILIPS" in manufacturer:
            b = _private_num(ds, 0x2001, 0x03, ("PHILIPS IMAGING DD 001",))
            if b is not None:
                philips.add(round(b, 3))
        elif manufacturer.startswith("UIH"):
            b = _private_num(ds, 0x0065, 0x09, ("IMAGE PRIVATE HEADER",))
            if b is not None:
                uih.add(round(b, 3))
        frame.update(h.frame_b_values)
    found = {"DiffusionBValue": std, "Siemens(0019,100C)": siemens, "GE(0043,1039)": ge,
             "Philips(2001,1003)": philips, "UIH(0065,1009)": uih, "MRDiffusionSequence": frame}
    return {k: tuple(sorted(v)) for k, v in found.items() if v}


def _per_instance(headers: Sequence[Header]) -> tuple[tuple[str, ...], tuple[float, ...], list[str]]:
    """ImageType tokens (union, in order), echo times and SequenceNames over all instances."""
    image_type: list[str] = []
    te_values: set[float] = set()
    seq_names: list[str] = []
    for h in headers:
        ds = h.dataset
        for t in _tokens(ds, "ImageType"):
            if t not in image_type:
                image_type.append(t)
        te = _float(ds, "EchoTime")
        if te is not None:
            te_values.add(round(te, 2))
        sn = _str(ds, "SequenceName")
        if sn and sn not in seq_names:
            seq_names.append(sn)
    return tuple(image_type), tuple(sorted(te_values)), seq_names


def _inversion(first: Dataset, modifier: Dataset | None) -> tuple[float | None, int, bool]:
    """(longest inversion time, how many were written, InversionRecovery flag). Siemens XA enhanced
    files write InversionTimes in MRModifierSequence instead of InversionTime."""
    ti = _float(first, "InversionTime")
    if ti is not None and ti > 0:
        count = 1
    else:
        tis = [t for t in _floats(modifier, "InversionTimes") if t > 0] or [
            t for t in _floats(first, "InversionTimes") if t > 0]
        ti, count = (max(tis) if tis else None), len(tis)
    flag = (_str(modifier, "InversionRecovery") or _str(first, "InversionRecovery") or "").upper() == "YES"
    return ti, count, flag


def _vendor_names(first: Dataset, frame_type: Dataset | None, manufacturer: str, seq_names: list[str]
                  ) -> tuple[str, str, str]:
    """(Siemens/Canon-style sequence names, GE pulse sequence names, Philips scan technique)."""
    names = list(seq_names)
    pulse = _str(first, "PulseSequenceName")
    if pulse:
        names.append(pulse)
    if frame_type is not None and "SIEMENS" in manufacturer:  # XA: per-frame private copy (0021,xx77)
        sdi = _private_str(frame_type, 0x0021, 0x77, ("SIEMENS MR SDI",))
        if sdi:
            names.append(sdi)
    seq_name = " ".join(n.lower().lstrip("*") for n in names if n.lower() != "dicom2nifti")  # stripped files
    ge_psd = philips_tech = ""
    if manufacturer.startswith("GE"):
        ge_psd = " ".join(filter(None, (_private_str(first, 0x0019, 0x9C, ("GEMS_ACQU_01",)),
                                        _private_str(first, 0x0019, 0x9E, ("GEMS_ACQU_01",))))).lower()
    if "PHILIPS" in manufacturer:
        philips_tech = (_private_str(first, 0x2001, 0x20, ("PHILIPS IMAGING DD 001",)) or "").upper()
    if not philips_tech and pulse and (not manufacturer or "PHILIPS" in manufacturer) \
            and _PHILIPS_TECHNIQUES.match(pulse.upper()):
        philips_tech = pulse.upper()  # enhanced Philips: PulseSequenceName carries the scan technique
    return seq_name, ge_psd, philips_tech


_PHILIPS_TECHNIQUES = re.compile(r"(T1|T2|PD)?(TFE|FFE|TSE|SE|IR|DWISE|DWI|SWIP|GRASE|FEEPI|SEEPI|IR_TSE)\b")


_EPI_NAMES = re.compile(r"(^|\s)(ep_|ep2d|epse|epfid|epi)|_epi")


def _is_epi(first: Dataset, scanning: frozenset[str], options: frozenset[str], names: tuple[str, str, str],
            rf_etl: float | None, grad_etl: float | None) -> bool:
    seq_name, ge_psd, philips_tech = names
    declared = (_str(first, "EchoPlanarPulseSequence") or "").upper()
    if "EP" in scanning or declared == "YES" or _EPI_NAMES.search(seq_name) or "EPI_GEMS" in options:
        return True
    if "epi" in ge_psd or philips_tech.startswith(("DWI", "FEEPI", "SEEPI")):
        return True
    # A gradient echo train without RF refocusing means EPI, unless the file says otherwise: Philips TFE
    # writes its turbo-field-echo train as GradientEchoTrainLength too.
    return (not declared and grad_etl is not None and grad_etl > 1 and (rf_etl is None or rf_etl <= 1)
            and not scanning and "TFE" not in philips_tech and "tfe" not in seq_name)


def _first_of(first: Dataset, group: Dataset | None, keyword: str) -> float | None:
    v = _float(first, keyword)
    return v if v is not None else _float(group, keyword)


def _upper(*values: str | None) -> str | None:
    for v in values:
        if v:
            return v.upper()
    return None


def _features(headers: Sequence[Header], facts: SeriesFacts) -> _Features:
    h = headers[0]
    first = h.dataset
    image_type, te_values, seq_names = _per_instance(headers)
    if not image_type:  # enhanced files: the frame-level FrameType says the same (shared, else first frame)
        image_type = _tokens(_group(h, "MRImageFrameTypeSequence"), "FrameType") or _tokens(first, "FrameType")
    manufacturer = (facts.manufacturer or "").upper() or _vendor_from_creators(first)
    timing = _group(h, "MRTimingAndRelatedParametersSequence")
    modifier = _group(h, "MRModifierSequence")
    frame_type = _group(h, "MRImageFrameTypeSequence")
    diffusion = _group(h, "MRDiffusionSequence")
    if not te_values:
        te = _float(_group(h, "MREchoSequence"), "EffectiveEchoTime")
        te_values = (round(te, 2),) if te is not None else ()
    ti, inversions, ir_flag = _inversion(first, modifier)
    names = _vendor_names(first, frame_type, manufacturer, seq_names)
    scanning = frozenset(_tokens(first, "ScanningSequence"))
    options = frozenset(_tokens(first, "ScanOptions"))
    rf_etl = _first_of(first, timing, "RFEchoTrainLength")
    grad_etl = _first_of(first, timing, "GradientEchoTrainLength")
    return _Features(
        facts=facts,
        image_type=image_type,
        sop_class=facts.sop_class_uids[0] if facts.sop_class_uids else None,
        modality=_upper(facts.modality),
        manufacturer=manufacturer,
        scanning=scanning,
        variant=frozenset(_tokens(first, "SequenceVariant")),
        options=options,
        seq_name=names[0],
        ge_psd=names[1],
        philips_tech=names[2],
        tr=_first_of(first, timing, "RepetitionTime"),
        te_values=te_values,
        ti=ti,
        flip=_first_of(first, timing, "FlipAngle"),
        inversion_declared=ir_flag,
        echo_pulse=_upper(_str(first, "EchoPulseSequence")),
        epi=_is_epi(first, scanning, options, names, rf_etl, grad_etl),
        rf_etl=rf_etl,
        grad_etl=grad_etl,
        acq_contrast=_upper(_str(first, "AcquisitionContrast"), _str(frame_type, "AcquisitionContrast")),
        complex_component=_upper(_str(first, "ComplexImageComponent"), _str(frame_type, "ComplexImageComponent")),
        pixel_presentation=_upper(_str(first, "PixelPresentation"), _str(frame_type, "PixelPresentation")),
        tof=_upper(_str(first, "TimeOfFlightContrast")) == "YES",
        b_values=_collect_b(headers, manufacturer),
        diffusion_directionality=_upper(_str(diffusion, "DiffusionDirectionality")),
        anisotropy=_upper(_str(diffusion, "DiffusionAnisotropyType")),
        description=facts.description or "",
        protocol=facts.protocol_name or "",
        acq_type=_upper(facts.mr_acquisition_type),
        inversions=inversions,
        volume_technique=_upper(_str(first, "VolumeBasedCalculationTechnique"),
                                _str(frame_type, "VolumeBasedCalculationTechnique")),
        out_of_plane_steps=_float(_group(h, "MRFOVGeometrySequence"), "MRAcquisitionPhaseEncodingStepsOutOfPlane"),
    )


# Physics predicates --------------------------------------------------------------------------------


def _is_ir(f: _Features) -> bool:
    return ("IR" in f.scanning or f.inversion_declared or (f.ti is not None and f.ti >= 50)
            or "IR" in f.options or "IR_GEMS" in f.options)


def _is_gre(f: _Features) -> bool:
    if "GR" in f.scanning or f.echo_pulse == "GRADIENT":
        return True
    if f.scanning & {"SE", "EP"} or f.echo_pulse in ("SPIN", "BOTH"):
        return False
    return bool(re.search(r"(^|\s)(fl\d|tfl|fl3d|fl2d|swi|medic|vibe|gre)", f.seq_name)
                or re.search(r"spgr|efgre|bravo|fgre|swan|mp-?rage", f.ge_psd)
                or re.search(r"FFE|TFE", f.philips_tech)
                or re.search(r"(^|\s)(ffe|fe)\d?d", f.seq_name))


def _is_se(f: _Features) -> bool:
    if "SE" in f.scanning or f.echo_pulse == "SPIN":
        return True
    if "GR" in f.scanning or f.echo_pulse == "GRADIENT":
        return False
    return bool(re.search(r"(^|\s)(tse|se\d|spc|tir|h2d|haste|fse|se_|flair|stir)", f.seq_name)
                or re.search(r"fse|cube|ssfse|frfse", f.ge_psd)
                or re.search(r"TSE|^SE|^IR", f.philips_tech))


# Rules -----------------------------------------------------------------------------------------------

