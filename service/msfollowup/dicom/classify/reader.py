"""The fast header reader.

Reading headers. pydicom parses every element of a file (Philips classic headers hold ~600), which
costs ~2 ms per file; a follow-up study of 500 instances must be read in well under 0.5 s. So the
top level is scanned here with struct, only the elements the classifier needs are kept (as raw
elements pydicom decodes lazily), and the per-frame functional groups of enhanced files are parsed
for their first frame only, with b-values and contrast flags of all frames found by a byte search.
Anything unusual (big endian, deflate, no preamble, malformed) goes through plain pydicom instead.

The result is a typed `Header` record (the kept attributes plus what was found in the per-frame
groups), never private attributes attached to a pydicom Dataset.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.values import convert_SQ

from msfollowup.dicom.classify.access import _str, _tag_for
from msfollowup.dicom.classify.header import Header, as_header


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
    "AcquisitionNumber", "EchoNumbers", "ImageComments", "InstanceCreationDate", "InstanceCreationTime",
    "PatientPosition", "ReconstructionDiameter", "RequestedProcedureDescription", "PerformedProcedureStepDescription",
    "FrameType", "AcquisitionMatrix",
)
HEADER_KEYWORDS: tuple[str, ...] = _KEEP_KEYWORDS  # what read_header(s) keeps (plus the private tags below)


_KEEP: frozenset[int] = frozenset(_tag_for(k) for k in _KEEP_KEYWORDS)
# Private elements kept: group -> element offsets within any block (creators are checked when read).
#   0019: Siemens NumberOfImagesInMosaic (0A), B_value (0C); GE PulseSequenceName (9C) and
#         InternalPulseSequenceName (9E)
#   0043: GE b-value (39); 2001: Philips DiffusionB (03) and ScanningTechnique (20); 0065: UIH b-value (09)
_PRIVATE_KEEP: dict[int, frozenset[int]] = {
    0x0019: frozenset({0x0A, 0x0C, 0x9C, 0x9E}),
    0x0043: frozenset({0x39}),
    0x2001: frozenset({0x03, 0x20}),
    0x0065: frozenset({0x09}),  # UIH b-value
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


# One BaseTag per kept tag and one str per VR seen, shared by every header (pydicom compares them by
# value). Bounded: only kept tags enter, and a VR is two letters (anything else is _Unusual first).
_TAG_OBJECTS: dict[int, BaseTag] = {}
_VR_NAMES: dict[bytes, str] = {}


def _keep(tag: int) -> bool:
    if tag in _KEEP:
        return True
    group = tag >> 16
    if not group & 1 or group not in _PRIVATE_KEEP:
        return False
    elem = tag & 0xFFFF
    return 0x10 <= elem <= 0xFF or (elem >= 0x1000 and (elem & 0xFF) in _PRIVATE_KEEP[group])


def _scan(buf: bytes, pos: int, implicit: bool, total: int, only: frozenset[int] | None = None
          ) -> tuple[dict[BaseTag, Any], tuple[int, int] | None]:
    """Kept top-level elements as raw elements, and the (start, end) of the per-frame sequence items.

    total: the file size, to tell a buffer that needs more bytes from a file that is cut short.
    only: keep just these tags (no private ones) instead of everything classification reads."""
    raw: dict[BaseTag, Any] = {}
    perframe: tuple[int, int] | None = None
    n = len(buf)
    keep, private = (_KEEP, True) if only is None else (only, False)
    long_vrs, explicit_head, implicit_head = _LONG_VRS, _EXPLICIT_HEAD, _IMPLICIT_HEAD
    tags, vr_names, new_raw = _TAG_OBJECTS, _VR_NAMES, tuple.__new__
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
        if tag in keep or (private and group & 1 and group in _PRIVATE_KEEP and _keep(tag)):
            btag = tags.get(tag) or tags.setdefault(tag, BaseTag(tag))
            value = buf[start:value_end]
            # RawDataElement(btag, vr, len, value, start, implicit, True), built without the named
            # tuple's Python-level __new__ (is_raw=True, is_buffered=False are its defaults): ~0.4 us
            # per kept element, ~60 per MR slice.
            name = (vr_names.get(vr) or vr_names.setdefault(vr, vr.decode())) if vr else None
            raw[btag] = new_raw(RawDataElement, (btag, name, len(value), value, start, implicit, True, True, False))
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


def _fast_read(path: Path, data: bytes | None = None, only: frozenset[int] | None = None) -> Header | None:
    """Header of a file with a DICM preamble, or None when there is no preamble. `data`: the whole
    file, when the caller has read it already; `only`: as for _scan."""
    if data is not None:
        return _parse_prefix(data, len(data), only, read_more=None)
    with open(path, "rb") as fh:
        return _parse_prefix(fh.read(_FIRST_READ), os.fstat(fh.fileno()).st_size, only, fh.read)


def _parse_prefix(buf: bytes, total: int, only: frozenset[int] | None,
                  read_more: Callable[[int], bytes] | None) -> Header | None:
    """_parse on the first bytes of a file of `total` bytes, reading more (`read_more`) until the header
    fits; None without a DICM preamble."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return None
    while True:
        try:
            return _parse(buf, total, only)
        except _Truncated:
            if len(buf) >= total or read_more is None:
                raise DamagedFileError("file ends inside an element") from None
            buf += read_more(max(len(buf) * 3, 8 << 20))  # big enough for huge per-frame headers


