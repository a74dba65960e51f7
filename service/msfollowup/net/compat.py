"""Every use of pynetdicom internals, in one place (pyproject pins the pynetdicom versions they fit).

pynetdicom trusts its peer: it counts a connection against `maximum_associations` from the TCP accept
on, waits without a deadline for a PDU that was started, and allocates whatever PDU length the peer
announces before any access control. A port scan, a health check or one slow peer could lock every
sender out, and 4 bytes could make it allocate 4 GiB. The server here closes those holes:

* the A-ASSOCIATE-RQ is read by us before pynetdicom sees the connection, within an ARTIM-style
  deadline and a length bound (a real request is a few KiB); a connection that does not deliver one
  never becomes an association, so it holds no slot and no pynetdicom threads;
* connections still in that phase (TLS handshake included) are capped per peer host and in total;
* after that every PDU, once its first byte arrived, must be complete within a deadline, and a
  P-DATA PDU may not exceed the negotiated maximum (other PDUs: the association bound). A violation
  is logged (host and numbers, no data) and the association aborted before the body is read;
* at shutdown every connection can be cut, whatever state its peer left it in.

Everything else pynetdicom offers only through private names (the chunked-receive hook, the received
data set's spool file, the A-ASSOCIATE-RJ primitive) is wrapped here too.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, dimse_messages, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler

from msfollowup.net.tls import AssociationServer

log = logging.getLogger(__name__)

ASSOCIATION_PDU_LIMIT = 64 * 1024  # any PDU but P-DATA: a real A-ASSOCIATE-RQ is a few KiB
PDU_HEADER = 6
PDATA_OVERHEAD = 12  # PDU header + PDV item header: a P-DATA may exceed the max PDU length by this much
_A_ASSOCIATE_RQ, _P_DATA_TF = 0x01, 0x04
_ABORT_INVALID_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])  # A-ABORT, provider, invalid PDU parameter
_READ = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What a peer may do before and after it is an association."""

    artim_seconds: float  # from accept (after the TLS handshake) to a complete A-ASSOCIATE-RQ
    pdu_seconds: float  # from the first byte of any later PDU to its last
    max_pdu: int  # our negotiated maximum PDU length (0: unlimited, as the site configured)
    half_open_per_host: int = 8  # connections without an A-ASSOCIATE-RQ yet, per peer host
    half_open_total: int = 64  # ... and in total


class PeerViolation(Exception):
    """The peer broke a limit: one log line, the connection goes."""


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


def _write_file_meta(fp: Any, values: tuple[Any, Any, Any]) -> None:
    """The same bytes pydicom's write_file_meta_info writes for pynetdicom's create_file_meta."""
    sop_class, sop_instance, syntax = values
    body = (_explicit(0x0001, b"OB", b"\x00\x01") + _explicit(0x0002, b"UI", _ui(sop_class))
            + _explicit(0x0003, b"UI", _ui(sop_instance)) + _explicit(0x0010, b"UI", _ui(syntax)) + _IMPLEMENTATION)
    fp.write(_explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body)


def _implicit(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


_original_send_msg = DIMSEServiceProvider.send_msg
_MIN_PDU_FOR_FAST_RSP = 1024


def _store_rsp(rsp: C_STORE) -> bytes | None:
    """The command set of a plain C-STORE-RSP (status, no comment or offending element), implicit VR LE,
    in tag order as pynetdicom encodes it; None for anything else (pynetdicom encodes that)."""
    if rsp.ErrorComment is not None or rsp.OffendingElement is not None or rsp.Status is None:
        return None
    body = b"".join((
        _implicit(0x0002, _ui(rsp.AffectedSOPClassUID)) if rsp.AffectedSOPClassUID else b"",
        _implicit(0x0100, struct.pack("<H", 0x8001)),
        _implicit(0x0120, struct.pack("<H", int(cast(int, rsp.MessageIDBeingRespondedTo)))),
        _implicit(0x0800, struct.pack("<H", 0x0101)),
        _implicit(0x0900, struct.pack("<H", int(rsp.Status))),
        _implicit(0x1000, _ui(rsp.AffectedSOPInstanceUID)) if rsp.AffectedSOPInstanceUID else b"",
    ))
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


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


def decode_store_rq(command: bytes) -> list[tuple[str, Any]] | None:
    """The elements of a C-STORE-RQ command set as pydicom's decode would give them, in tag order
    ((keyword, value): UI as pydicom UID without trailing NUL/space, AE stripped, US/UL as int);
    None when the bytes are anything else or anything unusual (pynetdicom then decodes them)."""
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
            value = UID(text.rstrip("\0 ")) if vr == _UI else text.strip()
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


def _open_spool(msg: Any, assoc: Any, context_id: int, sop_class: Any, sop_instance: Any) -> None:
    """As pynetdicom's decode_msg: the spool file of a streamed data set, preamble and file meta first
    (through the module globals, so stream_datasets_to's replacements apply)."""
    msg._data_set_file = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    msg._data_set_path = Path(msg._data_set_file.name)
    msg._data_set_file.write(b"\x00" * 128)
    msg._data_set_file.write(b"DICM")
    cx = assoc._accepted_cx[context_id]
    dimse_messages.write_file_meta_info(msg._data_set_file, dimse_messages.create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=cx.transfer_syntax[0]))


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


