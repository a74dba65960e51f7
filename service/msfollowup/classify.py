"""Series classification from DICOM headers: what each series is, and the evidence for it.

CONTRACT (shared with validate.py, report.py, pipeline.py): the dataclasses below and the
functions `summarize`, `classify_series`, `classify_study`, `read_headers`.

Order of trust: physics and standard attributes (ScanningSequence, TR/TE/TI, b-values, ImageType,
enhanced functional groups) first, then vendor sequence names, then what the scanner declares
(AcquisitionContrast), and SeriesDescription / ProtocolName only as a last resort. Every decision
records the rule that fired and the attribute values that made it fire.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.values import convert_SQ

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


# ---------------------------------------------------------------------------------------------------
# Reading headers. pydicom parses every element of a file (Philips classic headers hold ~600), which
# costs ~2 ms per file; a follow-up study of 500 instances must be read in well under 0.5 s. So the
# top level is scanned here with struct, only the elements the classifier needs are kept (as raw
# elements pydicom decodes lazily), and the per-frame functional groups of enhanced files are parsed
# for their first frame only, with b-values and contrast flags of all frames found by a byte search.
# Anything unusual (big endian, deflate, no preamble, malformed) goes through plain pydicom instead.
# ---------------------------------------------------------------------------------------------------

_KEEP_KEYWORDS = (
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "AcquisitionDateTime", "StudyTime", "SeriesTime", "AcquisitionTime",
    "ContentTime", "Modality", "Manufacturer", "StationName", "SeriesDescription", "ManufacturerModelName",
    "PatientName", "PatientID", "ContrastBolusAgent", "ContrastBolusAgentSequence", "BodyPartExamined",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName",
    "SliceThickness", "RepetitionTime", "EchoTime", "InversionTime", "ImagingFrequency",
    "MagneticFieldStrength", "SpacingBetweenSlices", "EchoTrainLength", "DeviceSerialNumber",
    "ProtocolName", "ContrastBolusRoute", "ContrastBolusVolume", "ContrastBolusStartTime",
    "ContrastBolusTotalDose", "ContrastBolusIngredient", "FlipAngle", "PulseSequenceName",
    "EchoPulseSequence", "SteadyStatePulseSequence", "EchoPlanarPulseSequence", "TimeOfFlightContrast",
    "DiffusionBValue", "RFEchoTrainLength", "GradientEchoTrainLength", "AcquisitionContrast",
    "ComplexImageComponent", "PixelPresentation", "InversionRecovery", "StudyInstanceUID",
    "SeriesInstanceUID", "SeriesNumber", "InstanceNumber", "ImageOrientationPatient", "NumberOfFrames",
    "PixelSpacing", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "ContrastBolusUsageSequence", "VolumeBasedCalculationTechnique", "SourceImageEvidenceSequence",
    "SourceImageSequence",
    # not used by the rules, kept for callers that identify or place the instances
    "AccessionNumber", "StudyDescription", "StudyID", "PatientBirthDate", "PatientSex", "InstitutionName",
    "SoftwareVersions", "Rows", "Columns", "ImagePositionPatient", "SliceLocation", "FrameOfReferenceUID",
    "AcquisitionNumber", "EchoNumbers", "ImageComments",
)
HEADER_KEYWORDS: tuple[str, ...] = _KEEP_KEYWORDS  # what read_header(s) keeps (plus the private tags below)


def _tag_for(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:  # a typo here must fail at import, not silently drop an attribute
        raise KeyError(keyword)
    return int(tag)


_KEEP: frozenset[int] = frozenset(_tag_for(k) for k in _KEEP_KEYWORDS)
# Private elements kept: group -> element offsets within any block (creators are checked when read).
#   0019: Siemens B_value (0C); GE PulseSequenceName (9C) and InternalPulseSequenceName (9E)
#   0043: GE b-value (39); 2001: Philips DiffusionB (03) and ScanningTechnique (20)
_PRIVATE_KEEP: dict[int, frozenset[int]] = {
    0x0019: frozenset({0x0C, 0x9C, 0x9E}),
    0x0043: frozenset({0x39}),
    0x2001: frozenset({0x03, 0x20}),
}
_PERFRAME = 0x52009230
_PIXEL_GROUP = 0x7FE00000
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_HH = struct.Struct("<HH").unpack_from
_EXPLICIT_HEAD = struct.Struct("<HH2sH").unpack_from
_IMPLICIT_HEAD = struct.Struct("<HHL").unpack_from
_H = struct.Struct("<H").unpack_from
_L = struct.Struct("<L").unpack_from
_D = struct.Struct("<d").unpack_from
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_IMPLICIT_TS = "1.2.840.10008.1.2"
_FALLBACK_TS = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # big endian, deflated
_FIRST_READ = 1 << 16


class _Truncated(Exception):
    """The buffer ends inside an element: read more of the file."""


class DamagedFileError(ValueError):
    """A DICOM file that ends before its last element does (cut during transfer or copy)."""


class _Unusual(Exception):
    """Something the fast scanner does not handle: let pydicom read the file."""


def _element(buf: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value start, value length) of the element at pos."""
    if pos + 8 > len(buf):
        raise _Truncated
    group, elem = _HH(buf, pos)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:
        return tag, None, pos + 8, _L(buf, pos + 4)[0]
    vr = buf[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _Truncated
        return tag, vr, pos + 12, _L(buf, pos + 8)[0]
    if not vr.isalpha():
        raise _Unusual("explicit VR expected")
    return tag, vr, pos + 8, _H(buf, pos + 6)[0]


def _skip_undefined(buf: bytes, pos: int, implicit: bool) -> int:
    """pos: first byte inside an undefined-length sequence or item; returns the byte after its delimiter."""
    while True:
        tag, vr, start, length = _element(buf, pos, implicit)
        if tag in (_ITEM_END, _SEQ_END):
            return start
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, start, implicit or vr == b"UN")
        else:
            pos = start + length
            if pos > len(buf):
                raise _Truncated