_META_CACHE: dict[str, FileMetaDataset] = {}


def _file_meta(ts: str) -> FileMetaDataset:
    """One shared (read-only by convention) file meta per transfer syntax: building one per file is slow."""
    meta = _META_CACHE.get(ts)
    if meta is None:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = UID(ts)
        _META_CACHE[ts] = meta
    return meta


def _charset(elem: Any) -> str | list[str] | None:
    """SpecificCharacterSet from its raw CS bytes as pydicom converts it (values split at backslashes,
    spaces stripped; one value as a string), without pydicom's element conversion (~0.15 ms per file);
    None for anything unusual (another VR, not ASCII), which pydicom then converts."""
    value = getattr(elem, "value", None)
    if not isinstance(value, bytes) or getattr(elem, "VR", None) not in (None, "CS"):
        return None
    try:
        values = [v.strip(" \0") for v in value.decode("ascii").split("\\")]
    except UnicodeDecodeError:
        return None
    return values[0] if len(values) == 1 else values


def _parse(buf: bytes, total: int, only: frozenset[int] | None = None) -> Header:
    ts, pos = _meta(buf)
    if ts in _FALLBACK_TS:
        raise _Unusual(f"transfer syntax {ts}")
    implicit = ts == _IMPLICIT_TS
    if not implicit and pos + 6 <= len(buf) and not buf[pos + 4:pos + 6].isalpha():
        implicit = True  # explicit VR announced, implicit written: pydicom tolerates this, so do we
    raw, perframe = _scan(buf, pos, implicit, total, only)
    ds = Dataset(raw)
    encoding: str | list[str] = "iso8859"
    if 0x00080005 in raw:
        from pydicom.charset import convert_encodings

        charset = _charset(raw[BaseTag(0x00080005)]) or ds.get("SpecificCharacterSet")
        encoding = convert_encodings(charset) if charset else "iso8859"
    ds.set_original_encoding(implicit, True, encoding)
    ds.file_meta = _file_meta(ts or _IMPLICIT_TS)
    if perframe is None:
        return Header(ds)
    start, end = perframe
    first_frame: Dataset | None = None
    first = _first_item(buf, start, end, implicit)
    if first is not None:
        seq = convert_SQ(buf[first[0]:first[1]], implicit, True, encoding if isinstance(encoding, list)
                         else [encoding], first[0])
        first_frame = seq[0] if len(seq) else None
    return Header(ds, first_frame=first_frame, frame_b_values=_frame_bvalues(buf, start, end, implicit),
                  frame_contrast=_frame_contrast(buf, start, end, implicit))


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


# --- headers parsed at ingest, handed to the next reader of the same file ---------------------------
#
# The node parses every received instance's header to index it, and its live check parses the same files
# again moments later, once their series settled (~0.75 ms per instance, a quarter of the ingest's CPU).
# The store hands each header it parsed to `remember`; the next `read_header` of that path takes it
# (once: a later read goes to the disk again) if the file still has the size it had. Bounded by count,
# and large files (enhanced multi-frame: big per-frame headers) are not kept.

_RECENT: OrderedDict[str, tuple[int, Header]] = OrderedDict()
_RECENT_LOCK = threading.Lock()
RECENT_LIMIT = 2048
RECENT_MAX_FILE = 4 << 20


