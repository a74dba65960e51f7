"""PS3.4 C.2.2.2 matching of an MWL identifier against a stored one (pure: no database)."""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

# --- matching (PS3.4 C.2.2.2) -----------------------------------------------------------------

_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "DA", "TM", "DT"})
_DA_RE = re.compile(r"^\d{8}$")
_TM_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DT_RE = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_SPS_SEQ = Tag("ScheduledProcedureStepSequence")
_CHARSET = Tag("SpecificCharacterSet")


def fold_name(name: str | None) -> str | None:
    """The form PN matching compares: case-insensitive, without empty trailing components."""
    if name is None:
        return None
    return name.rstrip("^= ").casefold()


class QueryError(ValueError):
    """An identifier we cannot match against (answered with 0xA900); never holds its values."""


def _values(elem: DataElement | None) -> list[str]:
    """An element's values as strings ([] = empty)."""
    if elem is None or elem.value is None or elem.value == "":
        return []
    raw = elem.value
    items = list(raw) if isinstance(raw, (MultiValue, list, tuple)) else [raw]
    return [str(v) for v in items if v is not None and str(v) != ""]


def _is_wildcard_only(value: str) -> bool:
    return value != "" and set(value) == {"*"}


def _check_format(vr: str, value: str, keyword: str) -> None:
    pattern = {"DA": _DA_RE, "TM": _TM_RE, "DT": _DT_RE}.get(vr)
    if pattern is not None and value and not pattern.match(value):
        raise QueryError(f"{keyword}: not a valid {vr} matching value")


@dataclass(frozen=True)
class Condition:
    """One matching key of a query, parsed once (SQL filter and Python check share it)."""

    vr: str
    kind: str  # "single" | "wildcard" | "range" | "list"
    values: tuple[str, ...]  # single/wildcard/list: candidates; range: (low, high), "" = open

    def matches(self, stored: Sequence[str]) -> bool:
        return any(self._one(v) for v in stored)

    def _one(self, value: str) -> bool:
        if self.vr == "PN":
            value = fold_name(value) or ""
        if self.kind == "range":
            low, high = self.values
            v = value.replace(":", "")
            return (not low or v >= low) and (not high or v <= high)
        if self.kind == "wildcard":
            return any(wildcard(p).fullmatch(value) for p in self.values)
        return value in self.values


class _Segment:
    """A run of a wildcard pattern between two "*": literal characters and "?" (one character each).

    Fixed length, so finding it costs at most len(value) x len(segment) steps: a literal one uses
    str.find, one with "?" a regex of literals and "." without any quantifier (nothing to backtrack).
    """

    __slots__ = ("text", "rx")

    def __init__(self, text: str) -> None:
        self.text = text
        self.rx = None if "?" not in text else re.compile(
            "".join("." if c == "?" else re.escape(c) for c in text), re.DOTALL
        )

    def at(self, value: str, pos: int) -> bool:
        """The segment occupies value[pos:pos + len]."""
        if self.rx is None:
            return value.startswith(self.text, pos)
        return self.rx.match(value, pos, pos + len(self.text)) is not None

    def find(self, value: str, start: int, end: int) -> int:
        """Leftmost position >= start where the segment fits entirely before `end`, else -1."""
        if self.rx is None:
            return value.find(self.text, start, end)
        m = self.rx.search(value, start, end)
        return -1 if m is None else m.start()


class Wildcard:
    """A PS3.4 C.2.2.2.4 wildcard pattern ("*": any run, "?": one character), matched in one pass.

    A regex of ".*" pieces backtracks exponentially on "************#" (50 s holding the GIL, the node
    stopped answering anything). Here the pattern is split at "*" into fixed-length segments: the
    first must sit at the start, the last at the end, and each one between is taken at its leftmost
    place after the previous one - leftmost is never worse for the segments after it, so one forward
    pass decides, and the cost is bounded by len(value) x len(pattern) whatever the pattern.
    """

    __slots__ = ("head", "middle", "tail", "star")

    def __init__(self, pattern: str) -> None:
        parts = pattern.split("*")
        self.star = len(parts) > 1
        self.head = _Segment(parts[0])
        self.tail = _Segment(parts[-1]) if self.star else None
        self.middle = tuple(_Segment(p) for p in parts[1:-1] if p)

    def fullmatch(self, value: str) -> bool:
        head, tail = self.head, self.tail
        if tail is None:  # no "*": the value is exactly one segment long
            return len(value) == len(head.text) and head.at(value, 0)
        end = len(value) - len(tail.text)  # where the last segment must begin
        pos = len(head.text)
        if end < pos or not head.at(value, 0) or not tail.at(value, end):
            return False
        for seg in self.middle:
            found = seg.find(value, pos, end)
            if found < 0:
                return False
            pos = found + len(seg.text)
        return True


