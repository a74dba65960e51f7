"""DIMSE handlers: MWL C-FIND and MPPS N-CREATE/N-SET; thin: decode, hand over, map errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)

from msfollowup.site.config import Config
from msfollowup.db import Database
from msfollowup.app.worklist.find import find
from msfollowup.followup.matching import QueryError, check_lengths, compile_query
from msfollowup.db.worklist import (
    ERROR_ID_NO_LONGER_UPDATABLE,
    PPS_COMPLETED,
    PPS_DISCONTINUED,
    PPS_IN_PROGRESS,
    ST_CANCEL,
    ST_DUPLICATE_INSTANCE,
    ST_IDENTIFIER_MISMATCH,
    ST_INVALID_ATTRIBUTE_VALUE,
    ST_MISSING_ATTRIBUTE,
    ST_NO_SUCH_INSTANCE,
    ST_PENDING,
    ST_PENDING_WARNING,
    ST_PROCESSING_FAILURE,
    ST_SOP_CLASS_NOT_SUPPORTED,
    ST_SUCCESS,
    ST_UNABLE_TO_PROCESS,
    PerformedStep,
)
from msfollowup.app.worklist.mpps import create_mpps, set_mpps

log = logging.getLogger(__name__)


def _status(code: int, comment: str | None = None, error_id: int | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    if error_id is not None:
        ds.ErrorID = error_id
    return ds


class WorklistSCP:
    """C-FIND (MWL) and MPPS N-CREATE/N-SET on one database; thin: decode, hand over, map errors."""

    def __init__(self, db: Database, cfg: Config) -> None:
        self.db = db
        self.cfg = cfg

    # C-FIND -----------------------------------------------------------------------------------

    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        if event.context.abstract_syntax != ModalityWorklistInformationFind:
            yield _status(ST_SOP_CLASS_NOT_SUPPORTED, "only Modality Worklist FIND is served"), None
            return
        raw = event.request.Identifier.getvalue() if event.request.Identifier is not None else b""  # type: ignore[union-attr]
        if not raw:  # Command Data Set Type 0x0101: pynetdicom hands over an empty data set
            yield _status(ST_IDENTIFIER_MISMATCH, "C-FIND request without an identifier"), None
            return
        try:
            check_lengths(raw, event.context.transfer_syntax)
            query = compile_query(event.identifier)  # decodes and checks every key
        except QueryError as exc:
            yield _status(ST_IDENTIFIER_MISMATCH, str(exc)), None
            return
        except Exception as exc:  # bytes pydicom cannot decode: a failure status, never a crash
            log.warning("worklist C-FIND: undecodable identifier: %s", type(exc).__name__)
            yield _status(ST_UNABLE_TO_PROCESS, f"cannot decode identifier: {type(exc).__name__}"), None
            return
        with self.db.session() as session:  # a database failure is pynetdicom's 0xC311, logged there
            matches = list(find(session, query))
        for match in matches:
            if event.is_cancelled:
                yield ST_CANCEL, None
                return
            yield (ST_PENDING_WARNING if match.unsupported else ST_PENDING), match.dataset
        yield ST_SUCCESS, None

    # MPPS -------------------------------------------------------------------------------------

    def on_n_create(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        req = cast(N_CREATE, event.request)
        if req.AffectedSOPClassUID != ModalityPerformedProcedureStep:
            return _status(0x0118, "no such SOP class"), None
        try:
            attrs = event.attribute_list
        except Exception as exc:
            return _status(ST_PROCESSING_FAILURE, f"cannot decode attribute list: {type(exc).__name__}"), None
        if "PerformedProcedureStepStatus" not in attrs:
            return _status(ST_MISSING_ATTRIBUTE, "Performed Procedure Step Status missing"), None
        status = str(attrs.PerformedProcedureStepStatus or "")
        if status != PPS_IN_PROGRESS:  # PS3.4 F.7.2.1.3
            return _status(ST_INVALID_ATTRIBUTE_VALUE, "Performed Procedure Step Status must be IN PROGRESS"), None
        uid = str(req.AffectedSOPInstanceUID or generate_uid())
        with self.db.session() as session:
            if session.get(PerformedStep, uid) is not None:
                return _status(ST_DUPLICATE_INSTANCE, "duplicate SOP instance"), None
            create_mpps(session, uid, attrs, calling_ae=event.assoc.requestor.ae_title)
        reply = Dataset()
        if req.AffectedSOPInstanceUID is None:
            reply.AffectedSOPInstanceUID = uid  # pynetdicom moves it into the response command
        return ST_SUCCESS, reply

    def on_n_set(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        req = cast(N_SET, event.request)
        if req.RequestedSOPClassUID != ModalityPerformedProcedureStep:
            return _status(0x0118, "no such SOP class"), None
        try:
            mods = event.modification_list
        except Exception as exc:
            return _status(ST_PROCESSING_FAILURE, f"cannot decode modification list: {type(exc).__name__}"), None
        new_status = str(mods.get("PerformedProcedureStepStatus", "") or "") or None
        if new_status is not None and new_status not in (PPS_IN_PROGRESS, PPS_COMPLETED, PPS_DISCONTINUED):
            return _status(ST_INVALID_ATTRIBUTE_VALUE, "invalid Performed Procedure Step Status"), None
        uid = str(req.RequestedSOPInstanceUID)
        with self.db.session() as session:
            pps = session.get(PerformedStep, uid)
            if pps is None:
                return _status(ST_NO_SUCH_INSTANCE, "no such MPPS instance"), None
            if pps.status != PPS_IN_PROGRESS:  # PS3.4 Table F.7.2-2
                return (
                    _status(
                        ST_PROCESSING_FAILURE,
                        "Performed Procedure Step Object may no longer be updated",
                        ERROR_ID_NO_LONGER_UPDATABLE,
                    ),
                    None,
                )
            set_mpps(session, pps, mods)
        return ST_SUCCESS, None



def event_handlers(db: Database, cfg: Config) -> list[EventHandlerType]:
    """pynetdicom handlers for MWL C-FIND and MPPS; add SUPPORTED_CONTEXTS to the AE as well."""
    scp = WorklistSCP(db, cfg)
    return [
        (evt.EVT_C_FIND, scp.on_find),
        (evt.EVT_N_CREATE, scp.on_n_create),
        (evt.EVT_N_SET, scp.on_n_set),
    ]

