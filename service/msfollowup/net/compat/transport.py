"""The bounded transport: limits, PDU reads with deadlines and bounds, immediate ACKs.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar


from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket


log = logging.getLogger(__name__)

ASSOCIATION_PDU_LIMIT = 64 * 1024  # any PDU but P-DATA: a real A-ASSOCIATE-RQ is a few KiB
PDU_HEADER = 6
PDATA_OVERHEAD = 12  # PDU header + PDV item header: a P-DATA may exceed the max PDU length by this much
_A_ASSOCIATE_RQ, _P_DATA_TF = 0x01, 0x04
_ABORT_INVALID_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])  # A-ABORT, provider, invalid PDU parameter
_READ = 64 * 1024
_PART = 1 << 20  # read_pdu's largest buffer before the bytes to fill it have come
_T = TypeVar("_T", bytes, int)


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




# --- the bounded transport ---------------------------------------------------------------------


def _host(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


def quickack(sock: socket.socket) -> None:
    """Acknowledge what arrives at once instead of after the delayed-ACK timer (40 ms on Linux).

    A sender that leaves Nagle's algorithm on (DCMTK storescu without TCP_NODELAY=1, and most modalities)
    holds the small P-DATA that follows a C-STORE command until the command is acknowledged; with delayed
    ACKs that costs ~40-50 ms per instance (measured: 18.5 instances/s instead of 71-85). Linux clears
    the flag by itself, so it is set again before every wait for the peer (and before every read on
    a socket with a timeout, which waits inside the read)."""
    if _QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass


def _before(sock: socket.socket, deadline: float, read: Callable[[int], _T], dontwait: bool = False) -> _T:
    """One read (`read(flags)`) before `deadline`: its result, or PeerViolation (closed, timed out, failed).

    dontwait: the socket is in blocking mode (no timeout) and the read is tried with MSG_DONTWAIT;
    only when nothing has arrived does this wait, in poll(), until the deadline. With a timeout set
    instead, every read costs settimeout's ioctl and Python's own poll() before its recv (each a
    syscall that lets the interpreter lock go): 11-14 syscalls per received instance less. For
    plain sockets in the lean loop only (`BoundedSocket.read_pdu`), where every send sets its own
    timeout (lean.py `_send`); a TLS socket takes no flags.
    """
    left = deadline - time.monotonic()
    if left <= 0:
        raise PeerViolation("timed out")
    if not dontwait:
        sock.settimeout(left)
        quickack(sock)
    try:
        while True:
            try:
                data = read(_DONTWAIT if dontwait else 0)
                break
            except BlockingIOError:  # dontwait only: nothing here yet
                # Whatever arrived is acknowledged before waiting for more: a sender with Nagle's
                # algorithm on holds its next small segment until then. Not before reads that find
                # their bytes there (most): 4-5 setsockopt calls per received instance less.
                quickack(sock)
                if not _readable_within(sock, deadline - time.monotonic()):
                    raise PeerViolation("timed out") from None
    except (TimeoutError, socket.timeout):
        raise PeerViolation("timed out") from None
    except OSError as exc:
        raise PeerViolation(exc.strerror or type(exc).__name__) from None
    if not data:
        raise PeerViolation("closed")
    return data


_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def _readable_within(sock: socket.socket, seconds: float) -> bool:
    """Wait until `sock` is readable (or closed), at most `seconds`; poll(), which knows no fd limit."""
    if seconds <= 0:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


def _recv_before(sock: socket.socket, n: int, deadline: float, dontwait: bool = False) -> bytes:
    """Between 1 and n bytes (at most one read) before `deadline`, or PeerViolation (closed, timed out)."""
    return _before(sock, deadline, lambda flags: sock.recv(min(n, _READ), flags), dontwait)


def _recv_into_before(sock: socket.socket, view: memoryview, deadline: float, dontwait: bool = False) -> int:
    """As _recv_before, into `view` (at most one read of at most len(view) bytes): the byte count."""
    return _before(sock, deadline, lambda flags: sock.recv_into(view, 0, flags), dontwait)


def _read_body(sock: socket.socket, length: int, deadline: float, dontwait: bool = False) -> bytearray:
    """`length` bytes before `deadline`, read with recv_into into buffers of at most _PART bytes each: a
    peer that announces a large PDU (no limit configured) gets memory only for what it has sent."""
    parts: list[bytearray] = []
    for start in range(0, length, _PART):
        part = bytearray(min(_PART, length - start))
        view, got = memoryview(part), 0
        while got < len(part):
            got += _recv_into_before(sock, view[got:], deadline, dontwait)
        parts.append(part)
    return parts[0] if len(parts) == 1 else bytearray().join(parts)  # no part: an empty PDU


def _read_exactly(sock: socket.socket, n: int, deadline: float, dontwait: bool = False) -> bytes:
    """n bytes before `deadline`, or PeerViolation (closed, timed out)."""
    out = bytearray()
    while len(out) < n:
        out += _recv_before(sock, n - len(out), deadline, dontwait)
    return bytes(out)


def _pdu_limit(pdu_type: int, max_pdu: int) -> int | None:
    if pdu_type != _P_DATA_TF:
        return ASSOCIATION_PDU_LIMIT
    return max_pdu + PDATA_OVERHEAD if max_pdu else None


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

    def read_pdu(self) -> tuple[int, bytearray] | None:
        """One whole PDU as (type, body) for the lean data-transfer loop (lean.py): the header checked
        against the same limit and the PDU read within the same deadline as through recv(), the body
        read straight into its own buffer instead of through the shared one (~4 copies of every
        received byte less). None when the peer closed the connection or broke a limit (handled as in
        recv: logged and aborted)."""
        if self._buffer or self._left:  # a PDU begun through recv(): finish it the general way
            header = self.recv(PDU_HEADER)
            if len(header) < PDU_HEADER:
                return None
            pdu_type, _, length = struct.unpack(">BBL", header)
            body = self.recv(length) if length else bytearray()
            return (pdu_type, body) if len(body) == length else None
        sock = self.socket
        if sock is None or self._done:
            return None
        # A plain socket is read without a timeout, with MSG_DONTWAIT, waiting in poll() (see _before).
        dontwait = bool(_DONTWAIT) and not isinstance(sock, ssl.SSLSocket)
        try:
            deadline = time.monotonic() + self._limits.pdu_seconds
            if dontwait and sock.gettimeout() is not None:
                sock.settimeout(None)  # once after each send (lean.py `_send` sets its own timeout)
            pdu_type, _, length = struct.unpack(">BBL", _read_exactly(sock, PDU_HEADER, deadline, dontwait))
            limit = _pdu_limit(pdu_type, self._limits.max_pdu)
            if limit is not None and length > limit:
                raise PeerViolation(f"PDU type 0x{pdu_type:02X} of {length} bytes (limit {limit})")
            return pdu_type, _read_body(sock, length, deadline, dontwait)
        except PeerViolation as exc:
            self._violation(sock, str(exc))
            return None

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
            data = _recv_before(sock, self._left, self._deadline)
            self._left -= len(data)
            self._buffer += data
            return True
        except PeerViolation as exc:
            self._violation(sock, str(exc))
            return False

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


