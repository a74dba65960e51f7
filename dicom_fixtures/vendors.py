"""How each vendor writes the same series: names, ImageType, sequence names, private tags, numbering.

The styles copy what real scanners write (see /work/shared/realdata), traps included: Philips writes
DiffusionBValue 0 on every series, GE localizers are spin echo and carry no LOCALIZER in ImageType, GE
3D IR-prepared T1 does not list IR in ScanningSequence, b-values of GE/Siemens/Philips classic files
live in private tags.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicom_fixtures.exam import PlannedSeries

VENDORS: tuple[str, ...] = ("siemens", "ge", "philips", "canon")


@dataclass(frozen=True)
class Scanner:
    manufacturer: str
    model: str
    field_t: str  # as the vendor writes it (DS text)
    frequency: str  # MHz, DS text
    software: tuple[str, ...]
    serial: str
    station: str
    institution: str
    transmit_coil: str
    receive_coil: str
    coil_manufacturer: str


SCANNERS: dict[str, Scanner] = {
    "siemens": Scanner("SIEMENS", "Prisma_fit", "3", "123.25", ("syngo MR E11",), "167060", "MRC67060",
                       "City Hospital Neuroradiology", "Body", "HeadNeck_64", "Siemens"),
    "ge": Scanner("GE MEDICAL SYSTEMS", "SIGNA Artist", "1.5", "63.86", ("29", "LX", "MR29.1_EA_2039.g"),
                  "0000000000MRA15", "GEMRA15A", "City Hospital Neuroradiology", "BODY", "HNU", "GE"),
    "philips": Scanner("Philips", "Ingenia Elition X", "3", "127.76", ("5.7.1", "5.7.1.1"), "45053",
                       "MR-ELITION", "City Hospital Neuroradiology", "BODY", "MULTI COIL", "Philips"),
    "canon": Scanner("CANON_MEC", "Vantage Orian", "1.5", "63.87", ("V10.0",), "MJA21X2001", "MRI_ORIAN1",
                     "City Hospital Neuroradiology", "WB", "Head/Neck 16", "Canon"),
}

# The `different_scanner` defect: same vendor, another machine in the department.
OTHER_SCANNERS: dict[str, tuple[str, str, str]] = {  # model, serial, station
    "siemens": ("Skyra", "45512", "AWP45512"),
    "ge": ("SIGNA Artist", "0000000000MRB15", "GEMRB15B"),
    "philips": ("Ingenia Elition X", "41876", "MR-INGENIA2"),
    "canon": ("Vantage Orian", "MJA21X2417", "MRI_ORIAN2"),
}

_BODY = {"siemens": {"CSPINE": "cspine", "TSPINE": "tspine"},
         "ge": {"CSPINE": "C-spine", "TSPINE": "T-spine"},
         "philips": {"CSPINE": "C", "TSPINE": "T"},
         "canon": {"CSPINE": "C-SP", "TSPINE": "T-SP"}}


def description(vendor: str, p: PlannedSeries) -> str:
    """SeriesDescription as the vendor's default protocol names it."""
    if p.description_override:
        return p.description_override
    t, post = p.technique.name, p.contrast_phase == "post" and p.kind == "T1"
    body = _BODY[vendor].get(p.body_part, "")
    if vendor == "siemens":
        base = {"LOC": "localizer", "T2_TSE": f"t2_tse_{_sie_or(p)}", "FLAIR_2D": "t2_tirm_tra_dark-fluid",
                "FLAIR_3D": "t2_spc_da-fl_sag_p2_iso", "T1_3D": "t1_mprage_sag_p2_iso",
                "T1_SE": "t1_tse_sag", "STIR": "t2_tirm_sag_stir", "DWI": "ep2d_diff_3scan_trace_p2",
                "ADC": "ep2d_diff_3scan_trace_p2_ADC", "TRACE": "ep2d_diff_3scan_trace_p2_TRACEW"}[t]
        if p.mpr:
            base += "_MPR_tra"
        if body and t != "LOC":
            base += f"_{body}"
        return base + ("_post" if post else "")
    if vendor == "ge":
        base = {"LOC": "3-Plane Localizer", "T2_TSE": f"{_ge_or(p)} T2 FSE", "FLAIR_2D": "Ax T2 FLAIR",
                "FLAIR_3D": "Sag CUBE T2 FLAIR", "T1_3D": "Sag 3D T1 BRAVO", "T1_SE": "Sag T1 FSE",
                "STIR": "Sag STIR", "DWI": "Ax DWI 1000b", "ADC": "Apparent Diffusion Coefficient (mm2/s)",
                "TRACE": "Ax DWI 1000b TRACE"}[t]
        if p.mpr:
            base = "Ax CUBE T2 FLAIR REFORMAT"
        if body and t != "LOC":
            base += f" {body}"
        return base + (" +C" if post else "")
    if vendor == "philips":
        base = {"LOC": "Survey", "T2_TSE": f"T2W_TSE_{_phi_or(p)}", "FLAIR_2D": "FLAIR_longTR",
                "FLAIR_3D": "3D_FLAIR", "T1_3D": "T1W_3D_TFE", "T1_SE": "T1W_TSE_SAG", "STIR": "STIR_SAG",
                "DWI": "DWI_SENSE", "ADC": "dADC_DWI_SENSE", "TRACE": "isoDWI_SENSE"}[t]
        if p.mpr:
            base = "3D_FLAIR_MPR_TRA"
        if body and t != "LOC":
            base += f"_{body}"
        return base + ("_Gd" if post else "")
    base = {"LOC": "Locator", "T2_TSE": f"{_ge_or(p)} T2 FSE", "FLAIR_2D": "Ax FLAIR", "FLAIR_3D": "3D FLAIR SAG",
            "T1_3D": "3D T1 MPRAGE SAG", "T1_SE": "Sag T1 SE", "STIR": "Sag STIR", "DWI": "Ax DWI b1000",
            "ADC": "Ax DWI b1000 ADC", "TRACE": "Ax isoDWI b1000"}[t]
    if p.mpr:
        base = "3D FLAIR MPR AX"
    if body and t != "LOC":
        base += f" {body}"
    return base + (" +C" if post else "")