_PERFRAME_TAIL = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00\xe0\x7f\x10\x00"  # sequence delimiter, then PixelData


def _perframe_end(buf: bytes, start: int, total: int) -> int | None:
    """End of an undefined-length per-frame sequence found by its delimiter right before PixelData.

    Walking the items element by element costs ~10 ms for a 100-frame Siemens XA file; the delimiter
    followed by the PixelData tag cannot occur inside the items. None: not found, walk instead."""
    i = buf.find(_PERFRAME_TAIL, start)
    if i < 0:
        if len(buf) < total:
            raise _Truncated
        return None
    return i + 8


def _keep(tag: int) -> bool:
    if tag in _KEEP:
        return True
    group = tag >> 16
    if not group & 1 or group not in _PRIVATE_KEEP:
        return False
    elem = tag & 0xFFFF
    return 0x10 <= elem <= 0xFF or (elem >= 0x1000 and (elem & 0xFF) in _PRIVATE_KEEP[group])


def _scan(buf: bytes, pos: int, implicit: bool, total: int) -> tuple[dict[BaseTag, Any], tuple[int, int] | None]:
    """Kept top-level elements as raw elements, and the (start, end) of the per-frame sequence items.

    total: the file size, to tell a buffer that needs more bytes from a file that is cut short."""
    raw: dict[BaseTag, Any] = {}
    perframe: tuple[int, int] | None = None
    n = len(buf)
    keep, long_vrs, explicit_head, implicit_head = _KEEP, _LONG_VRS, _EXPLICIT_HEAD, _IMPLICIT_HEAD
    while pos + 8 <= n:  # the element header is parsed inline: this loop runs ~100 times per file
        vr: bytes | None
        if implicit:
            group, elem, length = implicit_head(buf, pos)
            vr, start = None, pos + 8
        else:
            group, elem, vr, length = explicit_head(buf, pos)
            start = pos + 8
            if vr in long_vrs:
                if pos + 12 > n:
                    raise _Truncated
                length, start = _L(buf, pos + 8)[0], pos + 12
            elif not vr.isalpha():
                raise _Unusual("explicit VR expected")
        tag = group << 16 | elem
        if tag >= _PIXEL_GROUP:
            if length != _UNDEFINED and tag < 0x7FE10000 and start + length > total:
                raise DamagedFileError("file ends inside its pixel data")
            return raw, perframe
        if length == _UNDEFINED:
            if vr == b"UN":
                raise _Unusual("undefined-length UN")
            end = (_perframe_end(buf, start, total) if tag == _PERFRAME else None) or _skip_undefined(
                buf, start, implicit)
            value_end = end - 8  # without the sequence delimiter
        else:
            end = value_end = start + length
            if end > n:
                raise _Truncated
        if tag in keep or (group & 1 and group in _PRIVATE_KEEP and _keep(tag)):
            btag = BaseTag(tag)
            value = buf[start:value_end]
            raw[btag] = RawDataElement(btag, vr.decode() if vr else None, len(value), value, start, implicit, True)
            if tag == _PERFRAME:
                perframe = (start, value_end)
        pos = end
    if pos < n:  # fewer than 8 bytes left: half an element header
        if n < total:
            raise _Truncated
        raise DamagedFileError("file ends inside an element header")
    return raw, perframe


def _meta(buf: bytes) -> tuple[str, int]:
    """Transfer syntax UID and the offset of the dataset after the file meta group."""
    pos = 132
    ts = ""
    while pos + 8 <= len(buf):
        group, elem = _HH(buf, pos)
        if group != 0x0002:
            return ts, pos
        tag, vr, start, length = _element(buf, pos, False)
        if length == _UNDEFINED:
            raise _Unusual("undefined length in file meta")
        if elem == 0x0010:
            ts = buf[start:start + length].decode("ascii", "replace").strip("\0 ")
        pos = start + length
    raise _Truncated


def _b_pattern(implicit: bool) -> bytes:
    # (0018,9087) DiffusionBValue, FD, length 8
    return b"\x18\x00\x87\x90" + (b"\x08\x00\x00\x00" if implicit else b"FD\x08\x00")


