"""One clock for the clinic's day: `--today` on the command line, MSFOLLOWUP_TODAY for the service.

Tests set a fixed day so every due date they check is reproducible; in production neither is set and the
local date is used. The service logs the override at start so a fixed clock is never silent.
"""

from __future__ import annotations

import datetime as dt
import logging
import os

ENV = "MSFOLLOWUP_TODAY"
log = logging.getLogger(__name__)
_logged = False


class ClockError(ValueError):
    """MSFOLLOWUP_TODAY or --today is not an ISO date."""


def today(override: str | None = None) -> dt.date:
    """`override` (a --today argument) if given, else MSFOLLOWUP_TODAY, else the local date."""
    global _logged
    value = override or os.environ.get(ENV)
    if not value:
        return dt.date.today()
    try:
        day = dt.date.fromisoformat(value.strip())
    except ValueError:
        raise ClockError(f"{'--today' if override else ENV}: {value[:20]!r} is not a date (YYYY-MM-DD)") from None
    if not override and not _logged:
        log.warning("clock fixed by %s: today is %s (tests only)", ENV, day.isoformat())
        _logged = True
    return day
