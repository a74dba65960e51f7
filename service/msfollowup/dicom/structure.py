"""The encoded structure of a received Part 10 file, checked before it is acknowledged.

pydicom reads lazily and stops before the pixel data, so an element whose length runs past the end
(PixelData claiming 2 GiB with 64 bytes sent) or a sequence of undefined length that is never closed
would be stored and acknowledged, and fail every later stage. This walks the element headers only,
skipping over values (memory-mapped, no value is decoded): a few microseconds per element, far less
than a parse. It checks that every length fits inside its container, that every undefined-length
sequence, item and encapsulated pixel data is closed by its delimiter, and that nothing trails.
Deflated transfer syntaxes are left to the parser (their bytes are a compressed stream).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_IMPLICIT_LE, _EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
_DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"})
MAX_DEPTH = 32  # nested sequences; real objects stay below 10


class Malformed(Exception):
    """What is wrong, with the tag and offset (never a value)."""


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    def __init__(self, buf: mmap.mmap | bytes, explicit: bool, little: bool) -> None:
        self.buf = buf
        self.explicit = explicit
        order = "<" if little else ">"
        # One unpack per element header (precompiled): the loop runs once per element of the object.
        self._explicit_header = struct.Struct(order + "HH2sH").unpack_from
        self._tag_length = struct.Struct(order + "HHI").unpack_from
        self._u32_at = struct.Struct(order + "I").unpack_from

    def _u32(self, pos: int) -> int:
        return int(self._u32_at(self.buf, pos)[0])

    def _tag(self, pos: int, end: int) -> int:
        if pos + 8 > end:
            raise Malformed(f"element header cut off at offset {pos}")
        group, elem, _ = self._tag_length(self.buf, pos)
        return int((group << 16) | elem)

    def dataset(self, pos: int, end: int, depth: int, closed_by_item_end: bool, implicit: bool = False) -> int:
        """Elements from `pos`: up to `end`, or (undefined-length item) up to its delimiter."""
        if depth > MAX_DEPTH:
            raise Malformed(f"sequences nested deeper than {MAX_DEPTH} at offset {pos}")
        explicit = self.explicit and not implicit
        buf, explicit_header, tag_length = self.buf, self._explicit_header, self._tag_length
        while pos < end:
            if pos + 8 > end:
                raise Malformed(f"element header cut off at offset {pos}")
            if explicit:
                group, elem, vr, length = explicit_header(buf, pos)
            else:
                group, elem, length = tag_length(buf, pos)
                vr = b""
            if group == 0xFFFE:
                tag = (group << 16) | elem
                if tag == _ITEM_END and closed_by_item_end:
                    return pos + 8
                raise Malformed(f"delimiter {_tag_text(tag)} out of place at offset {pos}")
            tag = (group << 16) | elem
            if explicit and vr in _LONG_VRS:
                if pos + 12 > end:
                    raise Malformed(f"element {_tag_text(tag)} header cut off at offset {pos}")
                length, pos = self._u32(pos + 8), pos + 12
            else:
                pos += 8
            if length == _UNDEFINED:
                # SQ, encapsulated pixel data (OB/OW) or UN holding an implicit VR little endian sequence
                pos = self.items(tag, pos, end, depth + 1, implicit=implicit or vr == b"UN")
                continue
            if pos + length > end:
                raise Malformed(f"element {_tag_text(tag)} of {length} bytes runs past the end at offset {pos}")
            if vr == b"SQ":  # (implicit VR: a defined-length value is not known to be a sequence; skipped)
                self.items(tag, pos, pos + length, depth + 1, implicit=implicit, defined=True)
            pos += length
        if closed_by_item_end:
            raise Malformed(f"item of undefined length never closed (offset {end})")
        return pos

    def items(self, tag: int, pos: int, end: int, depth: int, implicit: bool, defined: bool = False) -> int:
        """The items of a sequence (or pixel data fragments) up to `end` (defined) or the sequence delimiter."""
        if depth > MAX_DEPTH:
            raise Malformed(f"sequences nested deeper than {MAX_DEPTH} at offset {pos}")
        while pos < end:
            item = self._tag(pos, end)
            length = self._u32(pos + 4)
            if item == _SEQ_END:
                if defined:
                    raise Malformed(f"sequence delimiter in the defined-length {_tag_text(tag)} at offset {pos}")
                return pos + 8
            if item != _ITEM:
                raise Malformed(f"{_tag_text(tag)} holds {_tag_text(item)} where an item belongs, offset {pos}")
            pos += 8
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, depth, closed_by_item_end=True, implicit=implicit)
                continue
            if pos + length > end:
                raise Malformed(f"item in {_tag_text(tag)} of {length} bytes runs past the end at offset {pos}")
            if tag != 0x7FE00010:  # pixel data fragments are bytes, not data sets
                self.dataset(pos, pos + length, depth, closed_by_item_end=False, implicit=implicit)
            pos += length
        if not defined:
            raise Malformed(f"sequence {_tag_text(tag)} of undefined length never closed")
        return pos


_META_HEAD = struct.Struct("<HH2sH")  # file meta: explicit VR little endian, group, element, VR, short length
_META_LONG = struct.Struct("<I")


def _file_meta_end(buf: mmap.mmap | bytes) -> tuple[int, str]:
    """Offset of the data set after the preamble and file meta, and the transfer syntax UID."""
    size = len(buf)
    if size < 132 or buf[128:132] != b"DICM":
        raise Malformed("not a Part 10 file (no DICM prefix)")
    pos, syntax = 132, None
    head, long_length = _META_HEAD.unpack_from, _META_LONG.unpack_from  # ~4x faster than struct.unpack_from
    while pos + 8 <= size:
        group, elem, vr, length = head(buf, pos)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if pos + 12 > size:
                raise Malformed("file meta element header cut off")
            length, value = long_length(buf, pos + 8)[0], pos + 12
        else:
            value = pos + 8
        if value + length > size:
            raise Malformed("file meta element runs past the end")
        if elem == 0x0010:
            syntax = bytes(buf[value:value + length]).rstrip(b"\x00 ").decode("ascii", "replace")
        pos = value + length
    if syntax is None:
        raise Malformed("file meta without a Transfer Syntax UID")
    return pos, syntax


def check_file(path: Path) -> None:
    """Raise Malformed when the file's data set is not well-formed (see the module docstring)."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise Malformed("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            check_buffer(buf)


def check_buffer(buf: mmap.mmap | bytes) -> None:
    """check_file on the file's whole content, already in memory (or mapped)."""
    if len(buf) == 0:
        raise Malformed("empty file")
    start, syntax = _file_meta_end(buf)
    if syntax in _DEFLATED:
        return
    walker = _Walker(buf, explicit=syntax != _IMPLICIT_LE, little=syntax != _EXPLICIT_BE)
    walker.dataset(start, len(buf), 0, closed_by_item_end=False)