# --- event-driven reactors ---------------------------------------------------------------------
#
# pynetdicom 3.0 runs two polling loops per association: the DUL thread sleeps 1 ms whenever it found
# nothing to do (and select()s the socket with timeout 0 on every turn), the association thread sleeps
# 1 ms on every turn. Each instance thus waits up to ~2 ms for nothing and both threads wake ~1000
# times a second. Here both block instead: the DUL in select() on the socket and a wake-up socket
# pair (poked when the association queues a PDU to send or stops it), with the ARTIM timer's rest as
# the timeout; the association on an Event set whenever the DUL queues a message or primitive for it,
# stops, or the association is killed, with the network (idle) timer's rest as the timeout. The loop
# bodies are pynetdicom's own, in the same order; only the waiting differs.

REACTOR_RECHECK = 0.5  # a blocked reactor looks again at least this often (a wake-up it missed costs
#                        latency, never a hang); timers are honoured to the instant by the timeouts


class _SignallingQueue(queue.Queue[Any]):
    """A queue that calls `notify` after every put, so whoever waits for it can block instead of poll."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


def _running_timer_rest(timer: Any) -> float | None:
    """Seconds until a started pynetdicom Timer expires (None: not running or no timeout)."""
    if timer.timeout is None or timer._start_time is None or timer._end_time is not None:
        return None
    return max(0.0, float(timer.remaining))


class EventDUL(DULServiceProvider):
    """pynetdicom's DUL whose reactor blocks on the socket and a wake-up pair instead of sleeping 1 ms."""

    def __init__(self, assoc: Association, on_exit: Callable[[], None]) -> None:
        super().__init__(assoc)
        self._on_exit = on_exit
        self._waiting = False  # set while (about to be) blocked in select(): only then is a poke written
        self._wake_lock = threading.Lock()  # the pair is closed at exit: no write to a reused descriptor
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.finished = False
        self.to_provider_queue = _SignallingQueue(self.wake)
        self.event_queue = _SignallingQueue(self.wake)  # the transport may queue Evt17 from elsewhere

    def wake(self) -> None:
        """Make a blocked reactor look at its queues (cheap no-op while it is running)."""
        if not self._waiting:
            return
        with self._wake_lock:
            if self._wake_w is not None:
                try:
                    self._wake_w.send(b"\0")
                except OSError:  # full: a wake-up is pending anyway
                    pass

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        """As pynetdicom's (stop once idle in Sta1), but woken and joined instead of polled."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self.wake()
        if threading.current_thread() is not self and self.is_alive():
            self.join()
        return True

    def run_reactor(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            self._run_events()
        finally:
            with self._wake_lock:
                self._wake_w.close()
                self._wake_r.close()
                self._wake_w = None
            self.finished = True
            self._on_exit()

    def _run_events(self) -> None:
        """pynetdicom's DULServiceProvider.run_reactor with `time.sleep(0.001)` replaced by `_wait()`."""
        self._idle_timer.start()
        transport = cast(AssociationSocket, self.socket)
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if idle:
                self._wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # as pynetdicom: bypass the state machine, A-ABORT, stop both reactors
                log.error("exception in the DUL reactor, aborting the association: %s", type(exc).__name__)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                transport.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False

    def _wait(self) -> None:
        """Block until the peer sent something, a primitive or event is queued, a stop is asked for, or
        the ARTIM timer expires. Returns at once if any of these is already the case."""
        self._waiting = True  # before the checks: a put after them sees it and pokes
        try:
            if self._kill_thread or self.to_provider_queue.qsize() or self.event_queue.qsize():
                return
            transport = self.socket
            fds: list[Any] = [self._wake_r]
            if isinstance(transport, BoundedSocket):
                if transport.pending():
                    return
                raw = transport.selectable()
                if raw is not None:
                    fds.append(raw)
            elif transport is not None and transport.socket is not None:
                if transport.ready:
                    return
                fds.append(transport.socket)
            artim = _running_timer_rest(self.artim_timer)
            timeout = REACTOR_RECHECK if artim is None else min(REACTOR_RECHECK, artim)
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):  # the socket was closed meanwhile: the next turn reports it
                return
            wake_r = self._wake_r
            if wake_r is not None and wake_r in readable:
                try:
                    while wake_r.recv(4096):
                        pass
                except OSError:
                    pass
        finally:
            self._waiting = False