def _frame_bvalues(buf: bytes, start: int, end: int, implicit: bool) -> tuple[float, ...]:
    """Every DiffusionBValue inside the per-frame groups, found without parsing thousands of items."""
    pat = _b_pattern(implicit)
    out: set[float] = set()
    pos = buf.find(pat, start, end)
    while pos >= 0:
        if pos + 16 <= end:
            out.add(round(_D(buf, pos + 8)[0], 3))
        pos = buf.find(pat, pos + 16, end)
    return tuple(sorted(out))


def _frame_contrast(buf: bytes, start: int, end: int, implicit: bool) -> tuple[str, ...]:
    """Values of ContrastBolusAgentAdministered (0018,9342) in any frame."""
    pat = b"\x18\x00\x42\x93"
    out: set[str] = set()
    pos = buf.find(pat, start, end)
    while pos >= 0:
        try:
            _, _, vstart, length = _element(buf, pos, implicit)
            if length < 16:
                out.add(buf[vstart:vstart + length].decode("ascii", "replace").strip("\0 ").upper())
        except (_Truncated, _Unusual):
            pass
        pos = buf.find(pat, pos + 4, end)
    return tuple(sorted(out))


def _first_item(buf: bytes, start: int, end: int, implicit: bool) -> tuple[int, int] | None:
    if start + 8 > end:
        return None
    tag, _, istart, length = _element(buf, start, implicit)
    if tag != _ITEM:
        raise _Unusual("sequence item expected")
    iend = _skip_undefined(buf, istart, implicit) if length == _UNDEFINED else istart + length
    return start, iend


def _fast_read(path: Path) -> Dataset | None:
    """Header of a file with a DICM preamble, or None when there is no preamble."""
    with open(path, "rb") as fh:
        total = os.fstat(fh.fileno()).st_size
        buf = fh.read(_FIRST_READ)
        if len(buf) < 132 or buf[128:132] != b"DICM":
            return None
        while True:
            try:
                return _parse(buf, total)
            except _Truncated:
                if len(buf) >= total:
                    raise DamagedFileError("file ends inside an element") from None
                buf += fh.read(max(len(buf) * 3, 8 << 20))  # big enough for huge per-frame headers


_META_CACHE: dict[str, FileMetaDataset] = {}


def _file_meta(ts: str) -> FileMetaDataset:
    """One shared (read-only by convention) file meta per transfer syntax: building one per file is slow."""
    meta = _META_CACHE.get(ts)
    if meta is None:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = UID(ts)
        _META_CACHE[ts] = meta
    return meta


def _parse(buf: bytes, total: int) -> Dataset:
    ts, pos = _meta(buf)
    if ts in _FALLBACK_TS:
        raise _Unusual(f"transfer syntax {ts}")
    implicit = ts == _IMPLICIT_TS
    if not implicit and pos + 6 <= len(buf) and not buf[pos + 4:pos + 6].isalpha():
        implicit = True  # explicit VR announced, implicit written: pydicom tolerates this, so do we
    raw, perframe = _scan(buf, pos, implicit, total)
    ds = Dataset(raw)
    encoding: str | list[str] = "iso8859"
    if 0x00080005 in raw:
        from pydicom.charset import convert_encodings

        charset = ds.get("SpecificCharacterSet")
        encoding = convert_encodings(charset) if charset else "iso8859"
    ds.set_original_encoding(implicit, True, encoding)
    ds.file_meta = _file_meta(ts or _IMPLICIT_TS)
    if perframe is not None:
        start, end = perframe
        first = _first_item(buf, start, end, implicit)
        if first is not None:
            seq = convert_SQ(buf[first[0]:first[1]], implicit, True, encoding if isinstance(encoding, list)
                             else [encoding], first[0])
            ds._msf_first_frame = seq[0] if len(seq) else None
        else:
            ds._msf_first_frame = None
        ds._msf_frame_b = _frame_bvalues(buf, start, end, implicit)
        ds._msf_frame_contrast = _frame_contrast(buf, start, end, implicit)
    return ds


