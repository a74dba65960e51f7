"""DIMSE messages without pydicom on the hot path: the chunked-receive hook and its spool file,
the file meta and C-STORE-RSP encoded directly, the C-STORE-RQ command set decoded with struct, and
the accessors for what pynetdicom keeps in private names.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA



log = logging.getLogger(__name__)


# --- receive side: chunked data sets and their spool file ----------------------------------------


def stream_datasets_to(factory: Callable[..., Any]) -> None:
    """Received data sets are streamed to files made by `factory` instead of memory.

    pynetdicom only offers this as process-wide switches (a config flag and a module global). The file
    meta in front of each spooled data set is encoded here with struct instead of through a pydicom
    FileMetaDataset and write_file_meta_info (~0.5 ms of CPU per instance; docs/pynetdicom-notes.md),
    and a C-STORE-RQ command set is decoded without pydicom (`decode_store_rq`)."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = factory  # type: ignore[assignment]
    dimse_messages.create_file_meta = _file_meta_values  # type: ignore[assignment]
    dimse_messages.write_file_meta_info = _write_file_meta  # type: ignore[assignment]
    DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]
    DIMSEMessage.decode_msg = _decode_msg  # type: ignore[method-assign]
    # pynetdicom binds its "standard" logging handlers to every association: each PDU and DIMSE message
    # goes through them (summaries built) although service.py keeps its logger at WARNING. Off.
    _config.LOG_HANDLER_LEVEL = "none"


# --- a paused reactor takes no message ------------------------------------------------------------


_original_get_msg = DIMSEServiceProvider.get_msg


def keep_replies_for_their_caller() -> None:
    """A reply a send_*() call waits for is never taken by the association's reactor (process-wide,
    idempotent; docs/pynetdicom-notes.md item 12).

    pynetdicom's send_c_store (and every other send_*) pauses the reactor before sending: it clears
    `_reactor_checkpoint`, waits until `_is_paused`, sends and blocks in `get_msg(block=True)`. The
    reactor sets `_is_paused` *before* it waits at the checkpoint and clears it only after, so a
    sender that looks in between goes ahead while the reactor, already past the checkpoint, is about
    to call `get_msg(block=False)`. When the peer answers within that moment (msfollowup's own node
    answers a C-STORE in well under a millisecond) the reactor takes the reply, logs "Received
    unexpected C-STORE service message", and the caller gets no response: a report delivery counted
    as failed, a test's sender not served. The reactor is the only caller of the non-blocking
    get_msg: it now finds nothing while the checkpoint is cleared, and the reply stays for the caller."""
    DIMSEServiceProvider.get_msg = _get_msg  # type: ignore[method-assign]


def _get_msg(self: DIMSEServiceProvider, block: bool = False) -> Any:
    if not block and not self.assoc._reactor_checkpoint.is_set():
        return None, None  # a send_*() paused the reactor: what arrives now is that caller's reply
    return _original_get_msg(self, block)


# --- the per-instance encodings, without pydicom datasets ------------------------------------------