@functools.lru_cache(maxsize=4096)
def wildcard(pattern: str) -> Wildcard:
    """The compiled matcher of a pattern (a query applies its few patterns to many records)."""
    return Wildcard(pattern)


def _pad_high(vr: str, value: str) -> str:
    """Upper range bound as the largest value it stands for ("12" -> any time in hour 12)."""
    if vr == "TM":
        return value + "999999.999999"[len(value) :] if len(value) < 13 else value
    if vr == "DT":
        return value + "99999999999999.999999"[len(value) :] if len(value) < 21 else value
    return value


def parse_condition(elem: DataElement) -> Condition | None:
    """The matching condition of a query element; None for universal matching (return key only)."""
    vr, keyword = str(elem.VR), elem.keyword or str(elem.tag)
    values = _values(elem)
    if vr == "PN":
        values = [fold_name(v) or "" for v in values]
    if not values or any(_is_wildcard_only(v) for v in values):
        return None
    if vr == "UI":
        return Condition(vr, "list", tuple(values))
    if vr in _RANGE_VRS and len(values) == 1 and "-" in values[0]:
        low, _, high = values[0].replace(":", "").partition("-")
        if vr == "DT" and (low.startswith("-") or high.startswith("-")):
            raise QueryError(f"{keyword}: ambiguous date-time range")
        _check_format(vr, low, keyword)
        _check_format(vr, high, keyword)
        if not low and not high:
            return None
        return Condition(vr, "range", (low, _pad_high(vr, high)))
    if vr in _RANGE_VRS:
        for v in values:
            _check_format(vr, v.replace(":", ""), keyword)
        if vr == "DA":
            return Condition(vr, "single", tuple(values))
        # a single TM/DT value matches the moment it names at its own precision
        return Condition(vr, "range", (values[0].replace(":", ""), _pad_high(vr, values[0].replace(":", ""))))
    if vr in _WILDCARD_VRS and any("*" in v or "?" in v for v in values):
        return Condition(vr, "wildcard", tuple(values))
    if vr == "SQ":
        raise QueryError(f"{keyword}: unexpected value")
    return Condition(vr, "single", tuple(values))




@dataclass
class Projection:
    dataset: Dataset
    unsupported: bool  # a matching key we do not hold was ignored


@dataclass(frozen=True)
class _Key:
    """One key of a compiled query: a condition (None = return key only) or a sequence sub-query."""

    tag: BaseTag
    vr: str
    cond: Condition | None = None
    sub: CompiledQuery | None = None  # SQ with one non-empty item
    sub_has_keys: bool = False


@dataclass(frozen=True)
class CompiledQuery:
    """An MWL identifier parsed once per C-FIND, applied to every candidate record."""

    keys: tuple[_Key, ...]
    charset: tuple[str, ...] = ()  # the query's SpecificCharacterSet; () when it sent none
    asks_charset: bool = False  # SpecificCharacterSet present (possibly empty): return it

    def apply(self, record: Dataset) -> Projection | None:
        """PS3.4 C.2.2.2 matching of `record`; the requested keys of a match, else None."""
        out = Dataset()
        unsupported = False
        for key in self.keys:
            relem = record.get(key.tag)
            if key.vr == "SQ":
                result = self._sequence(key, relem)
                if result is None:
                    return None
                out[key.tag], flag = result
                unsupported |= flag
                continue
            if key.cond is not None:
                if relem is None:
                    unsupported = True  # an optional key we do not hold: ignored, PS3.4 C.4.1.1.3.2
                elif not key.cond.matches(_values(relem)):
                    return None
            out.add(relem if relem is not None else DataElement(key.tag, key.vr, None))
        return Projection(out, unsupported)

    @staticmethod
    def _sequence(key: _Key, relem: DataElement | None) -> tuple[DataElement, bool] | None:
        stored = list(relem.value) if relem is not None and relem.VR == "SQ" and relem.value else []
        if key.sub is None:  # universal: the whole stored sequence
            return DataElement(key.tag, "SQ", DicomSequence(stored)), False
        matched, unsupported = [], False
        for ritem in stored:
            projected = key.sub.apply(ritem)
            if projected is not None:
                matched.append(projected.dataset)
                unsupported |= projected.unsupported
        if not matched:
            if stored or (relem is not None and key.sub_has_keys):
                return None
            unsupported = relem is None and key.sub_has_keys
        return DataElement(key.tag, "SQ", DicomSequence(matched)), unsupported