def _slow_read(path: Path, preamble: bool) -> Dataset | None:
    """pydicom read; without a preamble only accepted when it looks like a real DICOM image/object."""
    if not preamble:
        # A file without preamble is only tried when it starts like a raw dataset (group 0002 or
        # 0008, little endian): forcing pydicom through arbitrary bytes is slow and meaningless.
        with open(path, "rb") as fh:
            head = fh.read(4)
        if len(head) < 4 or _HH(head, 0)[0] not in (0x0002, 0x0008):
            return None
    try:
        ds = dcmread(path, stop_before_pixels=True, force=not preamble)
    except InvalidDicomError:
        return None
    except Exception:
        if preamble:
            raise
        return None
    if not preamble and ("SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds):
        return None
    return ds


def read_header(path: Path) -> Dataset | None:
    """Header of one file (no pixel data); None if it is not a DICOM file. Raises on a damaged DICOM file."""
    try:
        ds = _fast_read(path)
    except DamagedFileError:
        raise
    except (_Unusual, _Truncated, struct.error, ValueError, IndexError):
        ds = _slow_read(path, preamble=True)
    else:
        if ds is None:
            ds = _slow_read(path, preamble=False)
    if ds is not None:
        ds.filename = str(path)
    return ds


def _walk(paths: Iterable[Path]) -> Iterable[Path]:
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, _dirs, files in os.walk(p):
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield p


def read_headers(paths: Iterable[Path]) -> tuple[dict[str, list[Dataset]], list[str], int]:
    """Read headers (no pixels) grouped by SeriesInstanceUID.

    Returns (series_uid -> datasets, unreadable DICOM files as messages, count of non-DICOM files skipped).
    Directories are walked. Messages name the file and the problem, never a patient attribute.

    The datasets hold the attributes of HEADER_KEYWORDS (and a few vendor private tags), not the whole
    header: re-read a file with pydicom for anything else. For enhanced files the per-frame sequence
    is kept raw (parsed only if accessed); the reader also leaves `_msf_first_frame` (first item,
    parsed), `_msf_frame_b` (every DiffusionBValue of every frame) and `_msf_frame_contrast`
    (ContrastBolusAgentAdministered values) on the dataset, which the classifier uses instead.
    """
    groups: dict[str, list[Dataset]] = {}
    problems: list[str] = []
    skipped = 0
    for path in _walk(paths):
        try:
            ds = read_header(path)
        except DamagedFileError as exc:  # our own message: names no attribute value
            problems.append(f"{path}: damaged DICOM file: {exc}")
            continue
        except Exception as exc:  # one bad file must not hide the rest of the study; the message of a
            # parser exception may quote element values, so only its type is reported
            problems.append(f"{path}: unreadable DICOM file ({type(exc).__name__})")
            continue
        if ds is None:
            skipped += 1
            continue
        uid = _str(ds, "SeriesInstanceUID")
        if not uid:
            problems.append(f"{path}: DICOM file without SeriesInstanceUID")
            continue
        groups.setdefault(uid, []).append(ds)
    return groups, problems, skipped


# ---------------------------------------------------------------------------------------------------
# Attribute access that tolerates what scanners write (empty values, DS text, UN private tags).
# ---------------------------------------------------------------------------------------------------


_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "SH"})
_BINARY_VRS = {"FD": "d", "FL": "f", "US": "H", "UL": "L", "SS": "h", "SL": "l"}
_KW_INFO: dict[str, tuple[int, str]] = {}
_TEXTLIKE = re.compile(rb"[0-9 .+\-eE\\]*")


def _info(keyword: str) -> tuple[int, str]:
    info = _KW_INFO.get(keyword)
    if info is None:
        from pydicom.datadict import dictionary_VR

        tag = _tag_for(keyword)
        info = _KW_INFO[keyword] = (tag, dictionary_VR(tag))
    return info


def _decode_raw(raw: bytes, vr: str) -> Any:
    """Value of an undecoded little-endian element of an ASCII or binary numeric VR."""
    if vr in _ASCII_VRS:
        parts = [p.strip() for p in raw.decode("latin-1").strip("\0 ").split("\\")]
        return parts[0] if len(parts) == 1 else parts
    code = _BINARY_VRS[vr]
    count = len(raw) // struct.calcsize(code)
    values = struct.unpack(f"<{count}{code}", raw[:count * struct.calcsize(code)])
    return values[0] if count == 1 else list(values)


def _value(ds: Dataset | None, keyword: str) -> Any:
    """Element value; ASCII and binary numbers are decoded straight from the raw bytes (per-instance
    attributes are read hundreds of times per study and pydicom's conversion dominates otherwise)."""
    if ds is None:
        return None
    tag, vr = _info(keyword)
    elem = ds._dict.get(tag)  # type: ignore[call-overload]
    if elem is None:
        return None
    if (type(elem) is RawDataElement and elem.is_little_endian and elem.value is not None
            and elem.VR in (None, vr) and (vr in _ASCII_VRS or vr in _BINARY_VRS)):
        try:
            return _decode_raw(elem.value, vr)
        except (struct.error, ValueError):
            pass
    try:
        return ds[tag].value
    except Exception:  # a malformed value is the same as no value for classification
        return None


def study_uid(ds: Dataset) -> str:
    """The StudyInstanceUID of a header read by `read_header`, "" when absent or undecodable (bad VR)."""
    return _str(ds, "StudyInstanceUID") or ""


def _str(ds: Dataset | None, keyword: str) -> str | None:
    v = _value(ds, keyword)
    if v is None:
        return None
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        v = "\\".join(str(x) for x in v)
    s = str(v).strip().strip("\0").strip()
    return s or None


def _tokens(ds: Dataset | None, keyword: str) -> tuple[str, ...]:
    v = _value(ds, keyword)
    if v is None or v == "":
        return ()
    items = list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else str(v).split("\\")
    return tuple(str(x).strip().upper() for x in items if str(x).strip())


