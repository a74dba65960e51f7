"""DIMSE status codes the node answers with or interprets, named once.

Values and categories come from pynetdicom's status tables (PS3.7 Annex C, PS3.4), so a code is
never re-typed from the standard by hand: the names below are looked up in those tables at import
time and a typo fails loudly.
"""

from __future__ import annotations

from pynetdicom import status as _pn

_GENERAL = _pn.GENERAL_STATUS
_STORAGE = _pn.STORAGE_SERVICE_CLASS_STATUS
_MWL = _pn.MODALITY_WORKLIST_SERVICE_CLASS_STATUS


def _code(table: dict[int, tuple[str, str]], code: int, meaning: str) -> int:
    """`code`, checked against pynetdicom's table (category/description) so no value is invented."""
    entry = table.get(code)
    if entry is None or meaning.lower() not in entry[1].lower():
        raise AssertionError(f"0x{code:04X} is not {meaning!r} in pynetdicom's status table")
    return code


SUCCESS = int(_pn.Status.SUCCESS)
PENDING = int(_pn.Status.PENDING)
CANCEL = int(_pn.Status.CANCEL)
PENDING_WARNING = _code(_MWL, 0xFF01, "Matches are continuing")  # optional keys not supported

# C-STORE (PS3.4 B.2.3)
OUT_OF_RESOURCES = _code(_STORAGE, 0xA700, "Out of Resources")
DATASET_MISMATCH = _code(_STORAGE, 0xA900, "Data Set Does Not Match SOP Class")
CANNOT_UNDERSTAND = _code(_STORAGE, 0xC000, "Cannot Understand")
ELEMENTS_DISCARDED = _code(_STORAGE, 0xB006, "Element Discarded")

# C-FIND worklist (PS3.4 K.4.1.1.4): 0xA900 is "Identifier does not match SOP Class" there.
IDENTIFIER_MISMATCH = _code(_MWL, 0xA900, "Identifier Does Not Match SOP Class")
UNABLE_TO_PROCESS = _code(_MWL, 0xC000, "Unable to Process")

# General statuses (PS3.7 C), used by N-CREATE/N-SET of MPPS.
INVALID_ATTRIBUTE_VALUE = _code(_GENERAL, 0x0106, "Invalid Attribute Value")
ATTRIBUTE_LIST_ERROR = _code(_GENERAL, 0x0107, "Attribute List Error")
PROCESSING_FAILURE = _code(_GENERAL, 0x0110, "Processing Failure")
DUPLICATE_INSTANCE = _code(_GENERAL, 0x0111, "Duplication SOP Instance")
NO_SUCH_INSTANCE = _code(_GENERAL, 0x0112, "No Such SOP Instance")
ATTRIBUTE_OUT_OF_RANGE = _code(_GENERAL, 0x0116, "Attribute Value Out of Range")
MISSING_ATTRIBUTE = _code(_GENERAL, 0x0120, "Missing Attribute")
SOP_CLASS_NOT_SUPPORTED = _code(_GENERAL, 0x0122, "SOP Class Not Supported")

# MPPS N-SET Error ID (PS3.4 Table F.7.2-2): an Error ID, not a status, so no pynetdicom table has it.
ERROR_ID_NO_LONGER_UPDATABLE = 0xA710


def category(code: int) -> str:
    """'Success', 'Warning', 'Failure', 'Cancel', 'Pending' or 'Unknown' (pynetdicom's reading)."""
    return str(_pn.code_to_category(code))


def is_stored(code: int) -> bool:
    """A C-STORE answer meaning the peer kept the object: Success, or any Warning (0xB000-0xBFFF and
    the general warnings 0x0001, 0x0107, 0x0116): coercion or discarded elements still store it."""
    return code == SUCCESS or category(code) == _pn.STATUS_WARNING
