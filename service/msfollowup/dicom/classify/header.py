"""The typed header record the classifier reads: one file's kept attributes plus what the fast reader
found in the per-frame functional groups of an enhanced file.

A pydicom Dataset built in memory (tests, other callers) is turned into the same record by
`as_header`, so the rules never care where a header came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset


@dataclass(frozen=True, eq=False)
class Header:
    """One file's header (no pixel data).

    dataset: the kept top-level attributes (HEADER_KEYWORDS and a few vendor private tags when read by
    `read_header`; everything when built in memory). Enhanced files: `first_frame` is the first item of
    the per-frame functional groups (parsed), `frame_b_values` every DiffusionBValue of every frame and
    `frame_contrast` every ContrastBolusAgentAdministered value of every frame.
    """

    dataset: Dataset
    first_frame: Dataset | None = None
    frame_b_values: tuple[float, ...] = ()
    frame_contrast: tuple[str, ...] = ()
    path: Path | None = None
    # Set by read_headers for a file without SeriesInstanceUID: the key its series is grouped under.
    synthetic_series_key: str | None = None

    def get(self, keyword: str, default: Any = None) -> Any:
        """A top-level attribute value, as pydicom's Dataset.get (for callers that only need one)."""
        return self.dataset.get(keyword, default)


def _frames(ds: Dataset) -> list[Dataset]:
    try:
        seq = ds.get("PerFrameFunctionalGroupsSequence")
        return list(seq) if seq else []
    except Exception:  # a malformed sequence is the same as none for classification
        return []


def _frame_value(frame: Dataset, macro: str, keyword: str) -> Any:
    try:
        seq = frame.get(macro)
        return seq[0].get(keyword) if seq else None
    except Exception:
        return None


def as_header(item: Dataset | Header) -> Header:
    """The record for a header read elsewhere (pydicom, built in memory): frames are walked in Python."""
    if isinstance(item, Header):
        return item
    frames = _frames(item)
    b_values: set[float] = set()
    flags: set[str] = set()
    for frame in frames:
        b = _frame_value(frame, "MRDiffusionSequence", "DiffusionBValue")
        try:
            if b is not None and b != "":
                b_values.add(round(float(b), 3))
        except (TypeError, ValueError):
            pass
        try:
            usages = list(frame.get("ContrastBolusUsageSequence") or ())
        except Exception:
            usages = []
        for usage in usages:
            flag = usage.get("ContrastBolusAgentAdministered")
            if flag:
                flags.add(str(flag).strip().upper())
    filename = getattr(item, "filename", None)
    return Header(dataset=item, first_frame=frames[0] if frames else None, frame_b_values=tuple(sorted(b_values)),
                  frame_contrast=tuple(sorted(flags)), path=Path(filename) if isinstance(filename, str) else None)
