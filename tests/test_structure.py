"""The structure walk's own answers on files cut inside the file meta (dicom/structure.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from msfollowup.dicom import structure


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def test_a_file_cut_inside_a_long_file_meta_header_is_malformed_not_a_crash(tmp_path: Path) -> None:
    """(0002,0001) OB has a 12-byte header; a file ending 10 bytes into it is named as malformed."""
    path = tmp_path / "cut.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + _meta_element(0x0001, b"OB", b"\0\1")[:10])
    with pytest.raises(structure.Malformed, match="file meta element header cut off"):
        structure.check_file(path)


def test_a_well_formed_meta_gives_way_to_the_data_set(tmp_path: Path) -> None:
    syntax = b"1.2.840.10008.1.2.1\0"
    meta = _meta_element(0x0001, b"OB", b"\0\1") + _meta_element(0x0010, b"UI", syntax)
    body = struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"MR"
    path = tmp_path / "ok.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + meta + body)
    structure.check_file(path)
    with path.open("rb") as f:
        assert structure._file_meta_end(f.read()) == (132 + len(meta), "1.2.840.10008.1.2.1")