def _num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        v = v[0] if len(v) else None
        if v is None:
            return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _float(ds: Dataset | None, keyword: str) -> float | None:
    return _num(_value(ds, keyword))


def _floats(ds: Dataset | None, keyword: str) -> tuple[float, ...]:
    v = _value(ds, keyword)
    if v is None or v == "":
        return ()
    items = v if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v]
    out = []
    for x in items:
        f = _num(x)
        if f is not None:
            out.append(f)
    return tuple(out)


def _item(ds: Dataset | None, keyword: str) -> Dataset | None:
    v = _value(ds, keyword)
    try:
        return v[0] if v else None
    except (TypeError, IndexError):
        return None


def _private(ds: Dataset, group: int, offset: int, creators: tuple[str, ...]) -> Any:
    """Value of a private element whose block creator starts with one of `creators`.

    Undecoded values come back as bytes (implicit VR or UN): the caller knows what to expect.
    Callers check the manufacturer first, so when an anonymiser stripped every creator of the group
    the vendor's usual block (0x10) is assumed."""
    blocks = []
    creator_tags = [t for t in ds._dict if t >> 16 == group and 0x10 <= (t & 0xFFFF) <= 0xFF]
    for ctag in creator_tags:
        elem = ds._dict[ctag]
        value = elem.value if not isinstance(elem, RawDataElement) else (elem.value or b"").decode("latin-1")
        creator = str(value).strip("\0 ").upper()
        if any(creator.startswith(c) for c in creators):
            blocks.append(ctag & 0xFF)
    if not creator_tags:
        blocks = [0x10]
    for block in blocks:
        tag = (group << 16) | (block << 8) | offset
        found = ds._dict.get(tag)  # type: ignore[call-overload]
        if found is None:
            continue
        if isinstance(found, RawDataElement):
            if found.is_little_endian and found.value is not None:
                vr = found.VR
                if vr in _ASCII_VRS or vr in _BINARY_VRS:
                    return _decode_raw(found.value, vr)
                if vr in (None, "UN"):
                    return found.value
            return ds[tag].value
        return found.value
    return None


def _private_num(ds: Dataset, group: int, offset: int, creators: tuple[str, ...]) -> float | None:
    v = _private(ds, group, offset, creators)
    if isinstance(v, bytes):  # implicit VR or UN: text digits, or a raw little-endian float (Philips FL as UN)
        if _TEXTLIKE.fullmatch(v):
            return _num(v.decode("ascii").strip("\0 ").split("\\")[0])
        if len(v) == 4:
            return _num(struct.unpack("<f", v)[0])
        if len(v) == 8:
            return _num(struct.unpack("<d", v)[0])
        return None
    return _num(v)


def _private_str(ds: Dataset, group: int, offset: int, creators: tuple[str, ...]) -> str | None:
    v = _private(ds, group, offset, creators)
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    s = str(v).strip("\0 ") if v is not None else ""
    return s or None


def _first_frame(ds: Dataset) -> Dataset | None:
    if hasattr(ds, "_msf_first_frame"):
        ff: Dataset | None = ds._msf_first_frame
        return ff
    return _item(ds, "PerFrameFunctionalGroupsSequence")


def _group(ds: Dataset, macro: str) -> Dataset | None:
    """A functional group macro item: shared first, then the first frame (the reader keeps only that)."""
    item = _item(_item(ds, "SharedFunctionalGroupsSequence"), macro)
    if item is None:
        item = _item(_first_frame(ds), macro)
    return item


def _frame_b(ds: Dataset) -> tuple[float, ...]:
    if hasattr(ds, "_msf_frame_b"):
        return tuple(ds._msf_frame_b)
    seq = _value(ds, "PerFrameFunctionalGroupsSequence") or ()
    out = set()
    for frame in seq:
        b = _float(_item(frame, "MRDiffusionSequence"), "DiffusionBValue")
        if b is not None:
            out.add(round(b, 3))
    return tuple(sorted(out))


def _frame_contrast_flags(ds: Dataset) -> tuple[str, ...]:
    if hasattr(ds, "_msf_frame_contrast"):
        return tuple(ds._msf_frame_contrast)
    out = set()
    for frame in _value(ds, "PerFrameFunctionalGroupsSequence") or ():
        for usage in _value(frame, "ContrastBolusUsageSequence") or ():
            flag = _str(usage, "ContrastBolusAgentAdministered")
            if flag:
                out.add(flag.upper())
    return tuple(sorted(out))


def _dt(date: str | None, time: str | None) -> dt.datetime | None:
    if not date:
        return None
    date = date.replace(".", "").replace("-", "")[:8]
    try:
        day = dt.datetime(int(date[0:4]), int(date[4:6]), int(date[6:8]))
    except ValueError:
        return None
    if not time:
        return day
    whole, _, frac = time.replace(":", "").partition(".")
    try:
        hh = int(whole[0:2]) if len(whole) >= 2 else 0
        mm = int(whole[2:4]) if len(whole) >= 4 else 0
        ss = int(whole[4:6]) if len(whole) >= 6 else 0
        us = int((frac + "000000")[:6]) if frac.isdigit() else 0
        return day.replace(hour=hh, minute=mm, second=min(ss, 59), microsecond=us)
    except ValueError:
        return day