def _check_vr(elem: DataElement) -> None:
    """A key in a VR its tag does not have (a sequence for a name, text for a date) cannot be matched."""
    if elem.tag.is_private or elem.VR == "UN":
        return
    try:
        allowed = {vr.strip() for vr in dictionary_VR(elem.tag).split(" or ")}
    except KeyError:
        return
    if elem.VR not in allowed:
        raise QueryError(f"{elem.keyword or elem.tag}: VR {elem.VR}, the dictionary says {'/'.join(sorted(allowed))}")


def check_lengths(data: bytes, transfer_syntax: str) -> None:
    """pydicom silently shortens a value whose declared length runs past the end of the identifier;
    such an identifier was cut off or lies about its lengths: refuse it (top-level elements; a cut
    inside an undefined-length sequence makes the sequence itself unreadable)."""
    ts = UID(transfer_syntax)
    if ts.is_deflated:
        return
    for raw in data_element_generator(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian):
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF and len(raw.value or b"") < raw.length:
            raise QueryError(f"{Tag(raw.tag)}: value length runs past the end of the identifier")


def compile_query(query: Dataset) -> CompiledQuery:
    """Parse every matching key once; raises QueryError for what cannot be matched."""
    keys = []
    for qelem in query:
        tag = qelem.tag
        if tag.group in (0x0000, 0x0002):
            continue
        _check_vr(qelem)
        if tag == _CHARSET:
            continue
        if qelem.VR != "SQ":
            keys.append(_Key(tag, str(qelem.VR), cond=parse_condition(qelem)))
            continue
        items = list(qelem.value or [])
        if len(items) > 1:
            raise QueryError(f"{qelem.keyword}: a query sequence holds at most one item")
        if not items or len(items[0]) == 0:
            keys.append(_Key(tag, "SQ"))
            continue
        sub = compile_query(items[0])
        has_keys = any(k.cond is not None for k in sub.keys)
        keys.append(_Key(tag, "SQ", sub=sub, sub_has_keys=has_keys))
    charset = tuple(_values(query.get(_CHARSET)))
    unknown = [term for term in charset if term.strip() and term.strip() not in python_encoding]
    if unknown:
        raise QueryError(f"SpecificCharacterSet: unknown term {unknown[0][:16]!r}")
    return CompiledQuery(tuple(keys), charset, _CHARSET in query)


def _texts(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _texts(item)
        elif elem.VR in _TEXT_VRS:
            yield from _values(elem)


def _encodable(texts: list[str], term: str) -> bool:
    codec = python_encoding.get(term)
    if codec is None:
        return False
    try:
        for text in texts:
            text.encode(codecs.lookup(codec).name)
    except UnicodeEncodeError:
        return False
    return True


def response_charset(query_cs: list[str], record_cs: str | None, ds: Dataset) -> list[str] | None:
    """The character set to answer in: the query's if it can carry the values, else the record's."""
    texts = list(_texts(ds))
    if all(t.isascii() for t in texts):
        return query_cs or None
    if len(query_cs) == 1 and _encodable(texts, query_cs[0]):
        return query_cs
    if record_cs:
        terms = record_cs.split("\\")
        if len(terms) > 1 or _encodable(texts, terms[0]):
            return terms
    return ["ISO_IR 192"]