def _sie_or(p: PlannedSeries) -> str:
    return {"AX": "tra", "SAG": "sag", "COR": "cor"}.get(p.orientation, "tra")


def _ge_or(p: PlannedSeries) -> str:
    return {"AX": "Ax", "SAG": "Sag", "COR": "Cor"}.get(p.orientation, "Ax")


def _phi_or(p: PlannedSeries) -> str:
    return {"AX": "TRA", "SAG": "SAG", "COR": "COR"}.get(p.orientation, "TRA")


_PHILIPS_TYPE = {"LOC": ("M_FFE", "M", "FFE"), "T2_TSE": ("M_SE", "M", "SE"), "FLAIR_2D": ("M_IR", "M", "IR"),
                 "FLAIR_3D": ("M_IR", "M", "IR"), "T1_3D": ("M_FFE", "M", "FFE"), "T1_SE": ("M_SE", "M", "SE"),
                 "STIR": ("M_IR", "M", "IR"), "DWI": ("M_SE", "M", "SE"), "ADC": ("ADC", "ADC"),
                 "TRACE": ("ISOTROPIC", "M", "SE")}


def image_type(vendor: str, p: PlannedSeries) -> list[str]:
    """Classic (single-frame) ImageType."""
    t = p.technique.name
    if p.mpr:
        return ["DERIVED", "SECONDARY", "MPR"] + (["ND", "NORM"] if vendor == "siemens" else [])
    head = ["DERIVED", "PRIMARY"] if p.derived else ["ORIGINAL", "PRIMARY"]
    if vendor == "siemens":
        if t == "LOC":
            return head + ["M", "NORM", "DIS2D"]
        if t in ("DWI", "ADC", "TRACE"):
            return head + ["DIFFUSION", {"DWI": "NONE", "ADC": "ADC", "TRACE": "TRACEW"}[t], "ND", "NORM"]
        return head + ["M", "ND", "NORM"]
    if vendor == "ge":
        return head + [{"ADC": "ADC", "TRACE": "TRACEW"}.get(t, "OTHER")]
    if vendor == "philips":
        return head + list(_PHILIPS_TYPE[t])
    return head + ["MR"] + ([t] if t in ("ADC", "TRACE") else [])