def _dt_value(v: str | None) -> dt.datetime | None:
    """DICOM DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX); the offset is dropped: everything is scanner local time."""
    if not v:
        return None
    v = re.split(r"[+-]", v.strip())[0]
    return _dt(v[:8], v[8:] or None)


def _instance_datetime(ds: Dataset) -> dt.datetime | None:
    """AcquisitionDateTime, else the first of Acquisition/Series/Content Date+Time that has a time."""
    t = _dt_value(_str(ds, "AcquisitionDateTime"))
    if t:
        return t
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"),
                             ("ContentDate", "ContentTime")):
        tm = _str(ds, time_kw)
        day = _str(ds, date_kw) or _str(ds, "StudyDate") or _str(ds, "SeriesDate")
        if tm and day:
            return _dt(day, tm)
    return None


def _plane(iop: tuple[float, ...]) -> Orientation | None:
    if len(iop) != 6:
        return None
    r, c = iop[:3], iop[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    size = math.sqrt(sum(x * x for x in n))
    if size < 1e-6:
        return None
    a = [abs(x) / size for x in n]
    i = max(range(3), key=lambda k: a[k])
    if a[i] < 0.8:  # more than ~37 degrees off every main plane
        return "OBL"
    plane: Orientation = ("SAG", "COR", "AX")[i]  # type: ignore[assignment]
    return plane


# ---------------------------------------------------------------------------------------------------
# summarize
# ---------------------------------------------------------------------------------------------------

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


def _bolus_start(ds: Dataset) -> dt.datetime | None:
    """Date of the acquisition (or study) + ContrastBolusStartTime, classic or enhanced."""
    time = _str(ds, "ContrastBolusStartTime") or _str(_group(ds, "ContrastBolusUsageSequence"),
                                                       "ContrastBolusStartTime")
    if not time:
        return None
    day = _str(ds, "AcquisitionDate") or _str(ds, "StudyDate") or _str(ds, "SeriesDate")
    if not day:
        adt = _str(ds, "AcquisitionDateTime")
        day = adt[:8] if adt else None
    return _dt(day, time)


def _walk_instances(datasets: Sequence[Dataset]) -> _Instances:
    out = _Instances()
    for ds in datasets:
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
        iop = _floats(ds, "ImageOrientationPatient") or _floats(_group(ds, "PlaneOrientationSequence"),
                                                                 "ImageOrientationPatient")
        plane = _plane(iop)
        if plane:
            out.planes[plane] += 1
        if out.agent is None:
            a = _agent(ds)
            if a and a.upper() not in _NO_AGENT:
                out.agent = a
        if out.bolus_start is None:
            out.bolus_start = _bolus_start(ds)
    return out


def _geometry(first: Dataset) -> tuple[float | None, float | None, tuple[float, ...]]:
    """Slice thickness, spacing between slices and pixel spacing: classic attributes, else the enhanced
    PixelMeasuresSequence (shared, else first frame). An empty or zero thickness means unknown."""
    measures = _group(first, "PixelMeasuresSequence")
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


def _field_strength(first: Dataset) -> tuple[float | None, float | None, bool]:
    """(tesla as written, imaging frequency MHz, computed from frequency?). 1.494 stays 1.494: rounding
    to a nominal field is the validator's business."""
    field_t = _float(first, "MagneticFieldStrength")
    if field_t is not None and field_t > 100:  # old GE software writes gauss (15000 = 1.5 T)
        field_t = field_t / 10000
    freq = _float(first, "ImagingFrequency")
    if freq is None:
        freq = _float(_group(first, "MRImagingModifierSequence"), "TransmitterFrequency")
    if (field_t is None or field_t <= 0) and freq:
        return round(freq / 42.577, 2), freq, True  # proton gyromagnetic ratio, MHz/T
    return field_t, freq, False


def summarize(datasets: Sequence[Dataset]) -> SeriesFacts:
    """Facts of one series (all instances of one SeriesInstanceUID)."""
    if not datasets:
        raise ValueError("summarize needs at least one dataset of the series")
    first = datasets[0]
    inst = _walk_instances(datasets)
    thick, spacing, pixel = _geometry(first)
    field_t, freq, from_freq = _field_strength(first)
    number = _float(first, "SeriesNumber")
    return SeriesFacts(
        study_instance_uid=study_uid(first),
        series_instance_uid=_str(first, "SeriesInstanceUID") or "",
        series_number=int(number) if number is not None else None,
        description=_str(first, "SeriesDescription"),
        modality=_str(first, "Modality"),
        sop_class_uids=tuple(inst.classes),
        sop_instance_uids=tuple(inst.sop_uids),
        instance_count=len(datasets),
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
    )


# ---------------------------------------------------------------------------------------------------
# Features: the values the rules look at, gathered once per series.
# ---------------------------------------------------------------------------------------------------

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


def _collect_b(datasets: Sequence[Dataset], manufacturer: str) -> dict[str, tuple[float, ...]]:
    std: set[float] = set()
    siemens: set[float] = set()
    ge: set[float] = set()
    philips: set[float] = set()
    frame: set[float] = set()
    for ds in datasets:
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
        frame.update(_frame_b(ds))
    found = {"DiffusionBValue": std, "Siemens(0019,100C)": siemens, "GE(0043,1039)": ge,
             "Philips(2001,1003)": philips, "MRDiffusionSequence": frame}
    return {k: tuple(sorted(v)) for k, v in found.items() if v}


def _per_instance(datasets: Sequence[Dataset]) -> tuple[tuple[str, ...], tuple[float, ...], list[str]]:
    """ImageType tokens (union, in order), echo times and SequenceNames over all instances."""
    image_type: list[str] = []
    te_values: set[float] = set()
    seq_names: list[str] = []
    for ds in datasets:
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


def _features(datasets: Sequence[Dataset], facts: SeriesFacts) -> _Features:
    first = datasets[0]
    image_type, te_values, seq_names = _per_instance(datasets)
    manufacturer = (facts.manufacturer or "").upper()
    timing = _group(first, "MRTimingAndRelatedParametersSequence")
    modifier = _group(first, "MRModifierSequence")
    frame_type = _group(first, "MRImageFrameTypeSequence")
    diffusion = _group(first, "MRDiffusionSequence")
    if not te_values:
        te = _float(_group(first, "MREchoSequence"), "EffectiveEchoTime")
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
        b_values=_collect_b(datasets, manufacturer),
        diffusion_directionality=_upper(_str(diffusion, "DiffusionDirectionality")),
        anisotropy=_upper(_str(diffusion, "DiffusionAnisotropyType")),
        description=facts.description or "",
        protocol=facts.protocol_name or "",
        acq_type=_upper(facts.mr_acquisition_type),
        inversions=inversions,
        volume_technique=_upper(_str(first, "VolumeBasedCalculationTechnique"),
                                _str(frame_type, "VolumeBasedCalculationTechnique")),
        out_of_plane_steps=_float(_group(first, "MRFOVGeometrySequence"), "MRAcquisitionPhaseEncodingStepsOutOfPlane"),
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
_PHASE_TOKENS = frozenset({"P", "PHASE", "R", "REAL", "I", "IMAGINARY"})
_DERIVED_TOKENS = frozenset({
    "MPR", "MIP", "MINIP", "MNIP", "MIN IP", "PROJECTION IMAGE", "REFORMATTED", "CSA MPR", "CSA RESAMPLED",
    "CSAPARALLEL", "CSARADIAL", "FA", "TENSOR_B0", "TENSOR", "RCBF", "CBF", "CBV", "RCBV", "MTT", "TTP", "EXP",
    "EADC", "CFA", "SUBTRACTION", "SUB", "CPR", "VRT", "RESAMPLED", "COMPOSED", "T1_MAP", "T2_MAP", "T2*_MAP",
})


def _ev(f: _Features, **extra: Any) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if v is not None and v != () and v != ""}


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
    if phase and not swi:
        return _Decision("OTHER", "phase / complex image (field map or phase data)", 0.9, "physics",
                         _ev(f, ComplexImageComponent=f.complex_component, ImageType="\\".join(f.image_type)))
    m = re.search(r"(^|\s)(fm\d|epfid|tfi|trufi|pc\d|fl_pc|tof|fl3d1r_t|b1map|tfl_b1)", f.seq_name)
    if m:
        return _Decision("OTHER", f"Siemens sequence {m.group(2)}: field map / EPI-FID / bSSFP / angiography",
                         0.9, "vendor", _ev(f, SequenceName=f.seq_name))
    m = re.search(r"b0map|fiesta|tof|asl|pcvipr|3dpc|bold|fmri", f.ge_psd)
    if m:
        return _Decision("OTHER", f"GE pulse sequence {m.group(0)}", 0.88, "vendor", _ev(f, GEPulseSequence=f.ge_psd))
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
    return bool({"SWI", "SWI_MIP", "SW", "SWAN"} & set(f.image_type)
                or re.search(r"(^|\s)swi", f.seq_name) or "swan" in f.ge_psd
                or f.philips_tech.startswith(("SWI", "PRESTO")))


