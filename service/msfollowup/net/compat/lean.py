"""The data-transfer phase of a storage association without pynetdicom's per-PDU machinery.

pynetdicom negotiates every association (access control, presentation contexts, roles, the
A-ASSOCIATE-AC, every EVT_* of that phase are unchanged). When every accepted presentation context is a
storage SOP class or Verification, the DUL thread stops right after it sent the A-ASSOCIATE-AC
(`EventDUL`), and the association's own thread serves the rest here, blocking on its socket: read a PDU,
stream C-STORE data fragments into the spool file, call the store handler, answer with a pre-encoded
C-STORE-RSP, until A-RELEASE-RQ, A-ABORT, a closed socket or the idle timeout.

Why: per received instance pynetdicom runs its state machine, three queues between two threads, a
primitive per PDU and per DIMSE message (UID validation on every setter), an event dispatch and a
service-class object, ~3-4 ms of CPU under the GIL (py-spy, benchmarks/ingest.py case a) against
~0.3 ms here. The PDU reads keep the transport's bounds and deadlines (`BoundedSocket`), the store
handler is the node's, and the association ends with pynetdicom's flags and EVT_RELEASED/EVT_ABORTED,
so nothing above this module sees a difference. Anything this loop does not serve (another DIMSE
command on a storage context, an unexpected PDU, a broken PDV) is logged and aborted, as pynetdicom's
DUL does for a PDU it cannot take.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import dimse_messages, evt
from pynetdicom.association import Association

from msfollowup.net.compat.dimse import _NO_DATA_SET, _ui, _us, command_set, decode_store_rq, open_spool, store_rsp
from msfollowup.net.compat.transport import _ABORT_INVALID_PDU, BoundedSocket, quickack

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
_P_DATA_TF, _A_RELEASE_RQ, _A_ABORT = 0x04, 0x05, 0x07
_RELEASE_RP = bytes([0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0])
_C_STORE_RQ, _C_ECHO_RQ, _C_ECHO_RSP = 0x0001, 0x0030, 0x8030
_STATUS_HANDLER_EXCEPTION = 0xC211  # pynetdicom's status when the C-STORE handler raised
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def _abort_pdu(source: int, reason: int) -> bytes:
    return bytes([_A_ABORT, 0, 0, 0, 0, 4, 0, 0, source, reason])


_ABORT_UNEXPECTED = _abort_pdu(0x02, 0x02)  # provider: unexpected PDU
_ABORT_SERVICE_USER = _abort_pdu(0x00, 0x00)  # what pynetdicom sends for assoc.abort()


@dataclass
class StoreRequest:
    """What the store handler needs of one C-STORE-RQ (pynetdicom's C_STORE primitive, without it)."""

    sop_class: str
    sop_instance: str
    message_id: int
    context_id: int
    transfer_syntax: str
    path: str | None  # the spool file's name, None when the request carried no data set
    spool: Any  # the spool file object (its `.error` says whether it is complete)


StoreHandler = Callable[[Association, StoreRequest], "Dataset | int"]


@dataclass(frozen=True)
class LeanConfig:
    """Given to the server by the node: which associations may take this path and who stores."""

    abstract_syntaxes: frozenset[str]  # storage SOP classes (and Verification) this path may serve
    store: StoreHandler
    before_release: Callable[[Association], None] | None = None  # runs before the A-RELEASE-RP is sent

    def eligible(self, assoc: Association) -> bool:
        accepted = getattr(assoc, "_accepted_cx", {})
        return bool(accepted) and all(
            str(cx.abstract_syntax) in self.abstract_syntaxes and cx.as_scp is not False
            for cx in accepted.values()
        )


def echo_rsp(message_id: int) -> bytes:
    return command_set([(0x0002, _ui(VERIFICATION)), (0x0100, _us(_C_ECHO_RSP)), (0x0120, _us(message_id)),
                     (0x0800, _us(_NO_DATA_SET)), (0x0900, _us(0))])


def _status_of(result: Dataset | int) -> tuple[int, str | None]:
    if isinstance(result, Dataset):
        comment = result.get("ErrorComment")
        return int(result.Status), (str(comment) if comment else None)
    return int(result), None


def _command_fields(command: bytes) -> dict[str, Any] | None:
    """The command set's elements by keyword: struct for a plain C-STORE-RQ, pydicom otherwise."""
    fields = decode_store_rq(command, uid=str)  # plain strings: the store handler takes str
    if fields is not None:
        return dict(fields)
    try:
        ds = dimse_messages.decode(BytesIO(command), True, True)
        return {elem.keyword: elem.value for elem in ds if elem.keyword}
    except Exception:  # noqa: BLE001 - undecodable: the caller aborts
        return None


class LeanStorage:
    """Serves one established storage association on its own thread; `run()` returns how it ended."""

    def __init__(self, assoc: Association, transport: BoundedSocket, config: LeanConfig,
                 idle_seconds: float | None) -> None:
        self.assoc = assoc
        self.transport = transport
        self.config = config
        self.idle_seconds = idle_seconds
        self.peer_max = int(getattr(assoc.requestor, "maximum_length", 0) or 0)
        self.contexts = {cid: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                         for cid, cx in assoc._accepted_cx.items()}
        self._send_lock = threading.Lock()
        self._ended = False
        self._command = bytearray()
        self._request: dict[str, Any] | None = None  # the C-STORE-RQ whose data set is arriving
        self._request_cx = 0
        self.spool: Any = None  # the spool of the data set arriving (a partial one is discarded at the end)

    # -- sending (also from other threads: abort at shutdown)

    def _send(self, data: bytes) -> bool:
        sock = self.transport.socket
        if sock is None:
            return False
        with self._send_lock:
            if self._ended:
                return False
            try:
                if _DONTWAIT and not isinstance(sock, ssl.SSLSocket):  # (a TLS socket takes no flags)
                    # Most answers fit in the socket's buffer: sent at once, without settimeout's
                    # ioctl and Python's poll() before the send (and the read's ioctl to undo it).
                    try:
                        sent = sock.send(data, _DONTWAIT)
                    except BlockingIOError:
                        sent = 0
                    if sent == len(data):
                        return True
                    data = data[sent:]
                sock.settimeout(self.idle_seconds)
                sock.sendall(data)
                return True
            except OSError:
                return False

    def _send_command(self, context_id: int, command: bytes) -> bool:
        """The command set in as many P-DATA-TF PDUs as the peer's maximum PDU length asks for."""
        room = self.peer_max - 6 if self.peer_max else len(command)  # PDV: 4 length + id + control
        room = max(room, 2)
        pdus = []
        for start in range(0, len(command), room):
            part = command[start:start + room]
            last = start + room >= len(command)
            pdv = struct.pack(">IBB", len(part) + 2, context_id, 0x03 if last else 0x01) + part
            pdus.append(struct.pack(">BBI", _P_DATA_TF, 0, len(pdv)) + pdv)
        return self._send(b"".join(pdus))

    def abort(self) -> None:
        """A-ABORT (service user) and close: for a node shutting down; the loop ends as aborted."""
        self._send(_ABORT_SERVICE_USER)
        with self._send_lock:
            self._ended = True
        self.transport.cut()

    # -- receiving

    def _wait_readable(self) -> bool:
        """False when the idle (network) timeout passed without a byte from the peer."""
        if self.transport.pending():
            return True
        raw = self.transport.selectable()
        if raw is None:
            return True  # the read reports it closed
        quickack(raw)  # the answer just sent put the socket back in delayed-ACK mode: the next command
        #                is acknowledged at once (a Nagle sender holds the data set's last segment until then)
        try:
            readable, _, _ = select.select([raw], [], [], self.idle_seconds)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def run(self) -> str:
        """'released' or 'aborted'."""
        try:
            return self._serve()
        finally:
            with self._send_lock:
                self._ended = True
            if self.spool is not None:
                _discard(self.spool)
                self.spool = None

    def _serve(self) -> str:
        while True:
            # Between messages the peer may idle up to the network timeout. Within one (a data set's
            # next PDU, usually there already) the read waits itself, up to the PDU deadline.
            if self._request is None and not self._command and not self._wait_readable():
                log.warning("network timeout reached, association A-ABORT")
                self._send(_ABORT_SERVICE_USER)
                return "aborted"
            pdu = self.transport.read_pdu()
            if pdu is None:
                return "aborted"  # closed by the peer, or cut by the transport for a broken limit
            pdu_type, body = pdu
            if pdu_type == _P_DATA_TF:
                if not self._p_data(body):
                    self._send(_ABORT_INVALID_PDU)
                    return "aborted"
            elif pdu_type == _A_RELEASE_RQ:
                if self.config.before_release is not None:
                    self.config.before_release(self.assoc)
                self._send(_RELEASE_RP)
                return "released"
            elif pdu_type == _A_ABORT:
                return "aborted"
            else:
                log.warning("unexpected PDU type 0x%02X during data transfer, aborting", pdu_type)
                self._send(_ABORT_UNEXPECTED)
                return "aborted"

    def _p_data(self, body: bytearray) -> bool:
        """Every PDV of one P-DATA-TF; False on a broken PDU (the caller aborts)."""
        offset, end = 0, len(body)
        view = memoryview(body)
        while offset < end:
            if end - offset < 6:
                return False
            length = int.from_bytes(body[offset:offset + 4], "big")
            if length < 2 or offset + 4 + length > end:
                return False
            context_id, control = body[offset + 4], body[offset + 5]
            data = view[offset + 6:offset + 4 + length]
            offset += 4 + length
            if context_id not in self.contexts:
                log.warning("PDV on presentation context %d, which was not accepted; aborting", context_id)
                return False
            if control & 1:
                if not self._command_fragment(context_id, data, bool(control & 2)):
                    return False
            elif not self._data_fragment(data, bool(control & 2)):
                return False
        return True

    def _command_fragment(self, context_id: int, data: memoryview, last: bool) -> bool:
        if self._request is not None:
            log.warning("command fragment while a data set is still arriving; aborting")
            return False
        self._command += data
        if not last:
            return True
        command, self._command = bytes(self._command), bytearray()
        fields = _command_fields(command)
        if fields is None:
            log.warning("undecodable DIMSE command set; aborting")
            return False
        field = fields.get("CommandField")
        if field == _C_ECHO_RQ:
            return self._send_command(context_id, echo_rsp(int(fields.get("MessageID") or 0)))
        if field != _C_STORE_RQ:
            log.warning("DIMSE command 0x%04X on a storage presentation context; aborting", field or 0)
            return False
        if fields.get("CommandDataSetType") == _NO_DATA_SET:
            return self._store(context_id, fields, None)
        self._request, self._request_cx = fields, context_id
        # Plain strings: the node's file meta encoder (dimse.stream_datasets_to) takes any str.
        self.spool = open_spool(str(fields.get("AffectedSOPClassUID") or ""),
                                str(fields.get("AffectedSOPInstanceUID") or ""), self.contexts[context_id][1])
        return True

    def _data_fragment(self, data: memoryview, last: bool) -> bool:
        if self._request is None:
            log.warning("data set fragment without a C-STORE-RQ; aborting")
            return False
        self.spool.write(data)
        if not last:
            return True
        fields, self._request = self._request, None
        spool, self.spool = self.spool, None
        try:
            return self._store(self._request_cx, fields, spool)
        finally:
            _discard(spool)  # the store hard-linked what it keeps; the temporary name goes either way

    def _store(self, context_id: int, fields: dict[str, Any], spool: Any) -> bool:
        sop_class = str(fields.get("AffectedSOPClassUID") or "")
        sop_instance = str(fields.get("AffectedSOPInstanceUID") or "")
        message_id = int(fields.get("MessageID") or 0)
        request = StoreRequest(sop_class, sop_instance, message_id, context_id, self.contexts[context_id][1],
                               None if spool is None else str(spool.name), spool)
        try:
            status, comment = _status_of(self.config.store(self.assoc, request))
        except Exception:  # noqa: BLE001 - as pynetdicom: a handler exception is a failure status
            log.exception("exception in the C-STORE handler")
            status, comment = _STATUS_HANDLER_EXCEPTION, None
        return self._send_command(context_id, store_rsp(sop_class, message_id, status, sop_instance, comment))


def _discard(spool: Any) -> None:
    """Close and remove a spool file whose data set did not arrive whole (or was stored already)."""
    discard = getattr(spool, "discard", None)
    if discard is not None:
        discard()
        return
    spool.close()
    try:
        Path(spool.name).unlink()
    except OSError:
        pass  # already gone


def raw_transport(assoc: Association) -> BoundedSocket | None:
    transport = getattr(assoc.dul, "socket", None)
    return transport if isinstance(transport, BoundedSocket) else None


def finish(assoc: Association, how: str) -> None:
    """pynetdicom's end of an association (flags, event, kill), as its reactor does it."""
    assoc.is_established = False
    if how == "released":
        assoc.is_released = True
        evt.trigger(assoc, evt.EVT_RELEASED, {})
    else:
        assoc.is_aborted = True
        evt.trigger(assoc, evt.EVT_ABORTED, {})
    assoc.kill()


