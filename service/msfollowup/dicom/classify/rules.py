"""The rule chain: ordered rules, each looking at the features of one series and either deciding its
kind (with the rule name, a confidence, the basis and the attribute values that made it fire) or
passing to the next.

Order of trust: physics and standard attributes (ScanningSequence, TR/TE/TI, b-values, ImageType,
enhanced functional groups) first, then vendor sequence names, then what the scanner declares
(AcquisitionContrast), and SeriesDescription / ProtocolName only as a last resort.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msfollowup.dicom.classify.features import _MR_IMAGE_CLASSES, _Features, _is_gre, _is_ir, _is_se
from msfollowup.dicom.classify.model import Basis, Kind


@dataclass(frozen=True)
class _Decision:
    kind: Kind
    rule: str
    confidence: float
    basis: Basis
    evidence: dict[str, Any]


Rule = Callable[[_Features], "_Decision | None"]

_OTHER_TYPE_TOKENS = {
    "FMRI": "functional MRI (BOLD)", "ASL": "arterial spin labelling", "PERFUSION": "perfusion",
    "MOCO": "motion-corrected time series (fMRI)", "DSC": "perfusion", "FIELD_MAP": "field map",
    "B0_MAP": "field map", "PHASE_MAP": "field map", "RCBF": "perfusion map", "CBF": "perfusion map",
    "CBV": "perfusion map", "MTT": "perfusion map", "TTP": "perfusion map", "RCBV": "perfusion map",
    "FA": "anisotropy map", "TENSOR_B0": "tensor b0 map", "TENSOR": "tensor map", "EXP": "exponential ADC map",
    "EADC": "exponential ADC map", "CFA": "colour FA map", "VELOCITY": "phase contrast", "ANGIO": "angiography",
    "SPECTROSCOPY": "spectroscopy",
}
_PHASE_TOKENS = frozenset({"P", "PHASE", "R", "REAL", "I", "IMAGINARY", "SW_P"})
# ImageType values of susceptibility-weighted series: Siemens SWI / mIP, Philips SWIp (SW_M magnitude,
# SW_P phase), GE SWAN.
_SWI_TYPE_TOKENS = frozenset({"SWI", "SWI_MIP", "SW", "SWAN", "SW_M", "SW_P", "MNIP", "MINIP", "MIN IP"})
_DERIVED_TOKENS = frozenset({
    "MPR", "MIP", "MINIP", "MNIP", "MIN IP", "PROJECTION IMAGE", "REFORMATTED", "CSA MPR", "CSA RESAMPLED",
    "CSAPARALLEL", "CSARADIAL", "FA", "TENSOR_B0", "TENSOR", "RCBF", "CBF", "CBV", "RCBV", "MTT", "TTP", "EXP",
    "EADC", "CFA", "SUBTRACTION", "SUB", "CPR", "VRT", "RESAMPLED", "COMPOSED", "T1_MAP", "T2_MAP", "T2*_MAP",
})


def _ev(f: _Features, **extra: Any) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if v is not None and v != () and v != ""}


def _words(pattern: str) -> re.Pattern[str]:
    """Case-insensitive pattern where <...> marks a whole token: '_', digits and spaces separate tokens."""
    return re.compile(pattern.replace("<", r"(?<![a-z])").replace(">", r"(?![a-z])"), re.I)


_ADC_WORDS = _words(r"<adc>|apparent diff|<dadc>|<eadc>")
_SPECIAL_WORDS = _words(r"<p?c?asl>|<bold>|<fmri>|<resting[-_ ]?state>|<perfusion>|<dsc>|<pwi>")


def _rule_non_image(f: _Features) -> _Decision | None:
    if f.modality and f.modality != "MR":
        return _Decision("OTHER", "not an MR series", 0.99, "physics", _ev(f, Modality=f.modality))
    if f.sop_class and f.sop_class not in _MR_IMAGE_CLASSES:
        return _Decision("OTHER", "not an MR image object", 0.99, "physics", _ev(f, SOPClassUID=f.sop_class))
    return None


def _rule_localizer_declared(f: _Features) -> _Decision | None:
    if "LOCALIZER" in f.image_type:
        return _Decision("LOCALIZER", "ImageType LOCALIZER", 0.98, "physics",
                         _ev(f, ImageType="\\".join(f.image_type)))
    return None


def _rule_localizer_geometry(f: _Features) -> _Decision | None:
    planes = [p for p in f.facts.orientations if p != "OBL"]
    if len(planes) >= 3:
        return _Decision("LOCALIZER", "three orientations in one series (localizer)", 0.93, "physics",
                         _ev(f, ImageOrientationPatient=list(f.facts.orientations)))
    thick = f.facts.slice_thickness_mm
    if thick is not None and thick >= 10 and not (f.b_max and f.b_max > 50) and "DERIVED" not in f.image_type[:1]:
        return _Decision("LOCALIZER", "slices 10 mm or thicker (localizer)", 0.8, "physics",
                         _ev(f, SliceThickness=thick))
    return None


def _rule_diffusion_maps(f: _Features) -> _Decision | None:
    it = set(f.image_type)
    b_distinct = {b for values in f.b_values.values() for b in values}
    if "ORIGINAL" in it and len(b_distinct) > 1 and max(b_distinct) > 50:
        return None  # acquired diffusion images with a scanner trace/ADC image mixed in: the series is the DWI
    if it & {"ADC", "ADC_UNSPECIFIED", "DADC"}:
        return _Decision("ADC", "ImageType ADC", 0.97, "physics", _ev(f, ImageType="\\".join(f.image_type)))
    if it & {"TRACEW", "TRACE", "ISOTROPIC", "ISODWI", "CMB"}:
        return _Decision("TRACE", "ImageType trace-weighted", 0.95, "physics",
                         _ev(f, ImageType="\\".join(f.image_type), b_values=f.b_values))
    if f.anisotropy or it & {"FA", "CFA", "TENSOR", "TENSOR_B0", "EXP", "EADC"}:
        return _Decision("OTHER", "diffusion-derived map (anisotropy / tensor)", 0.95, "physics",
                         _ev(f, ImageType="\\".join(f.image_type), DiffusionAnisotropyType=f.anisotropy))
    diffusion_context = bool(f.b_max and f.b_max > 50) or f.epi
    if "DERIVED" in f.image_type[:1] and diffusion_context:
        for source, text in (("SeriesDescription", f.description), ("ProtocolName", f.protocol)):
            if text and _ADC_WORDS.search(text):  # GE writes DERIVED\SECONDARY\PROCESSED on its ADC maps
                return _Decision("ADC", f"derived diffusion image, {source} names an ADC map", 0.8, "description",
                                 _ev(f, ImageType="\\".join(f.image_type), b_values=f.b_values, **{source: text}))
    if f.diffusion_directionality == "ISOTROPIC" and "DERIVED" in f.image_type[:1]:
        if f.b_max and f.b_max > 50:
            return _Decision("TRACE", "isotropic diffusion frames with b > 0", 0.9, "physics",
                             _ev(f, DiffusionDirectionality="ISOTROPIC", b_values=f.b_values))
        return _Decision("ADC", "isotropic diffusion map without b-value", 0.85, "physics",
                         _ev(f, DiffusionDirectionality="ISOTROPIC"))
    return None


def _rule_special_other(f: _Features) -> _Decision | None:
    """fMRI, ASL, perfusion, field maps, phase images, angiography, bSSFP: never counted."""
    for token in f.image_type[2:]:
        if token in _OTHER_TYPE_TOKENS and token not in ("FA", "TENSOR", "TENSOR_B0", "EXP", "EADC", "CFA"):
            return _Decision("OTHER", f"ImageType {token}: {_OTHER_TYPE_TOKENS[token]}", 0.95, "physics",
                             _ev(f, ImageType="\\".join(f.image_type)))
    if f.acq_contrast in ("PERFUSION", "FLOW_ENCODED", "TAGGING", "TOF"):
        return _Decision("OTHER", f"AcquisitionContrast {f.acq_contrast}", 0.93, "physics",
                         _ev(f, AcquisitionContrast=f.acq_contrast))
    if f.tof:
        return _Decision("OTHER", "time-of-flight angiography", 0.93, "physics", _ev(f, TimeOfFlightContrast="YES"))
    swi = _swi_named(f)
    phase = (f.complex_component in ("PHASE", "REAL", "IMAGINARY", "MIXED")
             or bool(set(f.image_type[2:3]) & _PHASE_TOKENS))
    if phase and swi:  # the phase of an SWI is not the SWI a protocol asks for
        return _Decision("OTHER", "phase image of a susceptibility-weighted acquisition", 0.9, "physics",
                         _ev(f, ComplexImageComponent=f.complex_component, ImageType="\\".join(f.image_type),
                             SequenceName=f.seq_name, PhilipsScanTechnique=f.philips_tech))
    if phase:
        return _Decision("OTHER", "phase / complex image (field map or phase data)", 0.9, "physics",
                         _ev(f, ComplexImageComponent=f.complex_component, ImageType="\\".join(f.image_type)))
    m = re.search(r"(^|\s)(fm\d|epfid|tfi|trufi|pc\d|fl_pc|tof|fl3d1r_t|b1map|tfl_b1)", f.seq_name)
    if m:
        return _Decision("OTHER", f"Siemens sequence {m.group(2)}: field map / EPI-FID / bSSFP / angiography",
                         0.9, "vendor", _ev(f, SequenceName=f.seq_name))
    m = re.search(r"b0map|fiesta|tof|asl|pcvipr|3dpc|bold|fmri", f.ge_psd)
    if m:
        return _Decision("OTHER", f"GE pulse sequence {m.group(0)}", 0.88, "vendor", _ev(f, GEPulseSequence=f.ge_psd))
    for source, text in (("SeriesDescription", f.description), ("ProtocolName", f.protocol)):
        m = _SPECIAL_WORDS.search(text) if text else None
        if m:  # ASL label/control images are spin or gradient echoes like any anatomical series
            return _Decision("OTHER", f"{source} names {m.group(0)} (ASL / fMRI / perfusion)", 0.75, "description",
                             {source: text})
    diffusion = bool(f.b_max and f.b_max > 50) or _diffusion_declared(f)
    gre_epi = f.epi and not diffusion and not swi and (
        "GR" in f.scanning or f.echo_pulse == "GRADIENT" or (f.rf_etl is not None and f.rf_etl == 0))
    if gre_epi and (f.te is None or f.te < 60):
        return _Decision("OTHER", "gradient-echo EPI without diffusion (fMRI or perfusion)", 0.85, "physics",
                         _ev(f, ScanningSequence="\\".join(sorted(f.scanning)), EchoPulseSequence=f.echo_pulse,
                             GradientEchoTrainLength=f.grad_etl, RFEchoTrainLength=f.rf_etl, EchoTime=f.te))
    return None


def _diffusion_declared(f: _Features) -> list[str]:
    why = []
    if {"DIFFUSION", "DWI"} & set(f.image_type):
        why.append("ImageType DIFFUSION")
    if f.acq_contrast == "DIFFUSION":
        why.append("AcquisitionContrast DIFFUSION")
    if re.search(r"(^|\s)(re_b|ep_b|epse|ep2d_diff|dwi)", f.seq_name):
        why.append("sequence name " + f.seq_name)
    if f.philips_tech.startswith("DWI"):
        why.append("Philips scan technique " + f.philips_tech)
    if "epi2" in f.ge_psd or "dwi" in f.ge_psd or "DIFF" in f.options:
        if f.b_max and f.b_max > 50:
            why.append("GE pulse sequence " + f.ge_psd)
    return why


def _rule_dwi(f: _Features) -> _Decision | None:
    declared = _diffusion_declared(f)
    b_max = f.b_max
    if b_max is not None and b_max > 50:
        return _Decision("DWI", "diffusion weighting b > 50 s/mm2", 0.97 if declared else 0.92, "physics",
                         _ev(f, b_values=f.b_values, declared=declared))
    if declared and (f.epi or "DIFFUSION" in f.image_type or f.acq_contrast == "DIFFUSION"):
        # only b = 0 here (e.g. a b0-only file subset): still the diffusion series
        return _Decision("DWI", "diffusion series (declared), b-values only 0 or absent", 0.8, "physics",
                         _ev(f, b_values=f.b_values, declared=declared))
    return None


_LOCALIZER_WORDS = re.compile(
    r"locali[sz]er|\bloc\b|scout|survey|pilot|locator|3[- ]?pl(ane)?|tri-?pilot|aahead|plan(ning)?\b|\bsmartbrain",
    re.I)


def _rule_localizer_described(f: _Features) -> _Decision | None:
    # Only where the physics could be a scout: never inversion-prepared, never a long-TR long-TE T2.
    if _is_ir(f) or (f.tr is not None and f.tr >= 2000 and f.te is not None and f.te >= 60):
        return None
    for source, text in (("SeriesDescription", f.description), ("ProtocolName", f.protocol)):
        if text and _LOCALIZER_WORDS.search(text):
            return _Decision("LOCALIZER", f"{source} names a localizer (physics cannot tell a scout apart)",
                             0.7, "description", {source: text})
    return None


def _swi_named(f: _Features) -> bool:
    return bool(_SWI_TYPE_TOKENS & set(f.image_type) or "SWAN" in f.options
                or re.search(r"(^|\s)swi", f.seq_name) or "swan" in f.ge_psd
                or f.philips_tech.startswith(("SWI", "PRESTO")))


def _multi_echo_t2star(f: _Features) -> bool:
    """Several echoes reaching a long TE in a gradient echo: T2* / susceptibility (GE SWAN, Philips
    SWIp), never a T1 even though its first echo is short."""
    return len(f.te_values) >= 2 and f.te_values[-1] >= 15 and not _is_ir(f)


def _rule_swi(f: _Features) -> _Decision | None:
    if _swi_named(f):
        return _Decision("SWI", "susceptibility-weighted (ImageType / sequence)", 0.9, "vendor",
                         _ev(f, ImageType="\\".join(f.image_type), SequenceName=f.seq_name, GEPulseSequence=f.ge_psd,
                             PhilipsScanTechnique=f.philips_tech))
    te, tr = f.te, f.tr
    if _is_gre(f) and not f.epi and _multi_echo_t2star(f):
        return _Decision("SWI", "multi-echo gradient echo reaching a long TE (T2* / susceptibility)", 0.75,
                         "physics", _ev(f, EchoTimes=list(f.te_values), RepetitionTime=tr, FlipAngle=f.flip))
    if _is_gre(f) and not _is_ir(f) and not f.epi and te is not None and te >= 15 and (tr is None or tr >= 20):
        if f.flip is None or f.flip <= 35:
            return _Decision("SWI", "gradient echo with long TE (susceptibility / T2* weighted)", 0.75, "physics",
                             _ev(f, EchoTime=te, RepetitionTime=tr, FlipAngle=f.flip))
    return None


def _physics_ev(f: _Features, **extra: Any) -> dict[str, Any]:
    return _ev(f, ScanningSequence="\\".join(sorted(f.scanning)), SequenceVariant="\\".join(sorted(f.variant)),
               RepetitionTime=f.tr, EchoTime=f.te, InversionTime=f.ti, FlipAngle=f.flip, **extra)


def _rule_inversion(f: _Features) -> _Decision | None:
    if not _is_ir(f):
        return None
    if f.inversions >= 2 and not _is_gre(f):  # DIR nulls fluid and white matter: not a FLAIR
        return _Decision("OTHER", "double inversion recovery (two inversion times)", 0.85, "physics",
                         _physics_ev(f, inversion_count=f.inversions))
    te, ti = f.te, f.ti
    gre = _is_gre(f)
    if gre or (te is not None and te < 10) or (f.flip is not None and f.flip <= 20):
        return _Decision("T1", "inversion-prepared gradient echo (MPRAGE / BRAVO / IR-SPGR)", 0.93, "physics",
                         _physics_ev(f))
    if ti is None:
        return None
    if ti <= 300:
        return _Decision("STIR", "short-TI inversion recovery (fat nulling)", 0.92, "physics", _physics_ev(f))
    if ti >= 1400:
        if te is None or te >= 60:
            return _Decision("T2_FLAIR", "long-TI inversion recovery with long TE (fluid nulled)", 0.96, "physics",
                             _physics_ev(f))
        if te < 30:
            return _Decision("T1", "long-TI inversion recovery with short TE", 0.7, "physics", _physics_ev(f))
        return _Decision("T2_FLAIR", "long-TI inversion recovery, intermediate TE", 0.75, "physics", _physics_ev(f))
    if te is not None and te < 40:
        return _Decision("T1", "inversion recovery with intermediate TI and short TE (T1-FLAIR)", 0.85, "physics",
                         _physics_ev(f))
    if ti >= 1000 and te is not None and te >= 60:
        return _Decision("T2_FLAIR", "inversion recovery TI >= 1000 ms with long TE", 0.65, "physics",
                         _physics_ev(f))
    return None


def _rule_spin_echo(f: _Features) -> _Decision | None:
    if not _is_se(f) or f.epi or (_is_ir(f) and f.ti is None):  # IR without its TI: FLAIR or STIR, not a T2
        return None
    tr, te_values = f.tr, f.te_values
    if tr is None or not te_values:
        return None
    te, te_max = te_values[0], te_values[-1]
    if te < 40 and te_max >= 60 and tr >= 1500:
        return _Decision("T2", "dual-echo spin echo (PD and T2 echoes in one series)", 0.7, "physics",
                         _physics_ev(f, EchoTimes=list(te_values)))
    if tr >= 1500 and te >= 60:
        return _Decision("T2", "spin echo, long TR and long TE", 0.93, "physics", _physics_ev(f))
    if tr >= 1500 and te < 40:
        return _Decision("PD", "spin echo, long TR and short TE", 0.88, "physics", _physics_ev(f))
    if tr < 1200 and te < 30:
        return _Decision("T1", "spin echo, short TR and short TE", 0.92, "physics", _physics_ev(f))
    if tr >= 1200 and te >= 40:
        return _Decision("T2", "spin echo, long TR and intermediate TE", 0.65, "physics", _physics_ev(f))
    return None


def _rule_gradient_echo(f: _Features) -> _Decision | None:
    if not _is_gre(f) or f.epi:
        return None
    te, tr, flip = f.te, f.tr, f.flip
    if te is None or te >= 10 or _multi_echo_t2star(f):
        return None
    if "MP" in f.variant or re.search(r"TFE", f.philips_tech) or re.search(r"(^|\s)tfl", f.seq_name):
        return _Decision("T1", "magnetization-prepared gradient echo (TFE / TFL)", 0.9, "physics", _physics_ev(f))
    if (tr is not None and tr < 50) or (flip is not None and flip >= 40):
        return _Decision("T1", "spoiled gradient echo, short TE", 0.85, "physics", _physics_ev(f))
    return None


_SIEMENS_NAMES: tuple[tuple[str, Kind, str], ...] = (  # also Canon/Toshiba names (FLAIR2D, STIR2D ...)
    (r"(^|\s)spcir|(^|\s)spc.*ir|tir.*fl|darkfluid|flair", "T2_FLAIR", "SPACE-IR / dark-fluid / FLAIR"),
    (r"(^|\s)stir", "STIR", "STIR"),
    (r"(^|\s)tfl", "T1", "TurboFLASH (MPRAGE)"),
    (r"(^|\s)(swi|fl3d\d*_?swi)", "SWI", "SWI"),
)
_GE_NAMES: tuple[tuple[str, Kind, str], ...] = (
    (r"bravo|efgre3d|fspgr|spgr|mp-?rage", "T1", "BRAVO / SPGR / MP-RAGE"),
    (r"swan", "SWI", "SWAN"),
)
_PHILIPS_NAMES: tuple[tuple[str, Kind, str], ...] = (
    (r"^T1TFE|^TFE|^T1FFE", "T1", "T1 TFE / FFE"),
    (r"FLAIR", "T2_FLAIR", "FLAIR"),
    (r"^SWI|^PRESTO", "SWI", "SWIp"),
)


def _te_kind(f: _Features) -> tuple[Kind, str] | None:
    te = f.te
    if te is None:
        return None
    if te >= 60:
        return "T2", "long TE"
    if te < 30 and (f.tr is None or f.tr < 1200):
        return "T1", "short TE and TR"
    return None


def _rule_vendor_names(f: _Features) -> _Decision | None:
    """Sequence names when physics alone did not decide (missing TR/TI, enhanced files without them)."""
    tables = ((f.seq_name, _SIEMENS_NAMES, "SequenceName"), (f.ge_psd, _GE_NAMES, "GEPulseSequence"),
              (f.philips_tech, _PHILIPS_NAMES, "PhilipsScanTechnique"))
    for text, table, attr in tables:
        if not text:
            continue
        for pattern, kind, label in table:
            if re.search(pattern, text):
                return _Decision(kind, f"vendor sequence {label}", 0.8, "vendor", {attr: text})
    # generic spin-echo families named by the vendor, weighted by TE
    named_se = re.search(r"(^|\s)(tse|se\d|spc|h2d|haste)", f.seq_name) or re.search(r"fse|cube", f.ge_psd) \
        or re.search(r"^TSE|^SE", f.philips_tech)
    if named_se and not _is_ir(f):  # an inversion-prepared spin echo without its TI: FLAIR or STIR
        weighted = _te_kind(f)
        if weighted:
            return _Decision(weighted[0], f"vendor spin-echo sequence, {weighted[1]}", 0.7, "vendor",
                             _ev(f, SequenceName=f.seq_name, GEPulseSequence=f.ge_psd,
                                 PhilipsScanTechnique=f.philips_tech, EchoTime=f.te, RepetitionTime=f.tr))
    if re.search(r"(^|\s)(fl\d|fl3d|fl2d)", f.seq_name) and f.te is not None and f.te < 10:
        return _Decision("T1", "vendor gradient-echo sequence with short TE", 0.7, "vendor",
                         _ev(f, SequenceName=f.seq_name, EchoTime=f.te))
    return None


_DECLARED_CONTRAST: dict[str, Kind] = {
    "T1": "T1", "T2": "T2", "PROTON_DENSITY": "PD", "FLUID_ATTENUATED": "T2_FLAIR", "STIR": "STIR",
    "T2_STAR": "SWI", "DIFFUSION": "DWI",
}


def _rule_declared_contrast(f: _Features) -> _Decision | None:
    """What the scanner declares (enhanced AcquisitionContrast, ImageType weighting): below physics."""
    if f.acq_contrast in _DECLARED_CONTRAST:
        return _Decision(_DECLARED_CONTRAST[f.acq_contrast], f"AcquisitionContrast {f.acq_contrast}", 0.75,
                         "vendor", {"AcquisitionContrast": f.acq_contrast})
    for token, kind in (("FLAIR", "T2_FLAIR"), ("T1", "T1"), ("T2", "T2"), ("PD", "PD"), ("STIR", "STIR")):
        if token in f.image_type[2:]:
            return _Decision(kind, f"ImageType {token}", 0.6, "vendor",  # type: ignore[arg-type]
                             {"ImageType": "\\".join(f.image_type)})
    return None


_DESCRIPTION_KINDS: tuple[tuple[re.Pattern[str], Kind], ...] = (
    (_ADC_WORDS, "ADC"),
    (_words(r"trace|<isodwi>"), "TRACE"),  # not '_iso': Siemens names isotropic voxels that way
    (_words(r"<stir>"), "STIR"),  # before FLAIR: Siemens names STIR 't2_tirm_sag_stir'
    (_words(r"flair|dark[-_ ]?fluid|<da-?fl>|<tirm>"), "T2_FLAIR"),
    (_words(r"<dwi|<diff|<dti>|tensor"), "DWI"),
    (_words(r"<swi|<swan>|t2\*|t2star|<hemo|<susc"), "SWI"),
    (_words(r"<pd>|<pdw|proton"), "PD"),
    (_words(r"t1|mprage|mp-rage|<bravo>|spgr|<tfe>|<vibe>|<flash>"), "T1"),
    (_words(r"t2"), "T2"),
)


def _description_kind(text: str) -> Kind | None:
    for pattern, kind in _DESCRIPTION_KINDS:
        if pattern.search(text):
            return kind
    if _LOCALIZER_WORDS.search(text):
        return "LOCALIZER"
    return None


def _rule_description(f: _Features) -> _Decision | None:
    for source, text in (("SeriesDescription", f.description), ("ProtocolName", f.protocol)):
        if text:
            kind = _description_kind(text)
            if kind:
                return _Decision(kind, f"{source} only (no decisive physics)", 0.4, "description", {source: text})
    return None


_RULES: tuple[Rule, ...] = (
    _rule_non_image,
    _rule_localizer_declared,
    _rule_localizer_geometry,
    _rule_diffusion_maps,
    _rule_special_other,
    _rule_dwi,
    _rule_localizer_described,
    _rule_swi,
    _rule_inversion,
    _rule_spin_echo,
    _rule_gradient_echo,
    _rule_vendor_names,
    _rule_declared_contrast,
    _rule_description,
)


def _decide(f: _Features) -> _Decision:
    for rule in _RULES:
        d = rule(f)
        if d is not None:
            return d
    return _Decision("OTHER", "no rule matched", 0.3, "physics", _physics_ev(f, ImageType="\\".join(f.image_type)))