class EventAssociation(Association):
    """pynetdicom's Association with the event-driven DUL above, and a reactor that blocks on an Event
    (set by the DUL when it queues something for the association) instead of sleeping 1 ms a turn."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self._wake = threading.Event()
        self.dul = EventDUL(self, self._wake.set)
        # The timeouts live in the DUL's timers: set them again on the new DUL.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dul.to_user_queue = _SignallingQueue(self._wake.set)
        self.dimse.msg_queue = _SignallingQueue(self._wake.set)

    def kill(self) -> None:
        self._kill = True
        self._wake.set()
        super().kill()

    def _wait_for_work(self) -> None:
        """Block until the DUL queued a message or primitive, stopped, the association is killed, or the
        network timer expires. Nothing is taken off a queue before the reactor checkpoint, so the
        reactor counts as paused meanwhile (a thread pausing it need not wait for the wake-up)."""
        self._wake.clear()
        dul = cast(EventDUL, self.dul)
        if self._kill or self.dimse.msg_queue.qsize() or dul.to_user_queue.qsize() or dul.idle_timer_expired():
            return
        if dul.finished or not dul.is_alive():
            dul.join(REACTOR_RECHECK)  # ending: is_alive() turns False within moments
            return
        idle = _running_timer_rest(dul._idle_timer)
        self._is_paused = True
        self._wake.wait(REACTOR_RECHECK if idle is None else min(REACTOR_RECHECK, idle))

    def _run_reactor(self) -> None:
        """pynetdicom's Association._run_reactor with `time.sleep(0.001)` replaced by `_wait_for_work()`."""
        self._is_paused = False
        while not self._kill:
            self._wait_for_work()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.warning("network timeout reached, association %s", self.network_timeout_response)
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


# --- the bounded transport ---------------------------------------------------------------------


