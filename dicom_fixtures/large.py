"""A very large Enhanced MR object written with bounded memory (for storage and network limits tests).

pydicom writes the header; the PixelData element is then appended by hand: tag, VR OW, an explicit
32-bit length and the frames in chunks, so a 1 GiB object never sits in memory.
"""

from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path

import numpy as np
from pydicom.filewriter import dcmwrite

from dicom_fixtures.classic import frames_of
from dicom_fixtures.common import StudyContext, pixels, uid
from dicom_fixtures.enhanced import build_enhanced
from dicom_fixtures.exam import TECHNIQUES, PlannedSeries

_ROWS = _COLUMNS = 512
_FRAME_BYTES = _ROWS * _COLUMNS * 2
_MAX_PIXEL_BYTES = 0xFFFFFFFE  # explicit length must fit 32 bits and not be the undefined-length marker


def write_large_multiframe(path: Path, size_bytes: int, *, study_uid: str | None = None) -> Path:
    """Write one Enhanced MR Image (3D T1, 512x512 frames) with about `size_bytes` of pixel data.

    The size is rounded up to whole frames. Returns `path`.
    """
    if size_bytes < 1:
        raise ValueError(f"size_bytes must be positive, got {size_bytes}")
    n_frames = -(-size_bytes // _FRAME_BYTES)
    if n_frames * _FRAME_BYTES > _MAX_PIXEL_BYTES:
        raise ValueError(f"size_bytes {size_bytes} too large for one PixelData element (max {_MAX_PIXEL_BYTES})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = dt.datetime(2026, 1, 15, 9, 0, 0)
    study_uid = study_uid or uid("large-multiframe", size_bytes)
    ctx = StudyContext(study_uid=study_uid, frame_of_reference_uid=uid(study_uid, "for"), patient_id="MSFLARGE",
                       patient_name="LARGE^OBJECT", study_date=start.date(), study_start=start, accession="",
                       vendor="siemens", profile="ms-brain-routine", defects=(), character_set="ISO_IR 100",
                       rows=_ROWS, columns=_COLUMNS, seed=0, bolus=None)
    t = TECHNIQUES["T1_3D"]
    p = PlannedSeries("t1_pre", t, "SAG", "BRAIN", "pre", 1.0, 0.5, 1.0, start=start + dt.timedelta(minutes=3))
    frames = frames_of(p, n_frames, _ROWS, _COLUMNS)
    series_uid = uid(study_uid, "series", 1)
    ds = build_enhanced(ctx, p, series_uid, 1, "t1_mprage_sag_large", path, frames, None)
    # A 128x128 head tiled 4x4: computing it at 512x512 would need more scratch memory than the header.
    frame = np.tile(pixels(p, _ROWS // 4, _COLUMNS // 4, 1, 0, None), (4, 4)).tobytes()
    length = n_frames * _FRAME_BYTES
    with path.open("wb") as fh:
        dcmwrite(fh, ds, enforce_file_format=True)
        del ds, frames  # the per-frame groups are the only sizeable header part
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        for _ in range(n_frames):
            fh.write(frame)
    return path