def _ui(value: object) -> bytes:
    """A UI value as sent (peers' UIDs pass unchanged), padded with NUL to an even length."""
    raw = str(value).encode("latin-1", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _explicit(elem: int, vr: bytes, value: bytes) -> bytes:
    """A group 0002 element, explicit VR little endian (OB has the long header)."""
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


_IMPLEMENTATION = (_explicit(0x0012, b"UI", _ui(PYNETDICOM_IMPLEMENTATION_UID))
                   + _explicit(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode().ljust(
                       len(PYNETDICOM_IMPLEMENTATION_VERSION) + len(PYNETDICOM_IMPLEMENTATION_VERSION) % 2)))


def _file_meta_values(*, sop_class_uid: Any, sop_instance_uid: Any, transfer_syntax: Any) -> tuple[Any, Any, Any]:
    return sop_class_uid, sop_instance_uid, transfer_syntax


def _file_meta_bytes(values: tuple[Any, Any, Any]) -> bytes:
    """The same bytes pydicom's write_file_meta_info writes for pynetdicom's create_file_meta."""
    sop_class, sop_instance, syntax = values
    body = (_explicit(0x0001, b"OB", b"\x00\x01") + _explicit(0x0002, b"UI", _ui(sop_class))
            + _explicit(0x0003, b"UI", _ui(sop_instance)) + _explicit(0x0010, b"UI", _ui(syntax)) + _IMPLEMENTATION)
    return _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body


def _write_file_meta(fp: Any, values: tuple[Any, Any, Any]) -> None:
    fp.write(_file_meta_bytes(values))


def _implicit(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


def _us(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set, implicit VR little endian: the group length, then `elements` (tag order)."""
    body = b"".join(_implicit(tag, value) for tag, value in elements)
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


_original_send_msg = DIMSEServiceProvider.send_msg
_MIN_PDU_FOR_FAST_RSP = 1024
_C_STORE_RSP = 0x8001


def store_rsp(sop_class: str, message_id: int, status: int, sop_instance: str, comment: str | None = None) -> bytes:
    """A C-STORE-RSP command set in tag order as pynetdicom encodes it (Error Comment when given)."""
    elements = [(0x0002, _ui(sop_class))] if sop_class else []
    elements += [(0x0100, _us(_C_STORE_RSP)), (0x0120, _us(message_id)), (0x0800, _us(_NO_DATA_SET)),
                 (0x0900, _us(status))]
    if comment:
        raw = comment[:64].encode("latin-1", "replace")  # LO: at most 64 characters
        elements.append((0x0902, raw + b" " if len(raw) % 2 else raw))
    if sop_instance:
        elements.append((0x1000, _ui(sop_instance)))
    return command_set(elements)


def _store_rsp(rsp: C_STORE) -> bytes | None:
    """The command set of a plain C-STORE-RSP primitive (status, no comment or offending element); None
    for anything else (pynetdicom encodes that)."""
    if rsp.ErrorComment is not None or rsp.OffendingElement is not None or rsp.Status is None:
        return None
    return store_rsp(str(rsp.AffectedSOPClassUID or ""), int(cast(int, rsp.MessageIDBeingRespondedTo)),
                     int(rsp.Status), str(rsp.AffectedSOPInstanceUID or ""))


def _send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """pynetdicom's send_msg, with a C-STORE-RSP encoded directly: it builds two pydicom datasets and
    encodes the command set twice (group length), ~0.7 ms of CPU per instance. Falls back whenever
    something could observe or change the message (EVT_DIMSE_SENT handlers, a tiny peer PDU)."""
    if (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
            and (self.maximum_pdu_size == 0 or self.maximum_pdu_size >= _MIN_PDU_FOR_FAST_RSP)):
        command = _store_rsp(primitive)
        if command is not None:
            pdata = P_DATA()
            # a list, as the setter checks at run time (its annotation says tuple)
            pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
            self.dul.send_pdu(pdata)
            return
    _original_send_msg(self, primitive, context_id)


# --- C-STORE-RQ command set without pydicom --------------------------------------------------------
#
# pynetdicom decodes every received command set through pydicom (`decode` -> Dataset), picks the message
# class from it, and `message_to_primitive` walks the Dataset's elements (keyword look-ups, lazy value
# conversion) to set the primitive's attributes: ~1 ms of CPU per received instance. A C-STORE-RQ
# command set is implicit VR little endian group 0000 with a handful of fixed elements, decoded here
# with struct into the same (keyword, value) pairs in the same (tag) order; the primitive is then
# filled through its own setters exactly as pynetdicom does. Anything unusual (another command, an
# unknown or repeated tag, tags out of order, an odd or empty value, a multi-valued one, no data set,
# a mandatory element missing) goes through pynetdicom's own code unchanged.

_US, _UL, _UI, _AE = range(4)
_STORE_RQ_ELEMENTS: dict[int, tuple[str, int]] = {
    0x0000: ("CommandGroupLength", _UL),
    0x0002: ("AffectedSOPClassUID", _UI),
    0x0100: ("CommandField", _US),
    0x0110: ("MessageID", _US),
    0x0700: ("Priority", _US),
    0x0800: ("CommandDataSetType", _US),
    0x1000: ("AffectedSOPInstanceUID", _UI),
    0x1030: ("MoveOriginatorApplicationEntityTitle", _AE),
    0x1031: ("MoveOriginatorMessageID", _US),
}
_STORE_RQ_REQUIRED = frozenset(("CommandField", "MessageID", "Priority", "CommandDataSetType",
                                "AffectedSOPClassUID", "AffectedSOPInstanceUID"))
_ELEMENT_HEADER = struct.Struct("<HHI")
_NO_DATA_SET = 0x0101


def decode_store_rq(command: bytes, uid: Callable[[str], Any] = UID) -> list[tuple[str, Any]] | None:
    """The elements of a C-STORE-RQ command set as pydicom's decode would give them, in tag order
    ((keyword, value): UI as pydicom UID without trailing NUL/space, AE stripped, US/UL as int);
    None when the bytes are anything else or anything unusual (pynetdicom then decodes them).
    `uid`: what a UI value becomes; the lean loop takes `str` (a pydicom UID validates its value,
    ~7% of an ingest process's interpreter time for the two UIDs of every request)."""
    out: list[tuple[str, Any]] = []
    offset, end, last = 0, len(command), -1
    while offset < end:
        if end - offset < 8:
            return None
        group, elem, length = _ELEMENT_HEADER.unpack_from(command, offset)
        offset += 8
        spec = _STORE_RQ_ELEMENTS.get(elem)
        if group != 0 or spec is None or elem <= last or length == 0 or length % 2 or offset + length > end:
            return None
        last = elem
        keyword, vr = spec
        raw = command[offset:offset + length]
        offset += length
        value: Any
        if vr == _US:
            if length != 2:
                return None
            value = raw[0] | raw[1] << 8
        elif vr == _UL:
            if length != 4:
                return None
            value = int.from_bytes(raw, "little")
        else:
            text = raw.decode("latin-1")  # pydicom's default_encoding for UI/AE
            if "\\" in text:
                return None
            value = uid(text.rstrip("\0 ")) if vr == _UI else text.strip()
            if not value:
                return None
        out.append((keyword, value))
    fields = dict(out)
    if (fields.get("CommandField") != 0x0001 or fields.get("CommandDataSetType") == _NO_DATA_SET
            or not _STORE_RQ_REQUIRED.issubset(fields)):
        return None
    return out


class FastStoreRQ(dimse_messages.C_STORE_RQ):
    """A C-STORE-RQ message whose command set was decoded by `decode_store_rq`. Its `command_set`
    Dataset is decoded through pydicom only if something asks for it (an EVT_DIMSE_RECV handler)."""

    _fields: list[tuple[str, Any]]
    _command_bytes: bytes
    _decoded: Dataset | None

    @property  # type: ignore[override]
    def command_set(self) -> Dataset:
        if self._decoded is None:
            self._decoded = dimse_messages.decode(BytesIO(self._command_bytes), True, True)
        return self._decoded

    @command_set.setter
    def command_set(self, value: Dataset) -> None:
        self._decoded = value

    def message_to_primitive(self) -> Any:
        """pynetdicom's message_to_primitive for a C-STORE-RQ, from the decoded pairs."""
        primitive = C_STORE()
        for keyword, value in self._fields:
            if hasattr(primitive, keyword):
                setattr(primitive, keyword, value)
        primitive.DataSet = self.data_set
        primitive._context_id = self.context_id
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        return primitive


def open_spool(sop_class: Any, sop_instance: Any, transfer_syntax: Any) -> Any:
    """A spool file for one received data set, as pynetdicom's decode_msg makes it: preamble and file
    meta first (through the module globals, so stream_datasets_to's replacements apply)."""
    spool: Any = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    if dimse_messages.write_file_meta_info is _write_file_meta:  # ours: one write instead of three
        spool.write(_PREAMBLE + _file_meta_bytes((sop_class, sop_instance, transfer_syntax)))
        return spool
    spool.write(_PREAMBLE)
    dimse_messages.write_file_meta_info(spool, dimse_messages.create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=transfer_syntax))
    return spool


_PREAMBLE = b"\x00" * 128 + b"DICM"


def _open_spool(msg: Any, assoc: Any, context_id: int, sop_class: Any, sop_instance: Any) -> None:
    """The spool file of a streamed data set on pynetdicom's message, as its decode_msg sets it."""
    msg._data_set_file = open_spool(sop_class, sop_instance, assoc._accepted_cx[context_id].transfer_syntax[0])
    msg._data_set_path = Path(msg._data_set_file.name)


_original_decode_msg = DIMSEMessage.decode_msg


def _decode_msg(self: Any, primitive: P_DATA, assoc: Any = None) -> bool:
    """pynetdicom's DIMSEMessage.decode_msg with the C-STORE-RQ fast path (`decode_store_rq`)."""
    if primitive.__class__ != P_DATA or primitive is None:
        return False
    for context_id, data in primitive.presentation_data_value_list:
        control = data[0]
        if control & 1:  # command set fragment
            self.encoded_command_set.write(data[1:])
            if not control & 2:
                continue
            self.context_id = context_id
            chunked = _config.STORE_RECV_CHUNKED_DATASET
            fields = None
            if chunked and type(self) is dimse_messages.DIMSEMessage:
                command = self.encoded_command_set.getvalue()
                fields = decode_store_rq(command)
            if fields is not None:
                self.__dict__.pop("command_set", None)
                self.__class__ = FastStoreRQ
                self._fields, self._command_bytes, self._decoded = fields, command, None
                values = dict(fields)
                _open_spool(self, assoc, context_id, values["AffectedSOPClassUID"], values["AffectedSOPInstanceUID"])
                continue
            self.command_set = dimse_messages.decode(self.encoded_command_set, True, True)
            self.__class__ = dimse_messages._MESSAGE_TYPES[cast(int, self.command_set.CommandField)][1]
            if self.command_set.CommandDataSetType == _NO_DATA_SET:
                return True
            if chunked and isinstance(self, dimse_messages.C_STORE_RQ):
                cs = self.command_set
                _open_spool(self, assoc, context_id, cs.AffectedSOPClassUID, cs.AffectedSOPInstanceUID)
        else:  # data set fragment
            if self._data_set_file:
                self._data_set_file.write(data[1:])
                self._data_set_file.file.flush()
            else:
                cast(BytesIO, self.data_set).write(data[1:])
            if control & 2:
                return True
    return False


def dataset_path(request: Any) -> str | None:
    """Where a C-STORE request's data set was streamed to (None: the request had none)."""
    path = getattr(request, "_dataset_path", None)
    return None if path is None else str(path)


def dataset_spool(request: Any) -> Any:
    """The spool file object a C-STORE request's data set was written through."""
    return getattr(request, "_dataset_file", None)


def partial_spool(assoc: Association) -> Any:
    """The spool file of a data set still arriving when the association ended."""
    return getattr(getattr(assoc.dimse, "message", None), "_data_set_file", None)


def raw_socket(assoc: Association) -> socket.socket | None:
    transport = getattr(assoc.dul, "socket", None)
    return getattr(transport, "socket", None)


def reject(assoc: Association, result: int, source: int, diagnostic: int) -> None:
    """Answer an A-ASSOCIATE-RQ with A-ASSOCIATE-RJ from an EVT_REQUESTED handler and end it."""
    assoc.acse.send_reject(result, source, diagnostic)
    assoc.is_rejected = True
    assoc.kill()