def _rule_swi(f: _Features) -> _Decision | None:
    if _swi_named(f):
        return _Decision("SWI", "susceptibility-weighted (ImageType / sequence)", 0.9, "vendor",
                         _ev(f, ImageType="\\".join(f.image_type), SequenceName=f.seq_name, GEPulseSequence=f.ge_psd,
                             PhilipsScanTechnique=f.philips_tech))
    te, tr = f.te, f.tr
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
    if not _is_se(f) or f.epi:
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
    if te is None or te >= 10:
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
    if named_se:
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


def _words(pattern: str) -> re.Pattern[str]:
    """Case-insensitive pattern where <...> marks a whole token: '_', digits and spaces separate tokens."""
    return re.compile(pattern.replace("<", r"(?<![a-z])").replace(">", r"(?![a-z])"), re.I)


_DESCRIPTION_KINDS: tuple[tuple[re.Pattern[str], Kind], ...] = (
    (_words(r"<adc>|apparent diff|<dadc>|<eadc>"), "ADC"),
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


def _own_contrast(datasets: Sequence[Dataset], facts: SeriesFacts) -> tuple[Literal["pre", "post"] | None, str]:
    """Contrast status from this series' own attributes."""
    start, acquired = facts.contrast_bolus_start, facts.acquisition_datetime
    if start and acquired and acquired < start:  # the console may copy contrast fields onto earlier series
        return "pre", "acquired before ContrastBolusStartTime"
    if facts.contrast_bolus_agent:
        return "post", f"ContrastBolusAgent present ({facts.contrast_bolus_agent})"
    first = datasets[0]
    for kw in ("ContrastBolusVolume", "ContrastBolusTotalDose"):
        v = _float(first, kw)
        if v is not None and v > 0:
            return "post", f"{kw} {v:g}"
    if _str(first, "ContrastBolusIngredient"):
        return "post", "ContrastBolusIngredient present"
    if facts.contrast_bolus_start:
        return "post", "ContrastBolusStartTime present"
    usage = _group(first, "ContrastBolusUsageSequence")
    flags = set(_frame_contrast_flags(first))
    if usage is not None:
        flag = _str(usage, "ContrastBolusAgentAdministered")
        if flag:
            flags.add(flag.upper())
    if "YES" in flags:
        return "post", "ContrastBolusUsageSequence: agent administered YES"
    if "NO" in flags:
        return "pre", "ContrastBolusUsageSequence: agent administered NO"
    agent = _agent(first)
    if agent and agent.upper() in _NO_AGENT:
        return "pre", f"ContrastBolusAgent says none ({agent})"
    return None, "no contrast attributes"


def _family(kind: str) -> str:
    """Descriptions name a DWI series 'trace' and its maps 'diff': no conflict within the family."""
    return "DIFFUSION" if kind in ("DWI", "TRACE", "ADC") else kind


def classify_series(datasets: Sequence[Dataset]) -> SeriesClassification:
    """Classify one series from its headers (contrast from its own attributes; see classify_study)."""
    facts = summarize(datasets)
    f = _features(datasets, facts)
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
    contrast, basis = _own_contrast(datasets, facts)
    if d.kind == "LOCALIZER" or (d.kind == "OTHER" and f.sop_class and f.sop_class not in _MR_IMAGE_CLASSES):
        contrast, basis = None, "not applicable (localizer or non-image object)"
    elif contrast is None:
        contrast = "pre"
    return SeriesClassification(
        facts=facts, kind=d.kind, acquisition=acquisition, derived=derived, contrast=contrast,
        contrast_basis=basis, evidence=evidence, confidence=round(confidence, 3), basis=d.basis)


def _post_by_attributes(c: SeriesClassification) -> bool:
    return c.contrast == "post" and not (c.contrast_basis or "").startswith("acquired")


def classify_study(series: Sequence[Sequence[Dataset]]) -> list[SeriesClassification]:
    """Classify every series of a study; post-contrast status carries forward in time.

    Once a series is post-contrast by its own attributes (or a ContrastBolusStartTime is known), every
    series acquired at or after that moment is post-contrast; series acquired before it are pre.
    """
    results = [classify_series(s) for s in series if s]
    marks: list[tuple[dt.datetime, str]] = []
    for c in results:
        t = c.facts.acquisition_datetime
        if c.contrast == "post" and c.contrast_basis and not c.contrast_basis.startswith("acquired") and t:
            name = f"series {c.facts.series_number}" if c.facts.series_number is not None else "a series"
            marks.append((t, f"acquired after a post-contrast series in the same study ({name})"))
        if c.facts.contrast_bolus_start:
            marks.append((c.facts.contrast_bolus_start, "acquired after the contrast injection "
                                                        "(ContrastBolusStartTime)"))
    if not marks:
        return results
    first_post, why = min(marks, key=lambda m: m[0])
    out = []
    for c in results:
        t = c.facts.acquisition_datetime
        if c.contrast is None or t is None or _post_by_attributes(c):
            out.append(c)
            continue
        if t >= first_post:
            out.append(_replace_contrast(c, "post", why))
        elif c.contrast_basis == "no contrast attributes":
            out.append(_replace_contrast(c, "pre", "no contrast attributes; acquired before the first "
                                                   "post-contrast series"))
        else:
            out.append(c)
    return out


def _replace_contrast(c: SeriesClassification, contrast: Literal["pre", "post"], basis: str
                      ) -> SeriesClassification:
    from dataclasses import replace

    return replace(c, contrast=contrast, contrast_basis=basis)
