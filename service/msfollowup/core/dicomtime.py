"""DICOM DA/TM/DT values <-> Python dates and times (PS3.5 6.2), in one place.

Parsers return None for an empty or malformed value: header values come from scanners, and a bad
date must be reported as "unknown", not crash a stage.
"""

from __future__ import annotations

import datetime as dt


def format_da(day: dt.date) -> str:
    """A date as DA (YYYYMMDD)."""
    return day.strftime("%Y%m%d")


def parse_da(value: str | dt.date | None) -> dt.date | None:
    """DA (YYYYMMDD, surrounding spaces allowed) -> date; a date passes through; else None."""
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def format_tm(time: dt.time) -> str:
    """A time as TM (HHMMSS, no fraction)."""
    return time.strftime("%H%M%S")


def parse_tm(value: str | None) -> dt.time | None:
    """TM (HH[MM[SS[.FFFFFF]]], also the old HH:MM:SS form) -> time; else None."""
    if not value:
        return None
    text = value.strip().replace(":", "")
    main, _, frac = text.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6) or (frac and not frac.isdigit()):
        return None
    try:
        return dt.time(
            int(main[0:2]), int(main[2:4] or 0), int(main[4:6] or 0), int((frac + "000000")[:6]) if frac else 0
        )
    except ValueError:
        return None


def iso_from_da(value: str | None) -> str | None:
    """DA as an ISO date for people (YYYY-MM-DD); anything else is returned unchanged."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value
