"""The fixed value sets that cross module boundaries (database columns, JSON, SR codes, CLI output).

String enums: a member compares equal to its value, so rows and JSON written before these enums
existed read back unchanged. `Literal` aliases give the same sets to pydantic models and mypy.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

# Coding scheme designator of our private codes (SR concepts, protocol codes in the worklist),
# declared in the SR's Coding Scheme Identification Sequence. One place: the SR and the worklist
# must agree on it.
LOCAL_CODING_SCHEME = "99MSFU"
LOCAL_CODING_SCHEME_NAME = "msfollowup local codes"


class SeriesKind(str, Enum):
    T2_FLAIR = "T2_FLAIR"
    T2 = "T2"
    PD = "PD"
    T1 = "T1"
    DWI = "DWI"
    ADC = "ADC"
    TRACE = "TRACE"
    STIR = "STIR"
    SWI = "SWI"
    LOCALIZER = "LOCALIZER"
    OTHER = "OTHER"


class Verdict(str, Enum):
    COMPLIANT = "compliant"
    NON_COMPLIANT = "non-compliant"
    UNVERIFIABLE = "unverifiable"


class RequirementStatus(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    UNVERIFIABLE = "unverifiable"


class SPSStatus(str, Enum):
    """Scheduled Procedure Step Status defined terms (PS3.3 C.4.10) the node uses."""

    SCHEDULED = "SCHEDULED"
    STARTED = "STARTED"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class PPSStatus(str, Enum):
    """Performed Procedure Step Status (PS3.3 C.4.14)."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


VerdictName = Literal["compliant", "non-compliant", "unverifiable"]
StatusName = Literal["pass", "fail", "unverifiable"]
KindName = Literal["T2_FLAIR", "T2", "PD", "T1", "DWI", "ADC", "TRACE", "STIR", "SWI", "LOCALIZER", "OTHER"]
VERDICTS: tuple[str, ...] = tuple(v.value for v in Verdict)
