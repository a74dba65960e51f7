"""Date arithmetic of the monitoring rules (calendar months, with average-month days for fractions)."""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Literal

DAYS_PER_MONTH = 365.25 / 12
Unit = Literal["months", "days"]


def add_months(d: dt.date, months: float) -> dt.date:
    """Calendar months for the whole part (31 Jan + 1 -> 28/29 Feb), average-month days for the rest."""
    whole = int(months)
    month0 = d.month - 1 + whole
    year, month = d.year + month0 // 12, month0 % 12 + 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return dt.date(year, month, day) + dt.timedelta(days=round((months - whole) * DAYS_PER_MONTH))


def add_offset(d: dt.date, value: float, unit: Unit) -> dt.date:
    return add_months(d, value) if unit == "months" else d + dt.timedelta(days=round(value))


def months_between(start: dt.date | None, at: dt.date) -> float | None:
    """Elapsed months, or None when the start is unknown or still in the future (never matches)."""
    if start is None or at < start:
        return None
    return (at - start).days / DAYS_PER_MONTH