def _host(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


def _quickack(sock: socket.socket) -> None:
    """Acknowledge what arrives at once instead of after the delayed-ACK timer (40 ms on Linux).

    A sender that leaves Nagle's algorithm on (DCMTK storescu without TCP_NODELAY=1, and most modalities)
    holds the small P-DATA that follows a C-STORE command until the command is acknowledged; with delayed
    ACKs that costs ~40-50 ms per instance (measured: 18.5 instances/s instead of 71-85). Linux clears
    the flag by itself, so it is set again before every read."""
    if _QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass


def _read_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    """n bytes before `deadline`, or PeerViolation (closed, timed out)."""
    out = bytearray()
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerViolation("timed out")
        sock.settimeout(left)
        _quickack(sock)
        try:
            data = sock.recv(min(n - len(out), _READ))
        except (TimeoutError, socket.timeout):
            raise PeerViolation("timed out") from None
        except OSError as exc:
            raise PeerViolation(exc.strerror or type(exc).__name__) from None
        if not data:
            raise PeerViolation("closed")
        out += data
    return bytes(out)


def _pdu_limit(pdu_type: int, max_pdu: int) -> int | None:
    if pdu_type != _P_DATA_TF:
        return ASSOCIATION_PDU_LIMIT
    return max_pdu + PDATA_OVERHEAD if max_pdu else None


class BoundedSocket(AssociationSocket):
    """pynetdicom's transport with the already read A-ASSOCIATE-RQ in front and bounded PDU reads.

    pynetdicom's DUL reads a PDU as recv(6) then recv(length) after `ready` said data is there; here
    both go through a buffer filled one PDU at a time, so the header is checked before the body is read.
    """

    def __init__(self, assoc: Association, client_socket: socket.socket, first_pdu: bytes, limits: Limits,
                 host: str) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._buffer = bytearray(first_pdu)
        self._left = 0  # bytes of the current PDU not read from the network yet
        self._deadline = 0.0
        self._limits = limits
        self._host = host
        self._done = False

    def pending(self) -> bool:
        """Bytes readable without waiting for the network: our buffer, or TLS records already decrypted
        (select() on an SSLSocket does not see those)."""
        if self._buffer:
            return True
        sock = self.socket
        if self._done or not isinstance(sock, ssl.SSLSocket):
            return False
        try:
            return sock.pending() > 0
        except (OSError, ValueError):
            return False

    def selectable(self) -> socket.socket | None:
        """The socket to wait on for more, None when nothing more will be read from it."""
        return None if self._done or not self._is_connected else self.socket

    @property
    def ready(self) -> bool:
        if self._buffer:
            return True
        if self._done:
            return False
        return bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        out = bytearray()
        while len(out) < nr_bytes:
            if not self._buffer and not self._fill():
                break
            take = self._buffer[: nr_bytes - len(out)]
            del self._buffer[: len(take)]
            out += take
        return out

    def _fill(self) -> bool:
        sock = self.socket
        if sock is None or self._done:
            return False
        try:
            if self._left == 0:  # a PDU boundary: its header, checked before anything else
                self._deadline = time.monotonic() + self._limits.pdu_seconds
                header = _read_exactly(sock, PDU_HEADER, self._deadline)
                pdu_type, _, length = struct.unpack(">BBL", header)
                limit = _pdu_limit(pdu_type, self._limits.max_pdu)
                if limit is not None and length > limit:
                    raise PeerViolation(f"PDU type 0x{pdu_type:02X} of {length} bytes (limit {limit})")
                self._left = length
                self._buffer += header
                return True
            data = self._read_some(sock)
            self._left -= len(data)
            self._buffer += data
            return True
        except PeerViolation as exc:
            self._violation(sock, str(exc))
            return False

    def _read_some(self, sock: socket.socket) -> bytes:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise PeerViolation("timed out")
        sock.settimeout(left)
        _quickack(sock)
        try:
            data = sock.recv(min(self._left, _READ))
        except (TimeoutError, socket.timeout):
            raise PeerViolation("timed out") from None
        except OSError as exc:
            raise PeerViolation(exc.strerror or type(exc).__name__) from None
        if not data:
            raise PeerViolation("closed")
        return data

    def _violation(self, sock: socket.socket, reason: str) -> None:
        """Closed by the peer: pynetdicom's normal path. A broken limit: logged and aborted."""
        self._done = True
        if reason == "closed":
            return
        if reason == "timed out":
            reason = f"PDU not complete within {self._limits.pdu_seconds:g} s"
        log.warning("association aborted host=%s reason=%s", self._host, reason)
        cut(sock, abort=True)

    def cut(self) -> None:
        """End the connection now (shutdown): a blocked read returns, pynetdicom sees it closed."""
        self._done = True
        sock = self.socket
        if sock is not None:
            cut(sock, abort=False)


def cut(sock: socket.socket, abort: bool) -> None:
    if abort:
        try:
            sock.settimeout(1.0)
            sock.sendall(_ABORT_INVALID_PDU)
        except OSError:
            pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _GuardedHandler(RequestHandler):
    """Reads the A-ASSOCIATE-RQ within the deadline, then hands the connection to pynetdicom."""

    server: GuardedServer

    def handle(self) -> None:
        server = self.server
        host = _host(self.client_address)
        try:
            first = read_association_request(self.request, server.limits)
        except PeerViolation as exc:
            server.note_refused(host, str(exc))
            cut(self.request, abort="limit" in str(exc))
            self.request.close()
            return
        assoc = self._associate(first, host)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _associate(self, first: bytes, host: str) -> Association:
        """pynetdicom's RequestHandler._create_association with our transport."""
        server = self.server
        assoc = EventAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        sock = BoundedSocket(assoc, self.request, first, server.limits, host)
        server.track(sock)
        assoc.set_socket(sock)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(server.contexts)
        assoc.requestor.address_info = self.remote
        for event in server._handlers:
            if event.is_intervention and server._handlers[event]:
                assoc.bind(event, *server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in server._handlers[event]:
                    handler = cast(Any, handler)
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def read_association_request(sock: socket.socket, limits: Limits) -> bytes:
    """The first PDU, which must be an A-ASSOCIATE-RQ of bounded length, complete within the ARTIM time."""
    deadline = time.monotonic() + limits.artim_seconds
    try:
        header = _read_exactly(sock, PDU_HEADER, deadline)
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type != _A_ASSOCIATE_RQ:
            raise PeerViolation(f"first PDU is not an A-ASSOCIATE-RQ (type 0x{pdu_type:02X})")
        if length > ASSOCIATION_PDU_LIMIT:
            raise PeerViolation(f"A-ASSOCIATE-RQ of {length} bytes (limit {ASSOCIATION_PDU_LIMIT})")
        return header + _read_exactly(sock, length, deadline)
    except PeerViolation as exc:
        if str(exc) == "timed out":
            raise PeerViolation(f"no complete A-ASSOCIATE-RQ within {limits.artim_seconds:g} s") from None
        raise


class GuardedServer(AssociationServer):
    """The TLS-aware association server with the limits above (see the module docstring)."""

    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._half_open: dict[str, int] = {}
        self._sockets: set[BoundedSocket] = set()
        self._refused = 0
        self._last_refusal_log = 0.0
        super().__init__(*args, request_handler=_GuardedHandler, **kwargs)

    # -- half-open connections: counted from accept to a complete A-ASSOCIATE-RQ (or its failure)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = _host(client_address)
        with self._lock:
            total = sum(self._half_open.values())
            if self._half_open.get(host, 0) >= self.limits.half_open_per_host:
                reason = f"more than {self.limits.half_open_per_host} connections of this host without an A-ASSOCIATE-RQ"
            elif total >= self.limits.half_open_total:
                reason = f"more than {self.limits.half_open_total} connections without an A-ASSOCIATE-RQ"
            else:
                self._half_open[host] = self._half_open.get(host, 0) + 1
                return True
        self.note_refused(host, reason)
        return False  # socketserver closes it

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            super().finish_request(request, client_address)
        finally:
            host = _host(client_address)
            with self._lock:
                n = self._half_open.get(host, 1) - 1
                if n > 0:
                    self._half_open[host] = n
                else:
                    self._half_open.pop(host, None)

    def half_open(self) -> int:
        with self._lock:
            return sum(self._half_open.values())

    def note_refused(self, host: str, reason: str) -> None:
        """One warning per connection refused, at most one line a second (a port scan is no log flood)."""
        if reason == "closed":  # connect and close: a port scan or a TCP health check, nothing to say
            log.debug("connection closed before an A-ASSOCIATE-RQ host=%s", host)
            return
        now = time.monotonic()
        with self._lock:
            self._refused += 1
            if now - self._last_refusal_log < 1.0:
                return
            self._last_refusal_log, count, self._refused = now, self._refused, 0
        log.warning("connection refused host=%s reason=%s (%d refused since the last such line)", host, reason, count)

    # -- shutdown

    def track(self, sock: BoundedSocket) -> None:
        with self._lock:
            self._sockets = {s for s in self._sockets if s.socket is not None and not s._done}
            self._sockets.add(sock)

    def cut_all(self) -> None:
        """Cut every association's connection: blocked reads return, pynetdicom unwinds them."""
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            s.cut()


def make_guarded_server(ae: Any, address: tuple[str, int], handlers: list[Any], ssl_context: Any,
                        handshake_timeout: float, limits: Limits) -> GuardedServer:
    """What `ae.start_server(block=False)` does, with the guarded server; AE.shutdown() finds it."""
    server = cast(GuardedServer, ae.make_server(
        address, evt_handlers=handlers, ssl_context=ssl_context, server_class=GuardedServer,
        handshake_timeout=handshake_timeout, limits=limits,
    ))
    ae._servers.append(server)
    return server