def remember(path: Path, header: Header, size: int) -> None:
    """Keep `header` (parsed from the file now at `path`, of `size` bytes) for the next read of `path`."""
    if size > RECENT_MAX_FILE:
        return
    with _RECENT_LOCK:
        _RECENT[str(path)] = (size, replace(header, path=Path(path)))
        while len(_RECENT) > RECENT_LIMIT:
            _RECENT.popitem(last=False)


def _recalled(path: Path) -> Header | None:
    with _RECENT_LOCK:
        if not _RECENT:
            return None
        hit = _RECENT.pop(str(path), None)
    if hit is None:
        return None
    try:
        return hit[1] if os.stat(path).st_size == hit[0] else None
    except OSError:
        return None


def read_header(path: Path, data: bytes | None = None, only: frozenset[int] | None = None) -> Header | None:
    """Header of one file (no pixel data); None if it is not a DICOM file. Raises on a damaged DICOM file.

    `data`: the file's whole content when the caller holds it already (the store's checks read a
    small received file once for the structure walk and this parse); pydicom's fallback reads `path`.
    `only`: a caller that needs just these tags (the index in an ingest process) gets a header with
    at most those from the fast reader, ~30 us less per MR slice; never one to `remember`."""
    header: Header | None = _recalled(path) if data is None else None
    if header is not None:
        return header
    try:
        header = _fast_read(path, data, only)
    except DamagedFileError:
        raise
    except (_Unusual, _Truncated, struct.error, ValueError, IndexError):
        ds = _slow_read(path, preamble=True)
        header = as_header(ds) if ds is not None else None
    else:
        if header is None:
            ds = _slow_read(path, preamble=False)
            header = as_header(ds) if ds is not None else None
    if header is None:
        return None
    return Header(header.dataset, header.first_frame, header.frame_b_values, header.frame_contrast, Path(path))


def _walk(paths: Iterable[Path]) -> Iterable[Path]:
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, _dirs, files in os.walk(p):
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield p


def synthetic_series_key(ds: Dataset) -> str:
    """A stable key for the files of one series that lost its SeriesInstanceUID: a digest of the study,
    the series number, description, modality and SOP class (no patient data can be read back from it)."""
    parts = [_str(ds, kw) or "" for kw in ("StudyInstanceUID", "SeriesNumber", "SeriesDescription", "ProtocolName",
                                            "Modality", "SOPClassUID", "EchoNumbers")]
    return "no-series-uid:" + hashlib.sha256("\\".join(parts).encode("utf-8", "replace")).hexdigest()[:16]


def read_headers(paths: Iterable[Path]) -> tuple[dict[str, list[Header]], list[str], int]:
    """Read headers (no pixels) grouped by SeriesInstanceUID.

    Returns (series_uid -> datasets, unreadable DICOM files as messages, count of non-DICOM files skipped).
    Directories are walked. Messages name the file and the problem, never a patient attribute.

    The datasets hold the attributes of HEADER_KEYWORDS (and a few vendor private tags), not the whole
    header: re-read a file with pydicom for anything else. For enhanced files the per-frame sequence
    is kept raw (parsed only if accessed); the `Header` record also carries the first frame (parsed),
    every DiffusionBValue and every ContrastBolusAgentAdministered value of every frame, which the
    classifier uses instead.
    """
    groups: dict[str, list[Header]] = {}
    problems: list[str] = []
    skipped = 0
    for path in _walk(paths):
        try:
            header = read_header(path)
        except DamagedFileError as exc:  # our own message: names no attribute value
            problems.append(f"{path}: damaged DICOM file: {exc}")
            continue
        except Exception as exc:  # one bad file must not hide the rest of the study; the message of a
            # parser exception may quote element values, so only its type is reported
            problems.append(f"{path}: unreadable DICOM file ({type(exc).__name__})")
            continue
        if header is None:
            skipped += 1
            continue
        uid = _str(header.dataset, "SeriesInstanceUID")
        if not uid and not _str(header.dataset, "SOPInstanceUID"):  # no identity at all: not an object
            problems.append(f"{path}: DICOM file without SeriesInstanceUID or SOPInstanceUID")
            continue
        if not uid:  # one bad file must not hide its series: grouped and classified under a made-up key;
            # the classification's evidence says so (problems stay the files that were not classified)
            uid = synthetic_series_key(header.dataset)
            header = replace(header, synthetic_series_key=uid)
        groups.setdefault(uid, []).append(header)
    return groups, problems, skipped