def enhanced_image_type(vendor: str, p: PlannedSeries) -> list[str]:
    """Enhanced MR ImageType/FrameType: always 4 values (value 3 flavour, value 4 derived contrast)."""
    t = p.technique.name
    if p.mpr:  # Enhanced MR allows only PRIMARY in value 2; VolumeBasedCalculationTechnique says MPR
        return ["DERIVED", "PRIMARY", "MPR", "NONE"]
    head = ["DERIVED", "PRIMARY"] if p.derived else ["ORIGINAL", "PRIMARY"]
    if t in ("DWI", "ADC", "TRACE"):
        return head + ["DIFFUSION", {"DWI": "NONE", "ADC": "ADC", "TRACE": "TRACEW"}[t]]
    if vendor == "philips":  # Philips puts the contrast in value 3 (T1\NONE, T2\NONE)
        return head + [{"T1": "T1", "STIR": "T2"}.get(p.kind, "T2") if t != "LOC" else "T1", "NONE"]
    return head + ["M", "NONE"]


_SIEMENS_SEQ = {"LOC": "*fl2d1", "T2_TSE": "*tse2d1_15", "FLAIR_2D": "*tir2d1_21", "FLAIR_3D": "*spcir3d1_278ns",
                "T1_3D": "*tfl3d1_16", "T1_SE": "*tse2d1_3", "STIR": "*tir2d1_12", "ADC": "*ep_b0_1000",
                "TRACE": "*ep_b1000t"}
_GE_PSD = {"LOC": "ssfse", "T2_TSE": "fse-xl", "FLAIR_2D": "fse-ir", "FLAIR_3D": "Cube", "T1_3D": "efgre3d",
           "T1_SE": "fse-xl", "STIR": "fse-ir", "DWI": "epi2", "ADC": "epi2", "TRACE": "epi2"}
_PHILIPS_TECH = {"LOC": "FFE", "T2_TSE": "TSE", "FLAIR_2D": "IR", "FLAIR_3D": "IR_TSE", "T1_3D": "T1TFE",
                 "T1_SE": "TSE", "STIR": "IR", "DWI": "DwiSE", "ADC": "DwiSE", "TRACE": "DwiSE"}
_CANON_SEQ = {"LOC": "FFE2D", "T2_TSE": "FSE2D", "FLAIR_2D": "FLAIR2D", "FLAIR_3D": "FLAIR3D", "T1_3D": "FFE3D",
              "T1_SE": "SE2D", "STIR": "STIR2D", "DWI": "SE_EPI2D", "ADC": "SE_EPI2D", "TRACE": "SE_EPI2D"}


def sequence_name(vendor: str, p: PlannedSeries, b_value: int | None) -> str:
    """SequenceName (0018,0024); Siemens encodes the b-value in it (*ep_b1000t)."""
    t = p.technique.name
    if vendor == "siemens":
        if t == "DWI":
            return "*ep_b0" if not b_value else f"*ep_b{b_value}t"
        return _SIEMENS_SEQ[t]
    if vendor == "canon":
        return _CANON_SEQ[t]
    return ""  # GE and Philips leave it empty in classic files


def pulse_sequence_name(vendor: str, p: PlannedSeries) -> str:
    """Enhanced MR PulseSequenceName (0018,9005)."""
    t = p.technique.name
    if vendor == "siemens":
        return _SIEMENS_SEQ.get(t, "*ep_b1000t").lstrip("*")
    if vendor == "ge":
        return _GE_PSD[t]
    if vendor == "philips":
        return _PHILIPS_TECH[t]
    return _CANON_SEQ[t]


