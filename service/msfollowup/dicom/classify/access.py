"""Attribute access that tolerates what scanners write (empty values, DS text, UN private tags).

Every reader of a header value in the classifier goes through these: a malformed value is the same as
no value for classification, never an exception.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import struct
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from msfollowup.dicom.classify.header import Header
from msfollowup.dicom.classify.model import Orientation


def _tag_for(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:  # a typo here must fail at import, not silently drop an attribute
        raise KeyError(keyword)
    return int(tag)



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


def study_uid(ds: Dataset | Header) -> str:
    """The StudyInstanceUID of a header read by `read_header`, "" when absent or undecodable (bad VR)."""
    return _str(ds.dataset if isinstance(ds, Header) else ds, "StudyInstanceUID") or ""


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


_CREATOR_VENDORS: tuple[tuple[int, str, str], ...] = (
    (0x0019, "SIEMENS MR HEADER", "SIEMENS"), (0x0019, "GEMS_ACQU_01", "GE"), (0x0043, "GEMS_PARM_01", "GE"),
    (0x2001, "PHILIPS IMAGING DD 001", "PHILIPS"), (0x0065, "IMAGE PRIVATE HEADER", "UIH"),
)


def _vendor_from_creators(ds: Dataset) -> str:
    """The vendor named by a private block creator, for a header whose Manufacturer was removed."""
    for group, creator, vendor in _CREATOR_VENDORS:
        for elem in range(0x10, 0x100):
            found = ds._dict.get((group << 16) | elem)  # type: ignore[call-overload]
            if found is None:
                continue
            value = found.value
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if text.strip("\0 ").upper() == creator:
                return vendor
    return ""


def _group(h: Header, macro: str) -> Dataset | None:
    """A functional group macro item: shared first, then the first frame (the reader keeps only that)."""
    item = _item(_item(h.dataset, "SharedFunctionalGroupsSequence"), macro)
    if item is None:
        item = _item(h.first_frame, macro)
    return item


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
            t = _dt(day, tm)
            if t:
                return t
    # pseudonymisers may blank every study date ("***") and forget InstanceCreationDate
    return _dt(_str(ds, "InstanceCreationDate"), _str(ds, "InstanceCreationTime"))


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