@dataclass(frozen=True)
class Physics:
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    te: float
    tr: float
    ti: float | None
    flip: float


def physics(vendor: str, p: PlannedSeries) -> Physics:
    """Technique physics with the vendor's own way of writing it."""
    t = p.technique
    ss, sv, so, te, tr, ti, flip = (t.scanning_sequence, t.sequence_variant, t.scan_options, t.te, t.tr, t.ti,
                                     t.flip)
    if vendor == "ge":
        so = so + ("FAST_GEMS",) if t.name not in ("DWI", "ADC", "TRACE", "LOC") else so
        if t.name == "LOC":  # GE 3-plane localizer: single-shot FSE, spin echo, TE ~80 ms
            ss, sv, te, tr, flip = ("SE",), ("SK", "SS"), 81.0, 1200.0, 90.0
        if t.name == "T1_3D":  # BRAVO: IR-prepared, but ScanningSequence says only GR
            ss, sv, so = ("GR",), ("SS", "SP", "SK"), ("FAST_GEMS", "EDR_GEMS", "ACC_GEMS")
            ti, te, tr, flip = 450.0, 3.2, 8.2, 12.0
        if t.name in ("DWI", "ADC", "TRACE"):
            so = ("EPI_GEMS", "ACC_GEMS", "PFF", "FS")
    elif vendor == "philips":
        if t.name == "T1_3D":  # TFE: short TR, no IR in header
            ss, sv, so, tr, te, ti = ("GR",), ("MP",), ("OTHER",), 8.1, 3.7, None
        if t.name in ("DWI", "ADC", "TRACE"):
            ss, sv, so = ("SE",), ("SK",), ("FS",)
    elif vendor == "siemens":
        if t.name in ("DWI", "ADC", "TRACE"):
            so = ("PFP", "FS")
        elif t.name == "T2_TSE":
            so = ("SAT1",)
    return Physics(ss, sv, so, te, tr, ti, flip)


def series_number(vendor: str, ordinal: int, derived_of: int | None, derived_index: int) -> int:
    """Series numbering: Philips counts in hundreds (101, 201 ...) and puts derived maps next to their source."""
    if vendor == "philips":
        return (derived_of or 0) + derived_index if derived_of else ordinal * 100 + 1
    if vendor == "ge" and derived_of:
        return derived_of * 100 + derived_index  # GE: ADC of series 5 is 500
    return ordinal


def add_private(ds: Dataset, vendor: str, p: PlannedSeries, b_value: int | None, enhanced: bool) -> None:
    """Vendor private elements a classifier may meet; b-values where each vendor really puts them."""
    t = p.technique.name
    if vendor == "siemens" and not enhanced:
        blk = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        blk.add_new(0x08, "CS", "IMAGE NUM 4")
        blk.add_new(0x09, "LO", "1.0")
        if t in ("DWI", "TRACE", "ADC"):
            b = b_value if b_value is not None else 1000
            blk.add_new(0x0C, "IS", str(b))
            blk.add_new(0x0D, "CS", "NONE" if b == 0 else "DIRECTIONAL" if t == "DWI" else "NONE")
    elif vendor == "ge":
        acq = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        acq.add_new(0x9C, "LO", _GE_PSD[t])
        parm = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        b = b_value or 0
        parm.add_new(0x39, "IS", [b + 1_000_000_000 if b else 0, 8, 0, 0])
    elif vendor == "philips":
        dd = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
        dd.add_new(0x03, "FL", float(b_value or 0))
        dd.add_new(0x0B, "CS", {"AX": "TRANSVERSAL", "SAG": "SAGITTAL", "COR": "CORONAL"}.get(p.orientation,
                                                                                               "TRANSVERSAL"))
        dd.add_new(0x20, "LO", _PHILIPS_TECH[t])
